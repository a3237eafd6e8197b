"""How many samples each metric needs: the metrics of isotropic Gaussian data against N / d.

For isotropic data (covariance = identity) every rank metric's true value is d: effective rank,
RankMe, numerical rank, stable rank and participation ratio all equal d on the population
covariance. A finite sample spreads the eigenvalues (Marchenko-Pastur), so each metric falls
short of d by an amount that shrinks as N / d grows; at N - 1 < d the samples cannot show every
dimension at all. This measures the shortfall (mean of value / d over seeds, and the spread
across seeds) with collapse-probe's own Spectrum.from_embeddings, in float64.

    python benchmarks/bench_sample_size.py --dims 128 512 --ratios 0.5 1 2 5 10 50 --seeds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from collapse_probe.results.spectrum import Spectrum

METRICS = ("effective_rank", "rankme", "numerical_rank", "stable_rank", "participation_ratio")


def measure(d: int, ratio: float, seed: int) -> dict[str, float]:
    n = max(2, round(ratio * d))
    generator = torch.Generator().manual_seed(1000 * d + seed)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    s = Spectrum.from_embeddings(z)
    values = {"effective_rank": s.effective_rank, "rankme": s.rankme, "numerical_rank": float(s.numerical_rank()),
              "stable_rank": s.stable_rank, "participation_ratio": s.participation_ratio}
    return {k: v / d for k, v in values.items()} | {"n": n, "max_rank": s.max_rank}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 1, 2, 5, 10, 50])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; isotropic N(0, I_d) data, float64, {args.seeds} seeds")
    print("| d | N | N / d | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    start = time.perf_counter()
    for d in args.dims:
        for ratio in args.ratios:
            rows = [measure(d, ratio, seed) for seed in range(args.seeds)]
            cells = []
            for metric in METRICS:
                values = np.array([r[metric] for r in rows])
                cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}")
            print(f"| {d} | {rows[0]['n']} | {ratio:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"# values are metric / d (1.000 = the population value d); mean ± std over seeds; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
