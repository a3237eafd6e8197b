"""spectrum(model, loader): the one streaming loop from batches to covariance spectra."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from collapse_probe._utils.devices import resolve_device
from collapse_probe._utils.ranks import is_distributed as _is_distributed
from collapse_probe._utils.ranks import is_main_process as _is_main_process
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.covariance import CovarianceAccumulator
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.metrics.solve import solve_spectra
from collapse_probe.probe.batches import ForwardKeywords, batch_mask, call_arguments, to_device
from collapse_probe.probe.capture import (
    capture_outputs,
    eval_mode,
    from_transformers,
    pick_tensor,
    pool_output,
    resolve_modules,
)
from collapse_probe.results.spectrum import Spectrum

PRECISIONS = {None: None, "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}
OUTPUT = "<output>"
REPEATED_CALLS = ("error", "first", "last", "each")


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


def _new_accumulator(dim: int, groups: int | None, **conventions: Any) -> CovarianceAccumulator | GroupedAccumulator:
    """One layer's accumulator: K groups for jackknife error bars when ``groups`` is set."""
    if groups is None:
        return CovarianceAccumulator(dim, **conventions)
    return GroupedAccumulator(dim, groups=groups, **conventions)


def _agree_on_dimensions(
    accumulators: dict[str, Any], keys: list[str], batches: int, device: torch.device, groups: int | None = None,
    **conventions: Any
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
            accumulators[key] = _new_accumulator(dim, groups, device=device, layer=None if key == OUTPUT else key,
                                                 **conventions)


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
    output_fn: Callable[[Any], Any] | None = None,
    pool: str = "avg",
    precision: str | None = None,
    progress: bool = True,
    skip_nonfinite: bool = False,
    repeated_calls: str = "error",
    groups: int | None = None,
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
        input_fn: ``batch -> model input`` (called as ``model(input_fn(batch))``), overriding the
            default: a dict batch whose keys name parameters of ``model.forward`` (a tokenizer
            batch) is passed as ``model(**batch)`` (only those keys; every key to a ``**kwargs``
            forward); otherwise a tensor, element 0 of a tuple, or a dict's ``input``/``image``/
            ``pixel_values``/... entry is the single positional input.
        output_fn: ``output -> tensor to probe``, applied to the model output (``layers=None``)
            or to each hooked layer's output. By default a dict or ``ModelOutput`` gives its
            ``last_hidden_state`` (else its first tensor field), and a tuple from a Hugging Face
            module gives element 0 (its hidden states); other tuples are an error.
        pool: (B, C, H, W) -> (B, C) by ``"avg"`` (default), ``"max"`` or ``"flatten"``;
            (B, T, D) tokens by ``"avg"``/``"max"`` over T or ``"cls"`` (token 0). When the batch is
            a dict with an ``attention_mask`` (B, T), ``"avg"`` is the masked mean over real tokens
            (sentence-transformers' mean pooling) and ``"max"`` skips padding; the result's
            ``extra["attention_mask"]`` is then True.
        precision: ``None``/``"fp32"``, or ``"bf16"``/``"fp16"`` to run the forward under autocast.
        progress: a tqdm bar on stderr (rank 0 only).
        skip_nonfinite: drop rows with NaN/Inf (counted) instead of raising.
        repeated_calls: what to do with a layer that runs more than once per forward pass
            (siamese views, a weight-tied block), whose outputs would otherwise count k x B rows
            for B inputs: ``"error"`` (default) raises naming the module and its call count;
            ``"first"`` / ``"last"`` probe only that call (recorded in ``Spectrum.extra``);
            ``"each"`` probes every call as its own spectrum, keyed ``"name#0"``, ``"name#1"``, ...
            (the result is then always a dict).
        groups: K >= 2 for error bars: batch i goes to group ``i mod K`` (K accumulators per layer,
            O(K d^2) memory, no extra work per batch) and each result's ``stderr`` holds every
            scalar metric's delete-a-group jackknife standard error (K + 1 eigen-solves per layer
            instead of one). The spectrum itself is the ungrouped one (to round-off). Needs at
            least K batches. ``None`` (default): no groups, ``stderr`` empty.

    Returns:
        A :class:`Spectrum`, or ``dict[str, Spectrum]`` when ``layers`` is a list (or
        ``repeated_calls="each"``).

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> loader = DataLoader(TensorDataset(torch.randn(256, 8)), batch_size=64)
    >>> result = spectrum(model, loader, layers=["0", "2"], progress=False)
    >>> [(name, s.dim, s.n_samples) for name, s in result.items()]
    [('0', 16, 256), ('2', 4, 256)]
    """
    if precision not in PRECISIONS:
        raise CollapseProbeError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if repeated_calls not in REPEATED_CALLS:
        raise CollapseProbeError(f"unknown repeated_calls {repeated_calls!r}; use one of {', '.join(REPEATED_CALLS)}")
    if groups is not None and groups < 2:
        raise CollapseProbeError(f"groups must be at least 2 for a jackknife standard error, got {groups}")
    if max_samples is not None and max_samples < 2:
        raise CollapseProbeError(f"max_samples must be at least 2, got {max_samples}")
    if layers is not None and not isinstance(layers, str) and len(layers) == 0:
        raise CollapseProbeError("layers is empty: name at least one module, or pass layers=None for the model output")
    names = [layers] if isinstance(layers, str) else list(layers or [])
    if len(set(names)) != len(names):
        raise CollapseProbeError(f"layers contains duplicates: {names}")
    modules = resolve_modules(model, names)
    device = resolve_device(device, model=model)
    model.to(device)
    autocast_dtype = PRECISIONS[precision]
    keywords = ForwardKeywords.of(model)
    first_of_tuple = {name: from_transformers(module) for name, module in modules.items()}
    first_of_tuple[OUTPUT] = from_transformers(model)
    mask: torch.Tensor | None = None  # this batch's attention_mask, read by capture() during its forward
    masked: set[str] = set()  # layers whose tokens were pooled over an attention mask
    accumulators: dict[str, CovarianceAccumulator | GroupedAccumulator] = {}
    calls_seen: dict[str, int] = {}  # the most calls per forward of each layer
    remaining = max_samples if max_samples is not None else float("inf")
    captured: dict[str, list[torch.Tensor]] = {}

    def capture(name: str, output: Any) -> None:
        where = f"layer {name!r}" if name != OUTPUT else "the model output"
        tensor = pick_tensor(output if output_fn is None else output_fn(output), where,
                             first_of_tuple=first_of_tuple[name])
        if mask is not None and isinstance(tensor, torch.Tensor) and tensor.ndim == 3 and pool in ("avg", "max"):
            masked.add(name)
        captured.setdefault(name, []).append(pool_output(tensor, pool, where, mask=mask))

    def accumulate(key: str, layer: str, z: torch.Tensor) -> None:
        if key not in accumulators:
            accumulators[key] = _new_accumulator(
                z.shape[1], groups, device=device, center=center, normalize=normalize,
                layer=None if layer == OUTPUT else key, skip_nonfinite=skip_nonfinite,
            )
        accumulators[key].update(z[: int(min(remaining, z.shape[0]))])

    def fold_batch() -> int:
        """Fold this forward's captured outputs into the accumulators; the batch's row count."""
        rows = 0
        for name, outputs in captured.items():
            calls_seen[name] = max(calls_seen.get(name, 0), len(outputs))
            if len(outputs) > 1 and repeated_calls == "error":
                raise CollapseProbeError(
                    f"layer {name!r} ran {len(outputs)} times in one forward pass (siamese views or a weight-tied "
                    f"block?), so it would count {len(outputs)} rows per input: choose repeated_calls='first', "
                    "'last' or 'each' (CLI: --repeated-calls)"
                )
            if repeated_calls == "each" and name != OUTPUT:
                for call, z in enumerate(outputs):
                    accumulate(f"{name}#{call}", name, z)
            else:
                accumulate(name, name, outputs[-1] if repeated_calls == "last" else outputs[0])
            rows = max(rows, outputs[0].shape[0])
        captured.clear()
        return rows

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    batches = 0
    with eval_mode(model), capture_outputs(modules, capture) as counts, torch.inference_mode():
        for batch in _progress(loader, progress and _is_main_process()):
            if remaining <= 0:
                break
            args, kwargs = to_device(call_arguments(batch, keywords, input_fn), device)
            mask = to_device(batch_mask(batch), device)
            if batches == 0 and args:
                _check_input(args[0], model)
            counts.start_forward()
            captured.clear()
            with autocast():
                output = model(*args, **kwargs)
            if not names:
                capture(OUTPUT, output)
            remaining -= fold_batch()
            batches += 1
    if repeated_calls == "each":
        calls_seen = _agree_on_calls(calls_seen, names, device) if _is_distributed() else calls_seen
        keys = [f"{name}#{call}" for name in names for call in range(calls_seen.get(name, 0))] or [OUTPUT]
    else:
        keys = names or [OUTPUT]
    if _is_distributed():
        _agree_on_dimensions(accumulators, keys, batches, device, groups, center=center, normalize=normalize,
                             skip_nonfinite=skip_nonfinite)
    elif batches == 0:
        raise CollapseProbeError("the loader yielded no batches")
    missing = [name for name in names if not any(key == name or key.startswith(f"{name}#") for key in accumulators)]
    if missing:
        raise CollapseProbeError(f"layers {missing} never ran during the forward pass; pick modules on the forward path")
    for key in keys:
        accumulators[key].sync()
    if groups is None:
        solved = solve_spectra([accumulators[key] for key in keys])
    else:  # the full spectrum plus K leave-one-group-out solves per layer
        solved = [accumulators[key].compute() for key in keys]
    solved = [_note_calls(s, key, calls_seen, repeated_calls) for s, key in zip(solved, keys, strict=True)]
    solved = [_note_mask(s, key, masked) for s, key in zip(solved, keys, strict=True)]
    if repeated_calls == "each" and names:
        return dict(zip(keys, solved, strict=True))
    if isinstance(layers, str) or layers is None:
        return solved[0]
    return dict(zip(names, solved, strict=True))


def _note_calls(result: Spectrum, key: str, calls_seen: Mapping[str, int], repeated_calls: str) -> Spectrum:
    """Record in the result which call of a repeatedly-run layer it describes."""
    name, _, call = key.rpartition("#") if repeated_calls == "each" and "#" in key else (key, "", "")
    calls = calls_seen.get(name, 1)
    if calls <= 1 and not call:
        return result
    note = {"calls_per_forward": calls, "call_used": int(call) if call else repeated_calls}
    return dataclasses.replace(result, extra={**result.extra, **note})


def _note_mask(result: Spectrum, key: str, masked: set[str]) -> Spectrum:
    """Record that this layer's token outputs were pooled over the batches' attention masks."""
    if key.rpartition("#")[0] not in masked and key not in masked:
        return result
    return dataclasses.replace(result, extra={**result.extra, "attention_mask": True})


def _agree_on_calls(calls_seen: dict[str, int], names: Sequence[str], device: torch.device) -> dict[str, int]:
    """The most calls per forward of each layer over all ranks (so every rank solves the same keys)."""
    import torch.distributed as dist

    counts = torch.tensor([calls_seen.get(name, 0) for name in names], dtype=torch.int64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return {name: int(count) for name, count in zip(names, counts.tolist(), strict=True) if count > 0}
