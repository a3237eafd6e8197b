"""spectrum(model, loader): batches -> rows -> float64 covariance accumulators -> one batched solve."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.classes import ClassAccumulator
from collapse_probe.metrics.covariance import CovarianceAccumulator
from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.metrics.norms import NormHistogram
from collapse_probe.metrics.solve import solve_spectra
from collapse_probe.probe.batches import (
    ForwardKeywords,
    batch_labels,
    batch_mask,
    call_arguments,
    to_device,
)
from collapse_probe.probe.loop import OUTPUT, Forward, agree_on_calls, finish, on_device, stream
from collapse_probe.probe.options import PRECISIONS, REPEATED_CALLS, ProbeOptions
from collapse_probe.probe.tokens import describe_tokens
from collapse_probe.results.classes import ClassSpectra
from collapse_probe.results.spectrum import Spectrum

__all__ = ["OUTPUT", "PRECISIONS", "REPEATED_CALLS", "spectrum"]

Accumulator = CovarianceAccumulator | GroupedAccumulator | ClassAccumulator
Result = Spectrum | ClassSpectra


def spectrum(model: nn.Module, loader: Iterable, options: ProbeOptions | None = None,
             **option_kwargs: Any) -> Result | dict[str, Result]:
    """Covariance spectra of a model's embeddings, streamed over a loader in O(d^2) memory.

    One pass over ``loader`` in eval mode under ``torch.inference_mode`` (each submodule's
    previous train/eval flag is restored afterwards, and the model goes back to its device).
    Requested layers are captured by forward hooks (removed on every exit path), turned into rows
    (pooled to one per input, or one per token with ``tokens``), and folded into one float64
    :class:`CovarianceAccumulator` per layer on the device (no host sync per batch). Under
    ``torch.distributed`` each rank streams its own shard and the statistics are all-reduced, so
    every rank returns the identical result. All layers are then solved in one batched call.

    Args:
        model: any ``nn.Module``.
        loader: an iterable of batches: tensors, ``(input, target)`` tuples/lists, or dicts.
        options: a :class:`~collapse_probe.probe.options.ProbeOptions`; every field may instead
            (or also, on top) be given as a keyword argument of the same name: ``layers``,
            ``pool``, ``input_fn``, ``output_fn``, ``center``, ``normalize``, ``precision``,
            ``max_samples``, ``skip_nonfinite``, ``groups``, ``repeated_calls``, ``device``,
            ``progress``, ``tokens``, ``prefix_tokens``, ``per_class``, ``class_scatter``,
            ``classes``, ``class_memory_budget``. Their meaning is documented once, on
            ``ProbeOptions``.

    With ``groups=K`` each result's ``stderr`` holds every scalar metric's delete-a-group
    jackknife standard error (K + 1 eigen-solves per layer). With ``repeated_calls="each"``
    every call of a repeated layer is its own spectrum, keyed ``"name#0"``, ``"name#1"``, ...

    Returns:
        A :class:`Spectrum` for ``layers=None`` or one name; ``dict[name, Spectrum]`` for a list
        (or ``repeated_calls="each"``); ``dict[display name, Spectrum]`` for a mapping. With
        ``per_class`` or ``class_scatter`` each Spectrum is a
        :class:`~collapse_probe.results.classes.ClassSpectra` (pooled, per class, scatter).

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
        state = _Streamed(forward, device, _known_classes(loader))
        batches = stream(forward, loader, _preparer(model, options, device), state.fold)
        names = forward.names
        if options.repeated_calls == "each" and names:
            calls = agree_on_calls(forward.calls_seen, names, device)
            keys = [f"{n}#{c}" for n in names for c in range(calls.get(n, 0))] or [OUTPUT]
        else:
            keys = names or [OUTPUT]
        finish(state.accumulators, keys, batches, device, state.make, names)
        solved = state.solve(keys)
    return _shape_result(dict(zip(keys, solved, strict=True)), options)


def _known_classes(loader: Iterable) -> int | None:
    """The class count a loader's dataset declares (``ImageFolder.classes``), for the budget check."""
    classes = getattr(loader, "classes", None) or getattr(getattr(loader, "dataset", None), "classes", None)
    return len(classes) if isinstance(classes, (list, tuple)) and classes else None


def _preparer(model: nn.Module, options: ProbeOptions, device: torch.device):
    keywords = ForwardKeywords.of(model)

    def prepare(batch: Any) -> tuple[tuple, dict, Any]:
        args, kwargs = to_device(call_arguments(batch, keywords, options.input_fn), device)
        return args, kwargs, to_device(batch_mask(batch), device)

    return prepare


class _Streamed:
    """The accumulators of one probe (and the token-norm histograms), fed by :meth:`fold`."""

    def __init__(self, forward: Forward, device: torch.device, expected_classes: int | None):
        self.forward, self.options, self.device = forward, forward.options, device
        self.expected_classes = expected_classes
        self.accumulators: dict[str, Accumulator] = {}
        self.norms: dict[str, NormHistogram] = {}

    def make(self, key: str, dim: int) -> Accumulator:
        """One layer's accumulator: K groups for jackknife error bars when ``groups`` is set; class
        statistics with ``per_class`` / ``class_scatter``."""
        options = self.options
        conventions = {"center": options.center, "normalize": options.normalize, "device": self.device,
                       "layer": None if key == OUTPUT else key, "skip_nonfinite": options.skip_nonfinite}
        if options.labelled:
            def one(label: str | None) -> CovarianceAccumulator:
                return CovarianceAccumulator(dim, **conventions)

            return ClassAccumulator(dim, one, per_class=options.per_class, scatter=options.class_scatter,
                                    classes=options.classes, budget=options.class_memory_budget,
                                    expected_classes=self.expected_classes)
        if options.groups is None:
            return CovarianceAccumulator(dim, **conventions)
        return GroupedAccumulator(dim, groups=options.groups, **conventions)

    def _labels(self, batch: Any) -> torch.Tensor | None:
        if not self.options.labelled:
            return None
        labels = batch_labels(batch)
        if labels is None:
            raise CollapseProbeError("per_class / class_scatter need class labels in the batches: (x, y) tuples or "
                                     "a dict with a 'label' / 'labels' key of (B,) integers")
        return labels.to(self.device)

    def _accumulate(self, key: str, z: torch.Tensor, owner: torch.Tensor | None, labels: torch.Tensor | None,
                    rows_left: float) -> None:
        if key not in self.accumulators:
            self.accumulators[key] = self.make(key, z.shape[1])
        take = int(min(rows_left, z.shape[0]))
        z = z[:take]
        if self.options.tokens is not None:
            self.norms.setdefault(key, NormHistogram(self.device)).update(z)
        if labels is None:
            self.accumulators[key].update(z)
            return
        row_labels = labels if owner is None else labels[owner]
        self.accumulators[key].update(z, row_labels[:take])

    def fold(self, outputs: dict[str, list[torch.Tensor]], rows_left: float, batch: Any) -> int:
        options, rows = self.options, 0
        labels = self._labels(batch)
        for name, calls in outputs.items():
            owners = self.forward.owners.get(name, [None] * len(calls))
            if len(calls) > 1 and options.repeated_calls == "error":
                raise CollapseProbeError(
                    f"layer {name!r} ran {len(calls)} times in one forward pass (siamese views or a weight-tied "
                    f"block?), so it would count {len(calls)} rows per input: choose repeated_calls='first', "
                    "'last' or 'each' (CLI: --repeated-calls)"
                )
            if options.repeated_calls == "each" and name != OUTPUT:
                for call, z in enumerate(calls):
                    self._accumulate(f"{name}#{call}", z, owners[call], labels, rows_left)
            else:
                index = -1 if options.repeated_calls == "last" else 0
                self._accumulate(name, calls[index], owners[index], labels, rows_left)
            rows = max(rows, calls[0].shape[0])
        return int(min(rows, rows_left))

    def solve(self, keys: list[str]) -> list[Result]:
        """Every key's result: one batched solve, or the grouped / class-aware computes."""
        for histogram in self.norms.values():
            histogram.sync()
        if self.options.labelled:
            solved: list[Any] = []
            for key in keys:
                parts = self.accumulators[key].compute()
                pooled = self._annotate(parts["pooled"], key)
                solved.append(ClassSpectra(pooled, parts["classes"], parts["scatter"], parts["too_few"]))
            return solved
        if self.options.groups is None:
            plain = solve_spectra([self.accumulators[key] for key in keys])
        else:  # the full spectrum plus K leave-one-group-out solves per layer
            plain = [self.accumulators[key].compute() for key in keys]
        return [self._annotate(s, key) for s, key in zip(plain, keys, strict=True)]

    def _annotate(self, result: Spectrum, key: str) -> Spectrum:
        """Record which call of a repeated layer it is, attention-mask pooling, what a row is."""
        forward, options = self.forward, self.options
        extra = dict(result.extra)
        name, _, call = key.rpartition("#") if options.repeated_calls == "each" and "#" in key else (key, "", "")
        calls = forward.calls_seen.get(name, 1)
        if calls > 1 or call:
            extra |= {"calls_per_forward": calls, "call_used": int(call) if call else options.repeated_calls}
        if name in forward.masked:
            extra["attention_mask"] = True
        if name in forward.pooled:
            extra["pool"] = forward.pooled[name]
        extra |= describe_tokens(options.tokens, forward.prefix)
        if key in self.norms:
            extra["token_norms"] = self.norms[key].summary()
        return dataclasses.replace(result, extra=extra)


def _shape_result(solved: dict[str, Result], options: ProbeOptions) -> Result | dict[str, Result]:
    """One result, a dict by module name (or ``name#call``), or a dict by display name."""
    if options.repeated_calls == "each" and options.module_names():
        return solved
    if options.single:
        return next(iter(solved.values()))
    display: Mapping[str, str] | None = options.display_names()
    if display is not None:
        return {shown: _relabel(solved[module], module) for shown, module in display.items()}
    return solved


def _relabel(result: Result, layer: str) -> Result:
    if isinstance(result, ClassSpectra):
        return dataclasses.replace(result, pooled=dataclasses.replace(result.pooled, layer=layer))
    return dataclasses.replace(result, layer=layer)
