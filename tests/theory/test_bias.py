"""The public strong-augmentation script's layer has a bias; the bias, not its one-sided loss,
collapses one direction beyond the noisy ones (docs/theory.md has the full-length numbers)."""

from __future__ import annotations

import math

import torch

from collapse_probe.theory import StrongAugConfig, simulate_strong_augmentation
from collapse_probe.theory.linear import LinearChain


def _log10_sv(bias: bool, one_sided: bool) -> list[float]:
    config = StrongAugConfig(noise_levels=(3.0,), steps=500, n_samples=2000, x_batches=1, bias=bias, one_sided=one_sided)
    return [math.log10(float(s)) for s in simulate_strong_augmentation(config).weight_singular_values[0]]


def test_bias_not_one_sided_loss_collapses_one_extra_direction():
    plain, one_sided, biased = _log10_sv(False, False), _log10_sv(False, True), _log10_sv(True, False)
    for sv in (plain, one_sided, biased):
        assert sv[7] - sv[8] > 0.7  # the 8 noisy input dims collapse in every variant (Theorem 1)
    # without a bias the 8 noisy directions stay together, whichever loss
    assert plain[14] - plain[15] < 0.2 and one_sided[14] - one_sided[15] < 0.2
    assert max(abs(a - b) for a, b in zip(plain, one_sided, strict=True)) < 0.1
    # with a bias one of them falls far below the rest (measured: 0.8 decades after 500 steps)
    assert biased[14] - biased[15] > 0.5
    assert max(abs(a - b) for a, b in zip(plain[:15], biased[:15], strict=True)) < 0.1


def test_bias_is_a_trainable_shift_and_does_not_change_the_draws():
    chain = LinearChain([torch.eye(2)], bias=torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(chain(torch.zeros(1, 2)), torch.tensor([[1.0, -1.0]]))
    assert sum(p.numel() for p in chain.parameters()) == 6
    a = simulate_strong_augmentation(StrongAugConfig(noise_levels=(0.5,), steps=0, n_samples=200, x_batches=1))
    b = simulate_strong_augmentation(StrongAugConfig(noise_levels=(0.5,), steps=0, n_samples=200, x_batches=1, bias=True))
    torch.testing.assert_close(a.weights, b.weights)  # the bias has its own generator: W(0) is the same
