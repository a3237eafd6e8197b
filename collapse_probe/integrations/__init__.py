"""Trainer and tracker integrations, each an optional dependency imported only when its module is.

* ``collapse_probe.integrations.lightning.SpectrumCallback``: a Lightning callback
  (``pip install "collapse-probe[lightning]"``).
* ``collapse_probe.integrations.transformers.SpectrumCallback``: a Hugging Face ``Trainer``
  callback (``pip install "collapse-probe[hf]"``).
* ``collapse_probe.integrations.loggers``: TensorBoard, W&B and MLflow adapters for
  ``SpectrumMonitor(loggers=[...])`` (extras ``tensorboard``, ``wandb``, ``mlflow``).

Importing this package imports none of them.
"""
