"""Eigen-solver choices, measured side by side on one machine.

* eigvalsh vs svdvals of a d x d float64 covariance (why the library uses eigvalsh);
* one batched eigvalsh of k matrices vs k single calls (what solve_spectra does);
* float64 vs float32 eigvalsh.

    python benchmarks/bench_solve.py --dims 128 512 2048 --batch 16
"""

from __future__ import annotations

import argparse
import time

import torch


def covariance(d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * d, d, generator=generator, dtype=torch.float64)
    return (z.T @ z / (2 * d)).to(dtype)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
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


if __name__ == "__main__":
    main()
