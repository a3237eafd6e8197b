"""The paper's method comparison at small scale (docs/reproduction.md), on a built-in data set.

    python examples/reproduce.py --out runs/repro --seeds 0 1 2 --epochs 20             # digits
    python examples/reproduce.py --preset fashion --out runs/fashion --seeds 0 1 2       # Fashion-MNIST

Trains SimCLR with the 2-layer MLP, linear and no projector, and DirectCLR, for the same budget
(the preset's recipe: ``demo`` on builtin:digits, ``fashion`` on builtin:fashion-mnist), then
measures on the held-out split: linear-probe and kNN accuracy of the representation (on
standardised and on raw features), effective rank (centred, and L2-normalised as in the public
DirectCLR spectrum script), RankMe and collapsed dims of the representation and the embedding;
plus untrained encoders (one per seed) and raw pixels as baselines.
``--joint-batchnorm`` runs both views in one encoder pass (BatchNorm pools them) instead of one
pass per view; ``--online-head sgd-bn`` is this project's earlier online classifier.

Writes OUT/<method>-s<seed>/result.json per run, OUT/results.json, a markdown table (stdout) and
OUT/spectra.png (final spectra, first seed) and OUT/effective_rank.png (effective rank per epoch;
``--report-only`` redraws both and the table without training). It resumes: finished runs are skipped, an
interrupted one continues from its checkpoint, and several invocations on the same --out share
the work (each claims a run before training it), so ``--jobs 2`` or two processes use two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
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
    """Effective rank, RankMe and collapsed dims, centred (this project's default) and L2-normalised
    first (the public DirectCLR spectrum script's convention); both centred covariances, ddof 1."""
    row = {f"{layer}/dim": features.shape[1]}
    for prefix, normalize in (("", False), ("l2_", True)):
        s = Spectrum.from_embeddings(features.double(), normalize=normalize)
        row[f"{layer}/{prefix}effective_rank"] = s.effective_rank
        row[f"{layer}/{prefix}rankme"] = s.rankme
        row[f"{layer}/{prefix}collapsed_dims"] = s.collapsed_dims()
    return row


def evaluate(encoder, data: str, image_size: int, embedder=None) -> dict[str, float]:
    """Probes of ``encoder``'s features (the representation; raw pixels for nn.Flatten) on the
    held-out split: linear probe on standardised and on raw features, kNN, and the spectra."""
    def features(module, split):
        return extract_features(module, eval_loader(data, split, image_size), device="cpu")

    (train_x, train_y), (val_x, val_y) = features(encoder, "train"), features(encoder, "val")
    row = {"linear_top1": linear_probe(train_x, train_y, val_x, val_y).top1,
           "linear_top1_unstandardized": linear_probe(train_x, train_y, val_x, val_y, standardize=False).top1,
           "knn_top1": knn_accuracy(train_x, train_y, val_x, val_y, k=20, temperature=0.07),
           **spectra("representation", val_x)}
    if embedder is not None:
        row.update(spectra("embedding", features(embedder, "val")[0]))
    return row


def claim(run_dir: str) -> bool:
    """Claim ``run_dir`` for this process: False when it is done or another live process holds it."""
    if os.path.exists(os.path.join(run_dir, "result.json")):
        return False
    os.makedirs(run_dir, exist_ok=True)
    lock = os.path.join(run_dir, "claimed-by")
    for _ in range(2):  # the second try follows the removal of a dead process's claim
        try:  # O_EXCL: of two processes creating the claim at once, exactly one succeeds
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(open(lock).read() or 0)
                if holder == os.getpid():
                    return True
                os.kill(holder, 0)  # raises when that process is gone
                return False
            except (FileNotFoundError, ValueError, ProcessLookupError):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)  # an interrupted run: take it over (it resumes from its checkpoint)
                continue
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        return True
    return False


def baselines(out: str, preset: str, seeds: list[int]) -> None:
    """Untrained encoders (one per seed) and raw pixels: what the architecture alone gives."""
    base = preset_config(preset)
    runs = {f"random-init-s{seed}": ("random-init", seed) for seed in seeds}
    runs["raw-pixels"] = ("raw-pixels", None)
    for name, (method, seed) in runs.items():
        run_dir = os.path.join(out, name)
        if not claim(run_dir):
            continue
        if method == "random-init":
            model, _ = build_model(preset_config(preset, seed=seed))
            row = {"method": method, "seed": seed, **evaluate(model.backbone, base.data, base.image_size, embedder=model)}
        else:  # the normalised 3 x S x S eval images, flattened (3 S^2 dims, S^2 distinct: the images are grey)
            row = {"method": method, "seed": None, **evaluate(nn.Flatten(), base.data, base.image_size)}
        json.dump(row, open(os.path.join(run_dir, "result.json"), "w"), indent=1)
        print(json.dumps(row), flush=True)


def train_runs(args: argparse.Namespace) -> None:
    """Train and evaluate every (seed, method) not yet done, seed by seed, resuming interrupted ones."""
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        for name in args.methods:
            run_dir = os.path.join(args.out, f"{name}-s{seed}")
            if not claim(run_dir):
                continue
            resume = os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
            config = preset_config(args.preset, epochs=args.epochs, seed=seed, threads=args.threads, out=run_dir,
                                   joint_batchnorm=args.joint_batchnorm, online_head=args.online_head,
                                   resume=resume, **ALL_METHODS[name])
            start = time.time()
            result = train(config)
            row = {"method": name, "seed": seed, "data": config.data, "epochs": config.epochs,
                   "train_subset": config.train_subset, "train_time_s": time.time() - start, "resumed": resume,
                   "joint_batchnorm": args.joint_batchnorm, "online_head": args.online_head,
                   **evaluate(result.model.backbone, config.data, config.image_size, embedder=result.model),
                   "online_acc": result.metrics[-1].get("online_acc"), "loss": result.metrics[-1]["loss"]}
            json.dump(row, open(os.path.join(run_dir, "result.json"), "w"), indent=1)
            print(json.dumps(row), flush=True)
    if not args.no_baselines:
        baselines(args.out, args.preset, args.seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=["demo", "fashion"],
                        help="demo: builtin:digits at 16 px; fashion: builtin:fashion-mnist at 28 px, 10,000-image subset")
    parser.add_argument("--out", default="runs/repro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's (20 demo, 30 fashion)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL_METHODS))
    parser.add_argument("--joint-batchnorm", action="store_true",
                        help="both views in one encoder pass (BatchNorm pools them); default: one pass per view")
    parser.add_argument("--online-head", default="lars", choices=["lars", "sgd-bn"])
    parser.add_argument("--no-baselines", action="store_true", help="skip the untrained-encoder and raw-pixel rows")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: the table and figures from the runs already in --out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.report_only:
        pass
    elif args.jobs > 1:
        workers = [multiprocessing.get_context("spawn").Process(target=train_runs, args=(args,)) for _ in range(args.jobs)]
        for worker in workers:
            worker.start()
            time.sleep(2)  # stagger the claims
        for worker in workers:
            worker.join()
    else:
        train_runs(args)
    results = [json.load(open(os.path.join(args.out, d, "result.json"))) for d in sorted(os.listdir(args.out))
               if os.path.exists(os.path.join(args.out, d, "result.json"))]
    json.dump(results, open(os.path.join(args.out, "results.json"), "w"), indent=1)
    print_table(results)
    figure_path = os.path.join(args.out, "spectra.png")
    data = preset_config(args.preset).data
    methods = [m for m in ALL_METHODS if m in args.methods]
    make_figure(args.out, args.seeds[0], methods, data).savefig(figure_path, dpi=90)
    trajectory_path = os.path.join(args.out, "effective_rank.png")
    make_trajectory_figure(args.out, args.seeds, methods, results, data).savefig(trajectory_path, dpi=90)
    print(f"figures: {figure_path}, {trajectory_path}")


def make_trajectory_figure(out: str, seeds: list[int], methods: list[str], results: list[dict], data: str):
    """Effective rank of representation and embedding after each epoch (the trainer's monitor on
    the held-out split): seed mean, the band spanning the seeds, and the untrained encoder's
    value (its final-evaluation number, mean over seeds) as a dashed line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    for name in methods:
        runs = [os.path.join(out, f"{name}-s{seed}", "metrics.jsonl") for seed in seeds]
        rows = [[json.loads(line) for line in open(path)] for path in runs if os.path.exists(path)]
        if not rows:
            continue
        epochs = min(len(r) for r in rows)
        for ax, layer in zip(axes, ("representation", "embedding"), strict=True):
            values = torch.tensor([[r[e][f"{layer}/effective_rank"] for e in range(epochs)] for r in rows])
            x = range(1, epochs + 1)
            (line,) = ax.plot(x, values.mean(0).numpy(), label=name, lw=1.4)
            ax.fill_between(x, values.min(0).values.numpy(), values.max(0).values.numpy(), color=line.get_color(), alpha=0.2)
    untrained = [r for r in results if r["method"] == "random-init"]
    for ax, layer in zip(axes, ("representation", "embedding"), strict=True):
        if untrained:
            level = statistics.mean(r[f"{layer}/effective_rank"] for r in untrained)
            ax.axhline(level, color="black", ls="--", lw=1, label="untrained encoder (MLP projector)" if layer == "embedding" else "untrained encoder")
        ax.set_title(f"{layer} ({'backbone output' if layer == 'representation' else 'loss input'})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("effective rank (centred covariance)")
        ax.legend(fontsize=7)
    figure.suptitle(f"{data} held-out split: effective rank while training (seed mean, band: min-max over seeds)", fontsize=9)
    return figure


def make_figure(out: str, seed: int, methods: list[str], data: str = "builtin:digits"):
    """Final covariance spectra (log10 eigenvalues, sorted) of representation and embedding."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    for name in methods:
        path = os.path.join(out, f"{name}-s{seed}", "metrics.jsonl")
        if not os.path.exists(path):
            continue
        lines = open(path).read().splitlines()
        spectra = json.loads(lines[-1])["spectra"]
        for ax, layer in zip(axes, ("representation", "embedding"), strict=True):
            eig = torch.tensor(spectra[layer]["eigenvalues"], dtype=torch.float64).clamp_min(1e-12)
            ax.plot(range(1, len(eig) + 1), eig.log10().numpy(), label=name, lw=1.4)
    for ax, layer in zip(axes, ("representation (backbone output)", "embedding (loss input)"), strict=True):
        ax.set_title(layer)
        ax.set_xlabel("index (sorted)")
        ax.set_ylabel("log10 covariance eigenvalue")
        ax.legend(fontsize=8)
    figure.suptitle(f"{data} held-out split, seed {seed}, eigenvalues clipped at 1e-12", fontsize=9)
    return figure


def print_table(results: list[dict]) -> None:
    cols = ["linear_top1", "linear_top1_unstandardized", "knn_top1", "representation/effective_rank",
            "representation/l2_effective_rank", "representation/rankme", "representation/collapsed_dims",
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
