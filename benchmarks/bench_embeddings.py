"""Embeddings on disk: rows/s of ``collapse-probe embeddings`` against np.cov, IncrementalPCA and the floor,
and its peak memory from a small to a large input (issue 20.5).

On float32 ``.npy`` shards in the page cache (written, then read once before any clock starts),
each method in a fresh subprocess that reports its own time and peak resident memory:

* **ours**: ``read_part`` (the streaming pass: reader thread, chunks under the memory budget,
  ``CovarianceAccumulator.update`` in float64) then ``spectrum()`` (the eigen-solves), on the
  shards;
* **np.cov**: ``np.cov(np.load(all.npy, mmap_mode="r"), rowvar=False)`` + ``eigvalsh`` on one
  file of the same rows (numpy casts the whole array to float64: N d 8 bytes);
* **IncrementalPCA**: scikit-learn's ``partial_fit`` on chunks of ``--ipca-batch`` rows with
  ``n_components = d`` (the full spectrum), on the first ``--ipca-rows`` rows (it is slow);
* **the accumulator alone**: ``CovarianceAccumulator.update`` on the same number of float32 rows in
  memory (batches of 8192, no files, no reader thread): what reading from disk adds is the difference;
* **floor**: N d^2 flops (a symmetric rank-k update) at this machine's float64 GEMM rate, the
  best ``(B, d)^T (B, d)`` product at B = 1024, 4096, 8192 in the same kind of process.

Then the peak memory of the CLI (``collapse-probe embeddings FILE --quiet --out DIR``) at
``--memory-dim`` on a small file and on files of ``--memory-sizes`` GB, measured by
``/usr/bin/time -v`` (its "Maximum resident set size"): the acceptance test of issue 20 is a
2 GB input at d = 1024 exceeding the small one by at most 3 d^2 8 bytes + the budget + 200 MB.

    python benchmarks/bench_embeddings.py --dims 768 2048 --rows 200000 60000 --json bench_embeddings.json

Disk: about 2 x rows x d x 4 bytes per dimension plus the memory series; removed at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_rows(path: Path, rows: int, dim: int, seed: int, start: int = 0) -> None:
    """(rows, dim) float32 anisotropic Gaussian rows into a .npy, 50k rows at a time."""
    z = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    scales = np.geomspace(3.0, 0.01, dim).astype(np.float32)
    for lo in range(0, rows, 50_000):
        hi = min(lo + 50_000, rows)
        rng = np.random.default_rng([seed, start + lo])
        z[lo:hi] = rng.standard_normal((hi - lo, dim), dtype=np.float32) * scales
    z.flush()
    del z


def make_inputs(folder: Path, rows: int, dim: int, shards: int) -> tuple[list[Path], Path]:
    """``shards`` .npy shards and one ``all.npy`` of the same rows; both read once (page cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [rows * i // shards for i in range(shards + 1)]
    paths = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        path = folder / "shards" / f"emb_{i}.npy"
        path.parent.mkdir(exist_ok=True)
        write_rows(path, hi - lo, dim, seed=dim, start=lo)
        paths.append(path)
    whole = np.lib.format.open_memmap(folder / "all.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    for path, lo in zip(paths, bounds, strict=False):
        part = np.load(path, mmap_mode="r")
        whole[lo : lo + len(part)] = part
    whole.flush()
    del whole
    for path in [*paths, folder / "all.npy"]:  # warm the page cache
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    return paths, folder / "all.npy"


# ----------------------------------------------------------------------------- child processes


def _peak_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_ours(folder: str, budget: str) -> dict:
    from collapse_probe.embeddings import make_options, read_part

    baseline = _peak_bytes()
    start = time.perf_counter()
    state = read_part(folder, make_options(progress=False, memory_budget=budget))
    streamed = time.perf_counter()
    spectrum = state.spectrum()
    done = time.perf_counter()
    return {"rows": spectrum.n_samples, "stream_s": streamed - start, "total_s": done - start,
            "peak": _peak_bytes(), "baseline": baseline, "top": float(spectrum.eigenvalues[0])}


def child_npcov(path: str) -> dict:
    z = np.load(path, mmap_mode="r")
    baseline = _peak_bytes()
    start = time.perf_counter()
    cov = np.cov(z, rowvar=False)
    covared = time.perf_counter()
    eig = np.linalg.eigvalsh(cov)
    done = time.perf_counter()
    return {"rows": len(z), "stream_s": covared - start, "total_s": done - start, "peak": _peak_bytes(),
            "baseline": baseline, "top": float(eig[-1])}


def child_ipca(path: str, rows: int, batch: int) -> dict:
    from sklearn.decomposition import IncrementalPCA

    z = np.load(path, mmap_mode="r")
    rows = min(rows, len(z))
    pca = IncrementalPCA(n_components=min(z.shape[1], batch))
    baseline = _peak_bytes()
    start = time.perf_counter()
    for lo in range(0, rows - batch + 1, batch):
        pca.partial_fit(np.asarray(z[lo : lo + batch]))
    done = time.perf_counter()
    used = (rows // batch) * batch
    return {"rows": used, "stream_s": done - start, "total_s": done - start, "peak": _peak_bytes(),
            "baseline": baseline}


def child_update(rows: int, dim: int) -> dict:
    """The accumulator alone: the same float32 batches of 8192 rows from memory, no files, no thread."""
    import torch

    from collapse_probe.metrics.covariance import CovarianceAccumulator

    batch = torch.randn(8192, dim, dtype=torch.float32) * torch.logspace(0, -2, dim)
    accumulator = CovarianceAccumulator(dim)
    start = time.perf_counter()
    for lo in range(0, rows, 8192):
        accumulator.update(batch[: min(8192, rows - lo)])
    accumulator.finalize()
    return {"rows": rows, "stream_s": time.perf_counter() - start}


def child_gemm(dim: int) -> dict:
    import torch

    best = 0.0
    for rows in (1024, 4096, 8192):
        x = torch.randn(rows, dim, dtype=torch.float64)
        out = torch.empty(dim, dim, dtype=torch.float64)
        torch.mm(x.T, x, out=out)
        start = time.perf_counter()
        for _ in range(3):
            torch.mm(x.T, x, out=out)
        best = max(best, 2 * rows * dim * dim * 3 / (time.perf_counter() - start))
    return {"gemm_flops": best, "threads": torch.get_num_threads()}


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_peak(path: Path, out: Path, budget: str) -> tuple[int, float]:
    """``/usr/bin/time -v collapse-probe embeddings PATH``: (max RSS bytes, wall seconds)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "collapse_probe_cli.main", "embeddings", str(path),
               "--quiet", "--memory-budget", budget, "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    kilobytes = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return kilobytes * 1024, wall


# ----------------------------------------------------------------------------- the two measurements


def throughput(dims: list[int], rows: list[int], args: argparse.Namespace, root: Path) -> list[dict]:
    results = []
    for dim, n in zip(dims, rows, strict=True):
        folder = root / f"d{dim}"
        shards, whole = make_inputs(folder, n, dim, args.shards)
        gemm = run_child("gemm", str(dim))
        update = run_child("update", str(n), str(dim))
        ours = run_child("ours", str(folder / "shards"), args.budget)
        floor_rate = gemm["gemm_flops"] / dim**2
        row = {"dim": dim, "rows": n, "gigabytes": n * dim * 4 / 1e9, "gemm_gflops": gemm["gemm_flops"] / 1e9,
               "threads": gemm["threads"], "floor_rows_s": floor_rate, "update_only_rows_s": n / update["stream_s"],
               "ours_rows_s": n / ours["stream_s"], "ours_total_rows_s": n / ours["total_s"],
               "ours_peak_mb": (ours["peak"] - ours["baseline"]) / 1e6}
        if not args.skip_baselines:
            npcov = run_child("npcov", str(whole))
            ipca = run_child("ipca", str(whole), str(args.ipca_rows), str(args.ipca_batch))
            row |= {"npcov_rows_s": n / npcov["stream_s"], "npcov_total_rows_s": n / npcov["total_s"],
                    "ipca_rows_s": ipca["rows"] / ipca["stream_s"], "ipca_rows": ipca["rows"],
                    "npcov_peak_mb": (npcov["peak"] - npcov["baseline"]) / 1e6,
                    "top_relative_difference": abs(ours["top"] - npcov["top"]) / npcov["top"]}
        results.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(folder)
    return results


def memory_series(args: argparse.Namespace, root: Path) -> list[dict]:
    dim = args.memory_dim
    series: list[dict] = []
    if not args.memory_sizes:
        return series
    sizes = [0.001, *args.memory_sizes]
    for gigabytes in sizes:
        rows = max(dim + 2, int(gigabytes * 1e9 / (4 * dim)))
        path = root / f"memory_{gigabytes:g}GB.npy"
        write_rows(path, rows, dim, seed=7)
        peak, wall = cli_peak(path, root / "out", args.budget)
        entry = {"dim": dim, "gigabytes": rows * dim * 4 / 1e9, "rows": rows, "peak_mb": peak / 1e6, "wall_s": wall}
        series.append(entry)
        print(json.dumps(entry), flush=True)
        path.unlink()
    return series


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, rest = sys.argv[2], sys.argv[3:]
        functions = {"ours": lambda: child_ours(rest[0], rest[1]), "npcov": lambda: child_npcov(rest[0]),
                     "ipca": lambda: child_ipca(rest[0], int(rest[1]), int(rest[2])),
                     "gemm": lambda: child_gemm(int(rest[0])),
                     "update": lambda: child_update(int(rest[0]), int(rest[1]))}
        print(json.dumps(functions[mode]()))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 2048])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 60_000])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--budget", default="256MB")
    parser.add_argument("--ipca-rows", type=int, default=20_480)
    parser.add_argument("--ipca-batch", type=int, default=4096)
    parser.add_argument("--memory-dim", type=int, default=1024)
    parser.add_argument("--memory-sizes", type=float, nargs="*", default=[0.5, 2.0])
    parser.add_argument("--dir", default=None, help="Scratch folder [default: a new one under the temp folder].")
    parser.add_argument("--skip-baselines", action="store_true", help="Only ours, the accumulator alone and the floor.")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="cp_bench_embeddings_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        report = {"throughput": throughput(args.dims, args.rows, args, root),
                  "memory": memory_series(args, root), "load_average_after": os.getloadavg(),
                  "budget": args.budget}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {report['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
