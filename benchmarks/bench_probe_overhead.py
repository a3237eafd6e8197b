"""Probe overhead: spectrum() against a bare ``for x in loader: model(x)`` loop, same model and data.

Both run under inference mode in eval mode on the same pre-built batches (on ``--device``; on
CUDA the model and batches are channels_last and each timed run ends with a device sync),
alternating, best of ``--repeats``; overhead = probe / bare - 1, with 1 and with 4 probed layers.
``--precision bf16`` runs both under the same autocast. At most ``--distinct-batches`` batches
are built and cycled, so a large N costs no extra memory.

    python benchmarks/bench_probe_overhead.py --arch resnet18 --image-size 64 --n 1024
    python benchmarks/bench_probe_overhead.py --arch resnet50 --image-size 224 --n 51200 --batch-size 256 \\
        --device cuda --precision bf16 --repeats 2 --json probe_overhead.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
import torchvision

from collapse_probe import spectrum

FOUR_LAYERS = ["layer1", "layer2", "layer3", "avgpool"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST))
    parser.add_argument("--distinct-batches", type=int, default=16, help="batches built; cycled up to N")
    parser.add_argument("--json", type=str, help="write the rows and the overheads here")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = getattr(torchvision.models, args.arch)(weights=None).eval().to(device, memory_format=memory_format)
    n_batches = args.n // args.batch_size
    distinct = [torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
                .contiguous(memory_format=memory_format) for _ in range(min(n_batches, args.distinct_batches))]
    batches = [distinct[i % len(distinct)] for i in range(n_batches)]
    n = n_batches * args.batch_size
    dtype = AUTOCAST[args.precision]
    precision = None if dtype is None else args.precision

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def bare() -> None:
        with torch.inference_mode(), autocast():
            for x in batches:
                model(x)

    runs = {
        "bare loop": bare,
        "spectrum, 1 layer (avgpool)": lambda: spectrum(model, batches, layers="avgpool", precision=precision,
                                                        progress=False),
        "spectrum, 4 layers": lambda: spectrum(model, batches, layers=FOUR_LAYERS, precision=precision, progress=False),
    }
    if cuda:  # first calls (cuDNN, cuBLAS, cuSOLVER) outside the timing
        for fn in runs.values():
            fn()
        torch.cuda.synchronize()
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, {args.arch} {args.image_size}px, "
          f"{args.precision}, N={n}, batch {args.batch_size}")
    print("| run | seconds | images/s | overhead vs bare |")
    print("|---|---|---|---|")
    rows = []
    for name, seconds in best.items():
        overhead = seconds / best["bare loop"] - 1
        rows.append({"run": name, "seconds": seconds, "images_per_s": n / seconds, "overhead": overhead})
        print(f"| {name} | {seconds:.2f} | {n / seconds:.0f} | {100 * overhead:+.1f}% |")
    if args.json:
        summary = {"device": where, "arch": args.arch, "image_size": args.image_size, "precision": args.precision,
                   "n": n, "batch_size": args.batch_size, "repeats": args.repeats, "rows": rows,
                   "bare_images_per_s": rows[0]["images_per_s"], "overhead_1_layer": rows[1]["overhead"],
                   "overhead_4_layers": rows[2]["overhead"]}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
