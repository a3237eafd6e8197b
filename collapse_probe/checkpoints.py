"""Safe, honest loading of any checkpoint into an ``nn.Module`` ready to probe.

What :func:`load_encoder_with_report` recognises, in this order:

* a Hugging Face ``save_pretrained`` folder (``config.json`` + weights): loaded with transformers'
  ``AutoModel`` from that folder only, never running code shipped in it without
  ``trust_checkpoint`` (:mod:`collapse_probe.hf_folder`);
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
key of the model (timm's ``_helpers.py`` does the same, by a fixed list). When several prefixes
tie -- a MoCo file holds ``encoder_q.`` and ``encoder_k.``, BYOL ``online_network.`` and
``target_network.``, solo-learn ``backbone.`` and ``momentum_backbone.`` -- the online encoder is
chosen **by name, never by key order**: a prefix with a word such as ``momentum``, ``target``,
``teacher``, ``ema``, ``key``/``k`` loses to one with ``q``, ``query``, ``online``, ``student``,
``backbone``, which wins over a neutral name; between equal names the shorter, then the
alphabetically first, with a warning note.
(The ``teacher``/``student`` *wrapper keys* above are DINO's file format, whose evaluation uses
the teacher, so there the teacher is kept; as key prefixes inside one state_dict, ``student.`` is
the online network and wins.) The report names the prefix used and the candidates ignored.

A checkpoint that does not fit the architecture is refused (:class:`CollapseProbeError`) unless
``allow_partial=True``, because the tensors it leaves random would be probed as if trained:

* shape-mismatched keys (a resnet50 file with ``arch="resnet18"``);
* unexpected keys that look like backbone weights, i.e. not under a known head or second-encoder
  name (:data:`HEAD_COMPONENTS`, :data:`HEAD_WORDS`: classifier, fc, head, projector, predictor,
  prototypes, queue, momentum/target/teacher/key encoder) nor under an ignored candidate prefix;
  when a prefix was stripped, only keys under it count (the rest is the training wrapper's). A
  resnet34 file loads 120/120 tensors of a resnet18 and leaves 96 such keys;
* any of the model's parameters or buffers missing (a model saved as ``named_parameters()`` lacks
  the BatchNorm running statistics). Only ``num_batches_tracked`` may be missing: eval mode never
  reads it.

Unexpected keys under known head names are dropped and listed in the report. A load that
``allow_partial`` lets through issues a :class:`PartialLoadWarning` naming what stays random, so
neither :func:`load_encoder` nor the CLI (``--allow-partial``) probes a partly random network
silently.

The final linear classifier of an image model is replaced by ``nn.Identity``
(:func:`collapse_probe.encoders.strip_classifier`), so its name gives the representation.
"""

from __future__ import annotations

import pickle
import re
import warnings
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
    libraries_with,
    rebuild_projector,
    strip_classifier,
)
from collapse_probe.errors import CollapseProbeError
from collapse_probe.hf_folder import is_hf_folder, load_hf_folder
from collapse_probe.keymaps import flatten_vissl, leading_prefixes, remap_sequential_children

TRAINER_FORMAT = "collapse-probe/trainer-v1"
#: Keys under which wrapped checkpoints keep their weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "model_state_dict", "backbone", "encoder", "net")
#: At most this many leading dotted components are tried as a prefix to strip.
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
HARMLESS_MISSING = frozenset({"num_batches_tracked"})


class PartialLoadWarning(UserWarning):
    """Issued when ``allow_partial`` lets a checkpoint that does not fit the model load anyway."""


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
    #: Other prefixes under which (at least half as many) keys name the model's: a second encoder.
    ignored_prefixes: tuple[str, ...] = ()
    #: The unexpected keys that look like backbone weights (not a known head): a wrong arch.
    unexpected_backbone_keys: tuple[str, ...] = ()
    #: The library the architecture came from (``torchvision``, ``timm``; "" for ``module:fn``).
    arch_library: str = ""
    #: True when the architecture was detected from the keys and shapes (no ``arch`` given).
    arch_detected: bool = False

    @property
    def missing_weights(self) -> tuple[str, ...]:
        """Missing keys that matter: all but ``num_batches_tracked``."""
        return tuple(k for k in self.missing_keys if k.rpartition(".")[2] not in HARMLESS_MISSING)

    @property
    def partial(self) -> bool:
        """True when part of the model stays randomly initialised (only ``allow_partial`` allows it)."""
        return bool(self.missing_weights or self.mismatched_keys or self.unexpected_backbone_keys)

    def problems(self) -> list[str]:
        """What does not fit, one short phrase per kind (empty for a complete load)."""
        found = []
        if self.mismatched_keys:
            found.append(f"{len(self.mismatched_keys)} shape-mismatched keys ({_shown(self.mismatched_keys, 2)})")
        if self.unexpected_backbone_keys:
            found.append(f"{len(self.unexpected_backbone_keys)} unexpected keys that look like backbone weights "
                         f"({_shown(self.unexpected_backbone_keys, 3)})")
        mismatched = {k.partition(" ")[0] for k in self.mismatched_keys}
        absent = tuple(k for k in self.missing_weights if k not in mismatched)
        if absent:
            found.append(f"{len(absent)} of the model's {self.n_expected} tensors missing ({_shown(absent, 3)})")
        return found

    def summary(self) -> str:
        """A few human lines: format, arch, keys loaded, what was dropped or missing."""
        where = f" under {self.source!r}" if self.source else ""
        how = ", ".join(p for p in (self.arch_library, "detected from its keys and shapes" if self.arch_detected else "")
                        if p)
        arch = f", arch {self.arch}" + (f" ({how})" if how else "") if self.arch else ""
        lines = [f"{self.path}: {self.kind}{where}{arch}"]
        if self.partial:
            lines.append("warning: PARTIAL LOAD (--allow-partial): part of the model stays randomly initialised: "
                         + "; ".join(self.problems()))
        if self.n_expected:
            prefix = f" (stripped prefix {self.stripped_prefix!r})" if self.stripped_prefix else ""
            lines.append(f"loaded {self.n_loaded}/{self.n_expected} tensors{prefix}")
        if self.ignored_prefixes:
            lines.append(f"ignored candidate prefixes {', '.join(map(repr, self.ignored_prefixes))}: "
                         "they match the model too (another copy of the encoder: momentum, target, teacher), not probed")
        for label, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys),
                            ("shape-mismatched", self.mismatched_keys)):
            if keys:
                lines.append(f"{label} keys: {_shown(keys, 5)}")
        if self.classifier:
            lines.append(f"classifier {self.classifier!r} replaced by Identity: its output is the representation")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The load as JSON-ready values (the ``load`` block of ``spectrum.json``'s ``source``)."""
        return {"kind": self.kind, "source": self.source, "arch": self.arch, "arch_library": self.arch_library,
                "arch_detected": self.arch_detected, "stripped_prefix": self.stripped_prefix,
                "ignored_prefixes": list(self.ignored_prefixes), "n_loaded": self.n_loaded,
                "n_expected": self.n_expected, "partial": self.partial, "missing_keys": list(self.missing_keys),
                "mismatched_keys": list(self.mismatched_keys), "unexpected_keys": list(self.unexpected_keys),
                "unexpected_backbone_keys": list(self.unexpected_backbone_keys), "notes": list(self.notes)}


def _shown(keys: tuple[str, ...] | list[str], n: int) -> str:
    """The first ``n`` keys, and how many there are in all when that is more."""
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


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
    #: A Hugging Face folder's ``AutoImageProcessor`` and ``AutoTokenizer`` (None when it has none).
    image_processor: Any = None
    tokenizer: Any = None


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
    vissl = flatten_vissl(obj)
    if vissl is not None:
        return vissl
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


def sequential_layout(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """lightly's ``nn.Sequential(*list(resnet.children())[:-1])`` keys renamed to the model's children."""
    children = [name for name, _ in model.named_children()]
    renamed, prefixes = remap_sequential_children(state_dict, children, set(model.state_dict()))
    notes = [f"{p!r} holds the model as a Sequential of its children (lightly's layout): indices mapped to "
             f"{', '.join(f'{i} -> {c}' for i, c in enumerate(children[:5]))}, ..." for p in prefixes]
    return renamed, notes


def choose_arch(path: Path, arch: str | None, state_dict: dict[str, torch.Tensor]) -> tuple[str, str, bool, list[str]]:
    """``(arch, library, detected, notes)`` for a state_dict: ``arch`` as given, or detected.

    A plain name that torchvision and timm both have (efficientnet_b0) goes to the library whose
    model the keys fit, torchvision when both do. Without ``arch`` the model is detected
    (:func:`collapse_probe.arch_detect.detect_arch`); several fitting models or none raise
    :class:`CollapseProbeError` naming the closest and what differs.
    """
    from collapse_probe import arch_detect

    if arch is not None:
        libraries = libraries_with(arch) if ":" not in arch and "/" not in arch else []
        if "/" in arch and ":" not in arch:
            library, _, bare = arch.partition("/")
            return bare, library, False, []
        if len(libraries) < 2:
            return arch, libraries[0] if libraries else "", False, []
        torchvision = arch_detect.check_candidate("torchvision", arch, state_dict)
        if torchvision is not None and not torchvision.problems:
            return arch, "torchvision", False, []
        timm = arch_detect.check_candidate("timm", arch, state_dict)
        if timm is not None and not timm.problems:
            return arch, "timm", False, [f"{arch!r} exists in torchvision and timm: timm's is used, its keys and shapes "
                                         "fit the file (torchvision's do not)"]
        return arch, "torchvision", False, [f"neither torchvision's nor timm's {arch} fits the file"]
    found = arch_detect.detect_arch(state_dict)
    where = f"{path} holds a bare state_dict ({len(state_dict)} tensors)"
    took = f"checked {found.n_built} of {found.n_indexed} models in {found.seconds:.1f} s"
    if len(found.matches) == 1:
        match = found.matches[0]
        return match.name, match.library, True, [
            f"architecture detected from keys and shapes: {match.spec} ({took})",
            *found.notes]
    if found.matches:
        raise CollapseProbeError(f"{where} that fits {len(found.matches)} architectures: {found.describe()}: "
                                 "name one with --arch (e.g. --arch " + found.matches[0].spec + ")")
    closest = found.describe() or "none"
    libraries = "torchvision or timm" if arch_detect.timm_installed() else "torchvision (timm is not installed)"
    raise CollapseProbeError(f"{where} that fits no {libraries} model ({took}); closest: {closest}: name its "
                             "architecture with --arch (a name, or package.module:callable)")


def _arch_model(path: Path, kind: str, obj: Any, arch: str | None, allow_partial: bool) -> LoadedEncoder:
    source, state_dict = find_state_dict(obj)
    notes = []
    if source.startswith("teacher") and isinstance(obj, Mapping) and "student" in obj:
        notes.append("DINO-style checkpoint: using the teacher's weights (DINO evaluates the teacher); 'student' ignored")
    if arch is None and isinstance(obj, Mapping) and isinstance(obj.get("arch"), str):
        arch = obj["arch"]
        notes.append(f"architecture {arch!r} read from the checkpoint")
    arch, library, detected, arch_notes = choose_arch(path, arch, state_dict)
    notes.extend(arch_notes)
    model = build_encoder(f"{library}/{arch}" if library else arch)
    head = find_classifier(model)
    rep_dim = model.get_submodule(head).in_features if head else None
    classifier = strip_classifier(model)
    state_dict, notes_map = sequential_layout(model, state_dict)
    notes.extend(notes_map)
    try:
        loaded = load_weights(model, state_dict, allow_partial=allow_partial)
    except CollapseProbeError as error:
        raise CollapseProbeError(f"{path} with arch {arch}: {error}") from None
    notes.extend(loaded.pop("notes"))
    layers = {classifier: "representation"} if classifier else {}
    # A projector from the same copy of the network: never one of an ignored (momentum) encoder.
    candidates = {k: state_dict[k] for k in loaded["unexpected_keys"]
                  if not k.startswith(loaded["ignored_prefixes"]) and not _words(k) & MOMENTUM_WORDS}
    rebuilt = rebuild_projector(candidates, near=loaded["stripped_prefix"])
    if rebuilt is not None and (rep_dim is None or rebuilt[0][0].in_features == rep_dim):
        projector, used = rebuilt
        model = EncoderWithProjector(model, projector)
        layers = {"backbone": "representation", "projector": "embedding"}
        loaded["unexpected_keys"] = tuple(k for k in loaded["unexpected_keys"] if k not in set(used))
        head_path = used[0][:used[0].rindex(".", 0, used[0].rindex("."))]
        notes.append(f"projector {head_path!r} rebuilt from its {len(used)} tensors ({len(projector)} layers; "
                     "ReLU assumed at parameter-free positions): probed as 'projector', the backbone as 'backbone'")
    report = LoadReport(str(path), kind, source, arch, classifier=classifier, notes=tuple(notes),
                        arch_library=library, arch_detected=detected, **loaded)
    return LoadedEncoder(model, report, layers)


def load_encoder_with_report(
    path: str | Path,
    arch: str | None = None,
    *,
    trust_checkpoint: bool = False,
    allow_partial: bool = False,
) -> LoadedEncoder:
    """Load any supported checkpoint (module docstring) as a :class:`LoadedEncoder` in eval mode.

    A checkpoint that does not fit ``arch`` raises :class:`CollapseProbeError`; with
    ``allow_partial=True`` it loads, ``report.partial`` is True and a :class:`PartialLoadWarning`
    says what stays random.

    >>> import tempfile, os, torchvision
    >>> path = os.path.join(tempfile.mkdtemp(), "r18.pt")
    >>> torch.save({"state_dict": {"module." + k: v for k, v in torchvision.models.resnet18().state_dict().items()}}, path)
    >>> loaded = load_encoder_with_report(path, "resnet18")
    >>> loaded.report.stripped_prefix, loaded.report.unexpected_keys, loaded.default_layers
    ('module.', ('module.fc.weight', 'module.fc.bias'), {'fc': 'representation'})
    """
    path = Path(path)
    if is_hf_folder(path):
        found = load_hf_folder(path, trust_checkpoint=trust_checkpoint, allow_partial=allow_partial)
        fields = found.pop("report")
        if arch is not None:
            fields["notes"] += (f"--arch {arch} ignored: the folder's config.json names the architecture",)
        loaded = LoadedEncoder(report=LoadReport(str(path), **fields), **found)
    else:
        loaded = _load_file(path, arch, trust_checkpoint, allow_partial)
    if loaded.report.partial:
        warnings.warn(f"{path}: partial load allowed, part of the model stays randomly initialised: "
                      + "; ".join(loaded.report.problems()), PartialLoadWarning, stacklevel=2)
    loaded.model.eval()
    return loaded


def _load_file(path: Path, arch: str | None, trust_checkpoint: bool, allow_partial: bool) -> LoadedEncoder:
    """A checkpoint file (not a folder) as a :class:`LoadedEncoder` (module docstring)."""
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
    return loaded


def load_encoder(
    path: str | Path,
    arch: str | None = None,
    *,
    trust_checkpoint: bool = False,
    allow_partial: bool = False,
) -> nn.Module:
    """Load any supported checkpoint as an ``nn.Module`` in eval mode (what the CLI probes).

    Same rules as :func:`load_encoder_with_report`, which also returns the :class:`LoadReport`.
    Nothing is hidden by returning the module alone: a checkpoint that does not fit ``arch``
    raises, and one that ``allow_partial=True`` lets through issues a :class:`PartialLoadWarning`
    naming what stays random. Dropped heads (``fc``, ``projector``, a momentum encoder) and the
    prefix chosen are in the report only: call :func:`load_encoder_with_report` to see them.

    >>> import tempfile, os, torchvision
    >>> path = os.path.join(tempfile.mkdtemp(), "r18.pth")
    >>> torch.save(torchvision.models.resnet18().state_dict(), path)
    >>> load_encoder(path, "resnet18")(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])
    """
    return load_encoder_with_report(path, arch, trust_checkpoint=trust_checkpoint, allow_partial=allow_partial).model
