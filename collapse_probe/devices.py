"""One parser for every ``--device`` / ``device=`` string, with one-line errors."""

from __future__ import annotations

import torch

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
