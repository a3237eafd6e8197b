"""A Hugging Face ``Trainer`` callback that probes covariance spectra at every evaluation.

``pip install "collapse-probe[hf]"``::

    from collapse_probe.integrations.transformers import SpectrumCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    SpectrumCallback(probe_loader, layers={"cls": "bert.encoder.layer.11"}).attach(trainer)
    trainer.train()

After each ``trainer.evaluate()`` (``eval_strategy="steps"``/``"epoch"``, or called by hand) it
streams ``probe_loader`` once through ``collapse_probe.spectrum`` on the model (tokenizer dict
batches work as they come) and logs every scalar metric as ``eval_collapse/<layer>/<metric>``
(named like the Trainer's own ``eval_loss``) with ``trainer.log``: a record of its own in
``state.log_history``, and every reporter of ``report_to`` gets it (TensorBoard and W&B show it
as ``eval/collapse/<layer>/<metric>``, by the reporters' ``eval_`` -> ``eval/`` rewrite). The metrics are also added to the dict
``evaluate()`` returns. A ``TrainerCallback`` is not handed its ``Trainer``, hence ``attach``;
passed as ``Trainer(callbacks=[...])`` instead, the record still lands in ``state.log_history``
but the reporters do not see it (a warning says so). Under DDP every rank probes its share of
the batches and ``spectrum`` all-reduces, so all ranks hold the same values; files and
``loggers`` are written by rank zero only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from collapse_probe.integrations.loggers import scalar_metrics
from collapse_probe.integrations.shard import rank_shard
from collapse_probe.integrations.targets import (
    cadence,
    callback_monitor,
    hugging_face_encoder,
    probe_target,
)
from collapse_probe.probe.options import ProbeOptions

try:
    from transformers import TrainerCallback
except ImportError as error:
    raise ImportError(
        'collapse_probe.integrations.transformers needs transformers: pip install "collapse-probe[hf]"'
    ) from error


class SpectrumCallback(TrainerCallback):
    """Probe spectra after evaluation and log ``<prefix>/<layer>/<metric>`` through ``trainer.log``.

    Args:
        loader: held-out batches as ``collapse_probe.spectrum`` takes them (tokenizer dicts too).
        options: the :class:`~collapse_probe.probe.options.ProbeOptions` of every probe; each
            field may also be a keyword argument (``pool="cls"``, ``center=``, ``normalize=``,
            ``precision=``, ``max_samples=``, ``groups=``, ``skip_nonfinite=``, ``output_fn=``, ...).
        layers: display name -> module name in the model; a sequence uses the names as they are;
            ``None`` probes the model's hidden states (``last_hidden_state``, masked mean), as
            ``output``: a model with a head (``*ForSequenceClassification``, whose output is a
            loss and logits) is probed through its base model (``model.base_model``).
        module: a submodule of the model to probe (``"bert"`` of a ``BertForSequenceClassification``).
        every: probe at evaluations ``n, 2n, ...`` (``every_n_evals`` is its older name).
        prefix: metric name prefix.
        metrics_path, plot_path, loggers: as :class:`SpectrumMonitor` (rank zero only); their
            ``"epoch"`` is the evaluation's index (1, 2, ...), ``"step"`` the global step.
        lidar_loader, lidar_views: as :class:`SpectrumMonitor`: also log ``<layer>/lidar`` on
            batches of (B, q, ...) views (sharded over ranks as ``loader`` is).

    A failed probe never ends training: its metrics are logged as NaN with a one-line warning.
    """

    def __init__(
        self,
        loader: Any,
        options: ProbeOptions | None = None,
        *,
        layers: Mapping[str, str] | Sequence[str] | None = None,
        module: str | None = None,
        every: int | None = None,
        every_n_evals: int | None = None,
        prefix: str = "eval_collapse",
        metrics_path: str | os.PathLike | None = None,
        plot_path: str | os.PathLike | None = None,
        loggers: Sequence[Any] = (),
        lidar_loader: Any = None,
        lidar_views: int | None = None,
        **probe_options: Any,
    ):
        self.loader, self.module, self.prefix = loader, module, prefix
        self.monitor = callback_monitor(loader, options, layers, cadence(every, every_n_evals, "every_n_evals"),
                                        metrics_path=metrics_path, plot_path=plot_path, loggers=loggers,
                                        lidar_loader=lidar_loader, lidar_views=lidar_views, **probe_options)
        self.lidar_loader = lidar_loader
        self.trainer: Any = None
        self.evaluations = 0
        self.last_row: dict[str, Any] | None = None
        self._resolved = False

    def attach(self, trainer: Any) -> SpectrumCallback:
        """``trainer.add_callback(self)``, keeping the trainer so that ``trainer.log`` reaches its reporters."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def _resolve(self, model: Any) -> None:
        """Once: the base model for the hidden states of a model with a head, then the module to probe."""
        if self._resolved:
            return
        module = hugging_face_encoder(model, self.module, self.monitor.layers)
        self.module, layers = probe_target(model, module, self.monitor.layers)
        self.monitor.options = self.monitor.options.replace(layers=layers)
        self.monitor.layers = dict(layers)
        self._resolved = True

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self._resolve(model)  # a mistake is refused before the first step, never mid-run

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, metrics: Any = None,
                    **kwargs: Any) -> None:
        self.evaluations += 1
        if model is None or not self.monitor.due(self.evaluations):
            return
        self._resolve(model)
        probed = model.get_submodule(self.module) if self.module else model
        self.monitor.loader = rank_shard(self.loader)
        if self.lidar_loader is not None:
            self.monitor.lidar_loader = rank_shard(self.lidar_loader)
        self.last_row = self.monitor.log(probed, epoch=self.evaluations, extra={"step": state.global_step})
        logs = scalar_metrics(self.last_row, self.prefix)
        if metrics is not None:
            metrics.update(logs)
        if self.trainer is not None:
            self.trainer.log(dict(logs))  # log_history + on_log of every reporter
            return
        warnings.warn("SpectrumCallback was not attached (SpectrumCallback(...).attach(trainer)): its metrics "
                      "are in state.log_history but the report_to loggers did not get them", stacklevel=2)
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
