"""Bounded memory: the peak RSS on a 300 MB file exceeds that on a small one by at most the budget,
the d x d float64 matrices and a margin, far less than the file (a whole load, or a memory map's
touched pages, would add all of it)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

SCRIPT = """
import resource, sys
from collapse_probe.embeddings import embeddings_spectrum
s = embeddings_spectrum(sys.argv[1], progress=False, memory_budget=sys.argv[2])
print(s.n_samples, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak(path, budget: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path), budget], capture_output=True, text=True,
                          check=True)
    rows, peak = done.stdout.split()
    return int(rows), int(peak)


def _write(path, rows: int, dim: int) -> None:
    z = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, 50_000):
        stop = min(start + 50_000, rows)
        z[start:stop] = np.random.default_rng(start).standard_normal((stop - start, dim), dtype=np.float32)
    z.flush()
    del z


def test_peak_memory_does_not_grow_with_the_input(tmp_path):
    dim, budget = 256, 32 * 10**6
    _write(tmp_path / "small.npy", 2_000, dim)
    _write(tmp_path / "large.npy", 300_000, dim)  # 307 MB
    small_rows, small = _peak(tmp_path / "small.npy", "32MB")
    large_rows, large = _peak(tmp_path / "large.npy", "32MB")
    assert (small_rows, large_rows) == (2_000, 300_000)
    allowed = budget + 3 * dim * dim * 8 + 100 * 10**6
    assert large - small <= allowed, f"peak grew by {(large - small) / 1e6:.0f} MB (allowed {allowed / 1e6:.0f} MB)"
