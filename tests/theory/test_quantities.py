"""Lemma 1/2, the conserved quantity and alignment, checked against autograd and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapse_probe.ssl.losses import info_nce
from collapse_probe.theory.linear import decaying_init, two_layer_gradient_flow
from collapse_probe.theory.quantities import (
    alignment_error,
    alignment_matrix,
    conserved_quantity,
    infonce_x_matrix,
    lemma2_terms,
    matched_alignment,
)

F64 = torch.float64


def _batch(seed: int, batch: int, dim: int, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=F64)
    return x + noise * torch.randn(batch, dim, generator=g, dtype=F64), x + noise * torch.randn(batch, dim, generator=g, dtype=F64)


@pytest.mark.parametrize(("k", "d", "temperature"), [(5, 5, 0.1), (3, 6, 0.7), (8, 4, 0.25)])
def test_lemma1_gradient_is_minus_w_x(k: int, d: int, temperature: float) -> None:
    x1, x2 = _batch(k * d, batch=12, dim=d)
    w = torch.randn(k, d, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_()
    loss = info_nce(x1 @ w.T, x2 @ w.T, temperature=temperature, normalize=False)
    (grad,) = torch.autograd.grad(loss, w)
    x = infonce_x_matrix(x1, x2, w.detach(), temperature=temperature)
    torch.testing.assert_close(grad, -w.detach() @ x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x, x.T)


def _numpy_lemma2(x1: np.ndarray, x2: np.ndarray, w: np.ndarray, t: float) -> tuple[np.ndarray, ...]:
    """Independent reference: explicit loops over pairs, weights from a numpy softmax."""
    b, d = x1.shape
    s = (x1 @ w.T) @ (x2 @ w.T).T / t
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    q = np.exp(s - s.max(axis=0, keepdims=True))
    q /= q.sum(axis=0, keepdims=True)
    sigma0, sigma1, residual = np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d))
    for i in range(b):
        for j in range(b):
            diff = x1[i] - x2[j]
            if i != j:
                sigma0 += (p[i, j] + q[i, j]) / (2 * b * t) * np.outer(diff, diff)
            else:
                sigma1 += (2 - p[i, i] - q[i, i]) / (2 * b * t) * np.outer(diff, diff)
        residual += (q[i].sum() - 1) / (2 * b * t) * np.outer(x1[i], x1[i])
        residual += (p[:, i].sum() - 1) / (2 * b * t) * np.outer(x2[i], x2[i])
    return sigma0, sigma1, residual


def test_lemma2_split_matches_pairwise_reference_and_gradient() -> None:
    x1, x2 = _batch(3, batch=9, dim=4)
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    terms = lemma2_terms(x1, x2, w, temperature=0.2)
    ref = _numpy_lemma2(x1.numpy(), x2.numpy(), w.numpy(), 0.2)
    for got, want in zip((terms.sigma0, terms.sigma1, terms.residual), ref, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms.x, infonce_x_matrix(x1, x2, w, temperature=0.2))
    # Sigma0_hat and Sigma1_hat are weighted covariances: positive semi-definite.
    assert torch.linalg.eigvalsh(terms.sigma0).min() > -1e-12
    assert torch.linalg.eigvalsh(terms.sigma1).min() > -1e-12


def test_strong_augmentation_gives_x_negative_eigenvalues_along_the_noisy_dims() -> None:
    """Theorem 1's premise: Sigma1_hat dominates X on the augmented dims, so X < 0 there."""
    dim, noisy = 16, slice(8, 16)
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(dim, dim, generator=g, dtype=F64) * 2 - 1) / 4
    std = torch.zeros(dim, dtype=F64)
    std[noisy] = 3.0
    x = torch.zeros(dim, dim, dtype=F64)
    for _ in range(40):
        batch = torch.randn(128, dim, generator=g, dtype=F64)
        x += infonce_x_matrix(
            batch + std * torch.randn(128, dim, generator=g, dtype=F64),
            batch + std * torch.randn(128, dim, generator=g, dtype=F64),
            w,
        ) / 40
    values, vectors = torch.linalg.eigh(x)
    assert (values < 0).sum() >= 6
    assert (values > 0).sum() >= 6
    # The four most negative eigenvectors live (almost) in the noisy coordinates.
    mass_in_noisy_dims = (vectors[noisy, :4] ** 2).sum(dim=0)
    assert mass_in_noisy_dims.min() > 0.9, mass_in_noisy_dims
    # ... and the four most positive in the clean ones.
    assert (vectors[:8, -4:] ** 2).sum(dim=0).min() > 0.9


def test_conserved_quantity_has_zero_time_derivative_under_gradient_flow() -> None:
    x1, x2 = _batch(5, batch=16, dim=6)
    g = torch.Generator().manual_seed(4)
    w1 = torch.randn(6, 6, generator=g, dtype=F64).requires_grad_()
    w2 = torch.randn(6, 6, generator=g, dtype=F64).requires_grad_()
    loss = info_nce(x1 @ (w2 @ w1).T, x2 @ (w2 @ w1).T, temperature=0.5, normalize=False)
    g1, g2 = torch.autograd.grad(loss, (w1, w2))
    w1, w2 = w1.detach(), w2.detach()
    # d/dt (W1 W1^T - W2^T W2) with dW/dt = -grad:
    derivative = -(g1 @ w1.T + w1 @ g1.T) + (g2.T @ w2 + w2.T @ g2)
    scale = torch.linalg.matrix_norm(g1 @ w1.T)
    assert torch.linalg.matrix_norm(derivative) < 1e-12 * scale
    # and the reference value of the quantity itself, by hand on a tiny case
    a, b = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(conserved_quantity(a, b), torch.tensor([[4.0, 2.0], [2.0, 0.0]]))


def test_alignment_matrix_matches_numpy_svd() -> None:
    g = torch.Generator().manual_seed(6)
    w1, w2 = torch.randn(5, 5, generator=g, dtype=F64), torch.randn(5, 5, generator=g, dtype=F64)
    u1 = np.linalg.svd(w1.numpy())[0]
    v2 = np.linalg.svd(w2.numpy())[2].T
    np.testing.assert_allclose(np.abs(alignment_matrix(w1, w2).numpy()), np.abs(v2.T @ u1), atol=1e-10)
    assert alignment_error(torch.eye(5, dtype=F64)) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem2_and_3_under_the_two_layer_flow(seed: int) -> None:
    """Fixed X > 0 with distinct eigenvalues: the leading singular directions align (|A| -> I),
    the largest singular value outgrows the rest (Theorem 3), and W1 W1^T - W2^T W2 stays put."""
    g = torch.Generator().manual_seed(seed)
    w1 = decaying_init(8, decay=0.35, generator=g).double()
    w2 = decaying_init(8, decay=0.35, generator=g).double()
    x = torch.diag(torch.linspace(1.0, 0.3, 8, dtype=F64))
    a0, c0, product0 = alignment_matrix(w1, w2), conserved_quantity(w1, w2), w2 @ w1
    while (top := float(torch.linalg.svdvals(w1)[0])) < 20:
        # The flow blows up in finite time: shrink dt as the weights grow (same path, finer steps).
        w1, w2 = two_layer_gradient_flow(w1, w2, x, dt=2e-4 / top**2, steps=10)
    a = alignment_matrix(w1, w2)
    assert abs(a[0, 0]) > 0.999 > abs(a0[0, 0]) + 0.5
    assert alignment_error(a[:2, :2]) < 0.25 * alignment_error(a0[:2, :2])
    growth = torch.log10(torch.linalg.svdvals(w2 @ w1) / torch.linalg.svdvals(product0))
    assert growth[0] > 2.0 and growth[1:].max() < 1.0, growth
    drift = torch.linalg.matrix_norm(conserved_quantity(w1, w2) - c0) / torch.linalg.matrix_norm(c0)
    assert drift < 0.01


def test_matched_alignment_finds_the_best_permutation_by_brute_force() -> None:
    import itertools

    g = torch.Generator().manual_seed(7)
    q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))[0]
    perm, error = matched_alignment(q)
    best = max(itertools.permutations(range(5)), key=lambda p: float(q.abs()[range(5), list(p)].sum()))
    assert perm.tolist() == list(best)
    assert error == pytest.approx(float(torch.linalg.matrix_norm(q.abs()[:, list(best)] - torch.eye(5, dtype=F64))))
    # a signed permutation is perfectly aligned up to order
    signed = -torch.eye(4, dtype=F64)[[2, 0, 3, 1]]
    assert matched_alignment(signed)[1] == 0.0 and alignment_error(signed) > 2.0
