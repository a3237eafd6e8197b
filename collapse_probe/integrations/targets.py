"""What a trainer callback probes: the module whose forward gives embeddings, and its cadence.

A training wrapper is often not an encoder: a LightningModule may have no ``forward`` at all, and
a Hugging Face ``*ForSequenceClassification`` returns a loss and logits. :func:`probe_target`
finds the encoder once, before training starts, or refuses in one line naming ``module=``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from collapse_probe.errors import CollapseProbeError
from collapse_probe.integrations.monitor import SpectrumMonitor

NO_FORWARD = {"Module._forward_unimplemented", "LightningModule.forward"}


def cadence(every: int | None, older: int | None, older_name: str) -> int:
    """The one cadence argument ``every``, or its older name (``every_n_epochs`` / ``every_n_evals``).

    >>> cadence(None, 3, "every_n_epochs"), cadence(2, None, "every_n_epochs"), cadence(None, None, "x")
    (3, 2, 1)
    """
    if every is not None and older is not None and every != older:
        raise CollapseProbeError(f"every={every} and {older_name}={older} disagree; give one (every)")
    return int(every if every is not None else older if older is not None else 1)


def callback_monitor(loader: Any, options: Any, layers: Any, every: int, **kwargs: Any) -> SpectrumMonitor:
    """The :class:`~collapse_probe.integrations.monitor.SpectrumMonitor` a trainer callback wraps: the
    probed module's output (``{"output": None}``) when neither ``layers`` nor ``options`` names any."""
    if layers is None and (options is None or options.layers is None):
        layers = {"output": None}
    return SpectrumMonitor(loader, options, layers=layers, every=every, **kwargs)


def has_own_forward(module: nn.Module) -> bool:
    """Whether ``module``'s class defines a ``forward`` (not nn.Module's or LightningModule's stub)."""
    return getattr(type(module).forward, "__qualname__", "") not in NO_FORWARD


def _submodule(root: nn.Module, name: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CollapseProbeError(f"module={name!r}: no such submodule of {type(root).__name__}{hint}") from None


def probe_target(root: nn.Module, module: str | None, layers: Mapping[str, str | None]
                 ) -> tuple[str | None, dict[str, str | None]]:
    """``(module, layers)`` to probe inside ``root``: as given when that module has a forward; for
    a module without one, the owner of every named layer (``{"rep": "backbone.layer4"}`` ->
    ``("backbone", {"rep": "layer4"})``); else a one-line :class:`CollapseProbeError` naming
    ``module=``. ``None`` as a layer is the probed module's output.
    """
    target = _submodule(root, module) if module else root
    if has_own_forward(target):
        return module, dict(layers)
    owners = {name.split(".")[0] for name in layers.values() if name}
    if len(owners) == 1 and None not in layers.values():
        owner = owners.pop()
        inner = _submodule(target, owner)
        if has_own_forward(inner):
            full = f"{module}.{owner}" if module else owner
            return full, {shown: name.partition(".")[2] or None for shown, name in layers.items()}
    children = ", ".join(name for name, _ in target.named_children()) or "none"
    raise CollapseProbeError(
        f"{type(target).__name__} has no forward() to run the probe batches through: set module= to the encoder "
        f"to probe (its submodules: {children}), or name layers under one submodule")


def hugging_face_encoder(model: nn.Module, module: str | None, layers: Mapping[str, str | None]) -> str | None:
    """For the model output of a Hugging Face model with a head (``*ForSequenceClassification``
    returns a loss and logits), its base model (``bert``) gives the hidden states; else ``module``."""
    if module is not None or any(name for name in layers.values()):
        return module
    base = getattr(model, "base_model", None)
    prefix = getattr(model, "base_model_prefix", "")
    if isinstance(base, nn.Module) and base is not model and prefix and hasattr(model, prefix):
        return prefix
    return module
