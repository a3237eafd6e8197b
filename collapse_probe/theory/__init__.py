"""The paper's linear-model simulations (Jing et al. 2022, sections 4 and 5).

* :mod:`~collapse_probe.theory.quantities` -- Lemma 1's X (``dL/dW = -W X``), Lemma 2's split
  ``X = Sigma0_hat - Sigma1_hat (- residual)``, the conserved ``W1 W1^T - W2^T W2``, the alignment
  ``A = V2^T U1``.
* :mod:`~collapse_probe.theory.linear` -- toy encoders and the one InfoNCE/SGD loop.
* :mod:`~collapse_probe.theory.simulate` and :mod:`~collapse_probe.theory.depth` --
  ``simulate_strong_augmentation``, ``simulate_two_layer``, ``simulate_depth``: a config
  dataclass in, a result dataclass out (shared settings in :mod:`~collapse_probe.theory.setting`).
* :mod:`~collapse_probe.theory.figures` and :mod:`~collapse_probe.theory.report` -- figures and
  files (imported on demand: they load matplotlib).

>>> from collapse_probe.theory import StrongAugConfig, simulate_strong_augmentation
>>> result = simulate_strong_augmentation(StrongAugConfig(noise_levels=(0.0,), steps=5, n_samples=200))
>>> result.weight_singular_values.shape
torch.Size([1, 16])
"""

from typing import TYPE_CHECKING

from collapse_probe._utils.lazy import lazy_exports

if TYPE_CHECKING:
    from collapse_probe.theory.depth import DepthConfig, DepthResult, DepthRun, simulate_depth
    from collapse_probe.theory.quantities import (
        Lemma2Terms,
        alignment_error,
        alignment_matrix,
        conserved_quantity,
        infonce_x_matrix,
        lemma2_terms,
        matched_alignment,
    )
    from collapse_probe.theory.simulate import (
        StrongAugConfig,
        StrongAugResult,
        TwoLayerConfig,
        TwoLayerResult,
        simulate_strong_augmentation,
        simulate_two_layer,
    )

# imported on first use: importing this package must not import torch (collapse_probe._utils.lazy)
__getattr__ = lazy_exports(__name__, {
    "DepthConfig": "collapse_probe.theory.depth",
    "DepthResult": "collapse_probe.theory.depth",
    "DepthRun": "collapse_probe.theory.depth",
    "Lemma2Terms": "collapse_probe.theory.quantities",
    "StrongAugConfig": "collapse_probe.theory.simulate",
    "StrongAugResult": "collapse_probe.theory.simulate",
    "TwoLayerConfig": "collapse_probe.theory.simulate",
    "TwoLayerResult": "collapse_probe.theory.simulate",
    "alignment_error": "collapse_probe.theory.quantities",
    "alignment_matrix": "collapse_probe.theory.quantities",
    "conserved_quantity": "collapse_probe.theory.quantities",
    "infonce_x_matrix": "collapse_probe.theory.quantities",
    "lemma2_terms": "collapse_probe.theory.quantities",
    "matched_alignment": "collapse_probe.theory.quantities",
    "simulate_depth": "collapse_probe.theory.depth",
    "simulate_strong_augmentation": "collapse_probe.theory.simulate",
    "simulate_two_layer": "collapse_probe.theory.simulate",
})

__all__ = [
    "DepthConfig",
    "DepthResult",
    "DepthRun",
    "Lemma2Terms",
    "StrongAugConfig",
    "StrongAugResult",
    "TwoLayerConfig",
    "TwoLayerResult",
    "alignment_error",
    "alignment_matrix",
    "conserved_quantity",
    "infonce_x_matrix",
    "lemma2_terms",
    "matched_alignment",
    "simulate_depth",
    "simulate_strong_augmentation",
    "simulate_two_layer",
]
