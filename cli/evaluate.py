"""``collapse-probe eval linear|knn CKPT --data ...``: frozen-feature accuracy of an encoder."""

from __future__ import annotations

import json
from typing import Any

import click
from collapse_probe_cli import options


def _shared(command: Any) -> Any:
    shared = [
        click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False)),
        click.option("--data", required=True, metavar="DIR|builtin:NAME",
                     help="Folder with train/ and val/ subfolders (one subfolder per class in each), or builtin:NAME (builtin:digits, builtin:fashion-mnist)."),
        options.arch,
        click.option("--layer", type=click.Choice(["backbone", "embedding"]), default="backbone", show_default=True,
                     help="backbone: the representation r (the paper's evaluation); embedding: the loss input."),
        click.option("--image-size", type=click.IntRange(min=1), default=None,
                     help="Eval crop size [default: the training crop a trainer checkpoint records, else 224]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Feature-extraction batch size."),
        click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True,
                     help="DataLoader workers (image folders)."),
        click.option("--device", default=None, metavar="auto|cpu|cuda[:i]", help="[default: cuda when available]."),
        options.strict,
        options.trust_checkpoint,
        options.allow_partial,
        options.quiet,
    ]
    for option in reversed(shared):
        command = option(command)
    return command


def _features(checkpoint: str, values: dict[str, Any]) -> Any:
    """Extract both splits' features, with the load report and skipped images on stderr."""
    from collapse_probe._utils.devices import parse_device
    from collapse_probe.ssl.evaluate import check_eval_data, eval_features

    quiet = values.pop("quiet")
    parse_device(values["device"])  # bad input fails in one line, before the progress line below
    check_eval_data(values["data"])
    if not quiet:
        click.echo(f"extracting {values['layer']} features of {checkpoint} on {values['data']} ...", err=True)
    features = eval_features(checkpoint, **values)
    if not quiet:
        click.echo(features.report.summary(), err=True)
        for split, skipped in features.n_skipped.items():
            if skipped:
                click.echo(f"skipped {skipped} unreadable image(s) of {features.n_images[split]} in {split}", err=True)
    return features


def _summary(features: Any) -> dict[str, Any]:
    return {"layer_module": features.layer, "image_size": features.image_size, "n_train": len(features.train_y),
            "n_val": len(features.val_y), "dim": features.train_x.shape[1],
            "n_unreadable_skipped": sum(features.n_skipped.values())}


@click.group("eval")
def eval_group() -> None:
    """Accuracy of an encoder's frozen features: linear probe or kNN.

    Reads any checkpoint `collapse-probe spectrum` reads (name the architecture of a bare
    state_dict with --arch). Unreadable images are skipped and counted (--strict: fail instead).

    \b
    Examples:
      collapse-probe eval linear runs/demo/checkpoint.pt --data builtin:digits
      collapse-probe eval knn runs/demo/checkpoint.pt --data builtin:digits --k 20
      collapse-probe eval knn resnet50.pth --arch resnet50 --data imagenet100/ --device cuda
    """


@eval_group.command("linear")
@_shared
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Probe training epochs over the features.")
@click.option("--lr", type=float, default=1e-2, show_default=True, help="AdamW learning rate (cosine schedule).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--standardize/--no-standardize", default=True, show_default=True,
              help="Standardise each feature with the train split's mean and std first. --no-standardize "
                   "trains on the raw features, as the DirectCLR code does: standardising gives a collapsed "
                   "direction unit variance again, so it can hide collapse.")
def linear(checkpoint: str, epochs: int, lr: float, weight_decay: float, standardize: bool, **values: Any) -> None:
    """Linear probe: features extracted once, logistic regression trained in torch; prints JSON.

    \b
    Examples:
      collapse-probe eval linear runs/demo/checkpoint.pt --data builtin:digits --epochs 100
      collapse-probe eval linear runs/demo/checkpoint.pt --data builtin:digits --no-standardize
      collapse-probe eval linear solo_simclr.ckpt --arch resnet18 --data imagenet100/ --image-size 224
    """
    from collapse_probe._utils.devices import parse_device
    from collapse_probe.ssl.evaluate import linear_probe

    features = _features(checkpoint, values)
    device = parse_device(values["device"])
    result = linear_probe(features.train_x, features.train_y, features.val_x, features.val_y, epochs=epochs, lr=lr,
                          weight_decay=weight_decay, device=device, standardize=standardize)
    click.echo(json.dumps({"eval": "linear", "checkpoint": checkpoint, "data": values["data"], "layer": values["layer"],
                           "top1": result.top1, "train_top1": result.train_top1, "epochs": epochs,
                           "standardize": standardize,
                           **_summary(features)}))


@eval_group.command("knn")
@_shared
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True, help="Neighbours that vote.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.07, show_default=True,
              help="Vote weight exp(cos / T).")
def knn(checkpoint: str, k: int, temperature: float, **values: Any) -> None:
    """Weighted cosine kNN on frozen features (train split as the bank); prints JSON.

    \b
    Examples:
      collapse-probe eval knn runs/demo/checkpoint.pt --data builtin:digits --k 20 --temperature 0.07
      collapse-probe eval knn resnet18.pth --arch resnet18 --data my_images/ --strict
    """
    from collapse_probe.ssl.evaluate import knn_accuracy

    features = _features(checkpoint, values)
    top1 = knn_accuracy(features.train_x, features.train_y, features.val_x, features.val_y, k=k,
                        temperature=temperature)
    click.echo(json.dumps({"eval": "knn", "checkpoint": checkpoint, "data": values["data"], "layer": values["layer"],
                           "top1": top1, "k": k, "temperature": temperature, **_summary(features)}))
