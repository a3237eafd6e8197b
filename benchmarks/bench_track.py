"""`collapse-probe track` over K checkpoints against K `collapse-probe spectrum` calls, in one run.

The run: K trainer-format checkpoints of the trainer's small CNN (``smallcnn``, seeded random
weights, an MLP projector; both layers probed), N generated JPEGs of 500 x 375 (like ImageNet val)
in 10 class folders, probed at the checkpoints' training size (crop 32, resize 36), batch 64.

Two comparisons, each side timed from outside as a user meets it:

* **CLI**: one fresh ``collapse-probe track DIR`` process against K fresh ``collapse-probe
  spectrum CKPT`` processes (the shell loop the issue describes);
* **library**: ``track()`` against K ``probe_checkpoint()`` calls in one process (no start-up
  cost on either side: the decode saving alone).

Track's own timings say how its time splits: one decode, K loads, K forward passes. The spectra of
both sides are compared (they must be equal). Prints a markdown table; ``--json-out`` keeps it.

    python benchmarks/bench_track.py                        # 10 checkpoints, 2,000 images
    python benchmarks/bench_track.py --checkpoints 3 --n-images 200 --workers 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, width: int = 500, height: int = 375) -> Path:
    """n smooth random JPEGs in 10 class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        noise = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)) // 2 + noise
        Image.fromarray(image).save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def make_checkpoints(root: Path, k: int, width: int, image_size: int) -> list[Path]:
    """K trainer checkpoints (epoch i, step 100 i) of a smallcnn + MLP projector, seeds 1..K."""
    from collapse_probe.ssl.checkpoint import save_checkpoint
    from collapse_probe.ssl.config import TrainConfig
    from collapse_probe.ssl.model import build_model

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch in range(1, k + 1):
        config = TrainConfig(arch="smallcnn", width=width, projector="mlp", projector_dim=64, image_size=image_size,
                             data="builtin:digits", seed=epoch)
        model, arch = build_model(config)
        path = root / f"epoch_{epoch:04d}.pt"
        save_checkpoint(path, {"arch": arch, "config": config.to_dict(), "model": model.state_dict(),
                               "epoch": epoch, "step": 100 * epoch})
        paths.append(path)
    return paths


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def cli_times(checkpoints: list[Path], data: Path, work: Path, args: list[str]) -> dict[str, float]:
    """Seconds of one `track` process and of K `spectrum` processes (fresh output folders)."""
    probe = [sys.executable, "-m", "collapse_probe_cli.main"]
    spectrum_s = sum(_run([*probe, "spectrum", str(c), "--data", str(data), *args, "--out", str(work / f"s{i}")])
                     for i, c in enumerate(checkpoints))
    out = work / "track_cli"
    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: every checkpoint is probed
    track_s = _run([*probe, "track", str(checkpoints[0].parent), "--data", str(data), *args, "--out", str(out)])
    return {"cli_spectrum_s": spectrum_s, "cli_track_s": track_s}


def library_times(checkpoints: list[Path], data: Path, work: Path, batch_size: int, workers: int) -> dict:
    """Seconds of `track()` and of K `probe_checkpoint()` calls in this process, and track's split."""
    from collapse_probe.pipeline.checkpoints import DataConfig, ProbeConfig, probe_checkpoint
    from collapse_probe.pipeline.track import track
    from collapse_probe.probe.options import ProbeOptions

    config = ProbeConfig(DataConfig(str(data), batch_size=batch_size, workers=workers), ProbeOptions(progress=False))
    start = time.perf_counter()
    references = [probe_checkpoint(c, config) for c in checkpoints]
    spectrum_s = time.perf_counter() - start
    shutil.rmtree(work / "track_lib", ignore_errors=True)
    start = time.perf_counter()
    trajectory = track([checkpoints[0].parent], config, out=work / "track_lib", log=lambda _: None)
    track_s = time.perf_counter() - start
    worst = max(float((e.result.spectra[layer].eigenvalues - ref.spectra[layer].eigenvalues).abs().max()
                      / ref.spectra[layer].eigenvalues.max())
                for e, ref in zip(trajectory.checkpoints, references, strict=True) for layer in ref.spectra)
    return {"lib_spectrum_s": spectrum_s, "lib_track_s": track_s, "max_rel_eigenvalue_diff": worst,
            **{f"track_{k}": v for k, v in trajectory.timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--width", type=int, default=32, help="smallcnn width (representation 4 x width)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-cli", action="store_true", help="only the in-process comparison")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the sides this many times; best and median")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        data = make_folder(work / "images", args.n_images)
        checkpoints = make_checkpoints(work / "checkpoints", args.checkpoints, args.width, args.image_size)
        print(f"made {args.n_images} JPEGs and {args.checkpoints} checkpoints in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        probe_args = ["--batch-size", str(args.batch_size), "--workers", str(args.workers), "--quiet"]
        row = {"n_images": args.n_images, "checkpoints": args.checkpoints, "width": args.width,
               "image_size": args.image_size, "workers": args.workers, "machine": platform.machine(),
               "cores": os.cpu_count(), "load_avg_1m_before": os.getloadavg()[0]}
        runs = []
        for _ in range(args.repeats):  # the sides alternate, so a change of load hits both
            run = library_times(checkpoints, data, work, args.batch_size, args.workers)
            if not args.skip_cli:
                run |= cli_times(checkpoints, data, work, probe_args)
            runs.append(run)
        row["runs"] = runs
        row["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(row))
    if args.json_out:
        args.json_out.write_text(json.dumps(row) + "\n")
    report(row, args.checkpoints)


def report(row: dict, k: int) -> None:
    """The markdown table: each side's best and median over the repeats, the speed-up of the bests."""
    runs = row["runs"]

    def side(key: str) -> tuple[float, float]:
        values = [r[key] for r in runs]
        return min(values), statistics.median(values)

    print(f"\n| comparison | {k} x spectrum: best (median) | track: best (median) | speed-up, best |\n|---|---:|---:|---:|")
    for name, prefix in (("CLI processes", "cli"), ("library, one process", "lib")):
        if f"{prefix}_track_s" in runs[0]:
            (s_best, s_med), (t_best, t_med) = side(f"{prefix}_spectrum_s"), side(f"{prefix}_track_s")
            print(f"| {name} | {s_best:.1f} s ({s_med:.1f}) | {t_best:.1f} s ({t_med:.1f}) | {s_best / t_best:.1f}x |")
    for r in runs:
        print(f"track's split: decode {r['track_decode_s']:.1f} s (once), forward {r['track_forward_s']:.1f} s "
              f"({k} passes), load {r['track_load_s']:.1f} s; eigenvalues equal to spectrum's within "
              f"{r['max_rel_eigenvalue_diff']:.1e} of the largest")


if __name__ == "__main__":
    main()
