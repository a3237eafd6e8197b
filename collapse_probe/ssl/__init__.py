"""The reference SimCLR / DirectCLR trainer: losses, heads, augment, LARS, loop, evaluation.

>>> from collapse_probe.ssl import preset_config
>>> preset_config("imagenet").batch_size, preset_config("imagenet").lr
(4096, 4.8)
"""

from typing import TYPE_CHECKING

from collapse_probe._utils.lazy import lazy_exports

if TYPE_CHECKING:
    from collapse_probe.ssl.checkpoint import build_model_from_checkpoint, load_checkpoint
    from collapse_probe.ssl.config import TrainConfig, preset_config
    from collapse_probe.ssl.loop import NonFiniteLossError, TrainResult, TrainState, train
    from collapse_probe.ssl.model import SSLModel, build_model

# imported on first use: importing this package must not import torch (collapse_probe._utils.lazy)
__getattr__ = lazy_exports(__name__, {
    "NonFiniteLossError": "collapse_probe.ssl.loop",
    "SSLModel": "collapse_probe.ssl.model",
    "TrainConfig": "collapse_probe.ssl.config",
    "TrainResult": "collapse_probe.ssl.loop",
    "TrainState": "collapse_probe.ssl.loop",
    "build_model": "collapse_probe.ssl.model",
    "build_model_from_checkpoint": "collapse_probe.ssl.checkpoint",
    "load_checkpoint": "collapse_probe.ssl.checkpoint",
    "preset_config": "collapse_probe.ssl.config",
    "train": "collapse_probe.ssl.loop",
})

__all__ = [
    "NonFiniteLossError",
    "SSLModel",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_model",
    "build_model_from_checkpoint",
    "load_checkpoint",
    "preset_config",
    "train",
]
