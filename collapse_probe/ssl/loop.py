"""The training loop: ``train(config, callbacks) -> TrainResult``, readable top to bottom.

Callbacks are a plain dict of lists (minGPT's pattern), each called as ``fn(state)`` with the
:class:`TrainState`: ``on_train_start``, ``on_step_end``, ``on_epoch_end`` (add numbers to
``state.row`` here: they land in metrics.jsonl), ``on_checkpoint`` (after each save) and
``on_train_end``. The spectrum monitor is an ``on_epoch_end`` callback.

Under torchrun every process runs this same function (DDP; NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from collapse_probe._utils.devices import resolve_device
from collapse_probe._utils.global_state import restored_global_state
from collapse_probe._utils.ranks import is_distributed
from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl.checkpoint import (
    CHECKPOINT_NAME,
    history,
    keep_history,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from collapse_probe.ssl.config import TrainConfig, validate
from collapse_probe.ssl.data import eval_loader, train_stream
from collapse_probe.ssl.distributed import DistInfo, dist_info, gather_with_grad, init_distributed
from collapse_probe.ssl.lars import LARS, lars_param_groups, warmup_cosine
from collapse_probe.ssl.losses import info_nce, nt_xent
from collapse_probe.ssl.model import SSLModel, build_model

if TYPE_CHECKING:
    from collapse_probe.data.images import SkippingLoader

Callbacks = dict[str, list[Callable[["TrainState"], Any]]]
EVENTS = ("on_train_start", "on_step_end", "on_epoch_end", "on_checkpoint", "on_train_end")
METRICS_NAME = "metrics.jsonl"


class NonFiniteLossError(CollapseProbeError):
    """The loss became NaN or Inf; the last good checkpoint was left as it was."""


@dataclass
class TrainState:
    """What callbacks see. ``epoch`` counts completed epochs inside ``on_epoch_end``."""

    config: TrainConfig
    model: SSLModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dist: DistInfo
    device: torch.device
    out_dir: Path
    epoch: int = 0
    step: int = 0
    loss: torch.Tensor | None = None
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """The trained model (on the CPU, eval mode), where its checkpoint is, and the metric rows."""

    model: SSLModel
    checkpoint_path: Path
    metrics: list[dict[str, Any]]
    config: TrainConfig


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


def _run(callbacks: Callbacks, event: str, state: TrainState) -> None:
    for fn in callbacks.get(event, []):
        fn(state)


def _log(dist: DistInfo, message: str) -> None:
    if dist.is_main:
        print(message, file=sys.stderr, flush=True)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def global_loss(z: torch.Tensor, *, loss: str = "info_nce", temperature: float = 0.1) -> torch.Tensor:
    """The contrastive loss of this process's ``z = [z1; z2]`` (2 B_local, K) over the global batch.

    Both views are gathered from every process with gradient, and the loss runs in float32 on
    the whole global batch, so every process computes the same value (see ``distributed.py``
    for why DDP's gradient average then equals the single-process gradient).
    """
    z1, z2 = z.float().chunk(2)
    fn = info_nce if loss == "info_nce" else nt_xent
    return fn(gather_with_grad(z1), gather_with_grad(z2), temperature=temperature)


def train(config: TrainConfig, callbacks: Callbacks | None = None) -> TrainResult:
    """Train ``config``'s model; write OUT/checkpoint.pt and OUT/metrics.jsonl every epoch.

    Returns a :class:`TrainResult`. Raises :class:`CollapseProbeError` for bad settings before
    training starts and :class:`NonFiniteLossError` if the loss diverges. Process-wide settings
    the run changes (``config.threads``, the seeded random generators, ...) are set back as the
    caller had them when it returns or raises (:func:`~collapse_probe._utils.global_state.restored_global_state`).
    """
    with restored_global_state():
        return _train(config, callbacks)


def _train(config: TrainConfig, callbacks: Callbacks | None) -> TrainResult:
    callbacks = {event: list(fns) for event, fns in (callbacks or {}).items()}
    unknown = set(callbacks) - set(EVENTS)
    if unknown:
        raise CollapseProbeError(f"unknown callback event(s) {sorted(unknown)}; use {', '.join(EVENTS)}")
    device = resolve_device(config.device)
    joined_here = not is_distributed()
    dist = init_distributed(device.type)
    device = resolve_device(config.device, local_rank=dist.local_rank if dist.world_size > 1 else None)
    validate(config, world_size=dist.world_size)
    for event, fns in default_callbacks(config).items():
        callbacks.setdefault(event, []).extend(fns)
    if config.threads:  # process-wide: train() restores the caller's value on exit
        torch.set_num_threads(config.threads)
    out_dir = Path(config.out)
    ckpt_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    resume_from = latest_checkpoint(out_dir) if config.resume else None  # checkpoint.pt, or a later kept one
    ckpt = load_checkpoint(resume_from) if resume_from else None

    # ---- model, data, optimiser -------------------------------------------------------------
    model, arch = build_model(config)  # also checks d0 against the representation size
    if ckpt is not None and ckpt["arch"] != arch:
        raise CollapseProbeError(f"--resume: the checkpoint's architecture {ckpt['arch']} differs from this run's {arch}")
    stream = train_stream(config, dist, device)  # checks the data before any training
    head = online_head(config.online_head, arch["rep_dim"], stream.num_classes) if config.online_probe else None
    head_views = 1 if config.online_head == "lars" else 2
    net = _TrainNet(model, head, joint_batchnorm=config.joint_batchnorm, head_views=head_views).to(device)
    cuda = device.type == "cuda"
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
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling; kept for the format

    start_epoch = 0
    if ckpt is not None:
        _resume_states(ckpt, ckpt_path, model, head, optimizer)
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"])
        _log(dist, f"resuming from {resume_from} after epoch {start_epoch}")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [r for r in _read_rows(metrics_path) if r.get("epoch", 0) <= start_epoch] if ckpt else []
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if ckpt is None:  # a fresh run: an earlier run's checkpoints must not be resumed with this run's log
            ckpt_path.unlink(missing_ok=True)
            for kept in history(out_dir).values():
                os.unlink(kept)

    train_net: nn.Module = net
    if dist.world_size > 1:
        if cuda:  # SyncBatchNorm needs CUDA; on CPU each process normalises its own shard
            train_net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        train_net = nn.parallel.DistributedDataParallel(train_net, device_ids=[device.index] if cuda else None)

    state = TrainState(config, model, optimizer, scheduler, dist, device, out_dir, epoch=start_epoch,
                       step=start_epoch * steps_per_epoch)
    _run(callbacks, "on_train_start", state)
    _log(dist, f"training {config.method} ({arch['projector']} projector, {config.arch}) on {config.data}: "
               f"{config.epochs} epochs x {steps_per_epoch} steps, global batch {config.batch_size}, {dist.world_size} process(es), {device}")

    # ---- the loop ---------------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        train_net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        finite = torch.ones((), dtype=torch.bool, device=device)
        for i, (x1, x2, y) in enumerate(stream.epoch(epoch)):
            if config.channels_last:
                x1 = x1.contiguous(memory_format=torch.channels_last)
                x2 = x2.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                z, logits = train_net(x1, x2)  # per-view BatchNorm unless config.joint_batchnorm
            loss = global_loss(z, loss=config.loss, temperature=config.temperature)
            total = loss
            if logits is not None:
                labels = torch.cat([y, y]) if head_views == 2 else y
                total = total + F.cross_entropy(logits.float(), labels)
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += labels.numel()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            loss = loss.detach()
            loss_sum += loss
            finite &= torch.isfinite(loss)  # stays on the device: no sync per step
            state.step, state.loss = state.step + 1, loss
            _run(callbacks, "on_step_end", state)
            if config.log_every and (i + 1) % config.log_every == 0:  # a sync point, only every log_every steps
                _log(dist, f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {loss.item():.4f}")
                if not bool(finite):
                    break
        # One sync point per epoch: read the accumulated loss, accuracy and finiteness flag.
        if not bool(finite):
            last = f"{ckpt_path} (epoch {epoch})" if ckpt_path.exists() and epoch > 0 else "none written yet"
            raise NonFiniteLossError(
                f"the loss became NaN/Inf during epoch {epoch + 1}; stopped without saving. Last good checkpoint: "
                f"{last}. Lower --lr or check the data."
            )
        elapsed = time.perf_counter() - t0
        state.epoch = epoch + 1
        state.row = {
            "epoch": epoch + 1,
            "step": state.step,
            "loss": float(loss_sum) / max(1, steps_per_epoch),
            "lr": optimizer.param_groups[0]["lr"],
            "imgs_per_s": steps_per_epoch * config.batch_size / elapsed,
            "epoch_time_s": elapsed,
        }
        if seen:
            state.row["online_acc"] = float(correct) / seen
        _run(callbacks, "on_epoch_end", state)
        if dist.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(state.row) + "\n")
            save_checkpoint(ckpt_path, {
                "arch": arch,
                "config": config.to_dict(),
                "model": model.state_dict(),
                "online_head": head.state_dict() if head is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "step": state.step,
                "rng": rng_state(),
            })
            if config.save_every and ((epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs):
                keep_history(ckpt_path, out_dir, epoch + 1)
        msg = " ".join(f"{k} {v:.4g}" for k, v in state.row.items() if isinstance(v, float) and "/" not in k)
        _log(dist, f"epoch {epoch + 1}/{config.epochs} {msg}")
        _run(callbacks, "on_checkpoint", state)

    _run(callbacks, "on_train_end", state)
    if dist.world_size > 1 and joined_here:
        torch.distributed.destroy_process_group()
    model = model.cpu().eval()
    return TrainResult(model=model, checkpoint_path=ckpt_path, metrics=_read_rows(metrics_path) if dist.is_main else [],
                       config=config)


def default_callbacks(config: TrainConfig) -> Callbacks:
    """The trainer's own callbacks: a :class:`~collapse_probe.integrations.monitor.SpectrumMonitor` on the
    held-out split (``val``, this process's shard of it) every ``config.monitor_every`` epochs,
    plotting into OUT/spectra.png; with ``config.monitor_lidar_views`` (q) it also logs LiDAR
    on :func:`lidar_loader`'s views."""
    if not config.monitor_every:
        return {}
    from collapse_probe.integrations.monitor import SpectrumMonitor

    shard = dist_info()
    loader = eval_loader(config.data, "val", config.image_size, batch_size=256, max_samples=config.monitor_samples,
                         workers=min(config.workers, 8), shard=shard)
    views = lidar_loader(config, rank=shard.rank, world_size=shard.world_size) if config.monitor_lidar_views else None
    monitor = SpectrumMonitor(loader, every=config.monitor_every, plot_path=os.path.join(config.out, "spectra.png"),
                              last_epoch=config.epochs, lidar_loader=views,
                              lidar_views=config.monitor_lidar_views or None)
    return {"on_epoch_end": [monitor]}


def lidar_loader(config: TrainConfig, *, rank: int = 0, world_size: int = 1) -> SkippingLoader:
    """The monitor's LiDAR input: (B, q, 3, S, S) batches, q = ``config.monitor_lidar_views``.

    The views ``collapse-probe lidar CHECKPOINT --data DATA --views q --image-size S --max-samples N``
    makes (seed 0, so the same views every epoch and every run), of the held-out split: a
    built-in set's ``val`` split, a folder's ``val/`` subfolder. ``N = config.monitor_samples``;
    under DDP each process gets every ``world_size``-th of those images.
    """
    from collapse_probe.data.builtin import is_builtin
    from collapse_probe.data.views import open_views

    data = config.data if is_builtin(config.data) else os.path.join(config.data, "val")
    if not os.path.isdir(data) and not is_builtin(config.data):
        raise CollapseProbeError(f"--monitor-lidar-views: no val/ folder under {config.data!r} for the held-out views")
    views = config.monitor_lidar_views
    # about 256 images per forward, as the spectrum monitor's batches
    return open_views(data, views=views, image_size=config.image_size, batch_size=max(1, 256 // views),
                      workers=min(config.workers, 8), max_samples=config.monitor_samples, seed=0,
                      rank=rank, world_size=world_size)


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
