"""The probe's statistics on one device: CovarianceAccumulator.update against the float64 GEMM rate.

The issue's first GPU target: accumulating N = 50,000 rows of d = 2048 at >= 50% of the card's
float64 matrix-multiply rate. Measured here apart from everything else, on the same device and
in the same process: the batches are generated on the device before the clock starts (a few
distinct ones, cycled), the update loop is timed alone (one device sync at its end), then
``finalize`` + the eigen-solve, and the float64 rate of the same-shaped product
``(B + 1, d)^T (B + 1, d)`` that each update does (its flops: 2 (B + 1) d^2 per batch; on a CPU,
whose update skips the upper blocks, that count is GEMM-equivalent).

    python benchmarks/bench_accumulate.py --device cuda --n 50000 --dim 2048 --json accumulate.json

``bench_core.py`` compares the whole job (generation, accumulation and solve) with the naive way.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from collapse_probe import CovarianceAccumulator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(rows: int, d: int, device: torch.device, repeats: int) -> float:
    """FLOP/s of ``x^T x`` for a (rows, d) float64 ``x`` into a preallocated (d, d) output."""
    x = torch.randn(rows, d, dtype=torch.float64, device=device)
    out = torch.empty(d, d, dtype=torch.float64, device=device)
    for _ in range(3):
        torch.mm(x.T, x, out=out)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(x.T, x, out=out)
    _sync(device)
    return 2 * rows * d * d * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"],
                        help="embedding dtype fed to update()")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=str)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    scales = torch.logspace(0, -4, args.dim, device=device)
    distinct = [(torch.randn(args.batch_size, args.dim, generator=generator, device=device) * scales + 1.0).to(dtype)
                for _ in range(8)]
    n_batches = -(-args.n // args.batch_size)
    batches = [distinct[i % len(distinct)] for i in range(n_batches)]
    n = n_batches * args.batch_size

    update_s = solve_s = float("inf")
    for attempt in range(max(1, args.repeats) + 1):  # the first pass (allocator, cuBLAS handle, cuSOLVER) is not kept
        acc = CovarianceAccumulator(args.dim, device=device)
        _sync(device)
        start = time.perf_counter()
        for z in batches:
            acc.update(z)
        _sync(device)
        middle = time.perf_counter()
        acc.compute()
        end = time.perf_counter()
        if attempt:
            update_s, solve_s = min(update_s, middle - start), min(solve_s, end - middle)
    rows = args.batch_size + 1
    rate = max(gemm_rate(rows, args.dim, device, max(5, 20 * 256 // rows)),
               gemm_rate(4096, args.dim, device, 5))
    flops = 2 * rows * args.dim ** 2 * n_batches
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n": n, "dim": args.dim, "batch_size": args.batch_size, "input_dtype": args.dtype, "repeats": args.repeats,
        "update_seconds": update_s, "compute_seconds": solve_s,
        "update_tflops": flops / update_s / 1e12, "gemm_float64_tflops": rate / 1e12,
        "fraction_of_gemm_rate": flops / update_s / rate,
    }
    print(f"N={n} d={args.dim} batch {args.batch_size} ({args.dtype}) on {result['device']}: update loop "
          f"{1e3 * update_s:.1f} ms = {result['update_tflops']:.2f} TFLOP/s, {result['fraction_of_gemm_rate']:.0%} of "
          f"the float64 GEMM rate ({result['gemm_float64_tflops']:.2f} TFLOP/s); compute() {1e3 * solve_s:.1f} ms")
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
