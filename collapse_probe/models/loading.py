"""Safe, honest loading of any checkpoint into an ``nn.Module`` ready to probe.

What :func:`load_encoder_with_report` recognises, in this order:

* a Hugging Face ``save_pretrained`` folder (``config.json`` + weights): loaded with transformers'
  ``AutoModel`` from that folder only, never running code shipped in it without
  ``trust_checkpoint`` (:mod:`collapse_probe.models.hf`);
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
(:func:`collapse_probe.models._registry.strip_classifier`), so its name gives the representation.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models import _detect as arch_detect
from collapse_probe.models._files import TRAINER_FORMAT, find_state_dict, read_checkpoint
from collapse_probe.models._fit import MOMENTUM_WORDS, _words, load_weights
from collapse_probe.models._keymaps import (
    remap_sequential_children,
)
from collapse_probe.models._registry import (
    EncoderWithProjector,
    build_encoder,
    find_classifier,
    libraries_with,
    rebuild_projector,
    strip_classifier,
)
from collapse_probe.models._report import (
    ExportedEncoder,
    LoadedEncoder,
    LoadReport,
    PartialLoadWarning,
)
from collapse_probe.models.hf import is_hf_folder, load_hf_folder


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
    (:func:`collapse_probe.models._detect.detect_arch`); several fitting models whose outputs
    differ raise :class:`CollapseProbeError` naming each; none fitting raises naming the closest
    and what differs.
    """
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
        raise CollapseProbeError(
            f"{where} whose keys and shapes fit {len(found.matches)} architectures that compute "
            f"{len(found.groups)} different outputs from the same weights and input: {found.describe_groups()} "
            f"({took}): name the one it is with --arch "
            f"(e.g. --arch {found.matches[0].spec})")
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
