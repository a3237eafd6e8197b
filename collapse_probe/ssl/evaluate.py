"""Frozen-feature evaluation: a linear probe (logistic regression in torch) and a cosine kNN.

Features are extracted once (eval mode, no augmentation: resize + centre crop for folders) from
the representation r = ``model.backbone(x)`` by default, as in the paper's linear evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collapse_probe.errors import CollapseProbeError


@torch.inference_mode()
def extract_features(
    module: nn.Module, loader: Any, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D) float32 CPU, labels (N,) int64 CPU)`` of ``module`` over ``(x, y)`` batches."""
    device = torch.device(device) if device is not None else next(module.parameters()).device
    was_training = module.training
    module.eval().to(device)
    feats, labels = [], []
    try:
        for x, y in loader:
            feats.append(module(x.to(device, non_blocking=True)).float().flatten(1).cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        module.train(was_training)
    if not feats:
        raise CollapseProbeError("the evaluation loader yielded no batches")
    return torch.cat(feats), torch.cat(labels).long()


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracies (fractions) of a linear probe."""

    top1: float
    train_top1: float
    epochs: int


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    standardize: bool = True,
) -> ProbeResult:
    """Multinomial logistic regression on standardised features, trained with AdamW.

    Features are standardised with the training set's per-dimension mean and std (std floored
    at 1e-6, so collapsed dimensions stay zero); the learning rate follows a cosine schedule.
    ``standardize=False`` trains on the raw features, as the paper's linear evaluation does:
    standardising rescales every direction to unit variance, so it can hide collapse (a
    direction with variance 1e-8 becomes as easy to read as any other; see the test).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 5, generator=g); y = (x[:, 0] > 0).long()
    >>> linear_probe(x[:150], y[:150], x[150:], y[150:], epochs=100).top1 > 0.9
    True
    """
    device = torch.device(device or "cpu")
    if standardize:
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    xs, xv = train_x.to(device), val_x.to(device)
    ys, yv = train_y.to(device), val_y.to(device)
    num_classes = int(max(int(train_y.max()), int(val_y.max()))) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the head's initialisation is seeded too, without touching the caller's RNG
        torch.manual_seed(seed)
        head = nn.Linear(xs.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xs) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator).to(device)
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(xs[idx]), ys[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        top1 = (head(xv).argmax(1) == yv).float().mean().item()
        train_top1 = (head(xs).argmax(1) == ys).float().mean().item()
    return ProbeResult(top1=top1, train_top1=train_top1, epochs=epochs)


@torch.no_grad()
def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted cosine kNN (Wu et al. 2018): predicted labels (M,) for ``val_x`` (M, D).

    Each of the ``k`` most cosine-similar training points votes for its class with weight
    ``exp(sim / temperature)``.

    >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]); labels = torch.tensor([0, 0, 1])
    >>> knn_classify(train, labels, torch.tensor([[1.0, 0.2], [0.1, 1.0]]), k=1)
    tensor([0, 1])
    """
    if k < 1 or temperature <= 0:
        raise CollapseProbeError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, len(train_x))
    num_classes = int(train_y.max()) + 1
    bank = F.normalize(train_x.float(), dim=1)
    preds = []
    for start in range(0, len(val_x), chunk):
        query = F.normalize(val_x[start : start + chunk].float(), dim=1)
        sim, idx = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, train_y[idx], torch.exp(sim / temperature))
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_x, train_y, val_x, val_y, *, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy (fraction) of :func:`knn_classify` on ``(val_x, val_y)``."""
    return (knn_classify(train_x, train_y, val_x, k=k, temperature=temperature) == val_y).float().mean().item()


def checkpoint_features(
    path: str,
    data: str,
    *,
    layer: str = "backbone",
    image_size: int | None = None,
    batch_size: int = 256,
    workers: int = 4,
    device: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, val_x, val_y)``: features of a trainer checkpoint on ``data``'s
    train and val splits. ``layer``: ``backbone`` (representation) or ``embedding``."""
    from collapse_probe.data.builtin import is_builtin
    from collapse_probe.ssl.checkpoint import build_model_from_checkpoint, load_checkpoint
    from collapse_probe.ssl.data import eval_loader

    ckpt = load_checkpoint(path)
    model = build_model_from_checkpoint(ckpt)
    if layer not in ("backbone", "embedding"):
        raise CollapseProbeError(f"unknown layer {layer!r}; use backbone or embedding")
    module = model.backbone if layer == "backbone" else model
    size = image_size or int(ckpt.get("config", {}).get("image_size", 224))
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = []
    for split in ("train", "val"):
        loader = eval_loader(data, split, size, batch_size=batch_size, workers=0 if is_builtin(data) else workers)
        out.extend(extract_features(module, loader, device=dev))
    return out[0], out[1], out[2], out[3]
