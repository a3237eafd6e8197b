"""The paper's method comparison at small scale on the bundled digits (docs/reproduction.md).

    python examples/reproduce_digits.py --out runs/repro --seeds 0 1 2 --epochs 20

Trains SimCLR with the 2-layer MLP, linear and no projector, and DirectCLR, for the same budget
(demo preset), then measures on the held-out split: linear-probe and kNN accuracy of the
representation (on standardised and on raw features), effective rank (centred, and L2-normalised
as in the public DirectCLR spectrum script) and collapsed dims of the representation and the
embedding; plus untrained encoders (one per seed) and raw pixels as baselines.
``--joint-batchnorm`` runs both views in one encoder pass (BatchNorm pools them) instead of one
pass per view; ``--online-head sgd-bn`` is this project's earlier online classifier.
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
from torch import nn

from collapse_probe import Spectrum
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


def spectra(layer: str, features: torch.Tensor) -> dict[str, float]:
    """Effective rank and collapsed dims, centred (this project's default) and L2-normalised first
    (the public DirectCLR spectrum script's convention); both centred covariances, ddof 1."""
    row = {}
    for prefix, normalize in (("", False), ("l2_", True)):
        s = Spectrum.from_embeddings(features.double(), normalize=normalize)
        row[f"{layer}/{prefix}effective_rank"] = s.effective_rank
        row[f"{layer}/{prefix}collapsed_dims"] = s.collapsed_dims()
    return row


def evaluate(encoder, image_size: int, embedder=None) -> dict[str, float]:
    """Probes of ``encoder``'s features (the representation; raw pixels for nn.Flatten) on the
    held-out split: linear probe on standardised and on raw features, kNN, and the spectra."""
    def features(module, split):
        return extract_features(module, eval_loader("builtin:digits", split, image_size), device="cpu")

    (train_x, train_y), (val_x, val_y) = features(encoder, "train"), features(encoder, "val")
    row = {"linear_top1": linear_probe(train_x, train_y, val_x, val_y).top1,
           "linear_top1_unstandardized": linear_probe(train_x, train_y, val_x, val_y, standardize=False).top1,
           "knn_top1": knn_accuracy(train_x, train_y, val_x, val_y, k=20, temperature=0.07),
           **spectra("representation", val_x)}
    if embedder is not None:
        row.update(spectra("embedding", features(embedder, "val")[0]))
    return row


def spectrum_numbers(row: dict) -> dict[str, float]:
    keys = ("effective_rank", "collapsed_dims", "rankme", "dim")
    return {f"{layer}/{k}": row[f"{layer}/{k}"] for layer in ("representation", "embedding") for k in keys}


def baselines(out: str, seeds: list[int]) -> None:
    """Untrained encoders (one per seed) and raw pixels: what the architecture alone gives."""
    image_size = preset_config("demo").image_size
    runs = {f"random-init-s{seed}": ("random-init", seed) for seed in seeds}
    runs["raw-pixels"] = ("raw-pixels", None)
    for name, (method, seed) in runs.items():
        run_dir = os.path.join(out, name)
        if os.path.exists(os.path.join(run_dir, "result.json")):
            continue
        os.makedirs(run_dir, exist_ok=True)
        if method == "random-init":
            model, _ = build_model(preset_config("demo", seed=seed))
            row = {"method": method, "seed": seed, **evaluate(model.backbone, image_size, embedder=model)}
        else:  # the normalised 3 x 16 x 16 eval crops, flattened (768 dims, 256 distinct: the digits are gray)
            row = {"method": method, "seed": None, **evaluate(nn.Flatten(), image_size)}
        json.dump(row, open(os.path.join(run_dir, "result.json"), "w"), indent=1)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/repro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL_METHODS))
    parser.add_argument("--joint-batchnorm", action="store_true",
                        help="both views in one encoder pass (BatchNorm pools them); default: one pass per view")
    parser.add_argument("--online-head", default="lars", choices=["lars", "sgd-bn"])
    parser.add_argument("--no-baselines", action="store_true", help="skip the untrained-encoder and raw-pixel rows")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        for name in args.methods:
            run_dir = os.path.join(args.out, f"{name}-s{seed}")
            if os.path.exists(os.path.join(run_dir, "result.json")):
                continue  # done already: several invocations (e.g. one per seed) can share --out
            config = preset_config("demo", epochs=args.epochs, seed=seed, threads=args.threads, out=run_dir,
                                   joint_batchnorm=args.joint_batchnorm, online_head=args.online_head,
                                   **ALL_METHODS[name])
            start = time.time()
            result = train(config)
            row = {"method": name, "seed": seed, "epochs": args.epochs, "train_time_s": time.time() - start,
                   "joint_batchnorm": args.joint_batchnorm, "online_head": args.online_head,
                   **spectrum_numbers(result.metrics[-1]),  # the monitor's; evaluate() recomputes the same centred ones
                   **evaluate(result.model.backbone, config.image_size, embedder=result.model),
                   "online_acc": result.metrics[-1].get("online_acc"), "loss": result.metrics[-1]["loss"]}
            json.dump(row, open(os.path.join(run_dir, "result.json"), "w"), indent=1)
            print(json.dumps(row), flush=True)
    if not args.no_baselines:
        baselines(args.out, args.seeds)
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
    cols = ["linear_top1", "linear_top1_unstandardized", "knn_top1", "representation/effective_rank",
            "representation/l2_effective_rank", "representation/collapsed_dims",
            "embedding/effective_rank", "embedding/l2_effective_rank", "embedding/collapsed_dims", "online_acc"]
    print("| method | seeds | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for name in [*ALL_METHODS, "random-init", "raw-pixels"]:
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
