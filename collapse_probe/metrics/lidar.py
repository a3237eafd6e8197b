"""LiDAR (Thilak et al., ICLR 2024), streamed in O(d^2) memory: the maths, the result, the accumulator.

LiDAR is the effective rank of the LDA matrix ``Sw^{-1/2} Sb Sw^{-1/2}`` where every clean
sample is a class and its q augmented views are the class members. With ``C`` classes, class
means ``mu_i = mean_j z_ij`` and grand mean ``mu = mean_i mu_i`` (stable-pretraining's torch
``LiDAR`` callback, the conventions used here):

* ``Sb = sum_i (mu_i - mu)(mu_i - mu)^T / (C - 1)``
* ``Sw = sum_i sum_j (z_ij - mu_i)(z_ij - mu_i)^T / (C (q - 1)) + delta I``
* ``lambda`` = eigenvalues of ``Sw^{-1/2} Sb Sw^{-1/2}`` (clamped at 0),
  ``p = (lambda + eps) / sum(lambda + eps)``, ``LiDAR = exp(-sum p log p)``.

Streaming: ``Sb`` is the covariance (ddof 1) of the per-sample view means, one row per class,
so a :class:`~collapse_probe.metrics.covariance.CovarianceAccumulator` over those rows gives it (Chan
merge, C = rows). The within-class scatter is the raw second moment of the rows ``z_ij - mu_i``
(each class is complete within one batch row, so every such row is exact when it is formed), so
a second, uncentred accumulator over them gives it. The two accumulators are the whole state
(:data:`PARTS`); reset, merge, sync and state_dict are each theirs, applied part by part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.functional.metrics import _entropy_rank
from collapse_probe.functional.moments import check_moments, gram_lower
from collapse_probe.metrics.covariance import CovarianceAccumulator

LIDAR_DELTA = 1e-4
"""stable-pretraining's default ridge on ``Sw``."""
LIDAR_EPS = 1e-8
"""stable-pretraining's default eps added to each eigenvalue before normalising."""
STATE_FORMAT = "collapse-probe/lidar-accumulator-v1"
RESULT_FORMAT = "collapse-probe/lidar-v1"
SOURCE = ("Thilak et al., LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL Architectures, "
          "ICLR 2024; conventions of stable-pretraining's torch LiDAR callback")


# ------------------------------------------------------------------------------------ pure maths
def _symmetric(lower: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix whose lower triangle ``lower`` holds (the accumulators keep only it)."""
    return torch.tril(lower) + torch.tril(lower, -1).T


def lda_eigenvalues(sb: torch.Tensor, sw: torch.Tensor, *, eps: float = LIDAR_EPS) -> torch.Tensor:
    """Eigenvalues of ``Sw^{-1/2} Sb Sw^{-1/2}`` (d,), descending, clamped at 0.

    The route of stable-pretraining's callback: ``Sw = V diag(w) V^T`` with ``w`` clamped at
    ``eps``, ``Sw^{-1/2} = V diag(w^{-1/2}) V^T``, the product symmetrised, then ``eigvalsh``.
    ``sb`` and ``sw`` are full symmetric (d, d) matrices; ``sw`` already holds ``+ delta I``.

    >>> sb, sw = torch.diag(torch.tensor([8.0, 2.0], dtype=torch.float64)), 2 * torch.eye(2, dtype=torch.float64)
    >>> [round(v, 12) for v in lda_eigenvalues(sb, sw).tolist()]
    [4.0, 1.0]
    """
    w, v = torch.linalg.eigh(sw)
    inv_sqrt = (v * w.clamp(min=eps).rsqrt().unsqueeze(0)) @ v.T
    matrix = inv_sqrt @ sb @ inv_sqrt
    matrix = 0.5 * (matrix + matrix.T)
    return torch.flip(torch.linalg.eigvalsh(matrix), dims=(-1,)).clamp_min(0.0)


def lidar_score(eigenvalues: torch.Tensor, *, eps: float = LIDAR_EPS) -> float:
    """``exp(-sum p log p)`` with ``p = (lambda + eps) / sum(lambda + eps)`` over all d eigenvalues.

    k equal non-zero eigenvalues give k (plus a trace of eps); a rank-one LDA matrix gives about 1.

    >>> round(lidar_score(torch.tensor([3.0, 3.0, 3.0, 0.0])), 4)
    3.0
    """
    shifted = torch.as_tensor(eigenvalues, dtype=torch.float64) + eps
    return _entropy_rank(shifted / shifted.sum())


def scatter_matrices(between: Any, within: Any, views: int, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Sb, Sw)`` from the :class:`~collapse_probe.functional.moments.Moments` of the view means (between)
    and of the within-class deviations (within), in the conventions of the module docstring."""
    n_classes = between.count
    sb = _symmetric(between.m2) / (n_classes - 1)
    sw = _symmetric(gram_lower(within)) / (n_classes * (views - 1))
    sw.diagonal().add_(delta)
    return sb, sw


# ------------------------------------------------------------------------------------ the result
@dataclass(frozen=True)
class Lidar:
    """LiDAR of one layer, with the conventions that produced it.

    Attributes:
        lidar: the score, between about 1 and ``max_rank``.
        eigenvalues: (d,) eigenvalues of ``Sw^{-1/2} Sb Sw^{-1/2}``, descending, float64.
        n_classes: C, the clean samples (each one LDA class).
        views: q, the augmented views per sample.
        delta / eps: the ridge on ``Sw`` and the eps added before normalising.
        layer: the probed module's name (``None`` for the model output).
    """

    lidar: float
    eigenvalues: torch.Tensor
    n_classes: int
    views: int
    delta: float = LIDAR_DELTA
    eps: float = LIDAR_EPS
    layer: str | None = None

    @property
    def dim(self) -> int:
        return int(self.eigenvalues.numel())

    @property
    def max_rank(self) -> int:
        """``min(d, C - 1)``: the rank ``Sb`` can have, so the most LiDAR can show."""
        return min(self.dim, self.n_classes - 1)

    @property
    def sample_limited(self) -> bool:
        """Whether too few classes cap the score below d (LiDAR then says more about C than the encoder)."""
        return self.max_rank < self.dim

    def conventions(self) -> dict[str, Any]:
        return {
            "matrix": "Sw^-1/2 Sb Sw^-1/2",
            "sb": "sum_i (mu_i - mu)(mu_i - mu)^T / (C - 1)",
            "sw": "sum_i sum_j (z_ij - mu_i)(z_ij - mu_i)^T / (C (q - 1)) + delta I",
            "p": "(lambda + eps) / sum(lambda + eps)",
            "views": self.views, "delta": self.delta, "eps": self.eps, "dtype": "float64",
            "source": SOURCE,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: format tag, score, counts, conventions and every eigenvalue."""
        return {
            "format": RESULT_FORMAT, "layer": self.layer, "lidar": self.lidar, "n_classes": self.n_classes,
            "views": self.views, "dim": self.dim, "max_rank": self.max_rank, "sample_limited": self.sample_limited,
            "conventions": self.conventions(), "eigenvalues": self.eigenvalues.tolist(),
        }


# ------------------------------------------------------------------------------- the accumulator
@dataclass(frozen=True)
class LidarPart:
    """One covariance accumulator of the LiDAR state, the rows it sees and its conventions.

    Each part combines (merge, sync) by the :class:`CovarianceAccumulator` rules of its own
    ``STATE``: the Chan merge of its moments, sums of its counts.
    """

    name: str
    center: bool
    ddof: int
    rows: str


PARTS: tuple[LidarPart, ...] = (
    LidarPart("between", center=True, ddof=1, rows="the mean of each sample's q views: one row per class"),
    LidarPart("within", center=False, ddof=0, rows="each view minus its sample's mean: q rows per class"),
)
CONVENTIONS = ("dim", "views", "delta", "eps")


class LidarAccumulator:
    """Streaming LiDAR of (B, q, d) batches (B clean samples, q views each) in O(d^2) memory.

    Args:
        dim: embedding dimension d.
        views: q, the views per sample (at least 2).
        delta: ridge added to ``Sw`` (stable-pretraining's default 1e-4).
        eps: added to every eigenvalue before normalising (default 1e-8).
        device: where the float64 statistics live (put it on the model's device).
        layer: a name carried into the result.

    Lifecycle as :class:`~collapse_probe.metrics.covariance.CovarianceAccumulator`: ``update`` any
    number of times, ``merge`` other local accumulators, then ``compute`` (single process) or
    ``sync`` then ``compute`` (torch.distributed). The result does not depend on batch size,
    order, or how samples are split across processes. Healthy embeddings, whose class means
    spread over all d directions, score near d; a collapsed encoder scores near 1.

    >>> g = torch.Generator().manual_seed(0)
    >>> means = torch.randn(500, 1, 4, generator=g, dtype=torch.float64)
    >>> acc = LidarAccumulator(4, views=3)
    >>> acc.update(means + 0.1 * torch.randn(500, 3, 4, generator=g, dtype=torch.float64))
    >>> round(acc.compute().lidar, 1)
    4.0
    >>> acc.reset()
    >>> collapsed = means[..., :1] * torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    >>> acc.update(collapsed + 0.1 * torch.randn(500, 3, 4, generator=g, dtype=torch.float64))
    >>> round(acc.compute().lidar, 1)  # one direction; view noise alone puts about 1/q in each other one
    1.1
    """

    def __init__(self, dim: int, *, views: int, delta: float = LIDAR_DELTA, eps: float = LIDAR_EPS,
                 device: torch.device | str | None = None, layer: str | None = None):
        if int(views) < 2:
            raise CollapseProbeError(f"LiDAR needs at least 2 views per sample, got views={views}")
        if delta < 0 or eps < 0:
            raise CollapseProbeError(f"delta and eps must be non-negative, got delta={delta}, eps={eps}")
        self.dim, self.views, self.delta, self.eps = int(dim), int(views), float(delta), float(eps)
        self.layer = layer
        for part in PARTS:
            setattr(self, part.name, CovarianceAccumulator(dim, device=device, center=part.center, ddof=part.ddof,
                                                           layer=layer))
        self.device = self.between.device

    def _parts(self) -> list[CovarianceAccumulator]:
        return [getattr(self, part.name) for part in PARTS]

    @property
    def synced(self) -> bool:
        return all(acc.synced for acc in self._parts())

    # ----------------------------------------------------------------- state (derived from PARTS)
    def reset(self) -> None:
        """Forget every sample and the synced status."""
        for acc in self._parts():
            acc.reset()

    def state_dict(self) -> dict[str, Any]:
        """Each part's ``state_dict`` under its name, plus the conventions: torch.save-able."""
        state: dict[str, Any] = {"format": STATE_FORMAT, "layer": self.layer}
        state |= {key: getattr(self, key) for key in CONVENTIONS}
        state |= {part.name: getattr(self, part.name).state_dict() for part in PARTS}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; dim, views, delta and eps must match."""
        if state.get("format") != STATE_FORMAT:
            raise CollapseProbeError(f"not a {STATE_FORMAT} state_dict (format {state.get('format')!r})")
        self._check_conventions(state, "state_dict")
        for part in PARTS:
            getattr(self, part.name).load_state_dict(state[part.name])

    def _check_conventions(self, other: Any, what: str) -> None:
        for key in CONVENTIONS:
            theirs = other[key] if isinstance(other, dict) else getattr(other, key)
            if theirs != getattr(self, key):
                raise CollapseProbeError(f"{what} has {key}={theirs!r}, this accumulator {key}={getattr(self, key)!r}")

    def merge(self, other: LidarAccumulator) -> None:
        """Fold ``other``'s samples in (each part by its Chan merge; ``other`` unchanged). Both local."""
        if not isinstance(other, LidarAccumulator):
            raise CollapseProbeError(f"merge expects a LidarAccumulator, got {type(other).__name__}")
        self._check_conventions(other, "the other accumulator")
        for part in PARTS:
            getattr(self, part.name).merge(getattr(other, part.name))

    def sync(self, group: Any = None) -> None:
        """All-reduce every part over ``torch.distributed`` (O(d^2) each); a no-op when not distributed."""
        for acc in self._parts():
            acc.sync(group)

    # ---------------------------------------------------------------------------------- update
    @torch.inference_mode()
    def update(self, z: torch.Tensor) -> None:
        """Add a (B, q, d) batch: the q views of B samples. Float64 on this device; never syncs."""
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise CollapseProbeError(f"update expects a floating-point torch.Tensor, got {getattr(z, 'dtype', type(z).__name__)}")
        if z.ndim != 3 or z.shape[1:] != (self.views, self.dim):
            raise CollapseProbeError(
                f"expected a (batch, views={self.views}, {self.dim}) tensor, got shape {tuple(z.shape)} "
                f"(layer {self.layer or '<output>'})"
            )
        views = z.detach().to(device=self.device, dtype=torch.float64)
        means = views.mean(dim=1)
        self.between.update(means)
        self.within.update((views - means.unsqueeze(1)).reshape(-1, self.dim))

    # --------------------------------------------------------------------------------- compute
    @torch.inference_mode()
    def compute(self) -> Lidar:
        """Solve the LDA eigenproblem (two d x d eigen-solves) and return a :class:`Lidar`.

        Raises for non-finite embeddings (naming the first bad batch), an empty stream, and
        fewer than two samples.
        """
        between, within = (acc.finalize() for acc in self._parts())
        if between.count < 2:
            raise CollapseProbeError(f"LiDAR needs at least 2 samples (classes), got {between.count}")
        check_moments(between)
        check_moments(within)
        sb, sw = scatter_matrices(between, within, self.views, self.delta)
        eigenvalues = lda_eigenvalues(sb, sw, eps=self.eps).cpu()
        return Lidar(lidar=lidar_score(eigenvalues, eps=self.eps), eigenvalues=eigenvalues, n_classes=between.count,
                     views=self.views, delta=self.delta, eps=self.eps, layer=self.layer)
