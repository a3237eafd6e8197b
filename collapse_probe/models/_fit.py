"""Fitting a state_dict to a model: key prefixes stripped only at the start, head keys told apart
from backbone keys, shapes checked, and what stays random reported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models._keymaps import (
    leading_prefixes,
)
from collapse_probe.models._report import LoadReport

MAX_PREFIX_DEPTH = 3
#: Key components that name a training head, a queue or a second (momentum) encoder.
HEAD_COMPONENTS = frozenset({
    "fc", "head", "heads", "classifier", "classifiers", "linear", "last_linear", "last_layer", "projector",
    "projection", "predictor", "prediction", "prototypes", "queue", "queue_ptr", "encoder_k", "k_encoder",
    "key_encoder", "model_k",
})
#: Words (``_``-separated parts of a key component) that mark the same: ``momentum_backbone``,
#: ``target_network``, ``dino_head``, ``projection_head``, ``online_classifier``, ...
HEAD_WORDS = frozenset({
    "head", "classifier", "projector", "projection", "predictor", "prediction", "prototypes", "queue",
    "momentum", "target", "teacher", "ema",
})
#: Words that mark a prefix as the momentum / target / teacher copy of an encoder (never chosen
#: over another full match) or as the online one (chosen first).
MOMENTUM_WORDS = frozenset({"k", "key", "momentum", "target", "teacher", "ema", "shadow"})
ONLINE_WORDS = frozenset({"q", "query", "online", "student", "backbone"})
#: Missing keys with this last component are harmless: eval-mode BatchNorm never reads them.

def _words(key: str) -> set[str]:
    """The lower-case words of a key: its dotted components and their ``_``-separated parts."""
    components = [c.lower() for c in key.split(".") if c]
    return set(components) | {w for c in components for w in c.split("_")}


def _prefix_preference(prefix: str) -> int:
    """0 for an online/query/student encoder, 1 for a neutral name, 2 for a momentum/target/teacher one."""
    words = _words(prefix)
    return 2 if words & MOMENTUM_WORDS else 0 if words & ONLINE_WORDS else 1


def rank_prefixes(keys: list[str], model_keys: set[str]) -> list[tuple[str, int]]:
    """Every candidate prefix with how many ``keys`` it makes name a key of the model, best first.

    Only prefixes made of up to :data:`MAX_PREFIX_DEPTH` whole leading components are tried, and
    a prefix is only ever removed from the start of a key. Order: most matches; on a tie the
    online encoder by name (:func:`_prefix_preference`: ``encoder_q.`` before ``encoder_k.``,
    ``backbone.`` before ``momentum_backbone.``), then the shorter prefix, then alphabetical --
    never the order of the keys in the file.

    >>> rank_prefixes(["encoder_k.w", "encoder_k.b", "encoder_q.w", "encoder_q.b", "queue"], {"w", "b"})
    [('encoder_q.', 2), ('encoder_k.', 2), ('', 0)]
    """
    counts: dict[str, int] = {"": 0}
    for key in keys:
        for _, prefix in leading_prefixes(key, MAX_PREFIX_DEPTH):
            if key[len(prefix):] in model_keys:
                counts[prefix] = counts.get(prefix, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], _prefix_preference(item[0]), len(item[0]), item[0]))


def best_prefix(keys: list[str], model_keys: set[str]) -> str:
    """The leading prefix whose removal makes the most ``keys`` name a key of the model.

    The first of :func:`rank_prefixes`: ties go to the online encoder by name, then to the shorter
    prefix.

    >>> best_prefix(["module.backbone.conv.weight", "module.projector.0.weight"], {"conv.weight"})
    'module.backbone.'
    >>> best_prefix(["conv.weight"], {"conv.weight"})
    ''
    >>> best_prefix(["module.encoder_k.conv.weight", "module.encoder_q.conv.weight"], {"conv.weight"})
    'module.encoder_q.'
    """
    return rank_prefixes(keys, model_keys)[0][0]


def is_head_key(key: str) -> bool:
    """True when ``key`` is under a known head or second-encoder name (not backbone weights).

    >>> is_head_key("module.projector.0.weight"), is_head_key("momentum_backbone.conv1.weight")
    (True, True)
    >>> is_head_key("layer1.2.conv1.weight"), is_head_key("fc_norm.weight")  # whole components only
    (False, False)
    """
    components = {c.lower() for c in key.split(".")}
    return bool(components & HEAD_COMPONENTS or _words(key) & HEAD_WORDS)


def fit_weights(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Fit ``state_dict`` to a model's keys and shapes (``expected``) without loading anything.

    The pure half of :func:`load_weights` (architecture detection calls it on models built on the
    meta device): strips the best prefix and returns the :class:`LoadReport` fields
    ``stripped_prefix``, ``ignored_prefixes``, ``n_loaded``, ``n_expected``, ``missing_keys``,
    ``unexpected_keys``, ``unexpected_backbone_keys``, ``mismatched_keys``, ``notes``, and ``usable``
    (model key -> tensor) for what fits.

    >>> fit = fit_weights({"w": (2,), "b": (2,)}, {"module.w": torch.ones(2), "module.b": torch.ones(3)})
    >>> fit["stripped_prefix"], fit["mismatched_keys"], sorted(fit["usable"])
    ('module.', ('b (3,) vs (2,)',), ['w'])
    """
    ranked = rank_prefixes(list(state_dict), set(expected))
    prefix, best_count = ranked[0]
    ignored = tuple(p for p, count in ranked[1:] if count > 0 and 2 * count >= best_count)
    usable, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is None or name not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[name]):
            mismatched.append(f"{name} {tuple(value.shape)} vs {tuple(expected[name])}")
        else:
            usable[name] = value
    # Keys outside the chosen prefix belong to the training wrapper (heads, losses, queues); inside
    # it, or when there is no prefix, anything that is not a known head is weights of another arch.
    backbone = [k for k in unexpected if k.startswith(prefix) and not k.startswith(ignored)
                and not is_head_key(k[len(prefix):] if prefix else k)]
    missing = [k for k in expected if k not in usable]
    notes = []
    tied = [p for p, count in ranked[1:] if count == best_count and _prefix_preference(p) == _prefix_preference(prefix)]
    if tied and best_count:
        notes.append(f"warning: {prefix!r} and {tied[0]!r} both hold the model and neither name says which is the "
                     "online encoder: the shorter, then alphabetically first, is used; save the state_dict of the "
                     "one you mean to probe")
    return {
        "stripped_prefix": prefix, "ignored_prefixes": ignored, "n_loaded": len(usable),
        "n_expected": len(expected), "missing_keys": tuple(missing), "unexpected_keys": tuple(unexpected),
        "unexpected_backbone_keys": tuple(backbone), "mismatched_keys": tuple(mismatched), "notes": tuple(notes),
        "usable": usable,
    }


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, allow_partial: bool = False
) -> dict[str, Any]:
    """Load ``state_dict`` into ``model`` after stripping the best prefix; report what happened.

    Returns a dict of :class:`LoadReport` fields: ``stripped_prefix``, ``ignored_prefixes``,
    ``n_loaded``, ``n_expected``, ``missing_keys``, ``unexpected_keys``,
    ``unexpected_backbone_keys``, ``mismatched_keys`` and ``notes`` (:func:`fit_weights`). Raises
    :class:`CollapseProbeError` when the checkpoint does not fit the model (module docstring:
    shape-mismatched keys, unexpected backbone keys, missing tensors other than
    ``num_batches_tracked``), unless ``allow_partial``. Nothing is loaded when it raises.

    >>> model = nn.Linear(2, 2)
    >>> load_weights(model, {"module.weight": torch.eye(2), "module.bias": torch.zeros(2)})["n_loaded"]
    2
    >>> load_weights(model, {"weight": torch.eye(2)})
    Traceback (most recent call last):
    ...
    collapse_probe.errors.CollapseProbeError: the checkpoint does not fit the model: 1 of the model's 2 tensors missing (bias): ...
    """
    loaded = fit_weights({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict)
    usable = loaded.pop("usable")
    problems = LoadReport("", "", **loaded).problems()
    if problems and not allow_partial:
        parameters = dict(model.named_parameters())
        if (not loaded["mismatched_keys"] and not loaded["unexpected_backbone_keys"]
                and not any(k in parameters for k in loaded["missing_keys"])):
            advice = ("only buffers such as BatchNorm running statistics are missing: save model.state_dict(), "
                      "not named_parameters().")
        else:
            advice = "a wrong --arch?"
        raise CollapseProbeError(
            f"the checkpoint does not fit the model: {'; '.join(problems)}: {advice} Pass --allow-partial "
            "(allow_partial=True) to probe a partly random network anyway"
        )
    model.load_state_dict(usable, strict=False)
    return loaded


# ----------------------------------------------------------------------------- building models
