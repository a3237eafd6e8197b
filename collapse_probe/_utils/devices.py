"""The one place a device request becomes a ``torch.device``: ``--device`` strings, ``device=``
arguments, a model's own device, and this process's GPU under torchrun."""

from __future__ import annotations

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError


def parse_device(name: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available else CPU; ``cpu``, ``cuda``, ``cuda:i``, ``mps`` checked.

    >>> parse_device("cpu")
    device(type='cpu')
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CollapseProbeError(f"--device {name!r}: use auto, cpu, cuda or cuda:INDEX") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise CollapseProbeError(f"--device {name!r}: use auto, cpu, cuda or cuda:INDEX")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CollapseProbeError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_device(
    device: str | torch.device | None = None, *, model: nn.Module | None = None, local_rank: int | None = None
) -> torch.device:
    """The device to run on.

    * ``device`` given (not None): parsed and checked by :func:`parse_device` (``"auto"`` = CUDA
      when available, else CPU);
    * ``device=None`` with a ``model``: where the model already is (its first parameter or
      buffer; CPU for a model with neither), so probing never moves a model by surprise;
    * ``device=None`` without a model: as ``"auto"``.

    ``local_rank`` (torchrun, one GPU per process): a bare ``cuda`` becomes ``cuda:local_rank``.

    >>> resolve_device("cpu"), resolve_device(model=nn.Linear(2, 2))
    (device(type='cpu'), device(type='cpu'))
    """
    if device is None and model is not None:
        resolved = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    else:
        resolved = parse_device(device)
    if resolved.type == "cuda" and resolved.index is None and local_rank is not None:
        resolved = torch.device("cuda", local_rank)
    return resolved
