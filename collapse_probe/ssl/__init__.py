"""The reference SimCLR / DirectCLR trainer: losses, heads, augment, LARS, loop, evaluation.

>>> from collapse_probe.ssl import preset_config
>>> preset_config("imagenet").batch_size, preset_config("imagenet").lr
(4096, 4.8)
"""

from collapse_probe.ssl.checkpoint import build_model_from_checkpoint, load_checkpoint
from collapse_probe.ssl.config import TrainConfig, preset_config
from collapse_probe.ssl.loop import NonFiniteLossError, TrainResult, TrainState, train
from collapse_probe.ssl.model import SSLModel, build_model

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
