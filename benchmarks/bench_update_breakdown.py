"""Where the streaming path's time goes: GEMMs, per-row passes, staging and the eigen-solves.

Same deterministic stream as ``bench_core.py``; each part is timed apart in one process (best of
``--repeats``): the full update loop, the same loop with the rank-k GEMM skipped, the loop without
staging (one merge per batch), and ``solve_spectra`` on the finalised moments.

    python benchmarks/bench_update_breakdown.py --n 50000 --dims 512 2048
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_core import batches

from collapse_probe import CovarianceAccumulator
from collapse_probe.metrics.solve import solve_spectra


def timed_update(stream: list[torch.Tensor], d: int, *, gemm: bool, staging: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        accumulator = CovarianceAccumulator(d)
        if not staging:
            accumulator._stage_capacity = 0
        if not gemm:
            accumulator._rank_update.add_gram_ = lambda m2, rows: None
        start = time.perf_counter()
        for batch in stream:
            accumulator.update(batch)
        accumulator.state_dict()  # flushes what is staged
        best = min(best, time.perf_counter() - start)
    return best


def timed_solve(stream: list[torch.Tensor], d: int, repeats: int) -> float:
    accumulator = CovarianceAccumulator(d)
    for batch in stream:
        accumulator.update(batch)
    best = float("inf")
    for _ in range(repeats):
        moments = accumulator.finalize()
        start = time.perf_counter()
        solve_spectra([moments])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={args.n}, batch {args.batch_size}, "
          f"best of {args.repeats}")
    print("| d | update (s) | of which GEMMs (s) | other passes (s) | update without staging (s) | solve (s) |")
    print("|---|---|---|---|---|---|")
    for d in args.dims:
        stream = list(batches(args.n, d, args.batch_size))
        full = timed_update(stream, d, gemm=True, staging=True, repeats=args.repeats)
        no_gemm = timed_update(stream, d, gemm=False, staging=True, repeats=args.repeats)
        unstaged = timed_update(stream, d, gemm=True, staging=False, repeats=args.repeats)
        solve = timed_solve(stream, d, args.repeats)
        print(f"| {d} | {full:.3f} | {full - no_gemm:.3f} | {no_gemm:.3f} | {unstaged:.3f} | {solve:.3f} |")


if __name__ == "__main__":
    main()
