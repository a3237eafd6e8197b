"""Startup of the CLI: wall time (best and median of --repeat fresh processes), peak memory, and the
modules imported (`python -X importtime`) for `--help`, `--version` and a few commands' `--help`.

    python benchmarks/bench_startup.py --repeat 5 [--json]

Run it from any folder; it measures whichever collapse_probe_cli / collapse_probe import (set
PYTHONPATH to a checkout of an older commit to measure that one).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = (["--help"], ["--version"], ["spectrum", "--help"], ["train", "--help"], ["theory", "strong-aug", "--help"])
CODE = "import sys; from collapse_probe_cli.main import main; main(sys.argv[1:])"
HEAVY = ("torch", "pandas", "matplotlib", "scipy")


def measure(case: list[str], repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CODE, *case], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", CODE, *case], capture_output=True, text=True,
                          check=True)
    rows = [line.split("|") for line in done.stderr.splitlines()
            if line.startswith("import time:") and line.split("|")[1].strip().isdigit()]
    names = {row[-1].strip(): int(row[1]) for row in rows if len(row) == 3}
    return {
        "command": " ".join(["collapse-probe", *case]), "best_s": min(times), "median_s": statistics.median(times),
        "modules_imported": len(names), "heavy_imported": [m for m in HEAVY if m in names],
        "import_time_total_s": sum(int(row[0].split(":")[1]) for row in rows if len(row) == 3) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(case, args.repeat) for case in CASES]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"results": results, "peak_rss_mb_any_run": peak_mb}, indent=1))
        return
    for r in results:
        print(f"{r['command']:<45} best {r['best_s']:.2f} s  median {r['median_s']:.2f} s  "
              f"{r['modules_imported']} modules  heavy: {', '.join(r['heavy_imported']) or 'none'}")
    print(f"peak RSS of any run: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
