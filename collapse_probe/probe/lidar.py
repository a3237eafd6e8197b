"""lidar(model, loader, views=q): LiDAR of a model's embeddings, streamed through the shared loop.

A LiDAR batch is (B, q, ...): it is flattened to (B q, ...) for the forward
(:func:`collapse_probe.probe.loop.stream`, the same hooks, eval mode, pooling, devices, row cap
and progress bar as ``spectrum``), and each layer's (B q, D) rows are reshaped back to (B, q, D)
for a :class:`~collapse_probe.metrics.lidar.LidarAccumulator`. ``max_samples`` counts samples
(LDA classes), not views.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.lidar import LIDAR_DELTA, LIDAR_EPS, Lidar, LidarAccumulator
from collapse_probe.probe.batches import default_input
from collapse_probe.probe.loop import OUTPUT, Forward, finish, on_device, stream
from collapse_probe.probe.options import ProbeOptions

__all__ = ["lidar"]


def _refuse_unsupported(options: ProbeOptions) -> None:
    """Options that have no meaning for classes of q views are refused, never ignored."""
    if not options.center:
        raise CollapseProbeError("LiDAR's scatter matrices are centred by definition: center=False is not supported")
    if options.groups is not None:
        raise CollapseProbeError("LiDAR has no jackknife error bars: groups is not supported")
    if options.repeated_calls == "each":
        raise CollapseProbeError("LiDAR needs one output per view: repeated_calls='each' is not supported "
                                 "(use 'first' or 'last')")


def lidar(model: nn.Module, loader: Iterable, options: ProbeOptions | None = None, *, views: int,
          delta: float = LIDAR_DELTA, eps: float = LIDAR_EPS, **option_kwargs: Any) -> Lidar | dict[str, Lidar]:
    """LiDAR (Thilak et al., ICLR 2024) of a model's embeddings, streamed in O(d^2) memory.

    Each batch holds (B, q, ...) inputs: q augmented views of B clean samples (a tensor, element
    0 of a tuple, or what ``input_fn`` returns). The views run as one (B q, ...) forward; each
    layer's rows are pooled as ``pool`` says, reshaped to (B, q, D) and folded into a
    :class:`LidarAccumulator`. Each sample is one LDA class, so the score is capped at
    ``min(D, samples - 1)``. Under ``torch.distributed`` each rank streams its shard and the
    statistics are all-reduced: every rank returns the same result.

    Args:
        options / keyword arguments: the :class:`~collapse_probe.probe.options.ProbeOptions` of
            every probe (``layers``, ``pool``, ``input_fn``, ``output_fn``, ``normalize``,
            ``precision``, ``max_samples`` (samples, not views), ``skip_nonfinite`` (drops a sample
            with any non-finite view), ``repeated_calls`` (``first``/``last``), ``device``,
            ``progress``); ``center=False``, ``groups`` and ``repeated_calls="each"`` are refused.
        views: q, views per sample (at least 2).
        delta / eps: stable-pretraining's ridge on ``Sw`` (1e-4) and eps on the eigenvalues (1e-8).

    >>> model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> loader = [torch.randn(32, 4, 6) for _ in range(4)]  # 128 samples, 4 views each
    >>> result = lidar(model, loader, views=4, layers=["0", "2"], progress=False)
    >>> [(name, r.dim, r.n_classes) for name, r in result.items()]
    [('0', 5, 128), ('2', 3, 128)]
    """
    options = ProbeOptions.build(options, **option_kwargs)
    _refuse_unsupported(options)
    settings = {"views": int(views), "delta": delta, "eps": eps}
    LidarAccumulator(1, **settings)  # checks views, delta and eps before any forward
    with on_device(model, options) as device:
        forward = Forward(model, options, device)
        accumulators: dict[str, LidarAccumulator] = {}

        def make(key: str, dim: int) -> LidarAccumulator:
            return LidarAccumulator(dim, device=device, layer=None if key == OUTPUT else key, **settings)

        def prepare(batch: Any) -> tuple[tuple, dict, Any]:
            x = options.input_fn(batch) if options.input_fn is not None else default_input(batch)
            if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[1] != views:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise CollapseProbeError(f"LiDAR batches hold (batch, views={views}, ...) inputs; got {shape}")
            return (x.to(device, non_blocking=True).flatten(0, 1),), {}, None

        def fold(outputs: dict[str, list[torch.Tensor]], samples_left: float, _batch: Any) -> int:
            samples = 0
            for name, calls in outputs.items():
                if len(calls) > 1 and options.repeated_calls == "error":
                    raise CollapseProbeError(f"layer {name!r} ran {len(calls)} times in one forward pass; LiDAR "
                                             "needs one output per view: probe a layer that runs once, or choose "
                                             "repeated_calls='first' or 'last'")
                rows = calls[-1] if options.repeated_calls == "last" else calls[0]
                z = _views_of(rows, int(views), options)[: int(min(samples_left, rows.shape[0] // views))]
                if name not in accumulators:
                    accumulators[name] = make(name, z.shape[-1])
                accumulators[name].update(z)
                samples = max(samples, z.shape[0])
            return samples

        batches = stream(forward, loader, prepare, fold)
        keys = forward.names or [OUTPUT]
        finish(accumulators, keys, batches, device, make, forward.names)
        results = {key: accumulators[key].compute() for key in keys}
    if options.single:
        return results[keys[0]]
    display = options.display_names()
    return {shown: results[module] for shown, module in display.items()} if display else results


def _views_of(rows: torch.Tensor, views: int, options: ProbeOptions) -> torch.Tensor:
    """(B q, D) rows -> (B, q, D) samples; L2-normalised rows when asked; with ``skip_nonfinite``
    a sample with any non-finite view is dropped (its class would be wrong without it)."""
    z = rows.reshape(rows.shape[0] // views, views, -1)
    if options.normalize:
        z = torch.nn.functional.normalize(z.double(), dim=-1)
    if options.skip_nonfinite:
        z = z[torch.isfinite(z).flatten(1).all(dim=1)]
    return z
