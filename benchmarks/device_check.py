"""Helpers of ``benchmarks/device_check.sh``: test images, one step's record, and the results JSON.

    python benchmarks/device_check.py images DIR --n 5000 [--width 500 --height 375]
    python benchmarks/device_check.py record STEPS_JSONL NAME EXIT_CODE SECONDS BUDGET -- COMMAND...
    python benchmarks/device_check.py report OUT_DIR [--dry-run]

``report`` reads what each step left in OUT_DIR (``steps.jsonl``, the ``--json`` files the
benchmarks wrote, each step's captured output, pytest's JUnit XML) and writes
``OUT_DIR/results.json``: every step (command, exit code, seconds, status, parsed figures) and
the issue's targets as ratios with whether each is met. Standard library only, apart from
``images`` (numpy + PIL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

FORMAT = "collapse-probe/device-check-v1"

#: The issue's targets (issue 12): name -> (what, step that measures it, comparison, bound).
TARGETS = {
    "statistics_fraction_of_float64_gemm": (
        "CovarianceAccumulator.update rate (N = 50,000, d = 2048) as a fraction of the card's float64 GEMM rate",
        "accumulate", ">=", 0.5),
    "probe_overhead_4_layers": (
        "spectrum() on 4 ResNet-50 layers over a bare bf16 inference loop on the same pre-loaded batches, minus 1",
        "probe_overhead", "<", 0.03),
    "cli_speedup_vs_hand_written": (
        "collapse-probe spectrum images/s over the hand-written way (ImageFolder + PIL + DataLoader, numpy cov + SVD)",
        "cli_images", ">=", 2.0),
    "cli_fraction_of_bare_forward": (
        "collapse-probe spectrum images/s (5,000 JPEGs, end to end) over the bare bf16 forward rate on "
        "pre-decoded tensors (probe_overhead's bare loop)",
        "cli_images", ">=", 0.7),
    "train_step_fraction_of_ceiling": (
        "training step images/s with device augmentation over the same step on ready-made random tensors",
        "train_ceiling", ">=", 0.8),
}


# ------------------------------------------------------------------------------------------ images


def _write_images(job: tuple[str, list[int], int, int]) -> int:
    import numpy as np
    from PIL import Image

    root, indices, width, height = job
    for i in indices:
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        noise = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)) // 2 + noise
        folder = Path(root) / f"class{i % 10}"
        Image.fromarray(image).save(folder / f"{i:06d}.JPEG", quality=90)
    return len(indices)


def make_images(root: Path, n: int, width: int, height: int, workers: int) -> int:
    """``n`` ImageNet-sized JPEGs (smooth colour fields + noise, as bench_cli_images makes them) in
    10 class folders, written by ``workers`` processes."""
    from multiprocessing import Pool

    for c in range(min(10, n)):  # ImageFolder refuses an empty class folder
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers, n))
    jobs = [(str(root), list(range(w, n, workers)), width, height) for w in range(workers)]
    if workers == 1:
        return sum(map(_write_images, jobs))
    with Pool(workers) as pool:
        return sum(pool.map(_write_images, jobs))


# ------------------------------------------------------------------------------------------ record


def record(steps: Path, name: str, code: int, seconds: float, budget: float, command: list[str]) -> None:
    status = "ok" if code == 0 else "timed out" if code in (124, 137) else "skipped" if code == -1 else "failed"
    row = {"name": name, "command": shlex.join(command), "exit_code": code, "seconds": round(seconds, 2),
           "budget_s": budget, "status": status, "output": f"{name}.out"}
    with open(steps, "a") as f:
        f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------ parsing


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pytest_figures(out: Path) -> dict | None:
    try:
        root = ET.parse(out / "pytest_cuda.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                              if case.find("failure") is not None or case.find("error") is not None]
    return counts


def _core_figures(out: Path) -> dict | None:
    """bench_core.py prints a markdown table (and, on CUDA, an ``accumulation:`` line per d)."""
    try:
        text = (out / "core.out").read_text()
    except OSError:
        return None
    rows = []
    number = r"(-?[\d.]+(?:e[-+]?\d+)?)"
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 9 and cells[0].isdigit():
            values = [float(re.sub(r"x$", "", c)) if re.fullmatch(number + "x?", c) else None for c in cells[1:9]]
            keys = ("naive_s", "streaming_s", "floor_s", "streaming_over_floor", "naive_over_streaming",
                    "naive_peak_mib", "streaming_peak_mib", "memory_ratio")
            rows.append({"d": int(cells[0]), **dict(zip(keys, values, strict=True))})
        match = re.search(r"accumulation: " + number + r" TFLOP/s = " + number + "%", line)
        if match and rows:
            rows[-1]["accumulation_tflops"] = float(match.group(1))
            rows[-1]["accumulation_fraction_of_matmul"] = float(match.group(2)) / 100
    return {"rows": rows} if rows else None


def _cli_figures(out: Path) -> dict | None:
    try:
        rows = [json.loads(line) for line in (out / "cli_images.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    by_method = {row["method"]: row for row in rows}
    if {"hand-written", "collapse-probe"} - set(by_method):
        return None
    return {"rows": rows, "images": by_method["collapse-probe"]["images"],
            "hand_written_images_per_s": by_method["hand-written"]["images_per_s"],
            "collapse_probe_images_per_s": by_method["collapse-probe"]["images_per_s"],
            "max_rel_diff_top50_eigenvalues": by_method["collapse-probe"]["max_rel_diff_top50_eigenvalues"]}


def _figures(out: Path) -> dict[str, dict | None]:
    return {
        "environment": _load(out / "environment.json"),
        "pytest_cuda": _pytest_figures(out),
        "accumulate": _load(out / "accumulate.json"),
        "core": _core_figures(out),
        "solve": _load(out / "solve.json"),
        "probe_overhead": _load(out / "probe_overhead.json"),
        "cli_images": _cli_figures(out),
        "train_ceiling": _load(out / "train_ceiling.json"),
    }


def _target_values(figures: dict[str, dict | None]) -> dict[str, float | None]:
    acc, probe, cli, train = (figures.get(k) for k in ("accumulate", "probe_overhead", "cli_images", "train_ceiling"))
    return {
        "statistics_fraction_of_float64_gemm": acc and acc.get("fraction_of_gemm_rate"),
        "probe_overhead_4_layers": probe and probe.get("overhead_4_layers"),
        "cli_speedup_vs_hand_written": cli and cli["collapse_probe_images_per_s"] / cli["hand_written_images_per_s"],
        "cli_fraction_of_bare_forward": (cli and probe and cli["collapse_probe_images_per_s"]
                                         / probe["bare_images_per_s"]),
        "train_step_fraction_of_ceiling": train and train.get("ratio"),
    }


def report(out: Path, dry_run: bool, budget: float, started: float) -> dict:
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "steps.jsonl").exists() else []
    figures = _figures(out)
    for step in steps:
        step["figures"] = figures.get(step["name"])
    values = _target_values(figures)
    targets = []
    for name, (what, step, comparison, bound) in TARGETS.items():
        value = values[name]
        met = None if value is None else (value >= bound if comparison == ">=" else value < bound)
        targets.append({"name": name, "what": what, "step": step, "value": value, "target": f"{comparison} {bound}",
                        "met": met})
    failed = [s["name"] for s in steps if s["status"] not in ("ok", "skipped")]
    result = {
        "format": FORMAT,
        "dry_run": dry_run,
        "note": ("dry run: toy sizes on the CPU; these figures test the script's plumbing and mean nothing"
                 if dry_run else "measured on the machine named in environment"),
        "ok": not failed and bool(steps),
        "failed_steps": failed,
        "seconds_total": round(time.time() - started, 1),
        "budget_s": budget,
        "environment": figures["environment"],
        "steps": steps,
        "targets": targets,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def summary_lines(result: dict) -> list[str]:
    lines = [f"device check {'(DRY RUN) ' if result['dry_run'] else ''}{'OK' if result['ok'] else 'FAILED'} "
             f"in {result['seconds_total']:.0f} s"]
    for step in result["steps"]:
        lines.append(f"  {step['name']:<15} {step['status']:<9} exit {step['exit_code']:>3}  {step['seconds']:7.1f} s")
    for target in result["targets"]:
        value = "n/a" if target["value"] is None else f"{target['value']:.3f}"
        met = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"  target {target['name']:<38} {value:>8} ({target['target']}): {met}")
    return lines


def environment(path: Path) -> None:
    """Machine facts for the results JSON (imports torch)."""
    import torch

    cuda = torch.cuda.is_available()
    facts = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
             "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
             "device_name": torch.cuda.get_device_name(0) if cuda else None,
             "device_count": torch.cuda.device_count() if cuda else 0}
    try:
        import torchvision

        facts["torchvision"] = torchvision.__version__
    except ImportError:
        facts["torchvision"] = None
    path.write_text(json.dumps(facts, indent=1) + "\n")
    print(json.dumps(facts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("images")
    p.add_argument("root", type=Path)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p = sub.add_parser("environment")
    p.add_argument("path", type=Path)
    p.add_argument("--require-cuda", action="store_true")
    p = sub.add_parser("record")
    p.add_argument("steps", type=Path)
    p.add_argument("name")
    p.add_argument("code", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("budget", type=float)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("report")
    p.add_argument("out", type=Path)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget", type=float, default=0.0)
    p.add_argument("--started", type=float, default=time.time())
    args = parser.parse_args(argv)
    if args.command == "images":
        start = time.perf_counter()
        n = make_images(args.root, args.n, args.width, args.height, args.workers)
        print(f"wrote {n} JPEGs ({args.width} x {args.height}) under {args.root} in {time.perf_counter() - start:.1f} s")
    elif args.command == "environment":
        environment(args.path)
        import torch

        if args.require_cuda and not torch.cuda.is_available():
            print("no CUDA GPU visible to torch: run with --dry-run on a CPU machine", file=sys.stderr)
            return 3
    elif args.command == "record":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        record(args.steps, args.name, args.code, args.seconds, args.budget, cmd)
    else:
        result = report(args.out, args.dry_run, args.budget, args.started)
        print("\n".join(summary_lines(result)))
        return 0 if result["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
