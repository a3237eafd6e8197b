"""Streaming accumulation + eigvalsh against the naive way (collect, numpy cov, SVD).

The naive way is what the paper's public spectrum script does: hold every embedding, then
``np.cov`` and a full SVD on the CPU. Each method runs in a fresh subprocess on the same
deterministic stream of float32 batches, so peak resident memory (ru_maxrss above the
process's baseline after the stream's first batch) is comparable.

    python benchmarks/bench_core.py --n 50000 --dims 128 512 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from collapse_probe import CovarianceAccumulator  # imported up front, as numpy is for the naive way

DEVICE = "cpu"  # the streaming side's device (--device); the naive way is CPU-only, as published


def batches(n: int, d: int, batch_size: int, device: str = "cpu"):
    generator = torch.Generator(device=device).manual_seed(0)
    scales = torch.logspace(0, -4, d, device=device)
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        yield torch.randn(rows, d, generator=generator, device=device) * scales + 1.0


def run_streaming(n: int, d: int, batch_size: int) -> np.ndarray:
    accumulator = CovarianceAccumulator(d, device=DEVICE)
    for batch in batches(n, d, batch_size, DEVICE):
        accumulator.update(batch)
    return accumulator.compute().eigenvalues.numpy()


def float64_matmul_rate(d: int, batch_size: int) -> float:
    """FLOP/s of a plain float64 (batch, d)^T (batch, d) product on DEVICE: the accumulation ceiling."""
    x = torch.randn(batch_size, d, dtype=torch.float64, device=DEVICE)
    out = torch.empty(d, d, dtype=torch.float64, device=DEVICE)
    for _ in range(3):
        torch.mm(x.T, x, out=out)
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        torch.mm(x.T, x, out=out)
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * batch_size * d * d * repeats / (time.perf_counter() - start)


def run_naive(n: int, d: int, batch_size: int) -> np.ndarray:
    embeddings = [batch.numpy() for batch in batches(n, d, batch_size)]
    z = np.concatenate(embeddings)
    covariance = np.cov(z, rowvar=False)
    return np.linalg.svd(covariance, compute_uv=False)


def run_generate_only(n: int, d: int, batch_size: int) -> np.ndarray:
    for _ in batches(n, d, batch_size):
        pass
    return np.zeros(d)


METHODS = {"streaming": run_streaming, "naive": run_naive, "generate": run_generate_only}


def child(method: str, n: int, d: int, batch_size: int) -> None:
    next(iter(batches(batch_size, d, batch_size, DEVICE)))  # warm up torch's RNG and allocator
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    values = METHODS[method](n, d, batch_size)
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024, "top": float(values[0])}))


def measure(method: str, n: int, d: int, batch_size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, "--n", str(n), "--dims", str(d), "--batch-size", str(batch_size),
         "--device", DEVICE],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", choices=sorted(METHODS))
    parser.add_argument("--device", default="cpu", help="where the streaming side runs (cuda for the GPU headline)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.child:
        child(args.child, args.n, args.dims[0], args.batch_size)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={args.n}, batch {args.batch_size}, streaming on {DEVICE}")
    print("| d | generate only (s) | naive (s) | streaming (s) | naive / streaming (excl. generation) | naive peak MiB | streaming peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for d in args.dims:
        best = {m: min((measure(m, args.n, d, args.batch_size) for _ in range(args.repeats)), key=lambda r: r["seconds"]) for m in METHODS}
        gen = best["generate"]["seconds"]
        ratio = (best["naive"]["seconds"] - gen) / (best["streaming"]["seconds"] - gen)
        rel = abs(best["naive"]["top"] - best["streaming"]["top"]) / best["naive"]["top"]
        print(
            f"| {d} | {gen:.2f} | {best['naive']['seconds']:.2f} | {best['streaming']['seconds']:.2f} | {ratio:.2f}x "
            f"| {best['naive']['peak_mib']:.0f} | {best['streaming']['peak_mib']:.0f} |  (top eigenvalue agrees to {rel:.1e})"
        )
        if DEVICE.startswith("cuda"):
            flops = 2 * args.n * d * d / (best["streaming"]["seconds"] - gen)
            print(f"    accumulation: {flops / 1e12:.2f} TFLOP/s = {flops / float64_matmul_rate(d, args.batch_size):.0%} of the float64 matmul rate")


if __name__ == "__main__":
    main()
