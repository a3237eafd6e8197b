"""Regenerate every figure under docs/figures/ from the code in this repository.

    python docs/make_figures.py            # demo figure + theory figures (a few minutes on a CPU)
    python docs/make_figures.py --only demo

The demo figure is ``collapse-probe demo``'s own output; the theory figures come from
docs/make_theory_figures.py.
"""

from __future__ import annotations

import argparse
import runpy
import shutil
import tempfile
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures"


def demo_figure() -> None:
    from collapse_probe.demo import DemoConfig, run_demo

    with tempfile.TemporaryDirectory() as scratch:
        result = run_demo(DemoConfig(out=scratch))
        FIGURES.mkdir(exist_ok=True)
        shutil.copy(result.figure_path, FIGURES / "demo.png")
        result.table.to_csv(FIGURES / "demo.csv", index=False)
        print(result.table.to_string(index=False))


def theory_figures() -> None:
    script = Path(__file__).resolve().parent / "make_theory_figures.py"
    runpy.run_path(str(script), run_name="__main__")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["demo", "theory"])
    args = parser.parse_args()
    if args.only in (None, "demo"):
        demo_figure()
    if args.only in (None, "theory"):
        theory_figures()


if __name__ == "__main__":
    main()
