"""collapse-probe: has my encoder collapsed?

Streaming float64 covariance spectra, effective rank, RankMe and other dimensional-collapse
metrics for any PyTorch encoder (Jing et al., "Understanding Dimensional Collapse in
Contrastive Self-supervised Learning", ICLR 2022).

>>> import torch
>>> from collapse_probe import Spectrum
>>> round(Spectrum.from_embeddings(torch.randn(4000, 8, dtype=torch.float64)).effective_rank, 1)
8.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collapse_probe.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from collapse_probe import testing, theory
    from collapse_probe.accumulator import CovarianceAccumulator
    from collapse_probe.checkpoints import load_encoder
    from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError
    from collapse_probe.functional import PowerLawFit
    from collapse_probe.grouped import GroupedAccumulator
    from collapse_probe.lidar_metric import Lidar, LidarAccumulator
    from collapse_probe.lidar_probe import lidar
    from collapse_probe.monitor import SpectrumMonitor
    from collapse_probe.plot import plot_spectra
    from collapse_probe.probe import spectrum
    from collapse_probe.result import Spectrum, to_frame
    from collapse_probe.solve import solve_spectra

# Public name -> the module that defines it ("": a submodule), imported on first use: importing
# the package, or a light module such as collapse_probe.errors, does not import torch.
__getattr__ = lazy_exports(__name__, {
    "CollapseProbeError": "collapse_probe.errors",
    "CovarianceAccumulator": "collapse_probe.accumulator",
    "GroupedAccumulator": "collapse_probe.grouped",
    "Lidar": "collapse_probe.lidar_metric",
    "LidarAccumulator": "collapse_probe.lidar_metric",
    "NonFiniteEmbeddingError": "collapse_probe.errors",
    "PowerLawFit": "collapse_probe.functional",
    "lidar": "collapse_probe.lidar_probe",
    "Spectrum": "collapse_probe.result",
    "SpectrumMonitor": "collapse_probe.monitor",
    "load_encoder": "collapse_probe.checkpoints",
    "plot_spectra": "collapse_probe.plot",
    "solve_spectra": "collapse_probe.solve",
    "spectrum": "collapse_probe.probe",
    "testing": "",
    "theory": "",
    "to_frame": "collapse_probe.result",
})


__all__ = [
    "CollapseProbeError",
    "CovarianceAccumulator",
    "GroupedAccumulator",
    "Lidar",
    "LidarAccumulator",
    "NonFiniteEmbeddingError",
    "PowerLawFit",
    "Spectrum",
    "SpectrumMonitor",
    "__version__",
    "lidar",
    "load_encoder",
    "plot_spectra",
    "solve_spectra",
    "spectrum",
    "testing",
    "theory",
    "to_frame",
]
