"""Safe, honest loading of any checkpoint into an ``nn.Module`` ready to probe.

What :func:`load_encoder_with_report` recognises, in this order:

* a TorchScript archive (``torch.jit.save``) or a ``torch.export`` program (``.pt2``): the module
  is inside, no ``arch`` needed; only its output can be probed;
* a ``.safetensors`` file: a state_dict, needs ``arch``;
* anything else is read with ``torch.load(..., weights_only=True)`` -- never plain unpickling,
  which can run arbitrary code. A file that needs it is refused with a message naming
  ``--trust-checkpoint`` (``trust_checkpoint=True``), the only way to unpickle fully;
* a collapse-probe trainer checkpoint (``"format": "collapse-probe/trainer-v1"``): the model is
  rebuilt from the architecture stored inside;
* a state_dict, bare or wrapped under ``state_dict`` (Lightning, solo-learn), ``model``
  (DirectCLR's public trainer), ``teacher``/``student`` (DINO: the teacher is used),
  ``model_state_dict``, ``backbone``, ``encoder``, ``net``; it needs ``arch``.

Key prefixes (``module.``, ``_orig_mod.``, ``backbone.``, ``module.backbone.``, ...) are removed
only at the *start* of a key: the prefix chosen is the one under which most checkpoint keys name a
key of the model (timm's ``_helpers.py`` does the same, by a fixed list). Missing, unexpected and
shape-mismatched keys are reported, never hidden; when more than half of the model's keys are
missing, loading fails unless ``allow_partial=True``: a random network is never probed silently.

The final linear classifier of an image model is replaced by ``nn.Identity``
(:func:`collapse_probe.encoders.strip_classifier`), so its name gives the representation.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapse_probe.encoders import (
    EncoderWithProjector,
    build_encoder,
    find_classifier,
    rebuild_projector,
    strip_classifier,
)
from collapse_probe.errors import CollapseProbeError

TRAINER_FORMAT = "collapse-probe/trainer-v1"
#: Keys under which wrapped checkpoints keep their weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "model_state_dict", "backbone", "encoder", "net")
#: At most this many leading dotted components are tried as a prefix to strip.
MAX_PREFIX_DEPTH = 3


@dataclass(frozen=True)
class LoadReport:
    """What was found in a checkpoint and how it was loaded (``summary()`` says it in words)."""

    path: str
    kind: str
    source: str = ""
    arch: str | None = None
    stripped_prefix: str = ""
    n_loaded: int = 0
    n_expected: int = 0
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    mismatched_keys: tuple[str, ...] = ()
    classifier: str | None = None
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """A few human lines: format, arch, keys loaded, what was dropped or missing."""
        where = f" under {self.source!r}" if self.source else ""
        lines = [f"{self.path}: {self.kind}{where}" + (f", arch {self.arch}" if self.arch else "")]
        if self.n_expected:
            prefix = f" (stripped prefix {self.stripped_prefix!r})" if self.stripped_prefix else ""
            lines.append(f"loaded {self.n_loaded}/{self.n_expected} tensors{prefix}")
        for label, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys),
                            ("shape-mismatched", self.mismatched_keys)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                lines.append(f"{label} keys: {shown}")
        if self.classifier:
            lines.append(f"classifier {self.classifier!r} replaced by Identity: its output is the representation")
        lines.extend(self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadedEncoder:
    """A model ready to probe, the :class:`LoadReport`, and the layers probed by default.

    ``default_layers`` maps module names (as ``model.named_modules()`` names them) to their role
    (``representation`` or ``embedding``); empty means "the model's output".
    """

    model: nn.Module
    report: LoadReport
    default_layers: dict[str, str] = field(default_factory=dict)
    image_size: int | None = None  # the training crop size, when the checkpoint records it


class ExportedEncoder(nn.Module):
    """A ``torch.export`` program as a module: its graph is fixed at export time, so ``train()`` and
    ``eval()`` only set this wrapper's flag (the program itself refuses both calls)."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True) -> ExportedEncoder:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> Any:
        return self.program(x)


# ----------------------------------------------------------------------------- reading files


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception message (user-facing errors are one line)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _refuse_unpickling(path: Path, error: Exception) -> CollapseProbeError:
    match = re.search(r"GLOBAL (\S+)", str(error))
    found = f" (it references {match.group(1)})" if match else ""
    return CollapseProbeError(
        f"{path}: refusing to unpickle arbitrary Python objects{found}: loading it could run code. "
        "Rerun with --trust-checkpoint (trust_checkpoint=True) only if you trust its source"
    )


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> tuple[str, Any]:
    """Read ``path`` without building anything: ``(kind, object)``.

    kind is ``torchscript`` (object: a ScriptModule), ``export`` (an ExportedProgram),
    ``safetensors`` (a dict of tensors) or ``torch`` (whatever ``torch.load`` returned).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    >>> read_checkpoint(path)
    ('torch', {'state_dict': {'w': tensor([1., 1.])}})
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CollapseProbeError(f"checkpoint {str(path)!r} is a folder, not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return "safetensors", load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - any parse failure is bad input
            raise CollapseProbeError(f"{path}: not a readable safetensors file ({_first_line(error)})") from error
    names = _zip_names(path)
    if any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names):
        return "torchscript", torch.jit.load(str(path), map_location="cpu")
    if path.suffix == ".pt2" or any(n.count("/") == 1 and n.endswith("/archive_format") for n in names):
        try:
            return "export", torch.export.load(str(path))
        except Exception as error:  # noqa: BLE001
            raise CollapseProbeError(f"{path}: not a readable torch.export program ({_first_line(error)})") from error
    try:
        return "torch", torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CollapseProbeError(f"{path}: not a PyTorch checkpoint ({str(error).splitlines()[0]})") from error
        if not trust_checkpoint:
            raise _refuse_unpickling(path, error) from None
    except Exception as error:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise CollapseProbeError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {_first_line(error)})") from error
    return "torch", torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- state dicts


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def find_state_dict(obj: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """Find the weights in a (possibly wrapped) checkpoint: ``(where, state_dict)``.

    ``where`` is the path of wrapper keys, e.g. ``"state_dict"`` or ``"teacher"`` ("" when bare).

    >>> find_state_dict({"epoch": 3, "state_dict": {"backbone.w": torch.zeros(1)}})
    ('state_dict', {'backbone.w': tensor([0.])})
    """
    if _is_state_dict(obj):
        return "", dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                try:
                    where, state = find_state_dict(obj[key])
                except CollapseProbeError:
                    continue
                return ".".join(p for p in (key, where) if p), state
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return "", tensors
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CollapseProbeError(f"found no weights in the checkpoint (top-level keys: {keys})")
    raise CollapseProbeError(f"the checkpoint holds a {type(obj).__name__}, not a state_dict or a model")


def best_prefix(keys: list[str], model_keys: set[str]) -> str:
    """The leading prefix whose removal makes the most ``keys`` name a key of the model.

    Only prefixes made of up to :data:`MAX_PREFIX_DEPTH` whole leading components are tried, and
    a prefix is only ever removed from the start of a key; ties go to the shorter prefix.

    >>> best_prefix(["module.backbone.conv.weight", "module.projector.0.weight"], {"conv.weight"})
    'module.backbone.'
    >>> best_prefix(["conv.weight"], {"conv.weight"})
    ''
    """
    counts: dict[str, int] = {"": 0}
    for key in keys:
        parts = key.split(".")
        for depth in range(min(MAX_PREFIX_DEPTH, len(parts) - 1) + 1):
            prefix = "".join(p + "." for p in parts[:depth])
            if key[len(prefix):] in model_keys:
                counts[prefix] = counts.get(prefix, 0) + 1
    return max(counts, key=lambda p: (counts[p], -len(p)))


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, allow_partial: bool = False
) -> dict[str, Any]:
    """Load ``state_dict`` into ``model`` after stripping the best prefix; report what happened.

    Returns a dict with ``stripped_prefix``, ``n_loaded``, ``n_expected``, ``missing_keys``,
    ``unexpected_keys`` and ``mismatched_keys``. Raises when more than half of the model's keys
    find no weight, unless ``allow_partial``.

    >>> model = nn.Linear(2, 2)
    >>> load_weights(model, {"module.weight": torch.eye(2), "module.bias": torch.zeros(2)})["n_loaded"]
    2
    """
    expected = model.state_dict()
    prefix = best_prefix(list(state_dict), set(expected))
    usable, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is None or name not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[name].shape):
            mismatched.append(f"{name} {tuple(value.shape)} vs {tuple(expected[name].shape)}")
        else:
            usable[name] = value
    missing = [k for k in expected if k not in usable]
    if len(missing) > len(expected) / 2 and not allow_partial:
        raise CollapseProbeError(
            f"only {len(usable)} of the model's {len(expected)} tensors were found in the checkpoint "
            f"(e.g. missing {missing[0]!r}; checkpoint keys look like {next(iter(state_dict))!r}): wrong "
            "--arch? Pass --allow-partial to probe a partly random network anyway"
        )
    model.load_state_dict(usable, strict=False)
    return {
        "stripped_prefix": prefix, "n_loaded": len(usable), "n_expected": len(expected),
        "missing_keys": tuple(missing), "unexpected_keys": tuple(unexpected), "mismatched_keys": tuple(mismatched),
    }


# ----------------------------------------------------------------------------- building models


def _trainer_model(path: Path, ckpt: Mapping[str, Any]) -> LoadedEncoder:
    try:
        from collapse_probe.ssl.checkpoint import build_model_from_checkpoint
    except ImportError as error:
        raise CollapseProbeError(f"{path}: a trainer checkpoint, but collapse_probe.ssl.checkpoint is missing ({error})") from error
    model = build_model_from_checkpoint(dict(ckpt))
    layers = {"backbone": "representation"}
    if getattr(model, "projector", None) is not None:
        layers["projector"] = "embedding"
    elif getattr(model, "truncate", None) is not None:  # DirectCLR: the loss sees r[:, :d0]
        layers["embedding"] = "embedding"
    config = ckpt.get("config")
    image_size = config.get("image_size") if isinstance(config, Mapping) else None
    arch = ckpt.get("arch")
    arch_name = arch.get("backbone") if isinstance(arch, Mapping) else None
    n = len(model.state_dict())
    report = LoadReport(str(path), "collapse-probe trainer checkpoint", "model", arch_name, n_loaded=n, n_expected=n)
    return LoadedEncoder(model, report, layers, image_size=int(image_size) if image_size else None)


def _arch_model(path: Path, kind: str, obj: Any, arch: str | None, allow_partial: bool) -> LoadedEncoder:
    source, state_dict = find_state_dict(obj)
    notes = []
    if source.startswith("teacher") and isinstance(obj, Mapping) and "student" in obj:
        notes.append("DINO-style checkpoint: using the teacher's weights")
    if arch is None and isinstance(obj, Mapping) and isinstance(obj.get("arch"), str):
        arch = obj["arch"]
        notes.append(f"architecture {arch!r} read from the checkpoint")
    if arch is None:
        raise CollapseProbeError(
            f"{path} holds a bare state_dict ({len(state_dict)} tensors, e.g. {next(iter(state_dict))!r}): "
            "name its architecture with --arch (e.g. resnet50, vit_b_16, or package.module:callable)"
        )
    model = build_encoder(arch)
    head = find_classifier(model)
    rep_dim = model.get_submodule(head).in_features if head else None
    classifier = strip_classifier(model)
    loaded = load_weights(model, state_dict, allow_partial=allow_partial)
    if loaded["missing_keys"]:
        notes.append("warning: some weights were missing and stay randomly initialised")
    layers = {classifier: "representation"} if classifier else {}
    rebuilt = rebuild_projector({k: state_dict[k] for k in loaded["unexpected_keys"]})
    if rebuilt is not None and (rep_dim is None or rebuilt[0][0].in_features == rep_dim):
        projector, used = rebuilt
        model = EncoderWithProjector(model, projector)
        layers = {"backbone": "representation", "projector": "embedding"}
        loaded["unexpected_keys"] = tuple(k for k in loaded["unexpected_keys"] if k not in set(used))
        notes.append(f"projector rebuilt from its {len(used)} tensors ({len(projector)} layers; "
                     "ReLU assumed at parameter-free positions): probed as 'projector', the backbone as 'backbone'")
    report = LoadReport(str(path), kind, source, arch, classifier=classifier, notes=tuple(notes), **loaded)
    return LoadedEncoder(model, report, layers)


def load_encoder_with_report(
    path: str | Path,
    arch: str | None = None,
    *,
    trust_checkpoint: bool = False,
    allow_partial: bool = False,
) -> LoadedEncoder:
    """Load any supported checkpoint (module docstring) as a :class:`LoadedEncoder` in eval mode.

    >>> import tempfile, os, torchvision
    >>> path = os.path.join(tempfile.mkdtemp(), "r18.pt")
    >>> torch.save({"state_dict": {"module." + k: v for k, v in torchvision.models.resnet18().state_dict().items()}}, path)
    >>> loaded = load_encoder_with_report(path, "resnet18")
    >>> loaded.report.stripped_prefix, loaded.report.unexpected_keys, loaded.default_layers
    ('module.', ('module.fc.weight', 'module.fc.bias'), {'fc': 'representation'})
    """
    path = Path(path)
    kind, obj = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if kind in ("torchscript", "export"):
        model = ExportedEncoder(obj.module()) if kind == "export" else obj
        label = "TorchScript archive" if kind == "torchscript" else "torch.export program"
        note = () if arch is None else (f"--arch {arch} ignored: the architecture is inside the file",)
        loaded = LoadedEncoder(model, LoadReport(str(path), label, notes=note))
    elif isinstance(obj, nn.Module):
        classifier = strip_classifier(obj)
        report = LoadReport(str(path), "pickled nn.Module (trusted)", arch=type(obj).__name__, classifier=classifier)
        loaded = LoadedEncoder(obj, report, {classifier: "representation"} if classifier else {})
    elif isinstance(obj, Mapping) and obj.get("format") == TRAINER_FORMAT:
        loaded = _trainer_model(path, obj)
    else:
        label = {"safetensors": "safetensors state_dict", "torch": "state_dict"}[kind]
        loaded = _arch_model(path, label, obj, arch, allow_partial)
    loaded.model.eval()
    return loaded


def load_encoder(
    path: str | Path,
    arch: str | None = None,
    *,
    trust_checkpoint: bool = False,
    allow_partial: bool = False,
) -> nn.Module:
    """Load any supported checkpoint as an ``nn.Module`` in eval mode (what the CLI probes).

    Same rules as :func:`load_encoder_with_report`, which also returns what was found.

    >>> import tempfile, os, torchvision
    >>> path = os.path.join(tempfile.mkdtemp(), "r18.pth")
    >>> torch.save(torchvision.models.resnet18().state_dict(), path)
    >>> load_encoder(path, "resnet18")(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])
    """
    return load_encoder_with_report(path, arch, trust_checkpoint=trust_checkpoint, allow_partial=allow_partial).model
