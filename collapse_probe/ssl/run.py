"""What one training run is made of: the model with its online head, the data stream, LARS and
its schedule, and the checkpoint it resumes from, all built and checked before the first step
(:func:`build_run`), so the loop in :mod:`collapse_probe.ssl.loop` reads top to bottom."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl.checkpoint import (
    CHECKPOINT_NAME,
    history,
    latest_checkpoint,
    load_checkpoint,
    set_rng_state,
)
from collapse_probe.ssl.config import TrainConfig
from collapse_probe.ssl.data import train_stream
from collapse_probe.ssl.distributed import DistInfo
from collapse_probe.ssl.lars import LARS, lars_param_groups, warmup_cosine
from collapse_probe.ssl.model import SSLModel, build_model

METRICS_NAME = "metrics.jsonl"


@dataclass
class Run:
    """What one training run is made of, built and checked before the first step (:func:`build_run`)."""

    model: SSLModel
    arch: dict[str, Any]
    stream: Any
    head: nn.Module | None
    head_views: int
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    use_bf16: bool
    steps_per_epoch: int
    out_dir: Path
    ckpt: dict[str, Any] | None = None
    resume_from: Path | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_NAME


class _TrainNet(nn.Module):
    """The model plus the online classifier, so DDP syncs both; the loss stays outside.

    ``forward(x1, x2)`` returns ``(z, logits)`` with ``z = [z1; z2]`` (2 B, K). By default each
    view goes through the encoder on its own, as in the DirectCLR code, so every BatchNorm
    normalises a view by that view's batch statistics (and updates its running statistics twice
    per step). ``joint_batchnorm=True`` runs ``[x1; x2]`` in one pass: BatchNorm then pools the
    two views' statistics. The online head sees the detached representation of view 1
    (``head_views=1``, the DirectCLR code) or of both views (``head_views=2``).
    """

    def __init__(self, model: SSLModel, head: nn.Module | None, *, joint_batchnorm: bool = False, head_views: int = 1):
        super().__init__()
        self.model, self.head = model, head
        self.joint_batchnorm, self.head_views = joint_batchnorm, head_views

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.joint_batchnorm:
            r, z = self.model(torch.cat([x1, x2]), return_representation=True)
            r1 = r[: len(x1)]
        else:
            r1, z1 = self.model(x1, return_representation=True)
            r2, z2 = self.model(x2, return_representation=True)
            z = torch.cat([z1, z2])
            r = torch.cat([r1, r2]) if self.head_views == 2 else r1
        if self.head is None:
            return z, None
        return z, self.head((r if self.head_views == 2 else r1).detach())


def online_head(kind: str, rep_dim: int, num_classes: int) -> nn.Module:
    """The online classifier: ``lars`` (a Linear, as the DirectCLR code) or ``sgd-bn`` (BN without
    affine + Linear, so one SGD learning rate suits any feature scale)."""
    if kind == "lars":
        return nn.Linear(rep_dim, num_classes)
    return nn.Sequential(nn.BatchNorm1d(rep_dim, affine=False), nn.Linear(rep_dim, num_classes))


def param_groups(model: nn.Module, head: nn.Module | None, config: TrainConfig) -> list[dict]:
    """The optimiser's groups. ``online_head="lars"``: the head joins the model's LARS groups (its
    weight gets LARS scaling and decay, its bias neither; peak lr ``config.lr``), as in the
    DirectCLR code. ``"sgd-bn"``: a third group, plain momentum SGD at ``config.online_lr``."""
    if head is None:
        return lars_param_groups([model], config.weight_decay)
    if config.online_head == "lars":
        return lars_param_groups([model, head], config.weight_decay)
    groups = lars_param_groups([model], config.weight_decay)
    groups.append({"params": list(head.parameters()), "weight_decay": 0.0, "lars": False, "lr": config.online_lr})
    return groups


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_run(config: TrainConfig, dist: DistInfo, device: torch.device) -> Run:
    """The model, data, online head, optimiser and schedule of one run (checked before training),
    and the checkpoint to resume from when ``config.resume``."""
    out_dir = Path(config.out)
    resume_from = latest_checkpoint(out_dir) if config.resume else None  # checkpoint.pt, or a later kept one
    ckpt = load_checkpoint(resume_from) if resume_from else None
    model, arch = build_model(config)  # also checks d0 against the representation size
    if ckpt is not None and ckpt["arch"] != arch:
        raise CollapseProbeError(f"--resume: the checkpoint's architecture {ckpt['arch']} differs from this run's {arch}")
    stream = train_stream(config, dist, device)  # checks the data before any training
    head = online_head(config.online_head, arch["rep_dim"], stream.num_classes) if config.online_probe else None
    head_views = 1 if config.online_head == "lars" else 2
    net = _TrainNet(model, head, joint_batchnorm=config.joint_batchnorm, head_views=head_views).to(device)
    if config.channels_last:  # faster convolutions on CUDA and, measured, on this CPU too
        net = net.to(memory_format=torch.channels_last)
    optimizer = LARS(
        param_groups(model, head, config), lr=config.lr, weight_decay=config.weight_decay,
        momentum=config.momentum, trust_coefficient=config.trust_coefficient,
    )
    steps_per_epoch = len(stream)
    schedule = functools.partial(
        warmup_cosine, total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch), final_ratio=config.final_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling; kept for the format
    return Run(model, arch, stream, head, head_views, net, optimizer, scheduler, scaler, use_bf16, steps_per_epoch,
               out_dir, ckpt, resume_from)


def start_or_resume(config: TrainConfig, run: Run, dist: DistInfo) -> int:
    """Load the resumed states (the epoch to start from), and start the metrics log."""
    start_epoch = 0
    if run.ckpt is not None:
        _resume_states(run.ckpt, run.ckpt_path, run.model, run.head, run.optimizer)
        run.scheduler.load_state_dict(run.ckpt["scheduler"])
        run.scaler.load_state_dict(run.ckpt["scaler"])
        set_rng_state(run.ckpt["rng"])
        start_epoch = int(run.ckpt["epoch"])
    if dist.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        rows = [r for r in _read_rows(run.metrics_path) if r.get("epoch", 0) <= start_epoch] if run.ckpt else []
        run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if run.ckpt is None:  # a fresh run: an earlier run's checkpoints must not be resumed with this run's log
            run.ckpt_path.unlink(missing_ok=True)
            for kept in history(run.out_dir).values():
                os.unlink(kept)
    return start_epoch


def _resume_states(ckpt: Mapping[str, Any], path: Path, model: nn.Module, head: nn.Module | None,
                   optimizer: torch.optim.Optimizer) -> None:
    """Load the model, online head and optimiser of a checkpoint, or refuse in one line.

    A run is only continued as it was trained: a checkpoint whose modules or optimiser groups do
    not fit this run's settings (another projector, online head or trainer version) is refused
    with what to do, not half-loaded.
    """
    try:
        model.load_state_dict(ckpt["model"])
        if head is not None and ckpt.get("online_head") is not None:
            head.load_state_dict(ckpt["online_head"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise CollapseProbeError(
            f"--resume: {path} does not fit this run's model, online head or optimiser ({first}); it was "
            "written with other settings or by an older trainer: resume with the settings it was trained "
            "with (e.g. --online-head sgd-bn --joint-batchnorm for runs before per-view BatchNorm), or "
            "start a new --out"
        ) from None
