"""Token rows and class statistics against pooled rows of the same d, measured side by side.

Issue 18's goals: N*T token rows cost at most 1.1x what N*T pooled rows cost (tokens need no
copy per row); the per-class update at K = 10 at most 1.5x the pooled one; the within/between
statistics at K = 1,000 at most 1.3x. Each case streams the same rows through ``spectrum``
(an ``nn.Identity`` model, so only the statistics are timed); the best of ``--repeats`` runs.

    python benchmarks/bench_rows.py --rows 200000 --dim 256
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from collapse_probe import spectrum


def _best(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=50, help="tokens per input")
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    n, d, t = args.rows, args.dim, args.tokens
    flat = torch.randn(n, d, generator=generator)
    per_batch = (args.batch_rows // t) * t  # whole inputs per batch
    pooled_batches = [flat[i:i + per_batch] for i in range(0, n, per_batch)]
    token_batches = [b.reshape(-1, t, d) for b in pooled_batches if b.shape[0] % t == 0]
    token_rows = sum(b.shape[0] * b.shape[1] for b in token_batches)
    pooled_same = [flat[i:i + per_batch] for i in range(0, token_rows, per_batch)]
    labels10 = torch.randint(0, 10, (n,), generator=generator)
    labels1000 = torch.randint(0, 1000, (n,), generator=generator)
    with10 = [(b, labels10[i:i + per_batch]) for b, i in zip(pooled_batches, range(0, n, per_batch), strict=True)]
    with1000 = [(b, labels1000[i:i + per_batch]) for b, i in zip(pooled_batches, range(0, n, per_batch), strict=True)]
    model = nn.Identity()
    cases = {
        "pooled rows": lambda: spectrum(model, pooled_batches, progress=False),
        "pooled rows (token count)": lambda: spectrum(model, pooled_same, progress=False),
        "token rows (tokens='all')": lambda: spectrum(model, token_batches, tokens="all", progress=False),
        "per-class K=10": lambda: spectrum(model, with10, per_class=True, progress=False),
        "class scatter K=1000": lambda: spectrum(model, with1000, class_scatter=True, progress=False),
    }
    times = {name: _best(run, args.repeats) for name, run in cases.items()}
    from collapse_probe.metrics.classes import ClassAccumulator
    from collapse_probe.metrics.covariance import CovarianceAccumulator

    def updates(make, batches):  # the streamed updates alone, without the eigen-solves at the end
        def run():
            accumulator = make()
            for batch in batches:
                accumulator.update(*batch) if isinstance(batch, tuple) else accumulator.update(batch)
            accumulator._fold_local() if hasattr(accumulator, "_fold_local") else accumulator.finalize()
        return run

    def classes(per_class, scatter):
        return lambda: ClassAccumulator(d, lambda label: CovarianceAccumulator(d), per_class=per_class, scatter=scatter)

    update_cases = {
        "update: pooled": updates(lambda: CovarianceAccumulator(d), pooled_batches),
        "update: per-class K=10": updates(classes(True, False), with10),
        "update: scatter K=1000": updates(classes(False, True), with1000),
    }
    times |= {name: _best(run, args.repeats) for name, run in update_cases.items()}
    print(f"rows={n} d={d} tokens/input={t} batch rows={per_batch} threads={torch.get_num_threads()}")
    for name, seconds in times.items():
        print(f"{name:28s} {seconds:8.3f} s")
    print(f"token rows / pooled rows (same count): {times['token rows (tokens=' + chr(39) + 'all' + chr(39) + ')'] / times['pooled rows (token count)']:.2f}x (goal <= 1.1x)")
    print(f"per-class K=10 / pooled:               {times['per-class K=10'] / times['pooled rows']:.2f}x (goal <= 1.5x)")
    print(f"class scatter K=1000 / pooled:         {times['class scatter K=1000'] / times['pooled rows']:.2f}x (goal <= 1.3x)")
    print("the updates alone (the K per-class eigen-solves left out):")
    print(f"  per-class K=10 / pooled:             {times['update: per-class K=10'] / times['update: pooled']:.2f}x (goal <= 1.5x)")
    print(f"  scatter K=1000 / pooled:             {times['update: scatter K=1000'] / times['update: pooled']:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
