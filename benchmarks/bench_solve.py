"""Eigen-solver choices, measured side by side on one machine.

* eigvalsh vs svdvals of a d x d float64 covariance (why the library uses eigvalsh);
* one batched eigvalsh of k matrices vs k single calls (what solve_spectra does);
* float64 vs float32 eigvalsh;
* a fresh process's first solve on 1 vs 2 threads (why CPU solves run single-threaded; CPU only).

    python benchmarks/bench_solve.py --dims 128 512 2048 --batch 16
    python benchmarks/bench_solve.py --dims 128 512 2048 --batch 16 --device cuda --json solve.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

DEVICE = torch.device("cpu")


def covariance(d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * d, d, generator=generator, dtype=torch.float64)
    return (z.T @ z / (2 * d)).to(DEVICE, dtype)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, repeats: int) -> float:
    fn()  # first call (cuSOLVER / MKL start-up) untimed
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return min(times)


FIRST_CALL = """
import time, torch
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
z = torch.randn(2 * {d}, {d}, generator=g, dtype=torch.float64)
c = torch.stack([z.T @ z, z.T @ z + 1])
t0 = time.perf_counter(); torch.linalg.eigvalsh(c); t1 = time.perf_counter(); torch.linalg.eigvalsh(c)
print(t1 - t0, time.perf_counter() - t1)
"""


def first_call_seconds(d: int, threads: int) -> tuple[float, float]:
    """(first, second) stacked solve of two d x d matrices in a fresh process."""
    out = subprocess.run([sys.executable, "-c", FIRST_CALL.format(d=d, threads=threads)],
                         check=True, capture_output=True, text=True)
    first, second = out.stdout.split()
    return float(first), float(second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where the solves run (the first-call table is CPU only)")
    parser.add_argument("--no-first-call", action="store_true", help="skip the fresh-process first-call table")
    parser.add_argument("--json", type=str, help="write the rows here")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    rows = []
    print(f"| d | eigvalsh f64 (ms) | svdvals f64 (ms) | svd/eig | eigvalsh f32 (ms) | batched x{args.batch} (ms) | looped x{args.batch} (ms) | looped/batched |")
    print("|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        c = covariance(d, 0)
        c32 = c.float()
        eig = best_of(lambda c=c: torch.linalg.eigvalsh(c), args.repeats)
        svd = best_of(lambda c=c: torch.linalg.svdvals(c), args.repeats)
        eig32 = best_of(lambda c32=c32: torch.linalg.eigvalsh(c32), args.repeats)
        k = args.batch if d <= 512 else max(2, args.batch // 8)
        stack = torch.stack([covariance(d, s) for s in range(k)])
        batched = best_of(lambda stack=stack: torch.linalg.eigvalsh(stack), args.repeats)
        looped = best_of(lambda stack=stack: [torch.linalg.eigvalsh(m) for m in stack], args.repeats)
        print(f"| {d} | {1e3 * eig:.1f} | {1e3 * svd:.1f} | {svd / eig:.1f}x | {1e3 * eig32:.1f} | {1e3 * batched:.1f} (k={k}) | {1e3 * looped:.1f} | {looped / batched:.2f}x |")
        rows.append({"d": d, "eigvalsh_f64_ms": 1e3 * eig, "svdvals_f64_ms": 1e3 * svd, "svd_over_eig": svd / eig,
                     "eigvalsh_f32_ms": 1e3 * eig32, "k": k, "batched_ms": 1e3 * batched, "looped_ms": 1e3 * looped,
                     "looped_over_batched": looped / batched})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "repeats": args.repeats, "rows": rows}, f, indent=1)
    if args.no_first_call or DEVICE.type != "cpu":
        return
    print("\nFresh process, two stacked d x d float64 matrices (solve_spectra's covariance + Gram pair):")
    print("| d | 1 thread: first / second call (ms) | 2 threads: first / second call (ms) |")
    print("|---|---|---|")
    for d in args.dims:
        one = min((first_call_seconds(d, 1) for _ in range(args.repeats)), key=lambda t: t[0])
        two = min((first_call_seconds(d, 2) for _ in range(args.repeats)), key=lambda t: t[0])
        print(f"| {d} | {1e3 * one[0]:.0f} / {1e3 * one[1]:.0f} | {1e3 * two[0]:.0f} / {1e3 * two[1]:.0f} |")


if __name__ == "__main__":
    main()
