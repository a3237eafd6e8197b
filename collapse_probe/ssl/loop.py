"""The training loop: ``train(config, callbacks) -> TrainResult``, readable top to bottom.

Callbacks are a plain dict of lists (minGPT's pattern), each called as ``fn(state)`` with the
:class:`TrainState`: ``on_train_start``, ``on_step_end``, ``on_epoch_end`` (add numbers to
``state.row`` here: they land in metrics.jsonl), ``on_checkpoint`` (after each save) and
``on_train_end``. The spectrum monitor is an ``on_epoch_end`` callback.

Under torchrun every process runs this same function (DDP; NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
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
    keep_history,
    rng_state,
    save_checkpoint,
)
from collapse_probe.ssl.config import TrainConfig, validate
from collapse_probe.ssl.data import eval_loader
from collapse_probe.ssl.distributed import DistInfo, dist_info, gather_with_grad, init_distributed
from collapse_probe.ssl.losses import info_nce, nt_xent
from collapse_probe.ssl.model import SSLModel
from collapse_probe.ssl.run import (
    Run,
    _read_rows,
    build_run,
    start_or_resume,
)

if TYPE_CHECKING:
    from collapse_probe.data.images import SkippingLoader

Callbacks = dict[str, list[Callable[["TrainState"], Any]]]
EVENTS = ("on_train_start", "on_step_end", "on_epoch_end", "on_checkpoint", "on_train_end")


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


def _run(callbacks: Callbacks, event: str, state: TrainState) -> None:
    for fn in callbacks.get(event, []):
        fn(state)


def _log(dist: DistInfo, message: str) -> None:
    if dist.is_main:
        print(message, file=sys.stderr, flush=True)


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
    run = build_run(config, dist, device)
    start_epoch = start_or_resume(config, run, dist)
    if run.ckpt is not None:
        _log(dist, f"resuming from {run.resume_from} after epoch {start_epoch}")
    state = TrainState(config, run.model, run.optimizer, run.scheduler, dist, device, run.out_dir,
                       epoch=start_epoch, step=start_epoch * run.steps_per_epoch)
    _run(callbacks, "on_train_start", state)
    _log(dist, f"training {config.method} ({run.arch['projector']} projector, {config.arch}) on {config.data}: "
               f"{config.epochs} epochs x {run.steps_per_epoch} steps, global batch {config.batch_size}, "
               f"{dist.world_size} process(es), {device}")
    train_net = _parallel(run.net, dist, device)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        sums = _train_epoch(config, run, train_net, state, callbacks, epoch)
        _end_epoch(config, run, state, callbacks, epoch, sums, elapsed=time.perf_counter() - t0)
    _run(callbacks, "on_train_end", state)
    if dist.world_size > 1 and joined_here:
        torch.distributed.destroy_process_group()
    return TrainResult(model=run.model.cpu().eval(), checkpoint_path=run.ckpt_path,
                       metrics=_read_rows(run.metrics_path) if dist.is_main else [], config=config)


def _parallel(net: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
    if dist.world_size == 1:
        return net
    if device.type == "cuda":  # SyncBatchNorm needs CUDA; on CPU each process normalises its own shard
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _train_epoch(config: TrainConfig, run: Run, train_net: nn.Module, state: TrainState, callbacks: Callbacks,
                 epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One epoch of steps: ``(loss sum, online-head correct, labels seen)``, all still on the device."""
    device = state.device
    train_net.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    finite = torch.ones((), dtype=torch.bool, device=device)
    for i, (x1, x2, y) in enumerate(run.stream.epoch(epoch)):
        if config.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
            z, logits = train_net(x1, x2)  # per-view BatchNorm unless config.joint_batchnorm
        loss = global_loss(z, loss=config.loss, temperature=config.temperature)
        total = loss
        if logits is not None:
            labels = torch.cat([y, y]) if run.head_views == 2 else y
            total = total + F.cross_entropy(logits.float(), labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += labels.numel()
        run.optimizer.zero_grad(set_to_none=True)
        total.backward()
        run.optimizer.step()
        run.scheduler.step()
        loss = loss.detach()
        loss_sum += loss
        finite &= torch.isfinite(loss)  # stays on the device: no sync per step
        state.step, state.loss = state.step + 1, loss
        _run(callbacks, "on_step_end", state)
        if config.log_every and (i + 1) % config.log_every == 0:  # a sync point, only every log_every steps
            _log(state.dist, f"epoch {epoch + 1} step {i + 1}/{run.steps_per_epoch} loss {loss.item():.4f}")
            if not bool(finite):
                break
    # One sync point per epoch: read the accumulated loss, accuracy and finiteness flag.
    if not bool(finite):
        last = f"{run.ckpt_path} (epoch {epoch})" if run.ckpt_path.exists() and epoch > 0 else "none written yet"
        raise NonFiniteLossError(
            f"the loss became NaN/Inf during epoch {epoch + 1}; stopped without saving. Last good checkpoint: "
            f"{last}. Lower --lr or check the data."
        )
    return loss_sum, correct, seen


def _end_epoch(config: TrainConfig, run: Run, state: TrainState, callbacks: Callbacks, epoch: int,
               sums: tuple[torch.Tensor, torch.Tensor, int], *, elapsed: float) -> None:
    """The epoch's row, the epoch callbacks (the monitor), the log line and the checkpoint."""
    loss_sum, correct, seen = sums
    state.epoch = epoch + 1
    state.row = {
        "epoch": epoch + 1,
        "step": state.step,
        "loss": float(loss_sum) / max(1, run.steps_per_epoch),
        "lr": run.optimizer.param_groups[0]["lr"],
        "imgs_per_s": run.steps_per_epoch * config.batch_size / elapsed,
        "epoch_time_s": elapsed,
    }
    if seen:
        state.row["online_acc"] = float(correct) / seen
    _run(callbacks, "on_epoch_end", state)
    if state.dist.is_main:
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(state.row) + "\n")
        save_checkpoint(run.ckpt_path, {
            "arch": run.arch,
            "config": config.to_dict(),
            "model": run.model.state_dict(),
            "online_head": run.head.state_dict() if run.head is not None else None,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "epoch": epoch + 1,
            "step": state.step,
            "rng": rng_state(),
        })
        if config.save_every and ((epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs):
            keep_history(run.ckpt_path, run.out_dir, epoch + 1)
    msg = " ".join(f"{k} {v:.4g}" for k, v in state.row.items() if isinstance(v, float) and "/" not in k)
    _log(state.dist, f"epoch {epoch + 1}/{config.epochs} {msg}")
    _run(callbacks, "on_checkpoint", state)


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
