"""Experiment-tracker adapters for :class:`~collapse_probe.integrations.monitor.SpectrumMonitor`.

Each adapter wraps an object the user already has (a TensorBoard ``SummaryWriter``, a W&B run,
an MLflow run id) and is handed every probe's row on the main process only::

    from torch.utils.tensorboard import SummaryWriter
    from collapse_probe.integrations.loggers import TensorBoardLogger, WandbLogger, MLflowLogger

    monitor = SpectrumMonitor(val_loader, layers={"rep": "encoder"},
                              loggers=[TensorBoardLogger(SummaryWriter("runs/x")),
                                       WandbLogger(wandb.init(project="p")), MLflowLogger()])

Scalars are logged as ``collapse/<layer>/<metric>`` (``prefix``), the same names the Lightning
and Hugging Face callbacks use; ``bool`` metrics as 0/1. This module imports none of the
trackers: the adapter for a tracker imports it only when it has to build one of its objects
(a W&B histogram, an MLflow client).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def scalar_metrics(row: Mapping[str, Any], prefix: str = "collapse") -> dict[str, float]:
    """The numeric entries of a monitor row, ``"<layer>/<metric>"`` -> ``"<prefix>/<layer>/<metric>"``.

    ``epoch``, the ``spectra`` dict, strings and ``None`` are left out; booleans become 0.0/1.0.

    >>> scalar_metrics({"epoch": 3, "rep/effective_rank": 7.5, "rep/sample_limited": False,
    ...                 "rep/layer": "encoder", "spectra": {}})
    {'collapse/rep/effective_rank': 7.5, 'collapse/rep/sample_limited': 0.0}
    """
    out = {}
    for key, value in row.items():
        if key in ("epoch", "spectra") or "/" not in key:
            continue
        if isinstance(value, bool | int | float | np.integer | np.floating):
            out[f"{prefix}/{key}" if prefix else key] = float(value)
    return out


def log_eigenvalues(spectrum: Any) -> np.ndarray:
    """log10 of the covariance eigenvalues (largest first), the numerically zero ones (at or below
    ``spectrum.collapse_threshold()``, those ``collapsed_dims`` counts) drawn at that threshold, as
    the monitor's plot draws them, so collapsed directions stay finite."""
    eig = spectrum.eigenvalues.double().numpy()
    floor = spectrum.collapse_threshold() or 1.0  # 0 only for an all-zero spectrum
    return np.log10(np.clip(eig, floor, None))


class TensorBoardLogger:
    """Log to a ``torch.utils.tensorboard.SummaryWriter`` (or tensorboardX's), step = epoch.

    Args:
        writer: the ``SummaryWriter``; flushed after each probe.
        histogram: also ``add_histogram("<prefix>/<layer>/log10_eigenvalues", ...)``: the
            distribution of log eigenvalues, one slice per epoch in TensorBoard's histogram tab.
        image: also ``add_figure("<prefix>/spectra", ...)``: the monitor's spectrum plot (every
            probe so far, one line per epoch).
    """

    def __init__(self, writer: Any, *, histogram: bool = True, image: bool = False, prefix: str = "collapse"):
        self.writer, self.histogram, self.image, self.prefix = writer, histogram, image, prefix

    def log_probe(self, row: Mapping[str, Any], *, epoch: int, spectra: Mapping[str, Any],
                  history: list | None = None) -> None:
        for key, value in scalar_metrics(row, self.prefix).items():
            self.writer.add_scalar(key, value, global_step=epoch)
        if self.histogram:
            for name, spec in spectra.items():
                self.writer.add_histogram(f"{self.prefix}/{name}/log10_eigenvalues", log_eigenvalues(spec),
                                          global_step=epoch)
        if self.image and history:
            from collapse_probe.integrations.monitor import plot_spectrum_history

            self.writer.add_figure(f"{self.prefix}/spectra", plot_spectrum_history(history), global_step=epoch,
                                   close=False)
        self.writer.flush()


class WandbLogger:
    """Log to a Weights & Biases run (``wandb.init(...)``'s return; default: ``wandb.run``).

    One ``run.log`` call per probe with the scalars, ``"epoch"``, and (``histogram=True``) a
    ``wandb.Histogram`` of each layer's log10 eigenvalues. No ``step=`` is passed, so the probe
    never fights the training loop's own W&B step counter; plot against ``epoch``.
    """

    def __init__(self, run: Any = None, *, histogram: bool = True, prefix: str = "collapse"):
        self.run, self.histogram, self.prefix = run, histogram, prefix

    def log_probe(self, row: Mapping[str, Any], *, epoch: int, spectra: Mapping[str, Any],
                  history: list | None = None) -> None:
        import wandb

        run = self.run if self.run is not None else wandb.run
        if run is None:
            raise RuntimeError("WandbLogger: no W&B run; call wandb.init(...) first or pass run=")
        data: dict[str, Any] = {"epoch": int(epoch), **scalar_metrics(row, self.prefix)}
        if self.histogram:
            for name, spec in spectra.items():
                data[f"{self.prefix}/{name}/log10_eigenvalues"] = wandb.Histogram(log_eigenvalues(spec))
        run.log(data)


class MLflowLogger:
    """Log to MLflow: scalars with ``step=epoch``, and each probe's spectra as a JSON artifact.

    Args:
        run_id: the run to log to through ``MlflowClient``; ``None`` logs to the active run
            (``mlflow.start_run()``; MLflow starts one if none is active).
        artifacts: also ``spectra/epoch_<N>.json``: every eigenvalue with its conventions.

    MLflow metric names may not hold every character; ``/`` is allowed, so names are as above.
    NaN metrics (an undefined power-law fit, say) are skipped.
    """

    def __init__(self, run_id: str | None = None, *, artifacts: bool = True, prefix: str = "collapse"):
        self.run_id, self.artifacts, self.prefix = run_id, artifacts, prefix

    def log_probe(self, row: Mapping[str, Any], *, epoch: int, spectra: Mapping[str, Any],
                  history: list | None = None) -> None:
        import mlflow

        metrics = {k: v for k, v in scalar_metrics(row, self.prefix).items() if math.isfinite(v)}
        dump = {name: spec.to_dict() for name, spec in spectra.items()}
        if self.run_id is None:
            mlflow.log_metrics(metrics, step=int(epoch))
            if self.artifacts:
                mlflow.log_dict(dump, f"spectra/epoch_{int(epoch)}.json")
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for key, value in metrics.items():
            client.log_metric(self.run_id, key, value, step=int(epoch))
        if self.artifacts:
            client.log_dict(self.run_id, dump, f"spectra/epoch_{int(epoch)}.json")
