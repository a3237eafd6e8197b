"""The covariance accumulator's state, declared once, and the rules by which partial states combine.

:data:`STATE` lists every field with its reduce kind (the torchmetrics
``add_state(..., dist_reduce_fx=...)`` pattern). :func:`combine` (two local states, in
concatenation order) and :func:`all_reduce` (every rank's state under ``torch.distributed``)
are the two readings of those kinds; :class:`~collapse_probe.metrics.covariance.CovarianceAccumulator`
derives ``reset``, ``state_dict``, ``merge`` and ``sync`` from them, so they cannot drift apart.

Values are plain dicts ``{field name: value}``; nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from collapse_probe import functional as cpf

NO_BAD_BATCH = torch.iinfo(torch.int64).max
STATE_FORMAT = "collapse-probe/accumulator-v3"

#: Embedding dtypes from the most to the least precise (``least_precise`` reduces by the max index).
PRECISION_ORDER = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in PRECISION_ORDER}
#: Settings two states must share to combine, and a state_dict must match to load.
CONVENTIONS = ("dim", "center", "ddof", "normalize")


class Layout(Protocol):
    """What a field's initial value depends on: the accumulator's dimension, dtype and device."""

    dim: int
    dtype: torch.dtype
    device: torch.device


def less_precise(a: torch.dtype | None, b: torch.dtype | None) -> torch.dtype | None:
    """The dtype with the larger machine epsilon (``None``: nothing seen yet)."""
    if a is None or b is None:
        return a or b
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


@dataclass(frozen=True)
class StateField:
    """One piece of accumulator state and the rule that combines two partial copies of it.

    ``reduce`` is one of:

    * ``"moments"``: count, mean and M2 together, by the parallel (Chan) merge;
    * ``"unit_moments"``: the per-dimension mean and M2 of the L2-normalised rows, by the same
      merge on the diagonal (O(d); their count is ``count``);
    * ``"sum"``: added (counts);
    * ``"first"``: the (batch, rank) location of the first bad batch, the earliest one kept
      (its two fields reduce together);
    * ``"least_precise"``: the least precise embedding dtype seen.
    """

    name: str
    reduce: str
    on_device: bool
    initial: Callable[[Layout], Any]


def _zeros(*shape: int) -> Callable[[Layout], torch.Tensor]:
    return lambda acc: torch.zeros(tuple(acc.dim if s < 0 else s for s in shape), dtype=acc.dtype, device=acc.device)


STATE: tuple[StateField, ...] = (
    StateField("count", "moments", True, _zeros()),
    StateField("mean", "moments", True, _zeros(-1)),
    StateField("m2", "moments", True, _zeros(-1, -1)),
    # per-dimension moments of z / ||z|| (lightly's std_of_l2_normalized on raw input): O(d)
    StateField("unit_mean", "unit_moments", True, _zeros(-1)),
    StateField("unit_m2", "unit_moments", True, _zeros(-1)),
    # rows dropped (skip_nonfinite=True) or batches holding NaN/Inf (otherwise)
    StateField("nonfinite_count", "sum", True, lambda acc: torch.zeros((), dtype=torch.int64, device=acc.device)),
    # where the first bad batch was: its index on its rank, and that rank (-1 before a sync)
    StateField("first_bad_batch", "first", True,
               lambda acc: torch.full((), NO_BAD_BATCH, dtype=torch.int64, device=acc.device)),
    StateField("first_bad_rank", "first", True, lambda acc: torch.full((), -1, dtype=torch.int64, device=acc.device)),
    StateField("batches_seen", "sum", False, lambda acc: 0),
    StateField("input_dtype", "least_precise", False, lambda acc: None),
)


def field(name: str) -> StateField:
    """The declared field called ``name``."""
    return next(state for state in STATE if state.name == name)


def combine(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """The merged :data:`STATE` of ``mine`` followed by another local state ``theirs``.

    Both on one device. The moments by the Chan merge
    (``M2 = M2_a + M2_b + n_a n_b / n (mean_b - mean_a)(mean_b - mean_a)^T``), counts summed, the
    first bad batch the earliest in concatenation order (``theirs``' batch indices come after
    ``mine["batches_seen"]``), the input dtype the less precise.
    """
    merged: dict[str, Any] = {}
    kinds = {state.reduce for state in STATE}
    for kind in kinds:
        names = [state.name for state in STATE if state.reduce == kind]
        if kind == "moments":
            merged["count"], merged["mean"], merged["m2"] = cpf.merge_moments(
                mine["count"], mine["mean"], mine["m2"], theirs["count"], theirs["mean"], theirs["m2"])
        elif kind == "unit_moments":
            _, merged["unit_mean"], merged["unit_m2"] = cpf.merge_moments(
                mine["count"], mine["unit_mean"], mine["unit_m2"],
                theirs["count"], theirs["unit_mean"], theirs["unit_m2"])
        elif kind == "sum":
            merged |= {name: mine[name] + theirs[name] for name in names}
        elif kind == "first":
            # their batch indices come after all of ours
            their_batch = theirs["first_bad_batch"]
            shifted = torch.where(their_batch == NO_BAD_BATCH, their_batch, their_batch + mine["batches_seen"])
            theirs_first = shifted < mine["first_bad_batch"]
            merged["first_bad_batch"] = torch.where(theirs_first, shifted, mine["first_bad_batch"])
            merged["first_bad_rank"] = torch.where(theirs_first, theirs["first_bad_rank"], mine["first_bad_rank"])
        elif kind == "least_precise":
            merged |= {name: less_precise(mine[name], theirs[name]) for name in names}
        else:  # pragma: no cover - a new reduce kind must be handled here
            raise AssertionError(kind)
    return merged


def all_reduce(mine: dict[str, Any], device: torch.device, group: Any = None) -> dict[str, Any]:
    """Every rank's :data:`STATE` reduced by its rule: the global state, the same on every rank.

    The moments by two all-reduces in O(d^2) memory: first ``(n_i, n_i * mean_i)`` for the global
    mean, then ``M2_i + n_i (mean_i - mean)(mean_i - mean)^T``, whose sum is the exact pooled M2
    (the k-way Chan update); counts by a sum; the first bad batch by a (batch, rank) minimum; the
    input dtype by the least precise. Needs an initialised process group.
    """
    import torch.distributed as dist

    merged = _all_reduce_moments(mine, group)
    sum_names = [state.name for state in STATE if state.reduce == "sum"]
    sums = torch.stack([torch.as_tensor(mine[name], dtype=torch.int64, device=device).reshape(())
                        for name in sum_names])
    dist.all_reduce(sums, group=group)
    for name, total in zip(sum_names, sums, strict=True):
        merged[name] = total if field(name).on_device else int(total)

    world = dist.get_world_size(group)
    batch = mine["first_bad_batch"]
    encoded = torch.where(batch == NO_BAD_BATCH, batch, batch * world + dist.get_rank(group))
    dist.all_reduce(encoded, op=dist.ReduceOp.MIN, group=group)
    found = encoded != NO_BAD_BATCH
    merged["first_bad_batch"] = torch.where(found, encoded // world, encoded)
    merged["first_bad_rank"] = torch.where(found, encoded % world, -1)

    dtype = mine["input_dtype"]
    index = torch.tensor(-1 if dtype is None else PRECISION_ORDER.index(dtype), device=device)
    dist.all_reduce(index, op=dist.ReduceOp.MAX, group=group)
    merged["input_dtype"] = None if int(index) < 0 else PRECISION_ORDER[int(index)]
    return merged


def _all_reduce_moments(mine: dict[str, Any], group: Any) -> dict[str, Any]:
    """The ``moments`` and ``unit_moments`` kinds of :func:`all_reduce` (the k-way Chan merge)."""
    import torch.distributed as dist

    merged: dict[str, Any] = {}
    dim = mine["mean"].shape[0]
    totals = torch.cat([mine["count"].reshape(1), mine["mean"] * mine["count"], mine["unit_mean"] * mine["count"]])
    dist.all_reduce(totals, group=group)
    merged["count"] = totals[0]
    merged["mean"] = totals[1 : dim + 1] / torch.clamp(totals[0], min=1.0)
    merged["unit_mean"] = totals[dim + 1 :] / torch.clamp(totals[0], min=1.0)
    offset = mine["mean"] - merged["mean"]
    weighted = offset * torch.sqrt(mine["count"])
    m2 = mine["m2"].clone().addr_(weighted, weighted)
    dist.all_reduce(m2, group=group)
    merged["m2"] = m2
    # the same k-way merge on the O(d) moments of the normalised rows
    unit_m2 = mine["unit_m2"] + (mine["unit_mean"] - merged["unit_mean"]).square() * mine["count"]
    dist.all_reduce(unit_m2, group=group)
    merged["unit_m2"] = unit_m2
    return merged


def to_saved(values: dict[str, Any]) -> dict[str, Any]:
    """:data:`STATE` values as a ``state_dict`` stores them: tensors on the CPU, the dtype by name."""
    saved: dict[str, Any] = {}
    for state in STATE:
        value = values[state.name]
        if state.on_device:
            value = value.cpu()
        elif state.reduce == "least_precise":
            value = None if value is None else str(value).removeprefix("torch.")
        saved[state.name] = value
    return saved


def from_saved(saved: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """The inverse of :func:`to_saved`: tensors in the accumulator's dtype, on its device, own copies."""
    values: dict[str, Any] = {}
    for state in STATE:
        value = saved[state.name]
        if state.on_device:
            like = state.initial(layout)
            value = value.to(dtype=like.dtype, device=layout.device).clone().contiguous()
        elif state.reduce == "least_precise":
            value = None if value is None else DTYPE_NAMES[value]
        values[state.name] = value
    return values
