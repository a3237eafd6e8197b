"""The one streaming loop: batches -> model -> hooks -> rows, shared by ``spectrum()`` and ``lidar()``.

:class:`Forward` hooks the requested modules (or takes the model output), runs one batch and
returns each layer's outputs pooled to rows; :func:`stream` runs it over a loader under eval
mode, ``inference_mode``, autocast and the row cap, and hands each forward's rows to a
``fold`` callback (which owns the accumulators). :func:`finish` makes every process agree on
the layers and their sizes (so an empty shard never hangs an all-reduce) and syncs them.
What differs between the two probes (what a batch is, what an accumulator is) stays in
:mod:`collapse_probe.probe.stream` and :mod:`collapse_probe.probe.lidar`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from collapse_probe._utils.devices import resolve_device
from collapse_probe._utils.ranks import is_distributed, is_main_process
from collapse_probe.errors import CollapseProbeError
from collapse_probe.probe.capture import (
    capture_outputs,
    eval_mode,
    from_transformers,
    is_channels_first,
    pick_tensor,
    pool_output,
    resolve_modules,
)
from collapse_probe.probe.options import ProbeOptions
from collapse_probe.probe.tokens import resolve_prefix_tokens, token_rows

OUTPUT = "<output>"

#: ``fold(outputs, rows_left, batch) -> rows used``: outputs maps each key to its calls' (R, D) rows
Fold = Callable[[dict[str, list[torch.Tensor]], float, Any], int]


def check_input(x: Any, model: nn.Module) -> None:
    """Refuse integer images (uint8 straight from a decoder) before they reach a float model."""
    if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()):
        if not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()):
            raise CollapseProbeError(
                f"the model input is an integer tensor ({x.dtype}); convert images to float "
                "(e.g. transforms.v2.ToDtype(torch.float32, scale=True)) or pass input_fn"
            )


def progress_bar(loader: Iterable, enabled: bool) -> Iterable:
    """``loader`` wrapped in a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(loader, total=total, desc="probing", unit="batch", file=sys.stderr, leave=False)


class Forward:
    """Hooks on the requested modules of ``model`` and the pooled rows of one forward pass."""

    def __init__(self, model: nn.Module, options: ProbeOptions, device: torch.device):
        self.model, self.options, self.device = model, options, device
        self.names = options.module_names()
        self.modules = resolve_modules(model, self.names)
        self.first_of_tuple = {name: from_transformers(m) for name, m in self.modules.items()}
        self.first_of_tuple[OUTPUT] = from_transformers(model)
        self.channels_first = {name: is_channels_first(m) for name, m in self.modules.items()}
        self.channels_first[OUTPUT] = is_channels_first(model)
        self.captured: dict[str, list[torch.Tensor]] = {}
        self.owners: dict[str, list[torch.Tensor | None]] = {}  # token rows: each row's input in the batch
        self.prefix = resolve_prefix_tokens(model, options.tokens, options.prefix_tokens)
        self.masked: set[str] = set()  # layers whose tokens were pooled over an attention mask
        self.pooled: dict[str, str] = {}  # layers whose outputs had more than two axes: how they were pooled
        self.calls_seen: dict[str, int] = {}  # the most calls per forward of each layer
        self.mask: torch.Tensor | None = None

    def capture(self, name: str, output: Any) -> None:
        where = f"layer {name!r}" if name != OUTPUT else "the model output"
        fn = self.options.output_fn
        tensor = pick_tensor(output if fn is None else fn(output), where, first_of_tuple=self.first_of_tuple[name])
        owner = None
        if isinstance(tensor, torch.Tensor) and tensor.ndim == 3 and self.channels_first[name]:
            tensor = tensor.transpose(1, 2)  # (B, C, L) of a 1-d convolution: C is the feature axis
            self.pooled[name] = f"{self.options.pool} over L of (B, C, L)"
        if self.options.tokens is not None:
            if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (3, 4):
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise CollapseProbeError(f"tokens={self.options.tokens!r} needs (B, T, D) tokens or (B, C, H, W) "
                                         f"maps; {where} gives {shape}: drop tokens (one row per input)")
            rows, owner = token_rows(tensor, self.options.tokens, self.prefix, self.mask, where)
        else:
            if isinstance(tensor, torch.Tensor) and tensor.ndim > 2:
                self.pooled.setdefault(name, self.options.pool)
                if self.mask is not None and tensor.ndim == 3 and self.options.pool in ("avg", "max"):
                    self.masked.add(name)
            rows = pool_output(tensor, self.options.pool, where, mask=self.mask)
        self.captured.setdefault(name, []).append(rows)
        self.owners.setdefault(name, []).append(owner)

    @contextlib.contextmanager
    def hooked(self) -> Iterator[Any]:
        """Eval mode, the hooks and ``inference_mode`` for the whole pass (undone on every exit)."""
        with eval_mode(self.model), capture_outputs(self.modules, self.capture) as counts, torch.inference_mode():
            yield counts

    def run(self, counts: Any, args: tuple, kwargs: dict, mask: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """One forward: ``{key: [rows of each call]}`` (key: a module name, or OUTPUT)."""
        self.mask = mask
        counts.start_forward()
        self.captured, self.owners = {}, {}
        dtype = self.options.autocast_dtype
        autocast = contextlib.nullcontext() if dtype is None else torch.autocast(device_type=self.device.type, dtype=dtype)
        with autocast:
            output = self.model(*args, **kwargs)
        if not self.names:
            self.capture(OUTPUT, output)
        for name, outputs in self.captured.items():
            self.calls_seen[name] = max(self.calls_seen.get(name, 0), len(outputs))
        return self.captured


def stream(forward: Forward, loader: Iterable, prepare: Callable[[Any], tuple[tuple, dict, Any]], fold: Fold) -> int:
    """Run ``loader`` through ``forward``; ``fold`` each forward's rows; the number of batches.

    ``prepare(batch) -> (args, kwargs, mask)`` on the device. Stops once ``fold`` has used this
    process's share of ``max_samples`` rows.
    """
    remaining = forward.options.rows_for_this_process()
    batches = 0
    with forward.hooked() as counts:
        for batch in progress_bar(loader, forward.options.progress and is_main_process()):
            if remaining <= 0:
                break
            args, kwargs, mask = prepare(batch)
            if batches == 0 and args:
                check_input(args[0], forward.model)
            remaining -= fold(forward.run(counts, args, kwargs, mask), remaining, batch)
            batches += 1
    return batches


def finish(accumulators: dict[str, Any], keys: list[str], batches: int, device: torch.device,
           make: Callable[[str, int], Any], names: list[str]) -> None:
    """Every key present on every process (an empty one made by ``make(key, dim)``), synced.

    Raises when no batch arrived anywhere or a requested layer never ran.
    """
    if is_distributed():
        import torch.distributed as dist

        sizes = torch.tensor([batches] + [accumulators[k].dim if k in accumulators else 0 for k in keys],
                             device=device)
        dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
        if int(sizes[0]) == 0:
            raise CollapseProbeError("the loader yielded no batches on any rank")
        for key, dim in zip(keys, sizes[1:].tolist(), strict=True):
            if key not in accumulators and dim > 0:
                accumulators[key] = make(key, int(dim))
    elif batches == 0:
        raise CollapseProbeError("the loader yielded no batches")
    missing = [name for name in names if not any(k == name or k.startswith(f"{name}#") for k in accumulators)]
    if missing:
        raise CollapseProbeError(f"layers {missing} never ran during the forward pass; pick modules on the forward path")
    for key in keys:
        accumulators[key].sync()


def agree_on_calls(calls_seen: dict[str, int], names: list[str], device: torch.device) -> dict[str, int]:
    """The most calls per forward of each layer over all processes (so all solve the same keys)."""
    if not is_distributed():
        return calls_seen
    import torch.distributed as dist

    counts = torch.tensor([calls_seen.get(name, 0) for name in names], dtype=torch.int64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return {name: int(count) for name, count in zip(names, counts.tolist(), strict=True) if count > 0}


@contextlib.contextmanager
def on_device(model: nn.Module, options: ProbeOptions) -> Iterator[torch.device]:
    """The device to probe on (options.device, else the model's; under torchrun a bare ``cuda`` is
    this process's GPU); the model is moved there and back to where it was on every exit."""
    from collapse_probe._utils.ranks import local_rank

    before = resolve_device(None, model=model)
    device = resolve_device(options.device, model=model, local_rank=local_rank())
    moved = device != before
    if moved:
        model.to(device)
    try:
        yield device
    finally:
        if moved:
            model.to(before)
