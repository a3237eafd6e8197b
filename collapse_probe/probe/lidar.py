"""lidar(model, loader, views=q): LiDAR of a model's embeddings, streamed; and of a checkpoint.

The loop is its own, short one rather than :func:`collapse_probe.spectrum`'s: a LiDAR batch is
(B, q, ...) and must be flattened to (B q, ...) before the forward and each captured output
reshaped back to (B, q, D) after it, and none of ``spectrum``'s row-level options (a row cap,
per-call spectra of repeated layers, attention-mask pooling) has a meaning for classes of q views.
Everything else is shared: the hooks and their removal, eval mode, output picking and pooling,
device resolution, the progress bar and the float64 accumulators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapse_probe._utils.devices import resolve_device
from collapse_probe._utils.ranks import is_distributed, is_main_process
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.lidar import LIDAR_DELTA, LIDAR_EPS, Lidar, LidarAccumulator
from collapse_probe.probe.batches import default_input
from collapse_probe.probe.capture import (
    capture_outputs,
    eval_mode,
    from_transformers,
    pick_tensor,
    pool_output,
    resolve_modules,
)
from collapse_probe.probe.stream import OUTPUT, PRECISIONS, _check_input, _progress


def _views_input(batch: Any, views: int, input_fn: Callable[[Any], Any] | None) -> torch.Tensor:
    x = input_fn(batch) if input_fn is not None else default_input(batch)
    if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[1] != views:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise CollapseProbeError(f"LiDAR batches hold (batch, views={views}, ...) inputs; got {shape}")
    return x


def _agree_on_dimensions(accumulators: dict[str, LidarAccumulator], keys: list[str], batches: int,
                         device: torch.device, **settings: Any) -> None:
    """Ranks whose shard was empty get an empty accumulator, so every rank joins every all-reduce."""
    import torch.distributed as dist

    sizes = torch.tensor([batches] + [accumulators[k].dim if k in accumulators else 0 for k in keys], device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    if int(sizes[0]) == 0:
        raise CollapseProbeError("the loader yielded no batches on any rank")
    for key, dim in zip(keys, sizes[1:].tolist(), strict=True):
        if key not in accumulators and dim > 0:
            accumulators[key] = LidarAccumulator(dim, device=device, layer=None if key == OUTPUT else key, **settings)


def lidar(
    model: nn.Module,
    loader: Iterable,
    *,
    views: int,
    layers: str | Sequence[str] | None = None,
    device: torch.device | str | None = None,
    delta: float = LIDAR_DELTA,
    eps: float = LIDAR_EPS,
    pool: str = "avg",
    input_fn: Callable[[Any], Any] | None = None,
    output_fn: Callable[[Any], Any] | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> Lidar | dict[str, Lidar]:
    """LiDAR (Thilak et al., ICLR 2024) of a model's embeddings, streamed in O(d^2) memory.

    Each batch holds (B, q, ...) inputs: q augmented views of B clean samples (a tensor, or
    element 0 of a tuple, or what ``input_fn`` returns). The views are run as one (B q, ...)
    forward in eval mode under ``torch.inference_mode``; each requested layer is hooked, pooled
    to (B q, D) (``pool`` as in :func:`collapse_probe.spectrum`), reshaped to (B, q, D) and
    folded into a :class:`LidarAccumulator`. Each sample is one LDA class, so the score is
    capped at ``min(D, number of samples - 1)``. Under ``torch.distributed`` each rank streams
    its shard and the statistics are all-reduced: every rank returns the same result.

    Args:
        views: q, views per sample (at least 2).
        layers: ``None`` (the model output, one :class:`Lidar`), a module name (one), or a
            list (``dict[name, Lidar]``).
        delta / eps: stable-pretraining's ridge on ``Sw`` (1e-4) and eps on the eigenvalues (1e-8).
        precision: ``None``/``"fp32"``, or ``"bf16"``/``"fp16"`` autocast for the forward.

    >>> model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> loader = [torch.randn(32, 4, 6) for _ in range(4)]  # 128 samples, 4 views each
    >>> result = lidar(model, loader, views=4, layers=["0", "2"], progress=False)
    >>> [(name, r.dim, r.n_classes) for name, r in result.items()]
    [('0', 5, 128), ('2', 3, 128)]
    """
    if precision not in PRECISIONS:
        raise CollapseProbeError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if layers is not None and not isinstance(layers, str) and len(layers) == 0:
        raise CollapseProbeError("layers is empty: name at least one module, or pass layers=None for the model output")
    names = [layers] if isinstance(layers, str) else list(layers or [])
    modules = resolve_modules(model, names)
    device = resolve_device(device, model=model)
    model.to(device)
    settings = {"views": int(views), "delta": delta, "eps": eps}
    LidarAccumulator(1, **settings)  # checks views, delta and eps before any forward
    first_of_tuple = {name: from_transformers(module) for name, module in modules.items()} | {OUTPUT: from_transformers(model)}
    captured: dict[str, list[torch.Tensor]] = {}
    accumulators: dict[str, LidarAccumulator] = {}

    def capture(name: str, output: Any) -> None:
        where = f"layer {name!r}" if name != OUTPUT else "the model output"
        tensor = pick_tensor(output if output_fn is None else output_fn(output), where, first_of_tuple=first_of_tuple[name])
        captured.setdefault(name, []).append(pool_output(tensor, pool, where))

    autocast: Callable[[], contextlib.AbstractContextManager] = (
        contextlib.nullcontext if PRECISIONS[precision] is None
        else lambda: torch.autocast(device_type=device.type, dtype=PRECISIONS[precision]))
    batches = 0
    with eval_mode(model), capture_outputs(modules, capture), torch.inference_mode():
        for batch in _progress(loader, progress and is_main_process()):
            x = _views_input(batch, views, input_fn).to(device, non_blocking=True)
            if batches == 0:
                _check_input(x, model)
            captured.clear()
            with autocast():
                output = model(x.flatten(0, 1))
            if not names:
                capture(OUTPUT, output)
            for name, outputs in captured.items():
                if len(outputs) > 1:
                    raise CollapseProbeError(f"layer {name!r} ran {len(outputs)} times in one forward pass; LiDAR "
                                             "needs one output per view: probe a layer that runs once")
                z = outputs[0].reshape(x.shape[0], views, -1)
                if name not in accumulators:
                    accumulators[name] = LidarAccumulator(z.shape[-1], device=device,
                                                          layer=None if name == OUTPUT else name, **settings)
                accumulators[name].update(z)
            batches += 1
    keys = names or [OUTPUT]
    if is_distributed():
        _agree_on_dimensions(accumulators, keys, batches, device, **settings)
    elif batches == 0:
        raise CollapseProbeError("the loader yielded no batches")
    missing = [name for name in names if name not in accumulators]
    if missing:
        raise CollapseProbeError(f"layers {missing} never ran during the forward pass; pick modules on the forward path")
    for key in keys:
        accumulators[key].sync()
    results = {key: accumulators[key].compute() for key in keys}
    return results if names and not isinstance(layers, str) else results[keys[0]]


# ------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class LidarConfig:
    """Everything ``collapse-probe lidar`` needs besides the checkpoint path."""

    data: str
    views: int = 8
    seed: int = 0
    image_size: int | None = None  # None: the checkpoint's training crop size, else 224
    batch_size: int = 64
    workers: int = 0
    max_samples: int | None = None
    strict: bool = False
    arch: str | None = None
    layers: tuple[str, ...] = ()
    device: str = "auto"
    precision: str | None = None
    delta: float = LIDAR_DELTA
    eps: float = LIDAR_EPS
    trust_checkpoint: bool = False
    allow_partial: bool = False
    progress: bool = True


@dataclass(frozen=True)
class LidarReport:
    """LiDAR per probed layer of one checkpoint, each layer's role, and where the numbers came from."""

    results: dict[str, Lidar]
    roles: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "layers": {name: {"role": self.roles.get(name, ""), **r.to_dict()}
                                                  for name, r in self.results.items()}}


def lidar_checkpoint(path: str | Path, config: LidarConfig) -> LidarReport:
    """Load a checkpoint, make ``config.views`` seeded augmented views of each image, stream LiDAR.

    Layers: ``config.layers`` if given, else the checkpoint's default layers (representation,
    and embedding when it has a projector), else its output.
    """
    from collapse_probe._utils.devices import parse_device
    from collapse_probe.data.views import open_views
    from collapse_probe.models.loading import load_encoder_with_report
    from collapse_probe.pipeline.checkpoints import DEFAULT_IMAGE_SIZE
    from collapse_probe.pipeline.outputs import OUTPUT_NAME

    device = parse_device(config.device)
    loaded = load_encoder_with_report(path, config.arch, trust_checkpoint=config.trust_checkpoint,
                                      allow_partial=config.allow_partial)
    plan = {name: loaded.default_layers.get(name, "") for name in config.layers} if config.layers else dict(loaded.default_layers)
    image_size = config.image_size or loaded.image_size or DEFAULT_IMAGE_SIZE
    loader = open_views(config.data, views=config.views, image_size=image_size, batch_size=config.batch_size,
                        workers=config.workers, max_samples=config.max_samples, strict=config.strict, seed=config.seed)
    solved = lidar(loaded.model, loader, views=config.views, layers=list(plan) or None, device=device,
                   delta=config.delta, eps=config.eps, precision=config.precision, progress=config.progress)
    results = solved if isinstance(solved, dict) else {OUTPUT_NAME: solved}
    roles = {name: role for name, role in plan.items() if role} or {OUTPUT_NAME: "output"}
    source = {"checkpoint": str(path), "loaded_as": loaded.report.kind, "arch": loaded.report.arch,
              "data": str(config.data), "n_images": loader.n_images, "n_unreadable_skipped": loader.n_skipped,
              "image_size": image_size, "views": config.views, "seed": config.seed,
              "augmentation": "the paper's view transforms, alternating view 1 / view 2, seeded per image",
              "precision": config.precision or "fp32", "device": str(device), "load": loaded.report.to_dict()}
    return LidarReport(results, roles, source)
