"""The trainer's one config dataclass, its presets and its validation.

Every field is also a ``collapse-probe train`` option (``--warmup-epochs`` for ``warmup_epochs``);
the field's ``help`` metadata is the option's help text. The whole config is saved inside each
checkpoint as a plain dict.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from collapse_probe.errors import CollapseProbeError

METHODS = ("simclr", "directclr")
PROJECTORS = ("mlp", "linear", "none", "orthogonal", "diagonal", "lowrank", "lowrank-diagonal")
LOSSES = ("info_nce", "nt_xent")
ARCHS = ("resnet18", "resnet50", "smallcnn")
AUGMENTS = ("pil", "tensor")
PRECISIONS = ("auto", "fp32", "bf16")
ONLINE_HEADS = ("lars", "sgd-bn")


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Everything one training run needs; defaults are the paper's ImageNet recipe (PAPER.md s.3).

    >>> cfg = preset_config("demo", epochs=2)
    >>> cfg.arch, cfg.epochs, cfg.method
    ('smallcnn', 2, 'simclr')
    """

    # what is trained
    method: str = _opt("simclr", "simclr (loss on the projector output) or directclr (loss on r[:, :d0]).", choices=METHODS)
    projector: str = _opt("mlp", "SimCLR projector: " + ", ".join(PROJECTORS) + ".", choices=PROJECTORS)
    d0: int | None = _opt(None, "DirectCLR / lowrank sub-vector size (default 360 for resnet50, rep_dim*360/2048 otherwise).")
    projector_dim: int = _opt(128, "Output size of the mlp / linear projectors.")
    projector_hidden: int | None = _opt(None, "Hidden size of the mlp projector (default: representation size).")
    loss: str = _opt("info_nce", "info_nce (DirectCLR code: cross-view negatives) or nt_xent (SimCLR: also same-view).", choices=LOSSES)
    temperature: float = _opt(0.1, "Softmax temperature of the contrastive loss.")
    arch: str = _opt("resnet50", "Backbone: " + ", ".join(ARCHS) + ".", choices=ARCHS)
    small_stem: bool = _opt(False, "ResNet stem for 32-pixel images: 3x3 conv, stride 1, no max-pool.")
    width: int = _opt(32, "Base channel count of the smallcnn backbone (representation = 4 * width).")
    # data
    data: str = _opt("", "Image folder with train/ (and val/) subfolders, or builtin:NAME (builtin:digits, builtin:fashion-mnist).")
    image_size: int = _opt(224, "Training crop size in pixels.")
    crop_min_scale: float = _opt(0.08, "Smallest crop area fraction of RandomResizedCrop.")
    train_subset: int | None = _opt(
        None, "Train on this many training images only: a fixed random subset (seed 0), the same for every run and seed.")
    augment: str = _opt("pil", "pil: torchvision v2 per image in DataLoader workers; tensor: batched on the device.", choices=AUGMENTS)
    workers: int = _opt(8, "DataLoader worker processes (image folders).")
    # optimisation (global batch: split evenly over the processes)
    epochs: int = _opt(100, "Training epochs.")
    batch_size: int = _opt(4096, "Global batch size (all processes together).")
    lr: float = _opt(4.8, "Peak learning rate (not rescaled by batch size).")
    warmup_epochs: float = _opt(10.0, "Linear warm-up epochs, then cosine decay per step.")
    final_lr_ratio: float = _opt(0.001, "Cosine decays to final_lr_ratio * lr.")
    weight_decay: float = _opt(1e-6, "LARS weight decay (not applied to biases and norm parameters).")
    momentum: float = _opt(0.9, "LARS momentum.")
    trust_coefficient: float = _opt(0.001, "LARS trust coefficient eta.")
    online_probe: bool = _opt(True, "Train a linear classifier on the detached representation alongside.")
    online_lr: float = _opt(0.1, "Peak learning rate of the sgd-bn online classifier (momentum SGD, same schedule).")
    online_head: str = _opt(
        "lars", "lars: a Linear on view 1's representation in the LARS group at --lr (DirectCLR code); "
        "sgd-bn: BatchNorm (no affine) + Linear on both views, momentum SGD at --online-lr.", choices=ONLINE_HEADS)
    joint_batchnorm: bool = _opt(
        False, "One encoder pass on both views concatenated, so BatchNorm statistics pool the two views "
        "(default: one pass per view, as the DirectCLR code; docs/reproduction.md has the measured difference).")
    max_steps_per_epoch: int | None = _opt(None, "Cut each epoch after this many steps (quick checks, benchmarks).")
    # run
    out: str = _opt("runs/train", "Output folder: checkpoint.pt, metrics.jsonl, spectra plot; it must be empty unless "
                    "--resume or --overwrite.")
    resume: bool = _opt(False, "Continue from OUT/checkpoint.pt.")
    save_every: int = _opt(
        0, "Also keep OUT/checkpoints/epoch_NNNN.pt every N epochs (and after the last), with its step and epoch, "
        "for `collapse-probe track` (0: only the latest OUT/checkpoint.pt).")
    seed: int = _opt(0, "Random seed (data order, augmentations, initialisation).")
    device: str | None = _opt(None, "cpu, cuda, cuda:1 ... (default: cuda when available).")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16.", choices=PRECISIONS)
    channels_last: bool = _opt(True, "channels_last memory format (faster convolutions on CUDA, and on CPU with mkldnn).")
    monitor_every: int = _opt(1, "Probe the spectra every N epochs (0: never).")
    monitor_samples: int | None = _opt(None, "Cap on held-out samples the spectrum monitor uses.")
    monitor_lidar_views: int = _opt(
        0, "0: off; q > 1: the monitor also logs LiDAR (<layer>/lidar) on the held-out images (capped by "
        "--monitor-samples), q augmented views each, fixed seed 0, as `collapse-probe lidar` makes them.")
    log_every: int = _opt(50, "Print progress every N steps.")
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice).")

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (what the checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config, ignoring keys that this version does not know.

        A setting a saved config lacks (it was written before the setting existed) takes the value
        that reproduces how that run was trained (:data:`SETTINGS_BEFORE_THEY_EXISTED`), not
        today's default, so ``--resume`` continues the same run.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        older = {k: v for k, v in SETTINGS_BEFORE_THEY_EXISTED.items() if k not in values}
        return cls(**older, **{k: v for k, v in values.items() if k in known})


#: How the trainer behaved before each of these settings was added (per-view BatchNorm and the
#: DirectCLR code's online head came later): a saved config without the key was trained so.
SETTINGS_BEFORE_THEY_EXISTED: dict[str, Any] = {"online_head": "sgd-bn", "joint_batchnorm": True}


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's recipe (PAPER.md s.3): ResNet-50, batch 4096, lr 4.8, 100 epochs, 10 warm-up.
    "imagenet": {},
    # A CPU run of a few minutes on the bundled digits (8 x 8 originals, so 16-pixel crops lose
    # nothing): small CNN, batched tensor augmentations. A short run needs a larger LARS lr.
    # Blur does nothing here: its sigma scales with the crop, U(0.1, 2.0) px at 224 px becomes
    # U(0.007, 0.14) px at 16 px, and even sigma 0.14 puts a weight of 2.4e-11 on each neighbour
    # of the 3-tap kernel. The two views differ by crop, flip, colour, grayscale and solarize only.
    "demo": dict(
        data="builtin:digits", arch="smallcnn", width=32, image_size=16, augment="tensor",
        epochs=20, batch_size=128, lr=8.0, warmup_epochs=1.0, weight_decay=1e-5,
        projector_dim=64, workers=0, log_every=0,
        threads=1,  # measured: 1 torch thread trains this small CNN 3-4x faster than 2 on a shared 2-core CPU
    ),
    # The reproduction on real images (docs/reproduction.md): the demo recipe on Fashion-MNIST's
    # native 28-pixel images, trained on a fixed 10,000-image subset to fit a 2-core CPU budget.
    # Blur still does next to nothing: sigma is U(0.0125, 0.25) px at 28 px, and sigma 0.25 puts a
    # weight of 3.4e-4 on each neighbour of the 3-tap kernel.
    "fashion": dict(
        data="builtin:fashion-mnist", arch="smallcnn", width=32, image_size=28, augment="tensor",
        train_subset=10000, epochs=30, batch_size=128, lr=8.0, warmup_epochs=1.0, weight_decay=1e-5,
        projector_dim=64, workers=0, log_every=0, monitor_samples=2000, threads=1,
    ),
}


def default_out(preset: str, method: str) -> str:
    """The output folder a run gets without ``out=``: ``runs/<preset>-<method>``.

    Runs of different presets or methods thus never share a folder by default.

    >>> default_out("demo", "directclr")
    'runs/demo-directclr'
    """
    return f"runs/{preset}-{method}"


def preset_config(name: str = "imagenet", **overrides: Any) -> TrainConfig:
    """The ``name`` preset with ``overrides`` applied (None values are ignored).

    ``out`` defaults to :func:`default_out` of the preset and the method.

    >>> preset_config("demo", method="directclr").out
    'runs/demo-directclr'
    """
    if name not in PRESETS:
        raise CollapseProbeError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    values.setdefault("out", default_out(name, values.get("method", TrainConfig.method)))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CollapseProbeError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def default_d0(rep_dim: int) -> int:
    """DirectCLR's d0: 360 of 2048 for ResNet-50 (public code), the same fraction otherwise."""
    return max(1, round(rep_dim * 360 / 2048))


def validate(config: TrainConfig, *, rep_dim: int | None = None, world_size: int = 1, check_data: bool = True) -> None:
    """Raise :class:`CollapseProbeError` for a config that cannot train, before any work starts.

    >>> validate(preset_config("demo", method="directclr", d0=0), rep_dim=128)
    Traceback (most recent call last):
    ...
    collapse_probe.errors.CollapseProbeError: --d0 must be between 1 and the representation size 128, got 0
    """
    for name, allowed in (("method", METHODS), ("projector", PROJECTORS), ("loss", LOSSES), ("arch", ARCHS),
                          ("augment", AUGMENTS), ("precision", PRECISIONS), ("online_head", ONLINE_HEADS)):
        value = getattr(config, name)
        if value not in allowed:
            raise CollapseProbeError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    if config.epochs < 1:
        raise CollapseProbeError(f"--epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 2:
        raise CollapseProbeError(f"--batch-size must be at least 2 (contrastive negatives), got {config.batch_size}")
    if config.batch_size % world_size:
        raise CollapseProbeError(
            f"global batch size {config.batch_size} is not divisible by the world size {world_size}"
        )
    if config.train_subset is not None and config.train_subset < config.batch_size:
        raise CollapseProbeError(f"--train-subset {config.train_subset} is smaller than the batch size {config.batch_size}")
    if config.monitor_lidar_views and (config.monitor_lidar_views < 2 or not config.monitor_every):
        raise CollapseProbeError(f"--monitor-lidar-views must be 0 (off) or at least 2 with --monitor-every above 0, "
                                 f"got {config.monitor_lidar_views} (monitor every {config.monitor_every})")
    if config.lr <= 0 or config.temperature <= 0:
        raise CollapseProbeError("--lr and --temperature must be positive")
    if rep_dim is not None and config.d0 is not None and not 1 <= config.d0 <= rep_dim:
        raise CollapseProbeError(f"--d0 must be between 1 and the representation size {rep_dim}, got {config.d0}")
    if config.method == "directclr" and config.projector not in ("none", "mlp"):
        # mlp is the default value; anything else asked for explicitly contradicts DirectCLR
        raise CollapseProbeError("directclr uses no projector; drop --projector or use --method simclr")
    if not check_data:
        return
    if not config.data:
        raise CollapseProbeError("no training data: pass --data DIR (with a train/ subfolder) or --data builtin:digits")
    from collapse_probe.data.builtin import is_builtin, require_builtin

    if is_builtin(config.data):
        require_builtin(config.data)
    else:
        root = config.data
        train_dir = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
        if not os.path.isdir(train_dir):
            raise CollapseProbeError(f"data folder {root!r} does not exist")
        if not any(os.scandir(train_dir)):
            raise CollapseProbeError(f"data folder {train_dir!r} is empty")
