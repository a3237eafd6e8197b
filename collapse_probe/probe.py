"""spectrum(model, loader): the one streaming loop from batches to covariance spectra."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from collapse_probe.accumulator import CovarianceAccumulator
from collapse_probe.capture import capture_outputs, eval_mode, pool_output, resolve_modules
from collapse_probe.errors import CollapseProbeError
from collapse_probe.result import Spectrum
from collapse_probe.solve import solve_spectra

INPUT_KEYS = ("input", "inputs", "image", "images", "img", "pixel_values", "x")
PRECISIONS = {None: None, "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}
OUTPUT = "<output>"


def default_input(batch: Any) -> Any:
    """The model input of a batch: a tensor itself, element 0 of a tuple/list, or a known dict key."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise CollapseProbeError(
            f"cannot find the input in a dict batch with keys {sorted(batch)}; pass input_fn=lambda b: b[KEY]"
        )
    raise CollapseProbeError(f"cannot take the input from a batch of type {type(batch).__name__}; pass input_fn")


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter or buffer, else CPU."""
    if device is not None:
        return torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _check_input(x: Any, model: nn.Module) -> None:
    if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()):
        if not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()):
            raise CollapseProbeError(
                f"the model input is an integer tensor ({x.dtype}); convert images to float "
                "(e.g. transforms.v2.ToDtype(torch.float32, scale=True)) or pass input_fn"
            )


def _progress(loader: Iterable, enabled: bool) -> Iterable:
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(loader, total=total, desc="probing", unit="batch", file=sys.stderr, leave=False)


def _is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not _is_distributed() or dist.get_rank() == 0


def _agree_on_dimensions(
    accumulators: dict[str, CovarianceAccumulator], keys: list[str], batches: int, device: torch.device, **conventions: Any
) -> None:
    """Give ranks whose shard was empty an empty accumulator of the right size, so every rank
    joins the same all-reduces (one rank with no data must not hang the others)."""
    import torch.distributed as dist

    sizes = torch.tensor([batches] + [accumulators[k].dim if k in accumulators else 0 for k in keys], device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    if int(sizes[0]) == 0:
        raise CollapseProbeError("the loader yielded no batches on any rank")
    for key, dim in zip(keys, sizes[1:].tolist(), strict=True):
        if key not in accumulators and dim > 0:
            accumulators[key] = CovarianceAccumulator(dim, device=device, layer=None if key == OUTPUT else key, **conventions)


def spectrum(
    model: nn.Module,
    loader: Iterable,
    *,
    layers: str | Sequence[str] | None = None,
    device: torch.device | str | None = None,
    normalize: bool = False,
    center: bool = True,
    max_samples: int | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    pool: str = "avg",
    precision: str | None = None,
    progress: bool = True,
    skip_nonfinite: bool = False,
) -> Spectrum | dict[str, Spectrum]:
    """Covariance spectra of a model's embeddings, streamed over a loader in O(d^2) memory.

    One pass over ``loader`` in eval mode under ``torch.inference_mode`` (each submodule's
    previous train/eval flag is restored afterwards). Requested layers are captured by forward
    hooks (removed on every exit path), pooled to (B, D), and folded into one float64
    :class:`CovarianceAccumulator` per layer on ``device`` (no host sync per batch). Under
    ``torch.distributed`` each rank streams its own shard and the statistics are all-reduced, so
    every rank returns the identical result. All layers are then solved in one batched call.

    Args:
        model: any ``nn.Module``; it is moved to ``device`` when one is given.
        loader: an iterable of batches: tensors, ``(input, target)`` tuples/lists, or dicts.
        layers: ``None`` probes the model output and returns one Spectrum; a module name
            (as ``model.named_modules()`` names it) returns one Spectrum; a list returns
            ``dict[name, Spectrum]`` in the given order.
        device: where the forward and the statistics run; default the model's device.
        normalize: L2-normalise each vector first (the paper's public script does).
        center: subtract the mean (the paper's covariance); False for the raw second moment.
        max_samples: stop after this many rows (per process under torch.distributed).
        input_fn: ``batch -> model input``, overriding :func:`default_input`.
        pool: (B, C, H, W) -> (B, C) by ``"avg"`` (default), ``"max"`` or ``"flatten"``;
            (B, T, D) tokens by ``"avg"``/``"max"`` over T or ``"cls"`` (token 0).
        precision: ``None``/``"fp32"``, or ``"bf16"``/``"fp16"`` to run the forward under autocast.
        progress: a tqdm bar on stderr (rank 0 only).
        skip_nonfinite: drop rows with NaN/Inf (counted) instead of raising.

    Returns:
        A :class:`Spectrum`, or ``dict[str, Spectrum]`` when ``layers`` is a list.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> loader = DataLoader(TensorDataset(torch.randn(256, 8)), batch_size=64)
    >>> result = spectrum(model, loader, layers=["0", "2"], progress=False)
    >>> [(name, s.dim, s.n_samples) for name, s in result.items()]
    [('0', 16, 256), ('2', 4, 256)]
    """
    if precision not in PRECISIONS:
        raise CollapseProbeError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if max_samples is not None and max_samples < 2:
        raise CollapseProbeError(f"max_samples must be at least 2, got {max_samples}")
    names = [layers] if isinstance(layers, str) else list(layers or [])
    if len(set(names)) != len(names):
        raise CollapseProbeError(f"layers contains duplicates: {names}")
    modules = resolve_modules(model, names)
    device = resolve_device(model, device)
    model.to(device)
    autocast_dtype = PRECISIONS[precision]
    extract = input_fn or default_input
    accumulators: dict[str, CovarianceAccumulator] = {}
    budget = {"remaining": max_samples if max_samples is not None else float("inf")}

    def accumulate(name: str, output: Any) -> None:
        where = f"layer {name!r}" if name != OUTPUT else "the model output"
        z = pool_output(output, pool, where)
        budget["batch_rows"] = z.shape[0]
        if budget["remaining"] < z.shape[0]:
            z = z[: int(budget["remaining"])]
        if name not in accumulators:
            accumulators[name] = CovarianceAccumulator(
                z.shape[1], device=device, center=center, normalize=normalize,
                layer=None if name == OUTPUT else name, skip_nonfinite=skip_nonfinite,
            )
        accumulators[name].update(z)

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    batches = 0
    with eval_mode(model), capture_outputs(modules, accumulate), torch.inference_mode():
        for batch in _progress(loader, progress and _is_main_process()):
            if budget["remaining"] <= 0:
                break
            x = _to_device(extract(batch), device)
            if batches == 0:
                _check_input(x, model)
            with autocast():
                output = model(x)
            if not names:
                accumulate(OUTPUT, output)
            budget["remaining"] -= budget.pop("batch_rows", 0)
            batches += 1
    keys = names or [OUTPUT]
    if _is_distributed():
        _agree_on_dimensions(accumulators, keys, batches, device, center=center, normalize=normalize,
                             skip_nonfinite=skip_nonfinite)
    elif batches == 0:
        raise CollapseProbeError("the loader yielded no batches")
    missing = [name for name in names if name not in accumulators]
    if missing:
        raise CollapseProbeError(f"layers {missing} never ran during the forward pass; pick modules on the forward path")
    for key in keys:
        accumulators[key].sync()
    solved = solve_spectra([accumulators[key] for key in keys])
    if isinstance(layers, str) or layers is None:
        return solved[0]
    return dict(zip(names, solved, strict=True))
