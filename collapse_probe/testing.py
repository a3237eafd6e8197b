"""pytest helpers: fail a test when an encoder's embeddings have collapsed.

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> loader = [torch.randn(256, 8) for _ in range(4)]
>>> spectra = assert_no_collapse(nn.Identity(), loader, min_effective_rank=7.5)
>>> spectra["output"].dim
8
>>> half = nn.Linear(8, 8, bias=False).requires_grad_(False)
>>> _ = half.weight.copy_(torch.diag(torch.tensor([1.0] * 4 + [0.0] * 4)))
>>> assert_no_collapse(half, loader, max_collapsed_fraction=0.25)
Traceback (most recent call last):
...
AssertionError: dimensional collapse detected:
FAIL max-collapsed-fraction [output]: collapsed_fraction = 0.5 (required <= 0.25)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from collapse_probe.checks.verdicts import evaluate_checks
from collapse_probe.probe.stream import spectrum
from collapse_probe.results.spectrum import Spectrum


def assert_no_collapse(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    min_effective_rank: float | None = None,
    max_collapsed_fraction: float | None = None,
    layers: str | Sequence[str] | None = None,
    **spectrum_kwargs: Any,
) -> dict[str, Spectrum]:
    """Probe ``model`` on ``loader`` and raise ``AssertionError`` naming every failed bound.

    Checks are those of :func:`collapse_probe.checks.verdicts.run_checks` (effective rank of the singular
    values of the centred embedding matrix >= ``min_effective_rank``; collapsed share of the d
    dimensions <= ``max_collapsed_fraction``), on the model output (``layers=None``) or on each
    named layer. When the loader has too few samples to judge a bound (N - 1 < d: the samples
    cannot show every dimension; see :mod:`collapse_probe.checks.verdicts`) it raises
    :class:`~collapse_probe.checks.verdicts.CannotJudgeError` (a ``CollapseProbeError``, not an
    ``AssertionError``: nothing was shown to have collapsed) saying how many samples are needed,
    unless another layer or bound was judged and failed: a failure is always an ``AssertionError``.
    Extra keyword arguments go to :func:`collapse_probe.spectrum` (``device``, ``normalize``,
    ``max_samples``, ...). Returns the spectra by layer (``"output"`` for the model output).
    """
    if min_effective_rank is None and max_collapsed_fraction is None:
        raise ValueError("assert_no_collapse needs min_effective_rank and/or max_collapsed_fraction")
    spectrum_kwargs.setdefault("progress", False)
    result = spectrum(model, loader, layers=[layers] if isinstance(layers, str) else layers, **spectrum_kwargs)
    spectra = result if isinstance(result, dict) else {"output": result}
    run = evaluate_checks(spectra, min_effective_rank=min_effective_rank, max_collapsed_fraction=max_collapsed_fraction)
    if run.failed:  # a judged failure beats a bound that could not be judged elsewhere
        raise AssertionError("dimensional collapse detected:\n" + "\n".join(r.message for r in run.failed))
    refusal = run.error()
    if refusal is not None:
        raise refusal
    return spectra
