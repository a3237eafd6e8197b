"""``collapse-probe lidar``: a checkpoint (any source ``spectrum`` takes) -> q seeded augmented
views of each image -> LiDAR per layer, through the same loading, preprocessing, image-size check
and options as :mod:`collapse_probe.pipeline.checkpoints`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collapse_probe._utils.devices import parse_device
from collapse_probe.metrics.lidar import LIDAR_DELTA, LIDAR_EPS, Lidar
from collapse_probe.models.loading import load_encoder_with_report
from collapse_probe.pipeline.checkpoints import ProbeConfig, layer_plan
from collapse_probe.pipeline.data import _note_preprocessing, open_view_data
from collapse_probe.pipeline.outputs import OUTPUT_NAME
from collapse_probe.probe.lidar import lidar

LIDAR_FORMAT = "collapse-probe/lidar-report-v1"


@dataclass(frozen=True)
class LidarSettings:
    """What LiDAR adds to a probe: q views per image, their seed, and the LDA's ridge and eps."""

    views: int = 8
    seed: int = 0
    delta: float = LIDAR_DELTA
    eps: float = LIDAR_EPS


@dataclass(frozen=True)
class LidarReport:
    """LiDAR per probed layer of one checkpoint, each layer's role, and where the numbers came from."""

    results: dict[str, Lidar]
    roles: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": LIDAR_FORMAT, "source": self.source,
                "layers": {name: {"role": self.roles.get(name, ""), **r.to_dict()} for name, r in self.results.items()}}


def lidar_checkpoint(path: str | Path, config: ProbeConfig, settings: LidarSettings = LidarSettings()) -> LidarReport:
    """Load a checkpoint, make ``settings.views`` seeded augmented views of each image, stream LiDAR.

    Layers: ``config.layers`` if given, else the checkpoint's default layers (representation,
    and embedding when it has a projector), else its output. A Hugging Face folder's images get
    its processor's rescale and normalisation; a fixed-size model at another size is refused.
    """
    device = parse_device(config.options.device or "auto")
    loaded = load_encoder_with_report(path, config.arch, trust_checkpoint=config.trust_checkpoint,
                                      allow_partial=config.allow_partial)
    plan = layer_plan(loaded.default_layers, config.layers)
    loader, data_source = open_view_data(path, loaded, config.data, views=settings.views, seed=settings.seed)
    options = config.options.replace(layers=list(plan) or None, device=device, max_samples=None)  # the subset is the sample
    solved = lidar(loaded.model, loader, options, views=settings.views, delta=settings.delta, eps=settings.eps)
    results = solved if isinstance(solved, dict) else {OUTPUT_NAME: solved}
    roles = {name: role for name, role in plan.items() if role} or {OUTPUT_NAME: "output"}
    data_source["n_unreadable_skipped"] = loader.n_skipped
    report = _note_preprocessing(loaded.report, data_source)
    source = {"checkpoint": str(path), "loaded_as": report.kind, "arch": report.arch, **data_source,
              **config.options.conventions(), "device": str(device), "load": report.to_dict()}
    return LidarReport(results, roles, source)
