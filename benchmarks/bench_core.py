"""Streaming accumulation + eigvalsh against the naive way (collect, numpy cov, SVD) and the floor.

The naive way is what the paper's public spectrum script does: hold every embedding, then
``np.cov`` and a full SVD on the CPU. Each method runs in a fresh subprocess on the same
deterministic stream of float32 batches, so peak resident memory (ru_maxrss above the
process's baseline after the stream's first batch) is comparable.

The floor is measured in the same run, on the same device and threads: a symmetric rank-k update
of N rows needs N d^2 flops (half of a GEMM's 2 N d^2), so no streaming method can beat
``N d^2 / (this machine's float64 GEMM rate) + one eigvalsh``. The GEMM rate is the best of
(B, d)^T (B, d) products at B = batch size, 1024 and 4096; the eigvalsh the faster of 1 and 2
threads. The streaming time is printed as a multiple of that floor. Each method's time excludes
the time spent generating the batches (measured inside the generator).

    python benchmarks/bench_core.py --n 50000 --dims 512 2048 --repeats 3
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


GENERATION = {"seconds": 0.0}  # time spent producing batches, subtracted from each method's time


def batches(n: int, d: int, batch_size: int, device: str = "cpu"):
    """The same deterministic float32 stream for every method; its own time is recorded apart."""
    start = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(0)
    scales = torch.logspace(0, -4, d, device=device)
    GENERATION["seconds"] += time.perf_counter() - start
    for first in range(0, n, batch_size):
        start = time.perf_counter()
        rows = min(batch_size, n - first)
        batch = torch.randn(rows, d, generator=generator, device=device) * scales + 1.0
        GENERATION["seconds"] += time.perf_counter() - start
        yield batch


def run_streaming(n: int, d: int, batch_size: int) -> np.ndarray:
    accumulator = CovarianceAccumulator(d, device=DEVICE)
    for batch in batches(n, d, batch_size, DEVICE):
        accumulator.update(batch)
    return accumulator.compute().eigenvalues.numpy()


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def eigvalsh_seconds(d: int) -> float:
    """The fastest of one float64 d x d ``eigvalsh`` on 1 and 2 threads (best of 2 each)."""
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    a = torch.randn(d, d, dtype=torch.float64, device=DEVICE, generator=generator)
    a = a @ a.T
    best = float("inf")
    for threads in (1, 2) if DEVICE == "cpu" else (torch.get_num_threads(),):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.linalg.eigvalsh(a)
            for _ in range(2):
                _sync()
                start = time.perf_counter()
                torch.linalg.eigvalsh(a)
                _sync()
                best = min(best, time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous)
    return best


def run_floor(n: int, d: int, batch_size: int) -> np.ndarray:
    """Not a method: measures the floor's two parts, reported through the JSON line."""
    rate = max(float64_matmul_rate(d, rows) for rows in sorted({batch_size, 1024, 4096}))
    FLOOR.update(gemm_flops=rate, eigvalsh_s=eigvalsh_seconds(d), update_s=n * d * d / rate)
    return np.zeros(d)


FLOOR: dict[str, float] = {}


def float64_matmul_rate(d: int, batch_size: int) -> float:
    """FLOP/s of a plain float64 (batch, d)^T (batch, d) product on DEVICE: the accumulation ceiling."""
    x = torch.randn(batch_size, d, dtype=torch.float64, device=DEVICE)
    out = torch.empty(d, d, dtype=torch.float64, device=DEVICE)
    for _ in range(3):
        torch.mm(x.T, x, out=out)
    _sync()
    start, repeats = time.perf_counter(), max(5, 20 * 256 // batch_size)
    for _ in range(repeats):
        torch.mm(x.T, x, out=out)
    _sync()
    return 2 * batch_size * d * d * repeats / (time.perf_counter() - start)


def run_naive(n: int, d: int, batch_size: int) -> np.ndarray:
    embeddings = [batch.numpy() for batch in batches(n, d, batch_size)]
    z = np.concatenate(embeddings)
    covariance = np.cov(z, rowvar=False)
    return np.linalg.svd(covariance, compute_uv=False)


METHODS = {"streaming": run_streaming, "naive": run_naive, "floor": run_floor}


def child(method: str, n: int, d: int, batch_size: int) -> None:
    next(iter(batches(batch_size, d, batch_size, DEVICE)))  # warm up torch's RNG and allocator
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    GENERATION["seconds"] = 0.0
    start = time.perf_counter()
    values = METHODS[method](n, d, batch_size)
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start - GENERATION["seconds"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024, "top": float(values[0]), **FLOOR}))


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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={args.n}, batch {args.batch_size}, "
          f"streaming on {DEVICE}, best of {args.repeats} (fresh process each)")
    print("| d | naive (s) | streaming (s) | floor (s) | streaming / floor | naive / streaming "
          "| naive peak MiB | streaming peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        best = {m: min((measure(m, args.n, d, args.batch_size) for _ in range(args.repeats)), key=lambda r: r["seconds"])
                for m in ("naive", "streaming")}
        floor_parts = min((measure("floor", args.n, d, args.batch_size) for _ in range(args.repeats)),
                          key=lambda r: r["update_s"] + r["eigvalsh_s"])
        naive, streaming = best["naive"]["seconds"], best["streaming"]["seconds"]
        floor = floor_parts["update_s"] + floor_parts["eigvalsh_s"]
        rel = abs(best["naive"]["top"] - best["streaming"]["top"]) / best["naive"]["top"]
        naive_mib, streaming_mib = best["naive"]["peak_mib"], best["streaming"]["peak_mib"]
        print(
            f"| {d} | {naive:.2f} | {streaming:.2f} | {floor:.2f} | {streaming / floor:.2f}x | {naive / streaming:.2f}x "
            f"| {naive_mib:.0f} | {streaming_mib:.0f} | {naive_mib / max(streaming_mib, 1e-9):.1f}x |"
        )
        print(f"    floor = {floor_parts['update_s']:.2f} s of rank-k update at "
              f"{floor_parts['gemm_flops'] / 1e9:.0f} GFLOP/s + {floor_parts['eigvalsh_s']:.2f} s eigvalsh; "
              f"top eigenvalue agrees to {rel:.1e}")
        if DEVICE.startswith("cuda"):
            flops = 2 * args.n * d * d / streaming
            print(f"    accumulation: {flops / 1e12:.2f} TFLOP/s = {flops / float64_matmul_rate(d, args.batch_size):.0%} of the float64 matmul rate")

if __name__ == "__main__":
    main()
