"""The simulations reproduce the paper's claims (not only that they run)."""

from __future__ import annotations

import pytest
import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.theory.depth import DepthConfig, simulate_depth
from collapse_probe.theory.simulate import (
    StrongAugConfig,
    TwoLayerConfig,
    simulate_strong_augmentation,
    simulate_two_layer,
)


@pytest.fixture(scope="module")
def strong() -> object:
    return simulate_strong_augmentation(StrongAugConfig(noise_levels=(0.01, 5.0), steps=600, n_samples=2000))


def test_strong_noise_collapses_w_along_the_noisy_dims_and_weak_noise_does_not(strong) -> None:
    weak_sv, strong_sv = strong.weight_singular_values
    # Weak augmentation: all 16 singular values within an order of magnitude of each other.
    assert weak_sv.max() / weak_sv.min() < 10.0
    assert strong.spectra[0].collapsed_dims() == 0 and strong.spectra[0].effective_rank > 14.0
    # Strong noise on 8 input dims: 8 singular values more than an order of magnitude below the other 8,
    # so the embedding covariance eigenvalues are more than two orders apart.
    assert strong_sv[:8].min() / strong_sv[8:].max() > 10.0
    eig = strong.spectra[1].eigenvalues
    assert eig[:8].min() / eig[8:].max() > 100.0
    # ... and the lost directions are the noisy input coordinates 8..15 (right singular vectors of W).
    vh = torch.linalg.svd(strong.weights[1])[2]
    assert (vh[8:, 8:] ** 2).sum(dim=1).min() > 0.95


def test_strong_aug_x_matrix_turns_negative_with_noise(strong) -> None:
    weak_x0, strong_x0 = strong.initial_x_eigenvalues
    # At W(0), strong noise gives X about 8 clearly negative eigenvalues (Theorem 1's shrinking directions).
    assert (strong_x0 < -0.1 * strong_x0.max()).sum() >= 7
    assert strong_x0.min() < 5 * weak_x0.min()


def test_simulations_are_deterministic_and_seeded() -> None:
    config = StrongAugConfig(noise_levels=(1.0,), steps=30, n_samples=500)
    a, b = simulate_strong_augmentation(config), simulate_strong_augmentation(config)
    assert torch.equal(a.weight_singular_values, b.weight_singular_values)
    c = simulate_strong_augmentation(StrongAugConfig(noise_levels=(1.0,), steps=30, n_samples=500, seed=1))
    assert not torch.equal(a.weight_singular_values, c.weight_singular_values)


def test_conserved_quantity_drift_shrinks_with_the_learning_rate() -> None:
    """W1 W1^T - W2^T W2 is exactly conserved by gradient flow; SGD drifts by O(lr) at fixed lr * steps."""
    small = simulate_two_layer(TwoLayerConfig(lr=0.001, steps=2000, n_samples=2000, record_every=2000))
    large = simulate_two_layer(TwoLayerConfig(lr=0.01, steps=200, n_samples=2000, record_every=200))
    assert small.conserved_drift[-1] < 0.02
    assert small.conserved_drift[-1] < large.conserved_drift[-1] / 4
    # the weights themselves moved a lot more than the conserved quantity did
    moved = (small.w1_singular_values[-1] - small.w1_singular_values[0]).abs().max()
    assert moved > 0.2


def test_two_layer_small_singular_values_lag_behind() -> None:
    """Theorem 3: singular values grow at a rate that scales with themselves, so the evenly spread
    initial spectrum splits into a group that grew and a group left orders of magnitude behind."""
    result = simulate_two_layer(TwoLayerConfig(steps=1500, n_samples=2000, record_every=50))
    assert result.steps.tolist() == list(range(0, 1501, 50))
    first, last = torch.log10(result.embedding_eigenvalues[[0, -1]])
    assert (first > first[0] - 1).sum() <= 4 and (last > last[0] - 1).sum() >= 8
    assert (last < last[0] - 3).sum() >= 4  # more than 3 orders of magnitude below the largest
    largest_step = lambda v: float((v[:-1] - v[1:]).max())  # noqa: E731 - biggest jump between neighbours
    assert largest_step(first) < 1.0 and largest_step(last) > 3.0


def test_deeper_linear_nets_collapse_more() -> None:
    result = simulate_depth(DepthConfig(depths=(1, 2, 4), relu=(False, True), steps=800, n_samples=2000))
    by_key = {(r.depth, r.relu): r.final for r in result.runs}
    for relu in (False, True):
        ranks = [by_key[(d, relu)].effective_rank for d in (1, 2, 4)]
        assert ranks[0] > 15.0 and ranks[0] > ranks[1] > ranks[2], ranks
        assert by_key[(1, relu)].collapsed_dims() == 0
        assert by_key[(4, relu)].collapsed_dims() >= 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: StrongAugConfig(noise_from=16),
        lambda: StrongAugConfig(noise_levels=()),
        lambda: TwoLayerConfig(lr=0.0),
        lambda: DepthConfig(depths=(0, 2)),
        lambda: TwoLayerConfig(steps=-1),
    ],
)
def test_bad_configs_raise_one_line_errors(make) -> None:
    with pytest.raises(CollapseProbeError):
        make()
