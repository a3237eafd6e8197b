"""What a load did: :class:`LoadReport` (what was loaded, what was dropped, what stays random),
:class:`LoadedEncoder` (the model, its layers and the report) and the partial-load warning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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
