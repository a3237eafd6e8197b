"""A tiny name -> constructor registry for encoders, and the "representation" layer of a model.

Names resolve in this order:

1. ``package.module:callable``: the user's own factory, imported and called with no arguments
   (this runs the user's code, which is what they asked for by naming it);
2. a torchvision model name (``resnet18``, ``resnet50``, ``vit_b_16``, ...), built with random
   weights (``weights=None``): weights come from the checkpoint, never from a download;
3. a timm model name, when timm is installed (``pretrained=False``).

``torchvision/NAME`` or ``timm/NAME`` picks the library where a name exists in both
(``timm/efficientnet_b0``); :func:`libraries_with` says which do.

The *representation* of an image classifier is the input of its final linear classifier (the
paper's 2048-d ResNet-50 backbone output). :func:`strip_classifier` replaces that final linear
layer by :class:`torch.nn.Identity`, so the module keeps its name and its output *is* the
representation.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError

#: Names (any dotted component) under which models keep their final classifier.
CLASSIFIER_NAMES = frozenset({"fc", "head", "heads", "classifier", "last_linear", "linear"})


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        return None


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def available_encoders() -> list[str]:
    """Names :func:`build_encoder` accepts besides ``module:callable`` (torchvision, then timm).

    >>> "resnet18" in available_encoders()
    True
    """
    names = _torchvision_names()
    timm = _timm()
    if timm is not None:
        names += [n for n in timm.list_models() if n not in set(names)]
    return names


def libraries_with(name: str) -> list[str]:
    """The libraries (``torchvision``, ``timm``) that have a model called ``name``.

    >>> libraries_with("resnet18")[0], libraries_with("no_such_net")
    ('torchvision', [])
    """
    found = ["torchvision"] if name in _torchvision_names() else []
    timm = _timm()
    if timm is not None and timm.is_model(name):
        found.append("timm")
    return found


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CollapseProbeError(f"--arch {spec!r}: use the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CollapseProbeError(f"--arch {spec!r}: cannot import {module_name!r} ({error})") from error
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise CollapseProbeError(f"--arch {spec!r}: {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise CollapseProbeError(f"--arch {spec!r}: {attribute!r} is not callable")
    return factory


def build_encoder(name: str) -> nn.Module:
    """Build the architecture ``name`` with random weights (see the module docstring for names).

    >>> model = build_encoder("resnet18")
    >>> type(model).__name__, model.fc.in_features
    ('ResNet', 512)
    >>> type(build_encoder("torch.nn:Identity")).__name__
    'Identity'
    """
    if ":" in name:
        model = _import_factory(name)()
        if not isinstance(model, nn.Module):
            raise CollapseProbeError(f"--arch {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    library, _, bare = name.rpartition("/")
    if library not in ("", "torchvision", "timm"):
        raise CollapseProbeError(f"--arch {name!r}: the library is torchvision/NAME or timm/NAME")
    if library in ("", "torchvision") and bare in _torchvision_names():
        import torchvision

        return torchvision.models.get_model(bare, weights=None)
    timm = _timm()
    if library in ("", "timm") and timm is not None and timm.is_model(bare):
        return timm.create_model(bare, pretrained=False)
    if library == "timm" and timm is None:
        raise CollapseProbeError(f"--arch {name!r} needs timm: pip install timm")
    import difflib

    close = difflib.get_close_matches(name, available_encoders(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    extra = "" if timm is not None else " (install timm for timm names)"
    raise CollapseProbeError(
        f"unknown architecture {name!r}{hint} Use a torchvision name{extra} or package.module:callable"
    )


def find_classifier(model: nn.Module) -> str | None:
    """The name of ``model``'s final linear classifier, or None when it has none.

    The classifier is the last module that holds parameters, when it is an ``nn.Linear`` whose
    dotted name has a component in :data:`CLASSIFIER_NAMES` (``fc``, ``head``, ``heads.head``,
    ``classifier.1``, ...).

    >>> import torchvision
    >>> find_classifier(torchvision.models.resnet18()), find_classifier(torchvision.models.vit_b_16())
    ('fc', 'heads.head')
    >>> find_classifier(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) is None
    True
    """
    last_name, last_module = None, None
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            last_name, last_module = name, module
    if last_name is None or not isinstance(last_module, nn.Linear):
        return None
    return last_name if CLASSIFIER_NAMES.intersection(last_name.split(".")) else None


def strip_classifier(model: nn.Module) -> str | None:
    """Replace the final classifier (:func:`find_classifier`) by ``nn.Identity`` in place.

    Returns its name, whose output is now the representation (the classifier's input), or None
    when the model has no classifier (then nothing changes).

    >>> import torch, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> strip_classifier(model), model(torch.zeros(1, 3, 32, 32)).shape
    ('fc', torch.Size([1, 512]))
    """
    name = find_classifier(model)
    if name is None:
        return None
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return name


# ----------------------------------------------------------------------------- projectors

#: Where SSL code bases keep a Sequential projector, in order of preference: solo-learn and BYOL
#: (``projector``), lightly (``projection_head.layers``), MoCo v2/v3 and SimSiam (the encoder's
#: ``fc`` replaced by an MLP; ``head`` for MoCo v3's ViT), mmselfsup (``neck.mlp``).
PROJECTOR_PATHS = ("projector", "projection_head.layers", "fc", "head", "neck.mlp")
_PROJECTOR_KEY = re.compile(
    r"^(?P<prefix>(?:\w+\.)*?)(?P<head>" + "|".join(re.escape(p) for p in PROJECTOR_PATHS) + r")"
    r"\.(?P<index>\d+)\.(?P<name>weight|bias|running_mean|running_var|num_batches_tracked)$"
)


class EncoderWithProjector(nn.Module):
    """``projector(backbone(x))`` with the submodule names a trainer checkpoint uses."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def _shared_components(a: str, b: str) -> int:
    """How many leading dotted components ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def rebuild_projector(
    state_dict: Mapping[str, torch.Tensor], near: str = ""
) -> tuple[nn.Sequential, list[str]] | None:
    """Rebuild an ``nn.Sequential`` projector (keys ``[prefix.]PATH.N.*``) from its weights alone.

    ``PATH`` is one of :data:`PROJECTOR_PATHS`. Solo-learn, lightly, MoCo, SimSiam, BYOL and most
    SSL code bases keep their projector as a Sequential of ``Linear`` and ``BatchNorm1d`` layers
    with parameter-free activations between them. Positions with a 2-D ``weight`` become
    ``Linear``, those with ``running_mean`` ``BatchNorm1d`` (affine when a weight is stored), and
    positions without parameters ``ReLU`` -- an assumption, which the load report states. When
    several heads are present, the one under ``near`` (the backbone's prefix: MoCo's
    ``module.encoder_q.fc``) wins, then the one sharing most leading components with it, then the
    first of :data:`PROJECTOR_PATHS`, then the alphabetically first -- never key order. Returns
    ``(projector, keys used)``, or None when there is no such projector or its keys do not fit
    this pattern.

    >>> head = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    >>> rebuilt, keys = rebuild_projector({"module.projector." + k: v for k, v in head.state_dict().items()})
    >>> [type(m).__name__ for m in rebuilt], len(keys)
    (['Linear', 'BatchNorm1d', 'ReLU', 'Linear'], 9)
    """
    found: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _PROJECTOR_KEY.match(key)
        if match is not None:
            found.setdefault((match["prefix"], match["head"]), {})[key] = value
    if not found:
        return None
    order = sorted(found, key=lambda ph: (not (ph[0] + ph[1]).startswith(near), -_shared_components(ph[0], near),
                                          PROJECTOR_PATHS.index(ph[1]), ph[0]))
    for prefix, head in order:
        rebuilt = _rebuild(found[(prefix, head)])
        if rebuilt is not None:
            return rebuilt
    return None


def _rebuild(keys: Mapping[str, torch.Tensor]) -> tuple[nn.Sequential, list[str]] | None:
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in keys.items():
        match = _PROJECTOR_KEY.match(key)
        groups.setdefault(int(match["index"]), {})[match["name"]] = value
    layers: list[nn.Module] = []
    for index in range(max(groups) + 1):
        params = groups.get(index)
        if params is None:
            layers.append(nn.ReLU())
        elif "running_mean" in params:
            layers.append(nn.BatchNorm1d(params["running_mean"].numel(), affine="weight" in params))
        elif "weight" in params and params["weight"].ndim == 2:
            out_features, in_features = params["weight"].shape
            layers.append(nn.Linear(in_features, out_features, bias="bias" in params))
        else:
            return None
    if not isinstance(layers[0], nn.Linear):
        return None
    projector = nn.Sequential(*layers)
    weights = {f"{i}.{name}": value for i, params in groups.items() for name, value in params.items()}
    try:
        projector.load_state_dict(weights, strict=True)
    except RuntimeError:
        return None
    return projector, list(keys)
