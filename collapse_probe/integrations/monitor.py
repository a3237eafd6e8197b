"""``SpectrumMonitor``: probe covariance spectra of named layers on a held-out loader while training.

A callback for the reference trainer (``callbacks={"on_epoch_end": [monitor]}``) that works just
as well from your own loop::

    monitor = SpectrumMonitor(val_loader, layers={"representation": "encoder", "embedding": "head"},
                              metrics_path="runs/x/metrics.jsonl", plot_path="runs/x/spectra.png")
    for epoch in range(epochs):
        train_one_epoch(model)
        monitor.log(model, epoch=epoch + 1)   # appends one JSON row, redraws the plot

Each probe streams the loader once through ``collapse_probe.spectrum`` (eval mode, no grad,
float64 covariance; the model's train/eval mode is restored) and records, per layer, every
metric of :meth:`Spectrum.metrics` (effective rank, RankMe, collapsed dims, ...) as
``"<name>/<metric>"`` plus the full spectrum with its conventions under ``"spectra"``.

With ``lidar_loader`` (batches of (B, q, ...) views, as ``collapse_probe.lidar`` takes them, e.g.
``collapse_probe.data.views.open_views``) each probe also streams that loader once through
``collapse_probe.lidar`` and records ``"<name>/lidar"`` (Thilak et al., ICLR 2024: effective rank
of ``Sw^-1/2 Sb Sw^-1/2``, each sample a class of its q views) and ``"<name>/lidar_n_classes"``,
with the eigenvalues and conventions under ``"lidar"``.

Under ``torch.distributed`` call it on every process, each with its own shard of the held-out
data: ``spectrum`` all-reduces the statistics, so every process gets the same numbers (only the
main process writes files).
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from collapse_probe._utils.ranks import is_main_process
from collapse_probe.errors import CollapseProbeError
from collapse_probe.probe.lidar import lidar
from collapse_probe.probe.options import ProbeOptions
from collapse_probe.probe.stream import spectrum
from collapse_probe.results.frame import json_safe
from collapse_probe.results.spectrum import Spectrum


class MonitorWarning(UserWarning):
    """A probe during training failed; the metrics were logged as NaN and training went on."""

@functools.cache
def scalar_metric_names() -> tuple[str, ...]:
    """The keys of ``Spectrum.metrics()`` (those a failed probe logs as NaN)."""
    example = Spectrum.from_embeddings(torch.eye(4, dtype=torch.float64))
    return tuple(key for key in example.metrics() if key != "layer")


DEFAULT_LAYERS = {"representation": "backbone", "embedding": "embedding"}
OUTPUT_NAME = "output"


def _probe_options(options: ProbeOptions | None, layers: Any, probe_options: Mapping[str, Any]) -> ProbeOptions:
    """The monitor's ProbeOptions: display names for every layer (``{"output": None}`` is the model
    output), no progress bar; the SSLModel's layers when nothing names any."""
    if layers is None and options is None and "layers" not in probe_options:
        layers = DEFAULT_LAYERS
    built = ProbeOptions.build(options, progress=False, **({"layers": layers} if layers is not None else {}),
                               **probe_options)
    if built.layers is None or isinstance(built.layers, str):
        return built.replace(layers={OUTPUT_NAME if built.layers is None else built.layers: built.layers})
    if not isinstance(built.layers, Mapping):
        return built.replace(layers={name: name for name in built.layers})
    return built


class SpectrumMonitor:
    """Probe the spectra of some layers on a held-out loader every ``every`` epochs.

    Args:
        loader: held-out batches (tensors, ``(x, y)`` tuples or dicts, as ``spectrum`` accepts).
        options: the :class:`~collapse_probe.probe.options.ProbeOptions` of every probe; each of
            its fields may also be given as a keyword argument (``pool="cls"``, ``center=False``,
            ``max_samples=...``, ``precision=``, ``groups=``, ``skip_nonfinite=``, ``output_fn=``,
            ...), with the meaning it has in ``spectrum``. ``layers`` is a mapping display name ->
            module name, a sequence of module names (shown as they are), ``None`` with
            ``options`` for the model output (shown as ``output``), or, when nothing names any
            layer, the SSLModel's ``backbone`` (representation) and ``embedding``.
        every: probe when ``epoch % every == 0`` (and always at ``last_epoch``).
        metrics_path: where :meth:`log` appends rows as strict JSON lines (NaN written as null).
        plot_path: a PNG redrawn after each probe: log eigenvalues, one line per epoch.
        last_epoch: an epoch to probe whatever ``every`` says (the trainer passes its last).
        loggers: experiment trackers, each handed every probe on the main process
            (``collapse_probe.integrations.loggers``: ``TensorBoardLogger(writer)``,
            ``WandbLogger(run)``, ``MLflowLogger()``; anything with the same ``log_probe``).
        lidar_loader: held-out batches of (B, q, ...) views (a tensor, or element 0 of a tuple):
            also record LiDAR per layer (``None``: no LiDAR). Every sample is one LDA class, so
            the score is capped at ``min(dim, samples - 1)`` (``"<name>/lidar_max_rank"``).
        lidar_views: q, the views per sample in ``lidar_loader`` (at least 2; needed with it).

    A monitor never ends a training run: a probe that fails (non-finite embeddings, a layer
    that did not run, a model that cannot take the batches) logs its metrics as NaN with
    ``"<name>/error"`` saying why, warns once in one line, and training carries on. Options
    are checked at construction, where a mistake is refused before training starts.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> monitor = SpectrumMonitor(DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=32), layers={"hidden": "1"})
    >>> row = monitor.log(model, epoch=1)
    >>> row["epoch"], row["hidden/dim"], row["hidden/n_samples"], len(row["spectra"]["hidden"]["eigenvalues"])
    (1, 8, 64, 8)
    >>> x = torch.randn(64, 4, 4)  # 64 samples, q = 4 views of each
    >>> monitor = SpectrumMonitor(DataLoader(TensorDataset(x[:, 0]), batch_size=32), layers={"hidden": "1"},
    ...                           lidar_loader=DataLoader(TensorDataset(x), batch_size=32), lidar_views=4)
    >>> row = monitor.log(model, epoch=1)
    >>> 1 <= row["hidden/lidar"] <= 8, row["hidden/lidar_n_classes"], row["lidar"]["hidden"]["views"]
    (True, 64, 4)
    """

    def __init__(
        self,
        loader: Any,
        options: ProbeOptions | None = None,
        *,
        layers: Mapping[str, str] | Sequence[str] | None = None,
        every: int = 1,
        metrics_path: str | os.PathLike | None = None,
        plot_path: str | os.PathLike | None = None,
        last_epoch: int | None = None,
        loggers: Sequence[Any] = (),
        lidar_loader: Any = None,
        lidar_views: int | None = None,
        **probe_options: Any,
    ):
        if lidar_loader is not None and (lidar_views is None or int(lidar_views) < 2):
            raise CollapseProbeError(
                f"lidar_loader needs lidar_views, the views per sample (at least 2), got {lidar_views}")
        self.options = _probe_options(options, layers, probe_options)
        self.layers: dict[str, str | None] = dict(self.options.layers)
        self.loader, self.every = loader, max(1, int(every))
        self.metrics_path, self.plot_path, self.last_epoch = metrics_path, plot_path, last_epoch
        self.loggers = list(loggers)
        self.lidar_loader, self.lidar_views = lidar_loader, None if lidar_loader is None else int(lidar_views)
        self.history: list[tuple[int, dict[str, Any]]] = []  # (epoch, {display name: Spectrum})
        self._last: dict[str, Any] = {}

    @property
    def max_samples(self) -> int | None:
        return self.options.max_samples

    @property
    def normalize(self) -> bool:
        return self.options.normalize

    def probe(self, model: nn.Module) -> dict[str, Any]:
        """One pass over the loader: ``{"<name>/<metric>": float, ..., "spectra": {name: dict}}``.

        With a ``lidar_loader``, then one pass over it: ``"<name>/lidar"``, ``"<name>/lidar_n_classes"``,
        ``"<name>/lidar_max_rank"`` and ``"lidar": {name: Lidar.to_dict()}`` join the row. Raises
        what ``spectrum`` raises; :meth:`log` and the trainer callback never do.
        """
        solved = spectrum(model, self.loader, self._options_for_model())
        by_name = solved if isinstance(solved, dict) else {OUTPUT_NAME: solved}
        row: dict[str, Any] = {}
        for name, spec in by_name.items():
            for key, value in spec.metrics().items():
                if key != "layer":
                    row[f"{name}/{key}"] = value
        row["spectra"] = {name: spec.to_dict() for name, spec in by_name.items()}
        if self.lidar_loader is not None:
            row |= self._probe_lidar(model)
        self._last = by_name
        return row

    def _options_for_model(self) -> ProbeOptions:
        if list(self.layers.values()) == [None]:  # the model output
            return self.options.replace(layers=None)
        return self.options

    def _probe_lidar(self, model: nn.Module) -> dict[str, Any]:
        """``{"<name>/lidar": float, "<name>/lidar_n_classes": int, ..., "lidar": {name: dict}}``."""
        options = self._options_for_model().replace(groups=None)
        solved = lidar(model, self.lidar_loader, options, views=self.lidar_views)
        results = solved if isinstance(solved, dict) else {OUTPUT_NAME: solved}
        row: dict[str, Any] = {}
        for name, result in results.items():
            row[f"{name}/lidar"] = result.lidar
            row[f"{name}/lidar_n_classes"] = result.n_classes
            row[f"{name}/lidar_max_rank"] = result.max_rank
        row["lidar"] = {name: result.to_dict() for name, result in results.items()}
        return row

    def safe_probe(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """:meth:`probe`, or, when it fails, NaN for every metric of every layer and
        ``"<name>/error"``, with a one-line warning: a monitor never ends a training run."""
        try:
            return self.probe(model)
        except Exception as error:  # noqa: BLE001 - whatever broke the probe must not break training
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            warnings.warn(f"collapse-probe monitor: the probe at epoch {epoch} failed ({reason}); its metrics are "
                          "logged as NaN and training goes on", MonitorWarning, stacklevel=3)
            self._last = {}
            row: dict[str, Any] = {}
            for name in self.layers:
                row |= {f"{name}/{key}": math.nan for key in scalar_metric_names()}
                row[f"{name}/error"] = reason
            return row

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (completed epochs, from 1) is one to probe."""
        return epoch % self.every == 0 or (self.last_epoch is not None and epoch == self.last_epoch)

    def log(self, model: nn.Module, *, epoch: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Probe now, append ``{"epoch": epoch, **extra, **metrics}`` to ``metrics_path``; return it.

        Under ``torch.distributed`` call it on every process (the probe all-reduces); every
        process gets the row, only the main process (rank 0) writes the JSONL row and the plot.
        """
        row = {"epoch": int(epoch), **(extra or {}), **self.safe_probe(model, int(epoch))}
        self._record(int(epoch))
        if self.metrics_path is not None and is_main_process():
            os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
        self._send(row, int(epoch))
        return row

    def __call__(self, state: Any) -> None:
        """Trainer callback (``on_epoch_end``): add the metrics to ``state.row`` when due."""
        if not self.due(state.epoch):
            return
        state.row.update(self.safe_probe(state.model, state.epoch))
        self._record(state.epoch)
        self._send(state.row, state.epoch)

    def _record(self, epoch: int) -> None:
        if self._last:
            self.history.append((epoch, self._last))
            self._save_plot()

    def _send(self, row: Mapping[str, Any], epoch: int) -> None:
        # every rank holds the same row (the probe all-reduced); trackers hear it once
        if not self.loggers or not is_main_process() or not self._last:
            return
        for logger in self.loggers:
            try:
                logger.log_probe(row, epoch=epoch, spectra=self._last, history=self.history)
            except Exception as error:  # noqa: BLE001 - a tracker's failure must not end training either
                warnings.warn(f"collapse-probe monitor: {type(logger).__name__} failed at epoch {epoch} "
                              f"({type(error).__name__}: {error}); training goes on", MonitorWarning, stacklevel=3)

    def _save_plot(self) -> None:
        if self.plot_path is None or not self.history or not is_main_process():
            return
        figure = plot_spectrum_history(self.history)
        os.makedirs(os.path.dirname(os.path.abspath(self.plot_path)), exist_ok=True)
        figure.savefig(self.plot_path, dpi=100)


def plot_spectrum_history(history: Sequence[tuple[int, Mapping[str, Any]]]) -> Any:
    """A matplotlib Figure: per layer, sorted log eigenvalues, one line per probed epoch.

    ``history`` is ``[(epoch, {name: Spectrum}), ...]``. Lines are coloured by epoch on a
    sequential colormap (dark purple = first, green = last; no pale end that vanishes on white),
    with a colorbar for the epochs; each panel is titled with its layer. Numerically zero
    eigenvalues, at or below each probe's ``Spectrum.collapse_threshold()`` (the threshold of
    its ``collapsed_dims``, as in the table and the row), are drawn at that threshold (said under
    the x axis), so that collapsed directions stay on the log axis.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    names = list(history[0][1])
    figure = Figure(figsize=(4.4 * len(names) + 1.0, 3.8), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    # viridis up to 0.8: its last fifth is a yellow too pale to see as a line on white
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.8, 256)), name="viridis_dark")
    epochs = [epoch for epoch, _ in history]
    norm = Normalize(vmin=min(epochs), vmax=max(epochs) if max(epochs) > min(epochs) else min(epochs) + 1)
    for ax, name in zip(axes, names, strict=True):
        for epoch, spectra in history:
            eig = spectra[name].eigenvalues.double()
            eig = eig.clamp_min(spectra[name].collapse_threshold() or 1.0)  # 0 only for an all-zero spectrum
            ax.plot(np.arange(1, len(eig) + 1), eig.log10().numpy(), color=cmap(norm(epoch)), lw=1.3)
        ax.set_title(name)
        ax.set_xlabel("index (sorted, largest first)\ncollapsed (at or below the collapse threshold): drawn at it",
                      fontsize="small")
        ax.set_ylabel("log10 covariance eigenvalue")
        ax.grid(True, alpha=0.3)
    colorbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="epoch", shrink=0.9)
    if len(epochs) <= 10:
        colorbar.set_ticks(epochs)
    figure.suptitle(f"Covariance spectra during training (epochs {epochs[0]}-{epochs[-1]}, one line per probe)")
    return figure
