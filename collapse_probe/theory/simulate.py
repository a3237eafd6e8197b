"""The paper's strong-augmentation and two-layer simulations: a config dataclass in, a result out.

* :func:`simulate_strong_augmentation` -- section 4, Figure 3: one linear layer; strong noise on
  half the input dimensions collapses the embedding along them.
* :func:`simulate_two_layer` -- section 5, Figures 5 and 6: ``z = W2 W1 x`` with weak noise; the
  small singular values lag (implicit regularisation), ``W1 W1^T - W2^T W2`` is conserved, and the
  layers align.
* :func:`~collapse_probe.theory.depth.simulate_depth` (in ``depth.py``) -- Figure 11: the same
  with 1..4 layers, linear or with ReLU.

Defaults follow the public simulations (16-d isotropic Gaussian inputs, 10,000 samples, batch
128, temperature 0.1) except the number of SGD steps: the paper ran 10,000; the defaults here are
chosen to run in seconds on a laptop CPU and still show the effect (docs/theory.md has timings).
Every number is seeded: the same config gives the same result on the same device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from collapse_probe.results.spectrum import Spectrum
from collapse_probe.theory.defaults import STRONG_AUG_STEPS, TWO_LAYER_STEPS
from collapse_probe.theory.linear import LinearChain, decaying_init, train_contrastive
from collapse_probe.theory.quantities import (
    alignment_error,
    alignment_matrix,
    conserved_quantity,
    infonce_x_matrix,
    matched_alignment,
)
from collapse_probe.theory.setting import (
    SimulationConfig,
    check,
    embedding_spectrum,
    setup,
    svdvals,
)

__all__ = [
    "STRONG_AUG_STEPS",
    "TWO_LAYER_STEPS",
    "StrongAugConfig",
    "StrongAugResult",
    "TwoLayerConfig",
    "TwoLayerResult",
    "simulate_strong_augmentation",
    "simulate_two_layer",
]



# --------------------------------------------------------------------------- strong augmentation
@dataclass(frozen=True)
class StrongAugConfig(SimulationConfig):
    """Section 4 / Figure 3: ``z = W x``, noise of std ``noise`` on input dims ``noise_from..dim-1``.

    W starts from nn.Linear's default distribution, U(-1/sqrt(d), 1/sqrt(d)), the same draw for
    every noise level.

    ``bias=True`` adds a trainable bias, as the public script's ``nn.Linear`` has, drawn from the
    same distribution with a generator of its own (seed + 1), so W(0) and every batch stay those
    of the bias-free run. The bias is what collapses one direction beyond the 8 noisy ones
    (docs/theory.md). ``one_sided=True`` trains on the row cross-entropy alone, as the script.
    """

    noise_levels: tuple[float, ...] = (0.01, 0.5, 1.0, 1.5, 3.0)
    noise_from: int = 8
    steps: int = STRONG_AUG_STEPS
    lr: float = 0.001
    x_batches: int = 16  # batches averaged for the final Lemma-1 matrix X
    bias: bool = False
    one_sided: bool = False

    def __post_init__(self) -> None:
        self._validate_common(self.steps, self.lr)
        check(len(self.noise_levels) >= 1, "give at least one noise level")
        check(all(n >= 0 for n in self.noise_levels), f"noise levels must be >= 0, got {self.noise_levels}")
        check(0 <= self.noise_from < self.dim, f"noise_from must be in [0, {self.dim}), got {self.noise_from}")
        check(self.x_batches >= 1, f"x_batches must be >= 1, got {self.x_batches}")


@dataclass(frozen=True)
class StrongAugResult:
    """Per noise level (rows, in ``config.noise_levels`` order), after training.

    Attributes:
        weights: (L, d, d) the final W per level, float64.
        weight_singular_values: (L, d) singular values of W, descending, float64.
        spectra: L covariance spectra of the embeddings W x of the clean training inputs.
        initial_x_eigenvalues, x_eigenvalues: (L, d) eigenvalues (descending) of Lemma 1's X at
            the initial and the final W, each averaged over ``config.x_batches`` fresh batches.
            Negative ones are the directions along which ``dW/dt = W X`` shrinks W.
        losses: final training loss per level.
        seconds: wall time of the training loop.
    """

    config: StrongAugConfig
    weights: torch.Tensor
    weight_singular_values: torch.Tensor
    spectra: list[Spectrum]
    initial_x_eigenvalues: torch.Tensor
    x_eigenvalues: torch.Tensor
    losses: list[float]
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready numbers, with the conventions of every quantity."""
        levels = []
        for i, noise in enumerate(self.config.noise_levels):
            s = self.spectra[i]
            levels.append(
                {
                    "noise": noise,
                    "loss": self.losses[i],
                    "weight_singular_values": self.weight_singular_values[i].tolist(),
                    "embedding_covariance_eigenvalues": s.eigenvalues.tolist(),
                    "initial_x_eigenvalues": self.initial_x_eigenvalues[i].tolist(),
                    "x_eigenvalues": self.x_eigenvalues[i].tolist(),
                    "metrics": {k: s.metrics()[k] for k in ("effective_rank", "collapsed_dims", "rtol")},
                }
            )
        return {
            "simulation": "strong-aug",
            "config": asdict(self.config),
            "conventions": {
                "weight_singular_values": "singular values of W (float64 SVD), descending",
                "embedding_covariance_eigenvalues": "centred covariance of W x over the clean training inputs, ddof 1, float64",
                "x_eigenvalues": "eigenvalues of X with dL/dW = -W X (Lemma 1, symmetric loss, bias-free map z = W x), loss mean-reduced, averaged over x_batches batches; initial_ at W(0), else at the final W",
            },
            "seconds": self.seconds,
            "levels": levels,
        }


def _mean_x_eigenvalues(
    w: torch.Tensor, data: torch.Tensor, noise_std: torch.Tensor, config: StrongAugConfig, generator: torch.Generator
) -> torch.Tensor:
    """Eigenvalues (descending) of Lemma 1's X at weight w, averaged over fresh noisy batches, float64."""
    device = data.device
    x = torch.zeros(config.dim, config.dim, dtype=torch.float64, device=device)
    std = noise_std.double()
    for _ in range(config.x_batches):
        batch = data[torch.randint(0, config.n_samples, (config.batch_size,), generator=generator, device=device)].double()
        x1 = batch + std * torch.randn(batch.shape, generator=generator, device=device, dtype=torch.float64)
        x2 = batch + std * torch.randn(batch.shape, generator=generator, device=device, dtype=torch.float64)
        x += infonce_x_matrix(x1, x2, w.double(), temperature=config.temperature) / config.x_batches
    return torch.linalg.eigvalsh(x).flip(0).cpu()


def simulate_strong_augmentation(config: StrongAugConfig | None = None) -> StrongAugResult:
    """Train one linear layer per noise level and measure W, its embeddings and X (Figure 3).

    >>> r = simulate_strong_augmentation(StrongAugConfig(noise_levels=(0.0,), steps=20, n_samples=500))
    >>> r.weight_singular_values.shape, len(r.spectra)
    (torch.Size([1, 16]), 1)
    """
    config = config or StrongAugConfig()
    device, generator, data = setup(config)
    bound = config.dim**-0.5
    w0 = (torch.rand(config.dim, config.dim, generator=generator, device=device) * 2 - 1) * bound
    b0 = None
    if config.bias:  # its own generator: the batches and W(0) stay those of the bias-free run
        bias_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        b0 = (torch.rand(config.dim, generator=bias_generator, device=device) * 2 - 1) * bound
    models = [LinearChain([w0], bias=b0).to(device) for _ in config.noise_levels]
    mask = (torch.arange(config.dim, device=device) >= config.noise_from).float()
    noise_std = torch.tensor(config.noise_levels, device=device)[:, None] * mask
    start = time.perf_counter()
    losses = train_contrastive(
        models, data, noise_std, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        temperature=config.temperature, generator=generator, symmetric=not config.one_sided,
    )
    seconds = time.perf_counter() - start
    final_w = [m.matrices()[0] for m in models]
    return StrongAugResult(
        config=config,
        weights=torch.stack([w.double().cpu() for w in final_w]),
        weight_singular_values=torch.stack([svdvals(w) for w in final_w]),
        spectra=[embedding_spectrum(m, data, f"noise={n:g}") for m, n in zip(models, config.noise_levels, strict=True)],
        initial_x_eigenvalues=torch.stack([_mean_x_eigenvalues(w0, data, std, config, generator) for std in noise_std]),
        x_eigenvalues=torch.stack([_mean_x_eigenvalues(w, data, std, config, generator) for w, std in zip(final_w, noise_std, strict=True)]),
        losses=losses,
        seconds=seconds,
    )


# --------------------------------------------------------------------------- two layers
@dataclass(frozen=True)
class TwoLayerConfig(SimulationConfig):
    """Section 5 / Figures 5-6: ``z = W2 W1 x``, each ``W = U diag(exp(-init_decay k)) V^T``."""

    noise: float = 0.001
    steps: int = TWO_LAYER_STEPS
    lr: float = 0.01
    init_decay: float = 0.35
    record_every: int = 10

    def __post_init__(self) -> None:
        self._validate_common(self.steps, self.lr)
        check(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        check(self.record_every >= 1, f"record_every must be >= 1, got {self.record_every}")


@dataclass(frozen=True)
class TwoLayerResult:
    """Traces recorded every ``config.record_every`` steps (T records, step 0 included).

    Attributes:
        steps: (T,) the step of each record.
        w1_singular_values, w2_singular_values: (T, d) descending, float64.
        embedding_eigenvalues: (T, d) covariance eigenvalues of ``W2 W1 x`` on the clean inputs
            (centred, ddof 1, float64), descending.
        alignment_errors: (T,) ``|| |A| - I ||_F`` with ``A = V2^T U1``.
        matched_alignment_errors: (T,) the same after the best one-to-one pairing of W2's and
            W1's singular vectors (:func:`~collapse_probe.theory.quantities.matched_alignment`).
        conserved_drift: (T,) ``||C(t) - C(0)||_F / ||C(0)||_F`` with ``C = W1 W1^T - W2^T W2``.
        alignment: (d, d) the final A.
        spectrum: the final embedding spectrum.
        loss: final training loss; seconds: wall time (training and recording).
    """

    config: TwoLayerConfig
    steps: torch.Tensor
    w1_singular_values: torch.Tensor
    w2_singular_values: torch.Tensor
    embedding_eigenvalues: torch.Tensor
    alignment_errors: torch.Tensor
    matched_alignment_errors: torch.Tensor
    conserved_drift: torch.Tensor
    alignment: torch.Tensor
    spectrum: Spectrum
    loss: float
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready numbers: the final values in full, the traces every record."""
        metrics = self.spectrum.metrics()
        return {
            "simulation": "two-layer",
            "config": asdict(self.config),
            "conventions": {
                "embedding_eigenvalues": "centred covariance of W2 W1 x over the clean training inputs, ddof 1, float64",
                "alignment": "A = V2^T U1 from float64 SVDs (descending); error = || |A| - I ||_F; matched: after the best pairing of rows and columns",
                "conserved_drift": "||C(t) - C(0)||_F / ||C(0)||_F, C = W1 W1^T - W2^T W2",
            },
            "seconds": self.seconds,
            "loss": self.loss,
            "final": {
                "w1_singular_values": self.w1_singular_values[-1].tolist(),
                "w2_singular_values": self.w2_singular_values[-1].tolist(),
                "embedding_eigenvalues": self.embedding_eigenvalues[-1].tolist(),
                "alignment_error": float(self.alignment_errors[-1]),
                "matched_alignment_error": float(self.matched_alignment_errors[-1]),
                "conserved_drift": float(self.conserved_drift[-1]),
                "alignment_abs": self.alignment.abs().tolist(),
                "metrics": {k: metrics[k] for k in ("effective_rank", "collapsed_dims", "rtol")},
            },
            "trace": {
                "steps": self.steps.tolist(),
                "w1_singular_values": self.w1_singular_values.tolist(),
                "w2_singular_values": self.w2_singular_values.tolist(),
                "embedding_eigenvalues": self.embedding_eigenvalues.tolist(),
                "alignment_errors": self.alignment_errors.tolist(),
                "matched_alignment_errors": self.matched_alignment_errors.tolist(),
                "conserved_drift": self.conserved_drift.tolist(),
            },
        }


def simulate_two_layer(config: TwoLayerConfig | None = None) -> TwoLayerResult:
    """Train ``z = W2 W1 x`` and record singular values, alignment and the conserved matrix.

    >>> r = simulate_two_layer(TwoLayerConfig(steps=20, n_samples=500))
    >>> r.steps.tolist(), r.w1_singular_values.shape
    ([0, 10, 20], torch.Size([3, 16]))
    """
    config = config or TwoLayerConfig()
    device, generator, data = setup(config)
    weights = [decaying_init(config.dim, decay=config.init_decay, generator=generator, device=device) for _ in range(2)]
    model = LinearChain(weights).to(device)
    w1, w2 = (w.double() for w in weights)
    c0 = conserved_quantity(w1, w2)
    c0_norm = float(torch.linalg.matrix_norm(c0))
    exact_data = data.double()
    records: dict[str, list] = {k: [] for k in ("steps", "s1", "s2", "eig", "align", "matched", "drift")}

    def record(step: int) -> None:
        w1, w2 = (w.double() for w in model.matrices())
        with torch.no_grad():
            spectrum = Spectrum.from_embeddings(exact_data @ (w2 @ w1).T)
        records["steps"].append(step)
        records["s1"].append(svdvals(w1))
        records["s2"].append(svdvals(w2))
        records["eig"].append(spectrum.eigenvalues)
        a = alignment_matrix(w1, w2)
        records["align"].append(alignment_error(a))
        records["matched"].append(matched_alignment(a)[1])
        records["drift"].append(float(torch.linalg.matrix_norm(conserved_quantity(w1, w2) - c0)) / c0_norm)

    start = time.perf_counter()
    (loss,) = train_contrastive(
        [model], data, torch.full((1, config.dim), config.noise, device=device), steps=config.steps,
        batch_size=config.batch_size, lr=config.lr, temperature=config.temperature,
        generator=generator, callback=record, every=config.record_every,
    )
    seconds = time.perf_counter() - start
    final_w1, final_w2 = model.matrices()
    return TwoLayerResult(
        config=config,
        steps=torch.tensor(records["steps"]),
        w1_singular_values=torch.stack(records["s1"]),
        w2_singular_values=torch.stack(records["s2"]),
        embedding_eigenvalues=torch.stack(records["eig"]),
        alignment_errors=torch.tensor(records["align"], dtype=torch.float64),
        matched_alignment_errors=torch.tensor(records["matched"], dtype=torch.float64),
        conserved_drift=torch.tensor(records["drift"], dtype=torch.float64),
        alignment=alignment_matrix(final_w1, final_w2).cpu(),
        spectrum=embedding_spectrum(model, data, "W2 W1 x"),
        loss=loss,
        seconds=seconds,
    )
