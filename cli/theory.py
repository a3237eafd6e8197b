"""``collapse-probe theory``: the paper's linear-model simulations, as figures and JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from collapse_probe_cli.options import check_out_folder

from collapse_probe.theory.defaults import DEPTH_STEPS, STRONG_AUG_STEPS, TWO_LAYER_STEPS

if TYPE_CHECKING:
    from collapse_probe.theory.report import TheoryReport

F = Callable[..., Any]


def _common(function: F) -> F:
    """Options every simulation shares (defaults of the paper's public simulations)."""
    options = [
        click.option("--out", type=click.Path(file_okay=False), default="theory_out", show_default=True,
                     metavar="DIR", callback=check_out_folder,
                     help="Folder for the PNG figures and the JSON of every number (created and checked first)."),
        click.option("--dim", type=click.IntRange(min=2), default=16, show_default=True, help="Input and embedding dimension."),
        click.option("--samples", "n_samples", type=click.IntRange(min=2), default=10_000, show_default=True,
                     help="Gaussian training inputs."),
        click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True),
        click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
                     help="InfoNCE temperature (unnormalised dot products)."),
        click.option("--seed", type=int, default=0, show_default=True),
        # CPU by default (unlike the probing commands): 16 x 16 matrices gain nothing from a GPU.
        click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda[:i]",
                     help="Where to train; a GPU only pays off for large --dim / --batch-size."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _print(report: TheoryReport) -> None:
    click.echo(report.table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for path in report.files:
        click.echo(f"wrote {path}", err=True)


@click.group("theory")
def theory() -> None:
    """Simulate the paper's theory of dimensional collapse (Jing et al. 2022, sections 4-5).

    Small linear networks trained with InfoNCE on Gaussian data: seconds on a CPU, seeded and
    deterministic. docs/theory.md explains what each figure shows.

    \b
    Examples:
      collapse-probe theory strong-aug --out theory_out
      collapse-probe theory two-layer --out theory_out --steps 10000
    """


@theory.command("strong-aug")
@_common
@click.option("--noise", "noise_levels", type=click.FloatRange(min=0), multiple=True,
              help="Noise std on the augmented dims; repeat for a sweep  [default: 0.01 0.5 1 1.5 3].")
@click.option("--noise-from", type=click.IntRange(min=0), default=8, show_default=True,
              help="Noise goes on input dims noise-from .. dim-1 (both views, independently).")
@click.option("--steps", type=click.IntRange(min=0), default=STRONG_AUG_STEPS, show_default=True,
              help="SGD steps (the paper: 10,000; the collapse settles within ~1,000 here).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.001, show_default=True)
@click.option("--bias", is_flag=True, help="Give the layer a trainable bias, as the public script's nn.Linear "
              "(it shrinks one more direction: docs/theory.md).")
@click.option("--one-sided-loss", "one_sided", is_flag=True,
              help="Row cross-entropy only, as the public script (default: the symmetric InfoNCE).")
def strong_aug(out: str, dim: int, n_samples: int, batch_size: int, temperature: float, seed: int, device: str,
               noise_levels: tuple[float, ...], noise_from: int, steps: int, lr: float, bias: bool,
               one_sided: bool) -> None:
    """Strong augmentation shrinks one linear layer along the noisy dims (Theorem 1; Figure 3's setting).

    Trains z = W x (16 x 16) once per noise level, with Gaussian noise added to input dims 8-15
    of both views, and prints per level the loss, the range of W's singular values, the most
    negative eigenvalue of Lemma 1's X at the start, and the embedding's effective rank and
    collapsed dimensions. Writes OUT/theory_strong_aug.png and OUT/theory_strong_aug.json.
    What it reproduces: W's 8 noisy directions shrink and the effective rank falls (16 -> 13.3
    at noise 1.5); no eigenvalue falls below the collapse threshold (collapsed dims stay 0).

    \b
    Examples:
      collapse-probe theory strong-aug --out theory_out
      collapse-probe theory strong-aug --noise 0.01 --noise 1.5 --steps 10000 --out paper_run
    """
    from collapse_probe.theory.report import strong_augmentation_report
    from collapse_probe.theory.simulate import StrongAugConfig

    config = StrongAugConfig(
        dim=dim, n_samples=n_samples, batch_size=batch_size, temperature=temperature, seed=seed, device=device,
        noise_levels=noise_levels or StrongAugConfig.noise_levels, noise_from=noise_from, steps=steps, lr=lr,
        bias=bias, one_sided=one_sided,
    )
    click.echo(f"training {len(config.noise_levels)} linear layers for {steps} steps on {device} ...", err=True)
    _print(strong_augmentation_report(config, out))


@theory.command("two-layer")
@_common
@click.option("--noise", type=click.FloatRange(min=0), default=0.001, show_default=True,
              help="Isotropic noise std of the views (weak augmentation).")
@click.option("--steps", type=click.IntRange(min=0), default=TWO_LAYER_STEPS, show_default=True,
              help="SGD steps of the two-layer run (the paper: 10,000).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True)
@click.option("--init-decay", type=click.FloatRange(min=0), default=0.35, show_default=True,
              help="Each layer starts as U diag(exp(-init_decay * k)) V^T.")
@click.option("--record-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Record singular values, alignment and the conserved matrix every N steps.")
@click.option("--depth", "depths", type=click.IntRange(min=1), multiple=True,
              help="Depths of the depth sweep (Figure 11), linear and with ReLU; repeat  [default: 1 2 3 4].")
@click.option("--depth-steps", type=click.IntRange(min=0), default=DEPTH_STEPS, show_default=True,
              help="SGD steps of each depth-sweep network; 0 skips the sweep.")
def two_layer(out: str, dim: int, n_samples: int, batch_size: int, temperature: float, seed: int, device: str,
              noise: float, steps: int, lr: float, init_decay: float, record_every: int,
              depths: tuple[int, ...], depth_steps: int) -> None:
    """Two linear layers lose rank even with weak noise (Theorems 2-3; Figures 5, 6, 11's setting).

    Trains z = W2 W1 x from layers with distinct singular values and records, every
    --record-every steps, the singular values of W1, W2 and the embedding covariance (Figure 6),
    the alignment |A| = |V2^T U1| (Figure 5) and the drift of the conserved W1 W1^T - W2^T W2.
    Then trains 1..4-layer networks, linear and with ReLU, and compares their collapse
    (Figure 11). Writes OUT/theory_two_layer.png, theory_alignment.png, theory_depth.png and
    theory_two_layer.json.

    \b
    Examples:
      collapse-probe theory two-layer --out theory_out
      collapse-probe theory two-layer --steps 10000 --depth-steps 0 --out paper_run
    """
    from collapse_probe.theory.depth import DepthConfig
    from collapse_probe.theory.report import two_layer_report
    from collapse_probe.theory.simulate import TwoLayerConfig

    shared = dict(dim=dim, n_samples=n_samples, batch_size=batch_size, temperature=temperature, seed=seed, device=device)
    config = TwoLayerConfig(**shared, noise=noise, steps=steps, lr=lr, init_decay=init_decay, record_every=record_every)
    depth_config = None
    if depth_steps > 0:
        depth_config = DepthConfig(**shared, depths=depths or DepthConfig.depths, noise=noise, steps=depth_steps, lr=lr,
                                   init_decay=init_decay)
    click.echo(f"training z = W2 W1 x for {steps} steps"
               + (f", then {2 * len(depth_config.depths)} networks for {depth_steps} steps" if depth_config else "")
               + f" on {device} ...", err=True)
    _print(two_layer_report(config, depth_config, out))
