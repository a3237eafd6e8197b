"""A Lightning callback that probes covariance spectra at the end of validation.

``pip install "collapse-probe[lightning]"``. Works with ``lightning`` (``lightning.pytorch``)
and, when that is absent, the older ``pytorch_lightning`` package::

    from collapse_probe.integrations.lightning import SpectrumCallback

    callback = SpectrumCallback(probe_loader, layers={"rep": "backbone", "emb": "projector"})
    trainer = lightning.Trainer(max_epochs=100, callbacks=[callback], logger=CSVLogger("logs"))

Every ``every`` epochs (after validation; the sanity check is skipped) it streams
``probe_loader`` once through ``collapse_probe.spectrum`` on the LightningModule (or on its
submodule ``module``) and logs every scalar metric as ``collapse/<layer>/<metric>`` through
``pl_module.log``, so every configured Lightning logger (CSV, TensorBoard, W&B, MLflow, ...)
records them and callbacks such as ``EarlyStopping`` or ``ModelCheckpoint`` can monitor them.

Under DDP the callback runs on every rank: each streams its share of ``probe_loader`` (every
``world_size``-th batch, or its ``DistributedSampler`` shard) and ``spectrum`` all-reduces the
statistics, so every rank holds identical values; they are logged with ``sync_dist=False`` (an
extra all-reduce per metric would change nothing). Files (``metrics_path``, ``plot_path``) and
``loggers`` are written by rank zero only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from collapse_probe.integrations.loggers import scalar_metrics
from collapse_probe.integrations.shard import rank_shard
from collapse_probe.integrations.targets import cadence, callback_monitor, probe_target
from collapse_probe.probe.options import ProbeOptions

try:
    from lightning.pytorch import Callback
except ImportError:  # the package's older name
    try:
        from pytorch_lightning import Callback
    except ImportError as error:
        raise ImportError(
            'collapse_probe.integrations.lightning needs Lightning: pip install "collapse-probe[lightning]"'
        ) from error


class SpectrumCallback(Callback):
    """Probe spectra at validation end and log ``<prefix>/<layer>/<metric>`` via ``pl_module.log``.

    Args:
        loader: held-out batches, as ``collapse_probe.spectrum`` takes them (tensors, ``(x, y)``,
            dicts); the batches go to the probed module's ``forward``.
        options: the :class:`~collapse_probe.probe.options.ProbeOptions` of every probe; each
            field may also be a keyword argument (``pool=``, ``center=``, ``normalize=``,
            ``precision=``, ``max_samples=`` (in total over ranks, as in ``spectrum``),
            ``groups=``, ``skip_nonfinite=``, ``output_fn=``, ...).
        layers: display name -> module name inside the probed module (a sequence uses the names
            as they are); ``None`` probes the probed module's output, logged as ``output``.
        module: a submodule of the LightningModule to probe (``"backbone"``) when the
            LightningModule's own ``forward`` is not the encoder; ``None``: the LightningModule.
            A LightningModule without a ``forward`` is probed through the owner of the named
            layers (``layers={"rep": "backbone.layer4"}`` probes ``backbone``), else refused when
            fitting starts, in one line naming ``module=``.
        every: probe after validation of epochs ``n, 2n, ...`` (1-based; ``every_n_epochs`` is
            the same, its older name).
        prefix: metric name prefix.
        metrics_path, plot_path, loggers, lidar_loader, lidar_views: as :class:`SpectrumMonitor`
            (files and loggers on rank zero only; ``lidar_loader`` is sharded over ranks as
            ``loader`` is).

    A failed probe never ends the fit: its metrics are logged as NaN with a one-line warning.
    ``last_row`` holds the latest probe's row (every metric and the full spectra).
    """

    def __init__(
        self,
        loader: Any,
        options: ProbeOptions | None = None,
        *,
        layers: Mapping[str, str] | Sequence[str] | None = None,
        module: str | None = None,
        every: int | None = None,
        every_n_epochs: int | None = None,
        prefix: str = "collapse",
        metrics_path: str | os.PathLike | None = None,
        plot_path: str | os.PathLike | None = None,
        loggers: Sequence[Any] = (),
        lidar_loader: Any = None,
        lidar_views: int | None = None,
        **probe_options: Any,
    ):
        super().__init__()
        self.loader, self.module, self.prefix = loader, module, prefix
        self.monitor = callback_monitor(loader, options, layers, cadence(every, every_n_epochs, "every_n_epochs"),
                                        metrics_path=metrics_path, plot_path=plot_path, loggers=loggers,
                                        lidar_loader=lidar_loader, lidar_views=lidar_views, **probe_options)
        self.lidar_loader = lidar_loader
        self.last_row: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Find what to probe before the first epoch: a mistake is refused now, never mid-run."""
        self.module, layers = probe_target(pl_module, self.module, self.monitor.layers)
        self.monitor.options = self.monitor.options.replace(layers=layers)
        self.monitor.layers = dict(layers)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        if not self.monitor.due(epoch):
            return
        model = pl_module.get_submodule(self.module) if self.module else pl_module
        self.monitor.loader = rank_shard(self.loader)  # the DDP world is known only now
        if self.lidar_loader is not None:
            self.monitor.lidar_loader = rank_shard(self.lidar_loader)
        self.last_row = self.monitor.log(model, epoch=epoch, extra={"step": trainer.global_step})
        for key, value in scalar_metrics(self.last_row, self.prefix).items():
            # identical on every rank (spectrum all-reduced): no sync_dist all-reduce needed
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, logger=True)
