"""The paper's method comparison at small scale on the bundled digits (docs/reproduction.md).

    python examples/reproduce_digits.py --out runs/repro --seeds 0 1 2 --epochs 20

Trains SimCLR with the 2-layer MLP, linear and no projector, and DirectCLR, for the same budget
(demo preset), then measures on the held-out split: linear-probe and kNN accuracy of the
representation, effective rank and collapsed dims of the representation and the embedding.
Writes OUT/<method>-s<seed>/result.json per run (runs already done are skipped, so one
invocation per seed can run in parallel), OUT/results.json, a markdown table (stdout) and
OUT/spectra.png (final spectra, first seed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from collapse_probe.ssl import build_model, preset_config, train
from collapse_probe.ssl.data import eval_loader
from collapse_probe.ssl.evaluate import extract_features, knn_accuracy, linear_probe

METHODS = {
    "simclr-mlp": dict(method="simclr", projector="mlp"),
    "simclr-linear": dict(method="simclr", projector="linear"),
    "simclr-none": dict(method="simclr", projector="none"),
    "directclr": dict(method="directclr"),
}
# The paper's Table-2 projectors (d0 defaults to 22 = 128 x 360 / 2048 for the fixed low-rank ones)
ABLATION = {
    "simclr-orthogonal": dict(method="simclr", projector="orthogonal"),
    "simclr-diagonal": dict(method="simclr", projector="diagonal"),
    "simclr-lowrank": dict(method="simclr", projector="lowrank"),
    "simclr-lowrank-diagonal": dict(method="simclr", projector="lowrank-diagonal"),
}
ALL_METHODS = {**METHODS, **ABLATION}


def evaluate(model, image_size: int) -> dict[str, float]:
    train_x, train_y = extract_features(model.backbone, eval_loader("builtin:digits", "train", image_size), device="cpu")
    val_x, val_y = extract_features(model.backbone, eval_loader("builtin:digits", "val", image_size), device="cpu")
    return {"linear_top1": linear_probe(train_x, train_y, val_x, val_y).top1,
            "knn_top1": knn_accuracy(train_x, train_y, val_x, val_y, k=20, temperature=0.07)}


def spectrum_numbers(row: dict) -> dict[str, float]:
    keys = ("effective_rank", "collapsed_dims", "rankme", "dim")
    return {f"{layer}/{k}": row[f"{layer}/{k}"] for layer in ("representation", "embedding") for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/repro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL_METHODS))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        for name in args.methods:
            run_dir = os.path.join(args.out, f"{name}-s{seed}")
            if os.path.exists(os.path.join(run_dir, "result.json")):
                continue  # done already: several invocations (e.g. one per seed) can share --out
            config = preset_config("demo", epochs=args.epochs, seed=seed, threads=args.threads, out=run_dir,
                                   **ALL_METHODS[name])
            start = time.time()
            result = train(config)
            row = {"method": name, "seed": seed, "epochs": args.epochs, "train_time_s": time.time() - start,
                   **evaluate(result.model, config.image_size), **spectrum_numbers(result.metrics[-1]),
                   "online_acc": result.metrics[-1].get("online_acc"), "loss": result.metrics[-1]["loss"]}
            json.dump(row, open(os.path.join(run_dir, "result.json"), "w"), indent=1)
            print(json.dumps(row), flush=True)
    # untrained encoder: how much of the accuracy the architecture alone gives
    baseline = os.path.join(args.out, "random-init-s0")
    if not os.path.exists(os.path.join(baseline, "result.json")):
        os.makedirs(baseline, exist_ok=True)
        model, _ = build_model(preset_config("demo", seed=0))
        row = {"method": "random-init", "seed": 0, **evaluate(model, preset_config("demo").image_size)}
        json.dump(row, open(os.path.join(baseline, "result.json"), "w"), indent=1)
    results = [json.load(open(os.path.join(args.out, d, "result.json"))) for d in sorted(os.listdir(args.out))
               if os.path.exists(os.path.join(args.out, d, "result.json"))]
    json.dump(results, open(os.path.join(args.out, "results.json"), "w"), indent=1)
    print_table(results)
    figure_path = os.path.join(args.out, "spectra.png")
    make_figure(args.out, args.seeds[0], [m for m in ALL_METHODS if m in args.methods]).savefig(figure_path, dpi=90)
    print(f"figure: {figure_path}")


def make_figure(out: str, seed: int, methods: list[str]):
    """Final covariance spectra (log10 eigenvalues, sorted) of representation and embedding."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    for name in methods:
        lines = open(os.path.join(out, f"{name}-s{seed}", "metrics.jsonl")).read().splitlines()
        spectra = json.loads(lines[-1])["spectra"]
        for ax, layer in zip(axes, ("representation", "embedding"), strict=True):
            eig = torch.tensor(spectra[layer]["eigenvalues"], dtype=torch.float64).clamp_min(1e-12)
            ax.plot(range(1, len(eig) + 1), eig.log10().numpy(), label=name, lw=1.4)
    for ax, layer in zip(axes, ("representation (backbone output)", "embedding (loss input)"), strict=True):
        ax.set_title(layer)
        ax.set_xlabel("index (sorted)")
        ax.set_ylabel("log10 covariance eigenvalue")
        ax.legend(fontsize=8)
    figure.suptitle(f"builtin:digits held-out split, seed {seed}, eigenvalues clipped at 1e-12", fontsize=9)
    return figure


def print_table(results: list[dict]) -> None:
    cols = ["linear_top1", "knn_top1", "representation/effective_rank", "representation/collapsed_dims",
            "embedding/effective_rank", "embedding/collapsed_dims"]
    print("| method | seeds | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for name in [*ALL_METHODS, "random-init"]:
        rows = [r for r in results if r["method"] == name]
        if not rows:
            continue
        cells = []
        for c in cols:
            values = [r[c] for r in rows if r.get(c) is not None]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3g}")
            else:
                cells.append(f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}")
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
