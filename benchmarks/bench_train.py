"""Training throughput of the reference trainer.

    python benchmarks/bench_train.py                 # demo preset on the CPU, 1 and 2 torch threads
    python benchmarks/bench_train.py --threads 2 --epochs 3
    python benchmarks/bench_train.py --ceiling --arch resnet50 --batch-size 256 --image-size 224 --device cuda

Default mode: steady-state training images/s of the demo preset through ``train()`` (the last
epoch; each image = two augmented views, forward + backward + LARS step, batched tensor
augmentation included, spectrum monitor off) and the 1-minute load average, because a shared
machine's other jobs change the number.

``--ceiling``: the GPU target of the trainer. Times the same training step (bf16 autocast on
CUDA, channels_last, InfoNCE, LARS) twice on one device: fed with ready-made random tensors
(the ceiling) and fed with real augmentations of uint8 images done on the device by
``BatchAugment`` (crop, flip, colour jitter, grayscale, blur, solarize for both views); prints
both rates and their ratio (target: at least 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

import torch

from collapse_probe.ssl import preset_config, train


def bench(threads: int, epochs: int, **overrides) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = preset_config("demo", epochs=epochs, monitor_every=0, log_every=0, threads=threads, out=out, **overrides)
        load_before = os.getloadavg()[0]
        result = train(config)
        rows = result.metrics
    return {
        "preset": "demo", "threads": threads, "batch_size": config.batch_size, "image_size": config.image_size,
        "arch": config.arch, "width": config.width, "epochs": epochs,
        "imgs_per_s_last_epoch": rows[-1]["imgs_per_s"], "imgs_per_s_first_epoch": rows[0]["imgs_per_s"],
        "epoch_time_s": rows[-1]["epoch_time_s"], "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
    }


def bench_ceiling(arch: str, batch_size: int, image_size: int, device: str, steps: int, warmup: int) -> dict:
    """Images/s of one training step on random tensors versus on device-augmented uint8 images."""
    import time

    from collapse_probe.data.augment import BatchAugment
    from collapse_probe.ssl.config import TrainConfig
    from collapse_probe.ssl.lars import LARS, lars_param_groups
    from collapse_probe.ssl.loop import global_loss
    from collapse_probe.ssl.model import build_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model, _ = build_model(TrainConfig(arch=arch, small_stem=image_size <= 64, projector="mlp"))
    model = model.to(dev, memory_format=torch.channels_last)
    optimizer = LARS(lars_param_groups([model], 1e-6), lr=0.1)
    views = [BatchAugment(image_size, view=v) for v in (1, 2)]
    source = torch.randint(0, 256, (batch_size, 3, image_size + image_size // 7, image_size + image_size // 7),
                           dtype=torch.uint8, device=dev)
    ready = torch.randn(2 * batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=torch.channels_last)
    gen = torch.Generator(dev).manual_seed(0)

    def step(augment: bool) -> None:
        x = torch.cat([views[0](source, gen), views[1](source, gen)]) if augment else ready
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            z = model(x)
        loss = global_loss(z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def rate(augment: bool) -> float:
        for _ in range(warmup):
            step(augment)
        if cuda:
            torch.cuda.synchronize()  # a sync point: only around the timed block
        start = time.perf_counter()
        for _ in range(steps):
            step(augment)
        if cuda:
            torch.cuda.synchronize()
        return steps * batch_size / (time.perf_counter() - start)

    ceiling, real = rate(False), rate(True)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    return {"mode": "ceiling", "device": name, "arch": arch, "batch_size": batch_size, "image_size": image_size,
            "precision": "bf16" if cuda else "fp32", "imgs_per_s_random_tensors": ceiling,
            "imgs_per_s_real_augmentations": real, "ratio": real / ceiling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ceiling", action="store_true", help="step rate: random tensors vs device augmentation")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=str, help="--ceiling: also write its result here")
    args = parser.parse_args()
    if args.ceiling:
        result = bench_ceiling(args.arch, args.batch_size, args.image_size, args.device, args.steps, args.warmup)
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return
    machine = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    for threads in args.threads:
        print(json.dumps({**machine, **bench(threads, args.epochs)}), flush=True)


if __name__ == "__main__":
    main()
