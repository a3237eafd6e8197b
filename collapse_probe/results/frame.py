"""A Spectrum's JSON and pandas forms: the spectrum-v1 document, strict-JSON values, the per-layer table.

Kept apart from :mod:`collapse_probe.results.spectrum` (which re-exports :func:`to_frame`, so
``from collapse_probe.results.spectrum import Spectrum, to_frame`` works): these functions take a
spectrum and read only its public attributes, so this module never imports the class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from collapse_probe._utils.files import atomic_write_text
from collapse_probe.errors import CollapseProbeError

if TYPE_CHECKING:
    from collapse_probe.results.spectrum import Spectrum

FORMAT = "collapse-probe/spectrum-v1"


def _as_float64_tensor(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively: strict JSON.

    >>> json_safe({"alpha": float("nan"), "values": [1.0, float("inf")]})
    {'alpha': None, 'values': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def read_json_file(path: Path) -> Any:
    """The parsed JSON document at ``path``; a one-line error if it is missing or not JSON."""
    if not path.is_file():
        raise CollapseProbeError(f"spectrum file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CollapseProbeError(f"{path} is not valid JSON: {error}") from None


def metrics_row(s: Spectrum) -> dict[str, Any]:
    """Every scalar metric of ``s``, with default settings, as a flat dict: the JSON/CSV row, the table's cells."""
    fit = s.alpha_req()
    return {
        "layer": s.layer,
        "dim": s.dim,
        "n_samples": s.n_samples,
        "effective_rank": s.effective_rank,
        "rankme": s.rankme,
        "numerical_rank": s.numerical_rank(),
        "collapsed_dims": s.collapsed_dims(),
        "collapsed_fraction": s.collapsed_fraction(),
        "unobserved_dims": s.unobserved_dims,
        "max_rank": s.max_rank,
        "sample_limited": s.sample_limited,
        "stable_rank": s.stable_rank,
        "participation_ratio": s.participation_ratio,
        "alpha": fit.alpha,
        "alpha_r2": fit.r2,
        "std_of_l2_normalized": s.std_of_l2_normalized,
        "rtol": s.default_rtol(),
    } | {f"{name}_se": se for name, se in s.stderr.items()}


def conventions_row(s: Spectrum) -> dict[str, Any]:
    """How ``s``'s numbers were computed: centring, normalisation, ddof, dtypes, what eigenvalues mean."""
    return {
        "center": s.center,
        "normalize": s.normalize,
        "ddof": s.ddof,
        "dtype": s.dtype,
        "input_dtype": s.input_dtype,
        "eigenvalues_of": "covariance M2/(n-ddof)" if s.center else "second moment Z^T Z/(n-ddof)",
        "n_skipped_nonfinite": s.n_skipped_nonfinite,
    }


def spectrum_document(s: Spectrum) -> dict[str, Any]:
    """The spectrum-v1 JSON document: format tag, conventions, metrics and every eigenvalue (exact floats)."""
    return {
        "format": FORMAT,
        "layer": s.layer,
        "dim": s.dim,
        "n_samples": s.n_samples,
        "conventions": s.conventions(),
        "metrics": json_safe(s.metrics()),
        "eigenvalues": s.eigenvalues.tolist(),
        "uncentered_singular_values": s.uncentered_singular_values.tolist(),
        "mean": s.mean.tolist(),
        "variances": s.variances.tolist(),
        "extra": s.extra,
    } | ({} if s.unit_variances is None else {"unit_variances": s.unit_variances.tolist()}) | (
        {"stderr": json_safe(s.stderr)} if s.stderr else {})


def spectrum_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The Spectrum constructor's keyword arguments from a spectrum-v1 document; a clear error for anything else."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise CollapseProbeError(f"not a collapse-probe spectrum (expected format {FORMAT!r})")
    conventions = data["conventions"]
    return dict(
        eigenvalues=_as_float64_tensor(data["eigenvalues"]),
        uncentered_singular_values=_as_float64_tensor(data["uncentered_singular_values"]),
        mean=_as_float64_tensor(data["mean"]),
        variances=_as_float64_tensor(data["variances"]),
        n_samples=int(data["n_samples"]),
        center=bool(conventions["center"]),
        normalize=bool(conventions["normalize"]),
        ddof=int(conventions["ddof"]),
        dtype=conventions["dtype"],
        input_dtype=conventions["input_dtype"],
        layer=data.get("layer"),
        n_skipped_nonfinite=int(conventions.get("n_skipped_nonfinite", 0)),
        extra=dict(data.get("extra", {})),
        unit_variances=None if data.get("unit_variances") is None else _as_float64_tensor(data["unit_variances"]),
        stderr={name: math.nan if se is None else float(se) for name, se in data.get("stderr", {}).items()},
    )


def write_json_atomically(document: Any, path: str | Path) -> Path:
    """Write ``document`` as JSON to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(document, indent=1))  # no stale .tmp left by a crash


def to_frame(spectra: Mapping[str, Spectrum] | Spectrum) -> pd.DataFrame:
    """One row of metrics per layer (the WeightWatcher-style table), indexed by layer name.

    >>> from collapse_probe.results.spectrum import Spectrum
    >>> z = torch.randn(500, 4, dtype=torch.float64)
    >>> frame = to_frame({"a": Spectrum.from_embeddings(z), "b": Spectrum.from_embeddings(z[:, :2])})
    >>> list(frame.index), list(frame["dim"])
    (['a', 'b'], [4, 2])
    """
    if not isinstance(spectra, Mapping):  # one Spectrum
        spectra = {spectra.layer or "output": spectra}
    rows = [{**spectrum.metrics(), **spectrum.conventions(), "layer": name} for name, spectrum in spectra.items()]
    return pd.DataFrame(rows).set_index("layer")
