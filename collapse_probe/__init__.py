"""collapse-probe: has my encoder collapsed?

Streaming float64 covariance spectra, effective rank, RankMe and other dimensional-collapse
metrics for any PyTorch encoder (Jing et al., "Understanding Dimensional Collapse in
Contrastive Self-supervised Learning", ICLR 2022).

>>> import torch
>>> from collapse_probe import Spectrum
>>> round(Spectrum.from_embeddings(torch.randn(4000, 8, dtype=torch.float64)).effective_rank, 1)
8.0
"""

from collapse_probe import testing
from collapse_probe.accumulator import CovarianceAccumulator
from collapse_probe.checkpoints import load_encoder
from collapse_probe.errors import CollapseProbeError, NonFiniteEmbeddingError
from collapse_probe.functional import PowerLawFit
from collapse_probe.lidar_metric import Lidar, LidarAccumulator
from collapse_probe.lidar_probe import lidar
from collapse_probe.monitor import SpectrumMonitor
from collapse_probe.plot import plot_spectra
from collapse_probe.probe import spectrum
from collapse_probe.result import Spectrum, to_frame
from collapse_probe.solve import solve_spectra

__version__ = "0.1.0"


def __getattr__(name: str):
    # `collapse_probe.theory` pulls in scipy and matplotlib: load it only when asked for.
    if name == "theory":
        import importlib

        return importlib.import_module("collapse_probe.theory")
    raise AttributeError(f"module 'collapse_probe' has no attribute {name!r}")

__all__ = [
    "CollapseProbeError",
    "CovarianceAccumulator",
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
