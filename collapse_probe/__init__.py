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

from collapse_probe._utils.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from collapse_probe import testing, theory
    from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError
    from collapse_probe.functional.metrics import PowerLawFit
    from collapse_probe.integrations.monitor import SpectrumMonitor
    from collapse_probe.metrics.covariance import CovarianceAccumulator
    from collapse_probe.metrics.grouped import GroupedAccumulator
    from collapse_probe.metrics.lidar import Lidar, LidarAccumulator
    from collapse_probe.metrics.solve import solve_spectra
    from collapse_probe.models.loading import load_encoder
    from collapse_probe.probe.lidar import lidar
    from collapse_probe.probe.stream import spectrum
    from collapse_probe.results.plot import plot_spectra
    from collapse_probe.results.spectrum import Spectrum, to_frame

# Public name -> the module that defines it ("": a submodule), imported on first use: importing
# the package, or a light module such as collapse_probe.errors, does not import torch.
__getattr__ = lazy_exports(__name__, {
    "CollapseProbeError": "collapse_probe.errors",
    "CovarianceAccumulator": "collapse_probe.metrics.covariance",
    "GroupedAccumulator": "collapse_probe.metrics.grouped",
    "Lidar": "collapse_probe.metrics.lidar",
    "LidarAccumulator": "collapse_probe.metrics.lidar",
    "NonFiniteEmbeddingError": "collapse_probe.errors",
    "PowerLawFit": "collapse_probe.functional.metrics",
    "lidar": "collapse_probe.probe.lidar",
    "Spectrum": "collapse_probe.results.spectrum",
    "SpectrumMonitor": "collapse_probe.integrations.monitor",
    "load_encoder": "collapse_probe.models.loading",
    "plot_spectra": "collapse_probe.results.plot",
    "solve_spectra": "collapse_probe.metrics.solve",
    "spectrum": "collapse_probe.probe.stream",
    "testing": "",
    "theory": "",
    "to_frame": "collapse_probe.results.spectrum",
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
