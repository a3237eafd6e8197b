"""spectrum(model, loader): batches -> rows -> float64 covariance accumulators -> one batched solve."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.covariance import CovarianceAccumulator
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.metrics.solve import solve_spectra
from collapse_probe.probe.batches import ForwardKeywords, batch_mask, call_arguments, to_device
from collapse_probe.probe.loop import OUTPUT, Forward, agree_on_calls, finish, on_device, stream
from collapse_probe.probe.options import PRECISIONS, REPEATED_CALLS, ProbeOptions
from collapse_probe.results.spectrum import Spectrum

__all__ = ["OUTPUT", "PRECISIONS", "REPEATED_CALLS", "spectrum"]

Accumulator = CovarianceAccumulator | GroupedAccumulator


def spectrum(model: nn.Module, loader: Iterable, options: ProbeOptions | None = None,
             **option_kwargs: Any) -> Spectrum | dict[str, Spectrum]:
    """Covariance spectra of a model's embeddings, streamed over a loader in O(d^2) memory.

    One pass over ``loader`` in eval mode under ``torch.inference_mode`` (each submodule's
    previous train/eval flag is restored afterwards, and the model goes back to its device).
    Requested layers are captured by forward hooks (removed on every exit path), pooled to
    (B, D), and folded into one float64 :class:`CovarianceAccumulator` per layer on the device
    (no host sync per batch). Under ``torch.distributed`` each rank streams its own shard and the
    statistics are all-reduced, so every rank returns the identical result. All layers are then
    solved in one batched call.

    Args:
        model: any ``nn.Module``.
        loader: an iterable of batches: tensors, ``(input, target)`` tuples/lists, or dicts.
        options: a :class:`~collapse_probe.probe.options.ProbeOptions`; every field may instead
            (or also, on top) be given as a keyword argument of the same name: ``layers``,
            ``pool``, ``input_fn``, ``output_fn``, ``center``, ``normalize``, ``precision``,
            ``max_samples``, ``skip_nonfinite``, ``groups``, ``repeated_calls``, ``device``,
            ``progress``. Their meaning is documented once, on ``ProbeOptions``.

    With ``groups=K`` each result's ``stderr`` holds every scalar metric's delete-a-group
    jackknife standard error (K + 1 eigen-solves per layer). With ``repeated_calls="each"``
    every call of a repeated layer is its own spectrum, keyed ``"name#0"``, ``"name#1"``, ...

    Returns:
        A :class:`Spectrum` for ``layers=None`` or one name; ``dict[name, Spectrum]`` for a list
        (or ``repeated_calls="each"``); ``dict[display name, Spectrum]`` for a mapping.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> loader = DataLoader(TensorDataset(torch.randn(256, 8)), batch_size=64)
    >>> result = spectrum(model, loader, layers=["0", "2"], progress=False)
    >>> [(name, s.dim, s.n_samples) for name, s in result.items()]
    [('0', 16, 256), ('2', 4, 256)]
    """
    options = ProbeOptions.build(options, **option_kwargs)
    with on_device(model, options) as device:
        forward = Forward(model, options, device)
        accumulators: dict[str, Accumulator] = {}
        batches = stream(forward, loader, _preparer(model, options, device), _folder(forward, accumulators, device))
        names = forward.names
        if options.repeated_calls == "each" and names:
            calls = agree_on_calls(forward.calls_seen, names, device)
            keys = [f"{n}#{c}" for n in names for c in range(calls.get(n, 0))] or [OUTPUT]
        else:
            keys = names or [OUTPUT]
        finish(accumulators, keys, batches, device, lambda key, dim: _new_accumulator(key, dim, options, device), names)
        if options.groups is None:
            solved = solve_spectra([accumulators[key] for key in keys])
        else:  # the full spectrum plus K leave-one-group-out solves per layer
            solved = [accumulators[key].compute() for key in keys]
    solved = [_annotate(s, key, forward, options) for s, key in zip(solved, keys, strict=True)]
    return _shape_result(dict(zip(keys, solved, strict=True)), options)


def _new_accumulator(key: str, dim: int, options: ProbeOptions, device: torch.device) -> Accumulator:
    """One layer's accumulator: K groups for jackknife error bars when ``groups`` is set."""
    conventions = {"center": options.center, "normalize": options.normalize, "device": device,
                   "layer": None if key == OUTPUT else key, "skip_nonfinite": options.skip_nonfinite}
    if options.groups is None:
        return CovarianceAccumulator(dim, **conventions)
    return GroupedAccumulator(dim, groups=options.groups, **conventions)


def _preparer(model: nn.Module, options: ProbeOptions, device: torch.device):
    keywords = ForwardKeywords.of(model)

    def prepare(batch: Any) -> tuple[tuple, dict, Any]:
        args, kwargs = to_device(call_arguments(batch, keywords, options.input_fn), device)
        return args, kwargs, to_device(batch_mask(batch), device)

    return prepare


def _folder(forward: Forward, accumulators: dict[str, Accumulator], device: torch.device):
    options = forward.options

    def accumulate(key: str, z: torch.Tensor, rows_left: float) -> None:
        if key not in accumulators:
            accumulators[key] = _new_accumulator(key, z.shape[1], options, device)
        accumulators[key].update(z[: int(min(rows_left, z.shape[0]))])

    def fold(outputs: dict[str, list[torch.Tensor]], rows_left: float) -> int:
        rows = 0
        for name, calls in outputs.items():
            if len(calls) > 1 and options.repeated_calls == "error":
                raise CollapseProbeError(
                    f"layer {name!r} ran {len(calls)} times in one forward pass (siamese views or a weight-tied "
                    f"block?), so it would count {len(calls)} rows per input: choose repeated_calls='first', "
                    "'last' or 'each' (CLI: --repeated-calls)"
                )
            if options.repeated_calls == "each" and name != OUTPUT:
                for call, z in enumerate(calls):
                    accumulate(f"{name}#{call}", z, rows_left)
            else:
                accumulate(name, calls[-1] if options.repeated_calls == "last" else calls[0], rows_left)
            rows = max(rows, calls[0].shape[0])
        return int(min(rows, rows_left))

    return fold


def _annotate(result: Spectrum, key: str, forward: Forward, options: ProbeOptions) -> Spectrum:
    """Record in the result which call of a repeated layer it is, and attention-mask pooling."""
    extra = dict(result.extra)
    name, _, call = key.rpartition("#") if options.repeated_calls == "each" and "#" in key else (key, "", "")
    calls = forward.calls_seen.get(name, 1)
    if calls > 1 or call:
        extra |= {"calls_per_forward": calls, "call_used": int(call) if call else options.repeated_calls}
    if name in forward.masked:
        extra["attention_mask"] = True
    if name in forward.pooled:
        extra["pool"] = forward.pooled[name]
    return dataclasses.replace(result, extra=extra)


def _shape_result(solved: dict[str, Spectrum], options: ProbeOptions) -> Spectrum | dict[str, Spectrum]:
    """One Spectrum, a dict by module name (or ``name#call``), or a dict by display name."""
    if options.repeated_calls == "each" and options.module_names():
        return solved
    if options.single:
        return next(iter(solved.values()))
    display: Mapping[str, str] | None = options.display_names()
    if display is not None:
        return {shown: dataclasses.replace(solved[module], layer=module) for shown, module in display.items()}
    return solved
