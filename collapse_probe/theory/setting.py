"""What every linear-model simulation shares: the common settings, the data, the device, the spectra.

The public simulations' defaults: 16-d isotropic Gaussian inputs, 10,000 samples, batch 128,
InfoNCE temperature 0.1, seed 0, on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from collapse_probe._utils.devices import resolve_device
from collapse_probe.errors import CollapseProbeError
from collapse_probe.results.spectrum import Spectrum
from collapse_probe.theory.linear import LinearChain, gaussian_inputs

__all__ = ["SimulationConfig", "check", "embedding_spectrum", "setup", "svdvals"]


def check(condition: bool, message: str) -> None:
    """Raise a one-line :class:`CollapseProbeError` unless ``condition``."""
    if not condition:
        raise CollapseProbeError(message)


@dataclass(frozen=True)
class SimulationConfig:
    """Settings every simulation has (the config dataclasses extend it)."""

    dim: int = 16
    n_samples: int = 10_000
    batch_size: int = 128
    temperature: float = 0.1
    seed: int = 0
    device: str = "cpu"

    def _validate_common(self, steps: int, lr: float) -> None:
        check(self.dim >= 2, f"dim must be >= 2, got {self.dim}")
        check(self.n_samples >= 2, f"n_samples must be >= 2, got {self.n_samples}")
        check(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(steps >= 0, f"steps must be >= 0, got {steps}")
        check(lr > 0, f"lr must be > 0, got {lr}")
        resolve_device(self.device)


def setup(config: SimulationConfig) -> tuple[torch.device, torch.Generator, torch.Tensor]:
    """The device, a generator seeded with ``config.seed`` on it, and the (n_samples, dim) inputs."""
    device = resolve_device(config.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    data = gaussian_inputs(config.n_samples, config.dim, generator=generator, device=device)
    return device, generator, data


def embedding_spectrum(model: LinearChain, data: torch.Tensor, layer: str) -> Spectrum:
    """Covariance spectrum of the model's embeddings of the clean data, computed in float64."""
    # a bias shifts every embedding alike, so the centred covariance is that of the bias-free map
    exact = LinearChain([w.double() for w in model.matrices()], relu=model.relu)
    with torch.no_grad():
        return Spectrum.from_embeddings(exact(data.double()), layer=layer)


def svdvals(w: torch.Tensor) -> torch.Tensor:
    """Singular values of w in float64 on the CPU, descending."""
    return torch.linalg.svdvals(w.double()).cpu()
