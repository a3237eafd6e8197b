"""The paper's projectors (Tables 1 and 2): r (B, D) -> z (B, K).

=================  ====================================================  ============  =========
name               map                                                   trainable     K
=================  ====================================================  ============  =========
mlp                Linear-BN-ReLU-Linear-BN (SimCLR)                     yes           out
linear             one Linear, no bias (as the DirectCLR code)           yes           out
none               no projector (``build_projector`` returns None)       --            D
orthogonal         z = r W^T, W kept orthogonal by a parametrization     yes           D
diagonal           z = r * w, w initialised to ones                      yes           D
lowrank            z = r (U diag(1,..1,0,..0) V^T)^T, d0 ones, U V       no (fixed)    D
                   fixed random orthogonal
lowrank-diagonal   z = r * [1]*d0 + [0]*(D-d0)  (equals DirectCLR)        no (fixed)    D
=================  ====================================================  ============  =========
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from collapse_probe.errors import CollapseProbeError


class Diagonal(nn.Module):
    """``z = r * weight``: a trainable diagonal matrix, initialised to the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.weight


class FixedLinear(nn.Module):
    """``z = r @ matrix.T`` with a fixed (buffer, not parameter) matrix, saved in the state dict."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix.clone())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r @ self.matrix.T.to(r.dtype)


class FixedMask(nn.Module):
    """``z = r * mask`` with a fixed 0/1 mask: the first ``d0`` entries are 1."""

    def __init__(self, dim: int, d0: int):
        super().__init__()
        mask = torch.zeros(dim)
        mask[:d0] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.mask.to(r.dtype)


def lowrank_matrix(dim: int, d0: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``U diag(1 x d0, 0 x (dim - d0)) V^T`` with U, V random orthogonal (QR of a Gaussian).

    >>> m = lowrank_matrix(6, 2, generator=torch.Generator().manual_seed(0))
    >>> int(torch.linalg.matrix_rank(m)), [round(float(s), 4) for s in torch.linalg.svdvals(m)[:3]]
    (2, [1.0, 1.0, 0.0])
    """
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return (u[:, :d0] @ v[:, :d0].T).float()


def projector_dims(kind: str, rep_dim: int, *, out_dim: int = 128, hidden: int | None = None) -> list[int]:
    """Layer sizes from input to output, e.g. ``[2048, 2048, 128]`` for the ResNet-50 mlp."""
    if kind == "mlp":
        return [rep_dim, hidden or rep_dim, out_dim]
    if kind == "linear":
        return [rep_dim, out_dim]
    if kind == "none":
        return [rep_dim]
    return [rep_dim, rep_dim]


def build_projector(
    kind: str, dims: list[int], *, d0: int | None = None, seed: int = 0, bias: bool = False
) -> nn.Module | None:
    """Build projector ``kind`` with layer sizes ``dims`` (see :func:`projector_dims`).

    ``bias`` applies to the ``linear`` projector only: ``False`` as in the DirectCLR code (its
    ``single`` mode); ``True`` rebuilds checkpoints written before the bias was dropped.

    >>> p = build_projector("lowrank-diagonal", [8, 8], d0=3)
    >>> p(torch.ones(1, 8))
    tensor([[1., 1., 1., 0., 0., 0., 0., 0.]])
    """
    if kind == "none":
        return None
    if kind == "mlp":
        rep, hidden, out = dims
        return nn.Sequential(
            nn.Linear(rep, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out, bias=False), nn.BatchNorm1d(out),
        )
    if kind == "linear":
        return nn.Linear(dims[0], dims[-1], bias=bias)
    dim = dims[0]
    if kind == "orthogonal":
        return orthogonal(nn.Linear(dim, dim, bias=False))
    if kind == "diagonal":
        return Diagonal(dim)
    if kind in ("lowrank", "lowrank-diagonal"):
        if d0 is None or not 1 <= d0 <= dim:
            raise CollapseProbeError(f"projector {kind} needs --d0 between 1 and {dim}, got {d0}")
        if kind == "lowrank-diagonal":
            return FixedMask(dim, d0)
        return FixedLinear(lowrank_matrix(dim, d0, generator=torch.Generator().manual_seed(seed)))
    raise CollapseProbeError(f"unknown projector {kind!r}")
