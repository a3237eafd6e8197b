"""Probe overhead: spectrum() against a bare ``for x in loader: model(x)`` loop, same model and data.

Both run under inference mode in eval mode on the same pre-built batches, alternating, best of
``--repeats``; overhead = probe / bare - 1, with 1 and with 4 probed layers.

    python benchmarks/bench_probe_overhead.py --arch resnet18 --image-size 64 --n 1024
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from collapse_probe import spectrum

FOUR_LAYERS = ["layer1", "layer2", "layer3", "avgpool"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).eval()
    batches = [torch.randn(args.batch_size, 3, args.image_size, args.image_size) for _ in range(args.n // args.batch_size)]

    def bare() -> None:
        with torch.inference_mode():
            for x in batches:
                model(x)

    runs = {
        "bare loop": bare,
        "spectrum, 1 layer (avgpool)": lambda: spectrum(model, batches, layers="avgpool", progress=False),
        "spectrum, 4 layers": lambda: spectrum(model, batches, layers=FOUR_LAYERS, progress=False),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, {args.arch} {args.image_size}px, N={args.n}")
    print("| run | seconds | images/s | overhead vs bare |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {args.n / seconds:.0f} | {100 * (seconds / best['bare loop'] - 1):+.1f}% |")


if __name__ == "__main__":
    main()
