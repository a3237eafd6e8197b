"""``SSLModel``: backbone -> representation r -> (projector | first d0 dims) -> embedding z.

The loss is not part of the model (see ``collapse_probe.ssl.losses``). Submodule names are what
``collapse_probe.spectrum(..., layers=[...])`` hooks:

* ``backbone``  -- output: the representation r, (B, D);
* ``projector`` -- output: the projector's output (absent when there is none);
* ``embedding`` -- a parameter-free marker whose output is the embedding z the loss sees, for
  every method (the projector output, r itself, or r[:, :d0] for DirectCLR).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from collapse_probe.ssl.backbones import build_backbone
from collapse_probe.ssl.config import TrainConfig, default_d0, validate
from collapse_probe.ssl.projectors import build_projector, projector_dims


class Truncate(nn.Module):
    """``r[:, :d0]``: DirectCLR's sub-vector, parameter-free."""

    def __init__(self, d0: int):
        super().__init__()
        self.d0 = d0

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r[:, : self.d0]

    def extra_repr(self) -> str:
        return f"d0={self.d0}"


class SSLModel(nn.Module):
    """An encoder trained by SimCLR or DirectCLR.

    ``forward(x)`` maps images (B, 3, H, W) to the embedding z (B, K);
    ``forward(x, return_representation=True)`` returns ``(r, z)``.

    >>> model, arch = build_model(TrainConfig(arch="smallcnn", width=8, method="directclr", d0=5))
    >>> r, z = model(torch.zeros(4, 3, 32, 32), return_representation=True)
    >>> tuple(r.shape), tuple(z.shape), arch["projector"]
    ((4, 32), (4, 5), 'none')
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None, *, d0: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.truncate = Truncate(d0) if d0 is not None and projector is None else None
        self.embedding = nn.Identity()

    def forward(self, x: torch.Tensor, return_representation: bool = False) -> Any:
        r = self.backbone(x)
        if self.projector is not None:
            z = self.projector(r)
        elif self.truncate is not None:
            z = self.truncate(r)
        else:
            z = r
        z = self.embedding(z)
        return (r, z) if return_representation else z


def architecture(config: TrainConfig, rep_dim: int) -> dict[str, Any]:
    """The checkpoint's ``arch`` dict: everything needed to rebuild the model without the config."""
    directclr = config.method == "directclr"
    projector = "none" if directclr else config.projector
    d0 = config.d0
    if d0 is None and (directclr or projector in ("lowrank", "lowrank-diagonal")):
        d0 = default_d0(rep_dim)
    arch = {
        "backbone": config.arch,
        "small_stem": bool(config.small_stem),
        "width": int(config.width),
        "projector": projector,
        "projector_dims": projector_dims(projector, rep_dim, out_dim=config.projector_dim, hidden=config.projector_hidden),
        "method": config.method,
        "d0": d0,
        "rep_dim": rep_dim,
    }
    if projector == "linear":  # bias-free, as the DirectCLR code; checkpoints without this key had a bias
        arch["projector_bias"] = False
    return arch


def build_model_from_arch(arch: dict[str, Any], *, seed: int = 0) -> SSLModel:
    """A freshly initialised :class:`SSLModel` from a checkpoint-style ``arch`` dict."""
    backbone, _ = build_backbone(arch["backbone"], small_stem=arch.get("small_stem", False), width=arch.get("width", 32))
    projector = build_projector(arch["projector"], list(arch["projector_dims"]), d0=arch.get("d0"), seed=seed,
                                bias=arch.get("projector_bias", True))
    d0 = arch.get("d0") if arch.get("method") == "directclr" else None
    return SSLModel(backbone, projector, d0=d0)


def build_model(config: TrainConfig) -> tuple[SSLModel, dict[str, Any]]:
    """Build the model a config asks for; returns ``(model, arch)``."""
    _, rep_dim = build_backbone(config.arch, small_stem=config.small_stem, width=config.width)
    validate(config, rep_dim=rep_dim, check_data=False)
    arch = architecture(config, rep_dim)
    torch.manual_seed(config.seed)
    return build_model_from_arch(arch, seed=config.seed), arch
