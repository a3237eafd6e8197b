"""``collapse-probe eval linear|knn CKPT --data ...``: frozen-feature accuracy of a trained encoder."""

from __future__ import annotations

import json
from typing import Any

import click


def _shared(command: Any) -> Any:
    options = [
        click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False)),
        click.option("--data", required=True, help="Folder with train/ and val/ subfolders, or builtin:NAME."),
        click.option("--layer", type=click.Choice(["backbone", "embedding"]), default="backbone", show_default=True,
                     help="backbone: the representation r (the paper's evaluation); embedding: the loss input."),
        click.option("--image-size", type=int, default=None, help="Eval crop size [default: the training crop]."),
        click.option("--batch-size", type=int, default=256, show_default=True, help="Feature-extraction batch size."),
        click.option("--workers", type=int, default=4, show_default=True, help="DataLoader workers (image folders)."),
        click.option("--device", default=None, help="cpu, cuda, ... [default: cuda when available]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("eval")
def eval_group() -> None:
    """Accuracy of a trainer checkpoint's frozen features: linear probe or kNN.

    \b
    Examples:
      collapse-probe eval linear runs/demo/checkpoint.pt --data builtin:digits
      collapse-probe eval knn runs/demo/checkpoint.pt --data builtin:digits --k 20
    """


@eval_group.command("linear")
@_shared
@click.option("--epochs", type=int, default=100, show_default=True, help="Probe training epochs over the features.")
@click.option("--lr", type=float, default=1e-2, show_default=True, help="AdamW learning rate (cosine schedule).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True, help="AdamW weight decay.")
def linear(checkpoint: str, data: str, layer: str, image_size: int | None, batch_size: int, workers: int,
           device: str | None, epochs: int, lr: float, weight_decay: float) -> None:
    """Linear probe: features extracted once, logistic regression trained in torch; prints JSON.

    \b
    Example:
      collapse-probe eval linear runs/demo/checkpoint.pt --data builtin:digits --epochs 100
    """
    from collapse_probe.ssl.evaluate import checkpoint_features, linear_probe

    click.echo(f"extracting {layer} features of {checkpoint} on {data} ...", err=True)
    train_x, train_y, val_x, val_y = checkpoint_features(checkpoint, data, layer=layer, image_size=image_size,
                                                         batch_size=batch_size, workers=workers, device=device)
    result = linear_probe(train_x, train_y, val_x, val_y, epochs=epochs, lr=lr, weight_decay=weight_decay, device=device)
    click.echo(json.dumps({"eval": "linear", "checkpoint": checkpoint, "data": data, "layer": layer,
                           "top1": result.top1, "train_top1": result.train_top1, "epochs": epochs,
                           "n_train": len(train_y), "n_val": len(val_y), "dim": train_x.shape[1]}))


@eval_group.command("knn")
@_shared
@click.option("--k", type=int, default=20, show_default=True, help="Neighbours that vote.")
@click.option("--temperature", type=float, default=0.07, show_default=True, help="Vote weight exp(cos / T).")
def knn(checkpoint: str, data: str, layer: str, image_size: int | None, batch_size: int, workers: int,
        device: str | None, k: int, temperature: float) -> None:
    """Weighted cosine kNN on frozen features (train split as the bank); prints JSON.

    \b
    Example:
      collapse-probe eval knn runs/demo/checkpoint.pt --data builtin:digits --k 20 --temperature 0.07
    """
    from collapse_probe.ssl.evaluate import checkpoint_features, knn_accuracy

    click.echo(f"extracting {layer} features of {checkpoint} on {data} ...", err=True)
    train_x, train_y, val_x, val_y = checkpoint_features(checkpoint, data, layer=layer, image_size=image_size,
                                                         batch_size=batch_size, workers=workers, device=device)
    top1 = knn_accuracy(train_x, train_y, val_x, val_y, k=k, temperature=temperature)
    click.echo(json.dumps({"eval": "knn", "checkpoint": checkpoint, "data": data, "layer": layer, "top1": top1,
                           "k": k, "temperature": temperature, "n_train": len(train_y), "n_val": len(val_y)}))
