"""The one-command demo: the paper's story on built-in data, on the CPU, in about three minutes.

Trains, for the same short budget on ``builtin:digits``: SimCLR with a 2-layer projector, SimCLR
without a projector, and DirectCLR; then probes each model's representation (backbone output)
and embedding (what the loss sees) on the held-out split and draws both spectra side by side.
What to expect (PAPER.md): behind a projector the *embedding* collapses while the representation
keeps its rank; without a projector the *representation* itself collapses; DirectCLR keeps a
fuller representation without any projector.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collapse_probe.errors import CollapseProbeError

if TYPE_CHECKING:  # the heavy modules load when the demo runs: VARIANTS is read by `--help`
    import pandas as pd

    from collapse_probe.results.spectrum import Spectrum

VARIANTS: dict[str, dict[str, Any]] = {
    "simclr-mlp": {"method": "simclr", "projector": "mlp"},
    "simclr-none": {"method": "simclr", "projector": "none"},
    "directclr": {"method": "directclr"},
}
SPACES = {"representation": "backbone", "embedding": "embedding"}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`; the defaults fit in about three minutes on 2 CPU cores."""

    out: str = "demo_out"
    variants: tuple[str, ...] = tuple(VARIANTS)
    data: str = "builtin:digits"
    epochs: int | None = None  # None: the trainer's demo preset
    batch_size: int | None = None
    seed: int = 0
    device: str | None = None
    max_steps_per_epoch: int | None = None


@dataclass(frozen=True)
class DemoResult:
    """The metrics table (one row per variant and space), the spectra, and the files written."""

    table: pd.DataFrame
    spectra: dict[str, dict[str, Spectrum]]
    figure_path: Path
    table_path: Path


def _variant_config(name: str, config: DemoConfig, out: Path) -> Any:
    from collapse_probe.ssl.config import preset_config

    return preset_config(
        "demo", **VARIANTS[name], data=config.data, epochs=config.epochs, batch_size=config.batch_size,
        seed=config.seed, device=config.device, out=str(out / name), monitor_every=0,
        max_steps_per_epoch=config.max_steps_per_epoch, log_every=0,
    )


def _probe_variant(model: Any, data: str, image_size: int) -> tuple[dict[str, Spectrum], float]:
    """Both spaces' spectra on the held-out split, and kNN top-1 of the representation."""
    from collapse_probe.probe.stream import spectrum
    from collapse_probe.ssl.data import eval_loader
    from collapse_probe.ssl.evaluate import extract_features, knn_accuracy

    val = eval_loader(data, "val", image_size, batch_size=512)
    probed = spectrum(model, val, layers=list(SPACES.values()), progress=False)
    train_x, train_y = extract_features(model.backbone, eval_loader(data, "train", image_size, batch_size=512))
    val_x, val_y = extract_features(model.backbone, val)
    return {space: probed[module] for space, module in SPACES.items()}, knn_accuracy(train_x, train_y, val_x, val_y)


def run_demo(config: DemoConfig, *, progress: bool = True) -> DemoResult:
    """Train every variant, probe both spaces on the held-out split, write ``demo.png`` + table.

    Args:
        config: what to train and where to write.
        progress: a tqdm bar over all training epochs on stderr.

    Returns:
        :class:`DemoResult`; ``table`` has columns variant, space, dim, effective_rank, rankme,
        collapsed_dims, knn_top1. Process-wide settings (torch threads, random generators, ...)
        are as the caller had them afterwards, whether it returns or raises.
    """
    from collapse_probe._utils.global_state import restored_global_state

    with restored_global_state():
        return _run_demo(config, progress=progress)


def _run_demo(config: DemoConfig, *, progress: bool) -> DemoResult:
    import pandas as pd
    from tqdm.auto import tqdm

    from collapse_probe.ssl.loop import train

    unknown = [v for v in config.variants if v not in VARIANTS]
    if unknown:
        raise CollapseProbeError(f"unknown demo variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    spectra: dict[str, dict[str, Spectrum]] = {}
    settings = {name: _variant_config(name, config, out) for name in config.variants}
    bar = tqdm(total=sum(s.epochs for s in settings.values()), desc="demo", unit="epoch", file=sys.stderr,
               disable=not progress)
    for name in config.variants:
        bar.set_postfix_str(f"training {name}")
        trained = train(settings[name], callbacks={"on_epoch_end": [lambda _state: bar.update(1)]})
        spectra[name], knn = _probe_variant(trained.model, config.data, trained.config.image_size)
        for space, result_spectrum in spectra[name].items():
            rows.append({
                "variant": name, "space": space, "dim": result_spectrum.dim,
                "effective_rank": result_spectrum.effective_rank, "rankme": result_spectrum.rankme,
                "collapsed_dims": result_spectrum.collapsed_dims(), "knn_top1": knn,
            })
            result_spectrum.save(out / f"{name}_{space}.json")
    bar.close()
    table = pd.DataFrame(rows)
    table_path = out / "demo.csv"
    table.to_csv(table_path, index=False)
    (out / "demo.json").write_text(json.dumps({"config": asdict(config), "rows": rows}, indent=1))
    figure_path = out / "demo.png"
    draw_demo_figure(spectra, figure_path)
    return DemoResult(table=table, spectra=spectra, figure_path=figure_path, table_path=table_path)


def draw_demo_figure(spectra: dict[str, dict[str, Spectrum]], path: Path, spaces: Sequence[str] = tuple(SPACES)) -> Path:
    """Representation and embedding spectra of every variant, side by side, largest = 1."""
    from matplotlib.figure import Figure

    from collapse_probe.results.plot import plot_spectra

    figure = Figure(figsize=(12, 6.0), layout="constrained")
    axes = figure.subplots(1, len(spaces))
    for ax, space in zip(axes, spaces, strict=True):
        plot_spectra({name: per_space[space] for name, per_space in spectra.items()}, ax=ax, relative=True)
        ax.set_title(f"{space} spectrum")
    figure.suptitle("Covariance spectra of the representation (backbone output) and the embedding (loss input)")
    figure.savefig(path, dpi=110)
    return path
