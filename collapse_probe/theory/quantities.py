"""The quantities the paper's theorems are about, as pure functions of tensors.

Notation (Jing et al. 2022, sections 4-5): inputs ``x`` are (B, d) row-stacked, a linear encoder
is ``z = W x`` with W (k, d), so a batch of embeddings is ``Z = X W^T``. The loss is the repo's
symmetric cross-view InfoNCE on *unnormalised* dot products
(:func:`collapse_probe.ssl.losses.info_nce` with ``normalize=False``):

    S = Z1 Z2^T / t,   L = (CE(S, I) + CE(S^T, I)) / 2,   CE averaged over the B rows.

Sign convention: ``G = dL/dW`` is the gradient of the loss, so gradient *descent* follows
``dW/dt = -G``. Lemma 1 says ``G = -W X`` for a symmetric d x d matrix X, hence ``dW/dt = W X`` and,
for a constant X, ``W(t) = W(0) exp(X t)`` (Theorem 1): directions where X has negative
eigenvalues shrink exponentially, and W loses rank along them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Lemma2Terms",
    "alignment_error",
    "alignment_matrix",
    "conserved_quantity",
    "infonce_x_matrix",
    "lemma2_terms",
    "matched_alignment",
]


def _softmax_weights(
    x1: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax P and column softmax Q of ``S = (x1 W^T)(x2 W^T)^T / t``, both (B, B)."""
    logits = (x1 @ w.T) @ (x2 @ w.T).T / temperature
    return torch.softmax(logits, dim=1), torch.softmax(logits, dim=0)


def infonce_x_matrix(
    x1: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, *, temperature: float = 0.1
) -> torch.Tensor:
    """The matrix X of Lemma 1 for ``info_nce(x1 W^T, x2 W^T, normalize=False)``.

    Derivation (exact for this loss): with P the row softmax and Q the column softmax of S,
    ``dL/dS = (P + Q - 2I) / (2B)``; let ``D = (P + Q - 2I) / (2 B t)``. The chain rule through
    ``Z1 = X1 W^T`` and ``Z2 = X2 W^T`` gives ``dL/dW = W (X1^T D X2 + X2^T D^T X1)``, so

        X = -(X1^T D X2 + X2^T D^T X1),     dL/dW = -W X,     dW/dt = W X.

    Args:
        x1, x2: (B, d) the two views of one batch (row i of each is the same sample).
        w: (k, d) the linear encoder.
        temperature: t.

    Returns:
        (d, d) symmetric X in the dtype of the inputs.

    >>> x = torch.eye(3, dtype=torch.float64)
    >>> X = infonce_x_matrix(x, x, torch.eye(3, dtype=torch.float64), temperature=1.0)
    >>> bool(torch.allclose(X, X.T))
    True
    >>> [round(v, 6) + 0.0 for v in torch.linalg.eigvalsh(X).tolist()]  # 2 (I - P) / 3: PSD, singular
    [0.0, 0.423883, 0.423883]
    """
    batch = x1.shape[0]
    p, q = _softmax_weights(x1, x2, w, temperature)
    eye = torch.eye(batch, dtype=p.dtype, device=p.device)
    d = (p + q - 2 * eye) / (2 * batch * temperature)
    m = x1.T @ d @ x2
    return -(m + m.T)


@dataclass(frozen=True)
class Lemma2Terms:
    """Lemma 2's split of X for the dot-product InfoNCE: ``X = sigma0 - sigma1 - residual``.

    Attributes:
        sigma0: (d, d) weighted covariance of negative-pair differences,
            ``sum_{i != j} a_ij (x1_i - x2_j)(x1_i - x2_j)^T`` with ``a_ij = (P_ij + Q_ij) / (2 B t)``:
            the data term ("Sigma0_hat"); it spreads the embeddings.
        sigma1: (d, d) weighted covariance of positive-pair differences (the augmentation noise),
            ``sum_i b_i (x1_i - x2_i)(x1_i - x2_i)^T`` with ``b_i = (2 - P_ii - Q_ii) / (2 B t)``
            ("Sigma1_hat"); it pulls the two views together.
        residual: (d, d) ``sum_i r_i x1_i x1_i^T + sum_j c_j x2_j x2_j^T`` with
            ``r_i = (sum_j Q_ij - 1) / (2 B t)``, ``c_j = (sum_i P_ij - 1) / (2 B t)``. Its weights
            sum to zero over the batch. It is absent in the paper, whose Lemma 2 is stated for the
            squared-distance InfoNCE ``exp(-|z_i - z_j|^2 / 2)``; dot-product logits add it.
        x: (d, d) ``sigma0 - sigma1 - residual``, equal to :func:`infonce_x_matrix`.
    """

    sigma0: torch.Tensor
    sigma1: torch.Tensor
    residual: torch.Tensor
    x: torch.Tensor


def lemma2_terms(
    x1: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, *, temperature: float = 0.1
) -> Lemma2Terms:
    """Compute Sigma0_hat, Sigma1_hat and the dot-product residual pair by pair (O(B^2 d^2)).

    Use small batches; this is the readable form of :func:`infonce_x_matrix`, built from the
    identity ``a b^T + b a^T = a a^T + b b^T - (a - b)(a - b)^T``.

    >>> g = torch.Generator().manual_seed(0)
    >>> x1, x2 = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    >>> w = torch.eye(4, dtype=torch.float64)
    >>> t = lemma2_terms(x1, x2, w, temperature=0.5)
    >>> bool(torch.allclose(t.x, infonce_x_matrix(x1, x2, w, temperature=0.5)))
    True
    """
    batch = x1.shape[0]
    p, q = _softmax_weights(x1, x2, w, temperature)
    scale = 2 * batch * temperature
    eye = torch.eye(batch, dtype=torch.bool, device=p.device)
    diff = x1[:, None, :] - x2[None, :, :]  # (B, B, d): x1_i - x2_j
    outer = diff[..., :, None] * diff[..., None, :]  # (B, B, d, d)
    neg_w = ((p + q) / scale).masked_fill(eye, 0.0)
    pos_w = (2 - torch.diagonal(p) - torch.diagonal(q)) / scale
    sigma0 = torch.einsum("ij,ijab->ab", neg_w, outer)
    sigma1 = torch.einsum("i,iab->ab", pos_w, outer[torch.arange(batch), torch.arange(batch)])
    r = (q.sum(dim=1) - 1) / scale
    c = (p.sum(dim=0) - 1) / scale
    residual = torch.einsum("i,ia,ib->ab", r, x1, x1) + torch.einsum("j,ja,jb->ab", c, x2, x2)
    return Lemma2Terms(sigma0=sigma0, sigma1=sigma1, residual=residual, x=sigma0 - sigma1 - residual)


def conserved_quantity(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``W1 W1^T - W2^T W2`` for ``z = W2 W1 x`` (W1 (h, d), W2 (k, h)); returns (h, h).

    Under gradient flow on any loss of the product ``W2 W1`` this matrix is constant
    (section 5: ``dW1/dt = -W2^T G`` and ``dW2/dt = -G W1^T`` make both time derivatives equal).
    Discrete SGD changes it by O(lr^2) per step.

    >>> w = torch.eye(2)
    >>> conserved_quantity(2 * w, w)
    tensor([[3., 0.],
            [0., 3.]])
    """
    return w1 @ w1.T - w2.T @ w2


def alignment_matrix(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The alignment matrix ``A = V2^T U1`` of Theorem 2, for ``z = W2 W1 x``.

    With SVDs ``W1 = U1 S1 V1^T`` and ``W2 = U2 S2 V2^T`` (singular values descending), A compares
    the output directions of layer 1 with the input directions of layer 2. Theorem 2: when the
    singular values are distinct, A tends to the identity up to the sign of each singular
    vector, so ``|A| -> I`` (elementwise absolute value; not a permutation, since both SVDs are
    sorted). Inside a group of (near-)equal singular values A is an arbitrary rotation.

    Returns:
        (h, h) float64 tensor.

    >>> q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    >>> s = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    >>> a = alignment_matrix(q @ s, s @ q.T)  # W1 = Q S, W2 = S Q^T: V2 = U1 = Q
    >>> bool(torch.allclose(a.abs(), torch.eye(3, dtype=torch.float64), atol=1e-6))
    True
    """
    u1 = torch.linalg.svd(w1.double(), full_matrices=False)[0]
    v2h = torch.linalg.svd(w2.double(), full_matrices=False)[2]
    return v2h @ u1


def alignment_error(a: torch.Tensor) -> float:
    """``|| |A| - I ||_F`` (0 for perfect alignment; about sqrt(2h) for a random orthogonal A).

    >>> alignment_error(-torch.eye(4))
    0.0
    """
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return float(torch.linalg.matrix_norm(a.abs() - eye))



def matched_alignment(a: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Pair each row of A with one column so that ``sum |A[i, perm[i]]|`` is largest; return (perm, error).

    ``error = || |A[:, perm]| - I ||_F``. When W1 and W2 have clusters of nearly equal singular
    values, their sorted orders can differ inside a cluster and ``|A|`` converges to a
    *permutation* instead of the identity: the directions are aligned, only their ranks differ.
    This error measures the alignment of directions; :func:`alignment_error` also demands the
    same order.

    >>> perm, error = matched_alignment(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    >>> perm.tolist(), error
    ([1, 0], 0.0)
    """
    magnitude = a.abs().double().cpu()
    _, columns = linear_sum_assignment(magnitude.numpy(), maximize=True)
    perm = torch.as_tensor(columns, dtype=torch.long)
    return perm, alignment_error(magnitude[:, perm])
