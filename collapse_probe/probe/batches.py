"""How one batch becomes a model call, and the attention mask that travels with it to pooling."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError

INPUT_KEYS = ("input", "inputs", "image", "images", "img", "pixel_values", "x")
MASK_KEY = "attention_mask"


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


@dataclass(frozen=True)
class ForwardKeywords:
    """The keyword parameters of a model's ``forward``: ``names`` it declares, and whether it
    takes ``**kwargs``."""

    names: frozenset[str]
    var_keyword: bool

    @classmethod
    def of(cls, model: nn.Module) -> ForwardKeywords:
        """Read ``model.forward``'s signature (through ``torch.compile`` and (D)DP wrappers)."""
        inner = getattr(model, "_orig_mod", model)
        if isinstance(inner, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = inner.module
        try:
            parameters = inspect.signature(inner.forward).parameters.values()
        except (TypeError, ValueError):  # a builtin or C++ forward: no signature to read
            return cls(frozenset(), False)
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return cls(
            frozenset(p.name for p in parameters if p.kind in keyword_kinds),
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters),
        )

    def select(self, batch: Mapping) -> dict[str, Any] | None:
        """The keyword arguments for ``model(**kwargs)``, or None when the batch names none.

        A dict batch is passed by keyword when one of its keys names a parameter of ``forward``
        (a tokenizer batch: ``input_ids``, ``attention_mask``, ``token_type_ids``), or when
        ``forward`` declares only ``**kwargs``: only the keys that ``forward`` names, or every
        key when it takes ``**kwargs``. Otherwise None: the caller falls back to
        :func:`default_input` (``{"image": x, "label": y}`` -> ``model(x)``).

        >>> ForwardKeywords(frozenset({"input_ids", "attention_mask"}), False).select(
        ...     {"input_ids": 1, "attention_mask": 2, "label": 3})
        {'input_ids': 1, 'attention_mask': 2}
        >>> ForwardKeywords(frozenset({"x"}), False).select({"image": 1}) is None
        True
        """
        if not any(key in self.names for key in batch) and not (self.var_keyword and not self.names):
            return None
        return dict(batch) if self.var_keyword else {k: v for k, v in batch.items() if k in self.names}


def call_arguments(
    batch: Any, keywords: ForwardKeywords, input_fn: Callable[[Any], Any] | None
) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)``: ``input_fn(batch)`` when given, else a
    dict batch by keyword (:meth:`ForwardKeywords.select`), else :func:`default_input`."""
    if input_fn is not None:
        return (input_fn(batch),), {}
    if isinstance(batch, Mapping):
        kwargs = keywords.select(batch)
        if kwargs is not None:
            return (), kwargs
    return (default_input(batch),), {}


def batch_mask(batch: Any) -> torch.Tensor | None:
    """The batch's ``attention_mask`` (B, T) when it is a dict that holds one as a tensor, else None.

    Taken from the batch itself, whatever ``input_fn`` passes to the model, so that the (B, T, D)
    token outputs of that same batch are pooled over its real tokens only.
    """
    if isinstance(batch, Mapping):
        mask = batch.get(MASK_KEY)
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return mask
    return None


LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The batch's (B,) integer class labels: element 1 of an ``(x, y)`` tuple/list, or a dict's
    ``label`` / ``labels`` / ``target`` / ``targets`` / ``y``; None when it carries none.

    >>> batch_labels((torch.zeros(2, 3), torch.tensor([4, 1]))).tolist(), batch_labels(torch.zeros(2, 3))
    ([4, 1], None)
    """
    found = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        found = batch[1]
    elif isinstance(batch, Mapping):
        found = next((batch[key] for key in LABEL_KEYS if key in batch), None)
    if isinstance(found, torch.Tensor) and found.ndim == 1 and not found.is_floating_point():
        return found
    return None


def to_device(value: Any, device: torch.device) -> Any:
    """Move tensors, and tensors inside tuples, lists and dicts, to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
