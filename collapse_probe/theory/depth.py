"""Figure 11: the same weak-augmentation training with 1..4 layers, linear or with ReLU."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from collapse_probe.results.spectrum import Spectrum
from collapse_probe.theory.defaults import DEPTH_STEPS
from collapse_probe.theory.linear import LinearChain, decaying_init, train_contrastive
from collapse_probe.theory.setting import SimulationConfig, check, embedding_spectrum, setup

__all__ = ["DEPTH_STEPS", "DepthConfig", "DepthResult", "DepthRun", "simulate_depth"]



@dataclass(frozen=True)
class DepthConfig(SimulationConfig):
    """Figure 11: ``depth`` square layers (each ``U diag(exp(-init_decay k)) V^T``), weak noise.

    Every (depth, relu) pair starts from the same first ``depth`` initial matrices.
    """

    depths: tuple[int, ...] = (1, 2, 3, 4)
    relu: tuple[bool, ...] = (False, True)
    noise: float = 0.001
    steps: int = DEPTH_STEPS
    lr: float = 0.01
    init_decay: float = 0.35

    def __post_init__(self) -> None:
        self._validate_common(self.steps, self.lr)
        check(len(self.depths) >= 1 and all(d >= 1 for d in self.depths), f"depths must be >= 1, got {self.depths}")
        check(len(self.relu) >= 1, "give at least one of relu=False / relu=True")
        check(self.noise >= 0, f"noise must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class DepthRun:
    """One trained network of the depth sweep: its embedding spectra before and after training."""

    depth: int
    relu: bool
    initial: Spectrum
    final: Spectrum
    loss: float


@dataclass(frozen=True)
class DepthResult:
    """All (depth, relu) runs, in ``relu``-major, ``depths`` order."""

    config: DepthConfig
    runs: list[DepthRun] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready numbers: eigenvalues and collapse metrics per run, at init and at the end."""

        def summary(s: Spectrum) -> dict:
            m = s.metrics()
            return {"eigenvalues": s.eigenvalues.tolist(), **{k: m[k] for k in ("effective_rank", "collapsed_dims", "rtol")}}

        return {
            "simulation": "depth",
            "config": asdict(self.config),
            "conventions": {"eigenvalues": "centred covariance of the network output on the clean training inputs, ddof 1, float64"},
            "seconds": self.seconds,
            "runs": [
                {"depth": r.depth, "relu": r.relu, "loss": r.loss, "initial": summary(r.initial), "final": summary(r.final)}
                for r in self.runs
            ],
        }


def simulate_depth(config: DepthConfig | None = None) -> DepthResult:
    """Train one network per (depth, relu) pair side by side and compare embedding collapse.

    >>> r = simulate_depth(DepthConfig(depths=(1, 2), relu=(False,), steps=10, n_samples=500))
    >>> [(run.depth, run.relu) for run in r.runs]
    [(1, False), (2, False)]
    """
    config = config or DepthConfig()
    device, generator, data = setup(config)
    layers = [decaying_init(config.dim, decay=config.init_decay, generator=generator, device=device) for _ in range(max(config.depths))]
    pairs = [(depth, relu) for relu in config.relu for depth in config.depths]
    models = [LinearChain(layers[:depth], relu=relu).to(device) for depth, relu in pairs]
    initial = [embedding_spectrum(m, data, f"depth={d} relu={r}") for m, (d, r) in zip(models, pairs, strict=True)]
    start = time.perf_counter()
    losses = train_contrastive(
        models, data, torch.full((len(models), config.dim), config.noise, device=device), steps=config.steps,
        batch_size=config.batch_size, lr=config.lr, temperature=config.temperature, generator=generator,
    )
    seconds = time.perf_counter() - start
    runs = [
        DepthRun(depth=d, relu=r, initial=initial[i], final=embedding_spectrum(models[i], data, f"depth={d} relu={r}"), loss=losses[i])
        for i, (d, r) in enumerate(pairs)
    ]
    return DepthResult(config=config, runs=runs, seconds=seconds)
