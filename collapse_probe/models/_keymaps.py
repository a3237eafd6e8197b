"""Key layouts of SSL libraries that do not name a backbone's tensors the way torchvision does.

Most layouts only add a prefix (MoCo's ``module.encoder_q.``, MoCo v3's ``module.base_encoder.``,
BYOL's ``online_encoder.net.``, SimSiam's ``module.encoder.``, mmselfsup's ``backbone.``, VISSL's
``trunk._feature_blocks.``), which :func:`collapse_probe.models.loading.rank_prefixes` strips. Two
need more:

* lightly builds its backbone as ``nn.Sequential(*list(resnet.children())[:-1])``, so the
  torchvision child ``conv1`` is saved as ``backbone.0``, ``layer1`` as ``backbone.4``:
  :func:`remap_sequential_children` puts the child names back;
* VISSL saves ``{"classy_state_dict": {"base_model": {"model": {"trunk": {...}, "heads": {...}}}}}``:
  :func:`flatten_vissl` turns it into one state_dict with ``trunk.`` and ``heads.`` keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: At most this many leading components are tried as the prefix of a Sequential of children.
MAX_DEPTH = 3
_INDEX = re.compile(r"\d+")


def leading_prefixes(key: str, max_depth: int, *, keep: int = 1) -> list[tuple[int, str]]:
    """``(depth, prefix)`` for each leading run of up to ``max_depth`` dotted names of ``key``
    that leaves at least ``keep`` names after it, the empty prefix first.

    >>> leading_prefixes("module.encoder_q.conv1.weight", 3)
    [(0, ''), (1, 'module.'), (2, 'module.encoder_q.'), (3, 'module.encoder_q.conv1.')]
    >>> leading_prefixes("module.encoder_q.conv1.weight", 3, keep=2)
    [(0, ''), (1, 'module.'), (2, 'module.encoder_q.')]
    """
    parts = key.split(".")
    return [(depth, "".join(p + "." for p in parts[:depth])) for depth in range(min(max_depth, len(parts) - keep) + 1)]


def remap_sequential_children(
    state_dict: Mapping[str, torch.Tensor], children: Sequence[str], expected: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename ``P.N.rest`` to ``P.<children[N]>.rest`` where a whole network was saved as a Sequential.

    ``children`` are the model's child names in order (``[n for n, _ in model.named_children()]``),
    ``expected`` its state_dict keys. A prefix ``P`` is remapped only when the renamed keys name at
    least half of ``expected`` and more than ``P`` names without renaming: a head such as MoCo v2's
    ``fc.0``/``fc.2`` is never mistaken for ``conv1``. Returns the (new) state_dict and the
    prefixes remapped.

    >>> children = ["conv", "bn", "relu", "fc"]
    >>> state = {"backbone.0.weight": torch.ones(1), "backbone.1.weight": torch.ones(1), "head.w": torch.ones(1)}
    >>> new, done = remap_sequential_children(state, children, {"conv.weight", "bn.weight", "fc.weight"})
    >>> sorted(new), done
    (['backbone.bn.weight', 'backbone.conv.weight', 'head.w'], ['backbone.'])
    """
    mapped: dict[str, int] = {}
    direct: dict[str, int] = {}
    for key in state_dict:
        parts = key.split(".")
        for depth, prefix in leading_prefixes(key, MAX_DEPTH, keep=2):
            if key[len(prefix):] in expected:
                direct[prefix] = direct.get(prefix, 0) + 1
            index = parts[depth]
            if _INDEX.fullmatch(index) and int(index) < len(children):
                if ".".join([children[int(index)], *parts[depth + 1:]]) in expected:
                    mapped[prefix] = mapped.get(prefix, 0) + 1
    chosen = sorted(p for p, n in mapped.items() if 2 * n >= len(expected) and n > direct.get(p, 0))
    if not chosen:
        return dict(state_dict), []
    renamed = {}
    for key, value in state_dict.items():
        for prefix in chosen:
            rest = key[len(prefix):].split(".")
            if key.startswith(prefix) and _INDEX.fullmatch(rest[0]) and int(rest[0]) < len(children):
                name = ".".join([children[int(rest[0])], *rest[1:]])
                if name in expected:
                    key = prefix + name
                    break
        renamed[key] = value
    return renamed, chosen


def flatten_vissl(obj: Any) -> tuple[str, dict[str, torch.Tensor]] | None:
    """VISSL's nested training checkpoint as ``(where, state_dict)`` with ``trunk.``/``heads.`` keys.

    >>> ckpt = {"classy_state_dict": {"base_model": {"model": {
    ...     "trunk": {"_feature_blocks.conv1.weight": torch.ones(1)}, "heads": {"0.clf.0.weight": torch.ones(1)}}}}}
    >>> flatten_vissl(ckpt)[0], sorted(flatten_vissl(ckpt)[1])
    ('classy_state_dict.base_model.model', ['heads.0.clf.0.weight', 'trunk._feature_blocks.conv1.weight'])
    """
    try:
        model = obj["classy_state_dict"]["base_model"]["model"]
    except (KeyError, TypeError):
        return None
    if not isinstance(model, Mapping):
        return None
    flat = {f"{part}.{key}": value for part in ("trunk", "heads") if isinstance(model.get(part), Mapping)
            for key, value in model[part].items() if isinstance(value, torch.Tensor)}
    return ("classy_state_dict.base_model.model", flat) if flat else None
