"""Frozen-feature evaluation: a linear probe (logistic regression in torch) and a cosine kNN.

Features are extracted once (eval mode, no augmentation: resize + centre crop for folders) from
the representation r = ``model.backbone(x)`` by default, as in the paper's linear evaluation.
:func:`eval_features` reads any checkpoint ``collapse-probe spectrum`` reads (trainer
checkpoints, torchvision / timm / solo-learn state_dicts with ``arch``, TorchScript, torch.export)
and skips and counts unreadable images as the probe does.
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
    module: nn.Module, loader: Any, *, device: torch.device | str | None = None, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D) float32 CPU, labels (N,) int64 CPU)`` of ``module`` over ``(x, y)`` batches.

    ``layer`` (a name from ``module.named_modules()``): that submodule's output, average-pooled
    to (B, D) as :func:`collapse_probe.spectrum` pools it, instead of the module's output.
    """
    from collapse_probe.probe.capture import (
        capture_outputs,
        from_transformers,
        pick_tensor,
        pool_output,
        resolve_modules,
    )

    device = torch.device(device) if device is not None else next(module.parameters()).device
    was_training = module.training
    module.eval().to(device)
    hooked = resolve_modules(module, [layer]) if layer else {}
    captured: list[torch.Tensor] = []

    def record(name: str, output: Any) -> None:
        captured.append(pool_output(pick_tensor(output, f"layer {name!r}"), "avg", f"layer {name!r}"))

    feats, labels = [], []
    try:
        with capture_outputs(hooked, record):
            for x, y in loader:
                captured.clear()
                output = module(x.to(device, non_blocking=True))
                z = captured[0] if layer else output
                if not isinstance(z, torch.Tensor):  # a Hugging Face ModelOutput: its hidden states, as `spectrum`
                    z = pool_output(pick_tensor(z, "the model output", first_of_tuple=from_transformers(module)),
                                    "avg", "the model output")
                feats.append(z.float().flatten(1).cpu())
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


@dataclass(frozen=True)
class EvalFeatures:
    """Frozen features of both splits, and where they came from."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    report: Any  # the checkpoint's LoadReport
    layer: str  # the module the features come from, or "<output>"
    image_size: int
    n_images: dict[str, int]  # per split
    n_skipped: dict[str, int]  # unreadable images skipped, per split


def check_eval_data(data: str) -> None:
    """Refuse, before any work, a ``data`` that is neither ``builtin:NAME`` nor a folder with
    ``train/`` and ``val/`` subfolders."""
    import os

    from collapse_probe.data.builtin import is_builtin, require_builtin

    if is_builtin(data):
        require_builtin(data)
        return
    if not os.path.isdir(data):
        raise CollapseProbeError(f"--data {data!r} is not a folder (or builtin:NAME)")
    missing = [f"{split}/" for split in ("train", "val") if not os.path.isdir(os.path.join(data, split))]
    if missing:
        raise CollapseProbeError(f"--data {data!r} has no {' and no '.join(missing)} folder: eval needs train/ and "
                                 "val/, each with one subfolder per class")


def labelled_loader(data: str, split: str, image_size: int, *, batch_size: int = 256, workers: int = 0,
                    strict: bool = False, device: torch.device | None = None, stats: Any = None) -> Any:
    """``(images, labels)`` batches of one split, unreadable images skipped and counted
    (:class:`~collapse_probe.data.images.SkippingLoader`; ``strict=True`` fails on the first)."""
    from collapse_probe.data.builtin import is_builtin
    from collapse_probe.data.images import SkippingItems, SkippingLoader, collate_skipping
    from collapse_probe.ssl.data import eval_dataset

    dataset = eval_dataset(data, split, image_size, stats)
    loader = torch.utils.data.DataLoader(
        SkippingItems(dataset), batch_size=batch_size, shuffle=False, num_workers=0 if is_builtin(data) else workers,
        collate_fn=collate_skipping, pin_memory=device is not None and device.type == "cuda",
    )
    return SkippingLoader(loader, strict=strict, n_images=len(dataset))


def _eval_layer(loaded: Any, layer: str) -> str | None:
    """The module whose output is ``layer`` (backbone = the representation, embedding = the loss
    input) in a :class:`~collapse_probe.models.loading.LoadedEncoder`; None for the model output."""
    role = {"backbone": "representation", "embedding": "embedding"}[layer]
    names = [name for name, r in loaded.default_layers.items() if r == role]
    if names:
        return names[0]
    if layer == "backbone" and not loaded.default_layers:
        return None  # TorchScript / export / a headless model: its output is the representation
    kinds = ", ".join(f"{n} ({r})" for n, r in loaded.default_layers.items()) or "only its output"
    raise CollapseProbeError(f"{loaded.report.path} has no {role} layer to evaluate (it has {kinds}); "
                             "use --layer backbone")


def eval_features(
    path: str,
    data: str,
    *,
    layer: str = "backbone",
    arch: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    workers: int = 4,
    device: str | torch.device | None = None,
    strict: bool = False,
    trust_checkpoint: bool = False,
    allow_partial: bool = False,
) -> EvalFeatures:
    """Features of any checkpoint ``collapse-probe spectrum`` can load on ``data``'s train and val splits.

    ``layer``: ``backbone`` (the representation: the backbone output, or a classifier's input)
    or ``embedding`` (the projector output, what the loss sees). Every input (device, data
    folders, checkpoint, image size) is checked before any image is decoded.
    """
    from collapse_probe._utils.devices import parse_device
    from collapse_probe.models.hf import processor_pixel_stats, processor_size
    from collapse_probe.models.loading import load_encoder_with_report
    from collapse_probe.pipeline.data import DEFAULT_IMAGE_SIZE, check_image_size

    if layer not in ("backbone", "embedding"):
        raise CollapseProbeError(f"unknown layer {layer!r}; use backbone or embedding")
    dev = parse_device(device)
    check_eval_data(data)
    loaded = load_encoder_with_report(path, arch, trust_checkpoint=trust_checkpoint, allow_partial=allow_partial)
    module_name = _eval_layer(loaded, layer)
    if loaded.tokenizer is not None and loaded.image_processor is None:
        raise CollapseProbeError(f"{path} is a text model (a tokenizer, no image processor): eval needs images")
    processor = loaded.image_processor  # a Hugging Face folder's own rescale and normalisation, as `spectrum`
    stats = processor_pixel_stats(processor) if processor is not None else None
    size = image_size or loaded.image_size or (processor_size(processor) if processor is not None else None) \
        or DEFAULT_IMAGE_SIZE
    check_image_size(loaded.model, size)
    loaders = {split: labelled_loader(data, split, size, batch_size=batch_size, workers=workers, strict=strict,
                                      device=dev, stats=stats) for split in ("train", "val")}
    classes = {split: getattr(loader.loader.dataset.dataset, "classes", None) for split, loader in loaders.items()}
    if classes["train"] is not None and classes["train"] != classes["val"]:
        raise CollapseProbeError(f"--data {data!r}: train/ and val/ hold different class folders "
                                 f"({len(classes['train'])} vs {len(classes['val'])}); labels would not match")
    features = {split: extract_features(loaded.model, loader, device=dev, layer=module_name)
                for split, loader in loaders.items()}
    return EvalFeatures(*features["train"], *features["val"], report=loaded.report, layer=module_name or "<output>",
                        image_size=size, n_images={s: loader.n_images for s, loader in loaders.items()},
                        n_skipped={s: loader.n_skipped for s, loader in loaders.items()})


def checkpoint_features(
    path: str,
    data: str,
    *,
    layer: str = "backbone",
    image_size: int | None = None,
    batch_size: int = 256,
    workers: int = 4,
    device: str | None = None,
    arch: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, val_x, val_y)`` of :func:`eval_features`."""
    f = eval_features(path, data, layer=layer, arch=arch, image_size=image_size, batch_size=batch_size,
                      workers=workers, device=device)
    return f.train_x, f.train_y, f.val_x, f.val_y
