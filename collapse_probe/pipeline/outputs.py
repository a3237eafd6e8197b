"""Spectrum reports: the files, the table and the embeddings files the CLI commands read and write.

Files written by :func:`write_outputs` (``collapse-probe spectrum --out DIR``):

* ``spectrum.json``: format ``collapse-probe/spectra-v1``: ``{"layers": {name: Spectrum.to_dict()},
  "roles": {name: role}, "source": {...}}``; :func:`load_spectra` reads it back, and also a single
  :meth:`Spectrum.save` file;
* ``spectrum.csv``: :func:`collapse_probe.to_frame`, one row per layer;
* ``spectrum.png``: :func:`collapse_probe.results.plot.plot_layers`, one panel per layer, titled with its role.

Every file is written atomically (:mod:`collapse_probe._utils.files`: a temporary file in the same
folder, then ``os.replace``): a run killed while writing leaves the previous file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collapse_probe._utils.files import atomic_path, atomic_write_text
from collapse_probe.data.images import describe_error
from collapse_probe.errors import CollapseProbeError
from collapse_probe.models.loading import LoadReport
from collapse_probe.results.classes import ClassSpectra
from collapse_probe.results.plot import plot_layers, plot_spectra
from collapse_probe.results.spectrum import FORMAT as SPECTRUM_FORMAT
from collapse_probe.results.spectrum import Spectrum, json_safe, read_json_file, to_frame
from collapse_probe.results.table import render_table

SPECTRA_FORMAT = "collapse-probe/spectra-v1"
OUTPUT_NAME = "output"
#: The columns of the printed table: (metrics key, header).
#: ``collapsed`` is shown as ``collapsed_dims/max_rank`` (of the dimensions the samples show);
#: ``unobserved`` counts the dimensions N samples cannot show (``d - max_rank``, 0 when N > d).
TABLE_COLUMNS = (("dim", "dim"), ("n_samples", "N"), ("effective_rank", "eff.rank"), ("rankme", "RankMe"),
                 ("collapsed_dims", "collapsed"), ("unobserved_dims", "unobserved"), ("stable_rank", "stable rank"),
                 ("alpha", "alpha"))


@dataclass(frozen=True)
class ProbeResult:
    """Spectra by layer name, each layer's role, and where they came from."""

    spectra: dict[str, Spectrum]
    roles: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    report: LoadReport | None = None
    classes: dict[str, ClassSpectra] = field(default_factory=dict)  # --per-class / --class-scatter, by layer


def write_comparison(spectra: Mapping[str, Spectrum], out: str | Path, *, relative: bool = False,
                     roles: Mapping[str, str] | None = None,
                     sources: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``compare.png`` (one overlay plot), ``compare.csv`` and ``compare.json`` into ``out``, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / "compare.png", "csv": out / "compare.csv", "json": out / "compare.json"}
    ax = plot_spectra(spectra, relative=relative, roles=roles)
    _save_figure(ax.figure, paths["png"])
    _save_csv(spectra, paths["csv"])
    document = {"format": SPECTRA_FORMAT, "layers": {n: s.to_dict() for n, s in spectra.items()},
                "roles": dict(roles or {}), "source": {"checkpoints": dict(sources or {})}}
    atomic_write_text(paths["json"], json.dumps(json_safe(document), indent=1))
    return paths


def _save_figure(figure: Any, path: Path) -> None:
    """``figure.savefig`` atomically; the format from ``path``'s suffix (the temporary name has none)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format=path.suffix.lstrip(".").lower() or "png")


def _save_csv(spectra: Mapping[str, Spectrum], path: Path) -> None:
    """:func:`to_frame` as CSV, atomically."""
    with atomic_path(path) as temporary:
        to_frame(spectra).to_csv(temporary)


# ----------------------------------------------------------------------------- files


def spectra_document(result: ProbeResult) -> dict[str, Any]:
    """The JSON document of a :class:`ProbeResult` (format ``collapse-probe/spectra-v1``)."""
    document = {"format": SPECTRA_FORMAT, "layers": {n: s.to_dict() for n, s in result.spectra.items()},
                "roles": result.roles, "source": result.source}
    if result.classes:
        document["classes"] = {n: {k: v for k, v in c.to_dict().items() if k != "pooled"}
                               for n, c in result.classes.items()}
    return document


def json_report(result: ProbeResult) -> str:
    """:func:`spectra_document` plus a ``metrics`` block per layer, as strict JSON (NaN -> null)."""
    document = spectra_document(result) | {"metrics": {n: s.metrics() for n, s in result.spectra.items()}}
    return json.dumps(json_safe(document))


def load_spectra(path: str | Path) -> ProbeResult:
    """Read ``spectrum.json`` (spectra-v1) or a single :meth:`Spectrum.save` file."""
    path = Path(path)
    document = read_json_file(path)
    if isinstance(document, dict) and document.get("format") == SPECTRUM_FORMAT:
        single = Spectrum.from_dict(document)
        return ProbeResult({single.layer or OUTPUT_NAME: single}, source={"spectrum_file": str(path)})
    if not isinstance(document, dict) or document.get("format") != SPECTRA_FORMAT:
        raise CollapseProbeError(f"{path}: not a collapse-probe spectrum file (format {SPECTRA_FORMAT!r})")
    spectra = {name: Spectrum.from_dict(data) for name, data in document["layers"].items()}
    return ProbeResult(spectra, dict(document.get("roles", {})), {**document.get("source", {}), "spectrum_file": str(path)})


def is_spectrum_file(path: str | Path) -> bool:
    """True for a ``.json`` path (spectrum files are JSON; checkpoints never are)."""
    return Path(path).suffix.lower() == ".json"


def write_outputs(result: ProbeResult, out: str | Path, *, stem: str = "spectrum") -> dict[str, Path]:
    """Write ``{stem}.json``, ``{stem}.csv`` and ``{stem}.png`` into ``out``, each atomically; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(json_safe(spectra_document(result)), indent=1))
    _save_csv(result.spectra, paths["csv"])
    write_plot(result.spectra, paths["png"], result.roles)
    return paths


def write_plot(spectra: Mapping[str, Spectrum], path: str | Path, roles: Mapping[str, str] | None = None) -> Path:
    """The paper's sorted log-spectrum plot, one panel per layer titled with its role, saved atomically to ``path``."""
    _save_figure(plot_layers(spectra, roles), Path(path))
    return Path(path)


def finite_metrics(s: Spectrum) -> dict[str, Any]:
    """``s.metrics()`` with NaN/inf as None, ready for strict JSON."""
    return json_safe(s.metrics())




def sample_limit_notes(spectra: Mapping[str, Spectrum], sample_name: str = "samples") -> list[str]:
    """One line per sample-limited layer: how many dimensions the samples cannot show, and what to do.

    >>> few = Spectrum.from_embeddings(torch.randn(9, 16, dtype=torch.float64))
    >>> sample_limit_notes({"fc": few}, "images")
    ['fc: 9 images show at most 8 of its 16 dimensions; the other 8 are unobserved (not counted as collapsed): use at least 17 images to see them all']
    """
    return [
        f"{name}: {s.n_samples} {sample_name} show at most {s.max_rank} of its {s.dim} dimensions; the other "
        f"{s.unobserved_dims} are unobserved (not counted as collapsed): use at least {s.samples_needed} "
        f"{sample_name} to see them all"
        for name, s in spectra.items() if s.sample_limited
    ]


def nonfinite_notes(spectra: Mapping[str, Spectrum]) -> list[str]:
    """One line per layer whose NaN/Inf rows were dropped (``skip_nonfinite``): how many.

    >>> z = torch.randn(20, 3, dtype=torch.float64); z[0, 1] = float("nan")
    >>> nonfinite_notes({"fc": Spectrum.from_embeddings(z, skip_nonfinite=True)})
    ['fc: dropped 1 embeddings holding NaN/Inf (--skip-nonfinite); the spectrum is of the other 19']
    """
    return [f"{name}: dropped {s.n_skipped_nonfinite} embeddings holding NaN/Inf (--skip-nonfinite); "
            f"the spectrum is of the other {s.n_samples}"
            for name, s in spectra.items() if s.n_skipped_nonfinite]


def format_table(spectra: Mapping[str, Spectrum], roles: Mapping[str, str] | None = None) -> str:
    """One line per layer: name, role, dim, N, effective rank, RankMe, collapsed, unobserved, stable rank, alpha.

    ``collapsed`` is ``collapsed_dims/max_rank``: collapsed among the dimensions the samples show;
    ``unobserved`` the ``d - max_rank`` dimensions N samples cannot show (N - 1 < d). A metric
    with a standard error (``Spectrum.stderr``: probed with groups) shows as ``value +- se``.

    >>> z = torch.randn(400, 4, dtype=torch.float64)
    >>> print(format_table({"fc": Spectrum.from_embeddings(z)}, {"fc": "representation"}))  # doctest: +ELLIPSIS
    layer  role            dim    N  eff.rank  RankMe  collapsed  unobserved  stable rank  alpha
    fc     representation    4  400  ...        0/4           0  ...
    """
    roles = roles or {}
    rows = []
    for name, s in spectra.items():
        m = s.metrics()
        cells = [name, roles.get(name, "")]
        for key, _ in TABLE_COLUMNS:
            value = m[key]
            if key == "collapsed_dims":
                cells.append(f"{value}/{s.max_rank}")
            elif isinstance(value, float) and key in s.stderr:  # probed with groups: value +- jackknife SE
                cells.append("nan" if math.isnan(value) else f"{value:.2f} +- {s.stderr[key]:.2f}")
            elif isinstance(value, float):
                cells.append("nan" if math.isnan(value) else f"{value:.2f}")
            else:
                cells.append(str(value))
        rows.append(cells)
    return render_table(["layer", "role", *(header for _, header in TABLE_COLUMNS)], rows, left=2)


# ----------------------------------------------------------------------------- embeddings files


def load_embeddings(path: str | Path, key: str | None = None) -> torch.Tensor:
    """An (N, d) array from ``.npy``, ``.pt``/``.pth`` (weights_only) or ``.safetensors``.

    A file holding several tensors needs ``key`` (unless one is called ``embeddings``): the
    error lists what the file holds. A model's state_dict is refused that way, not read as the
    one 2-D weight it happens to hold.
    """
    path = Path(path)
    if not path.is_file():
        raise CollapseProbeError(f"embeddings file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            obj: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        elif suffix in (".pt", ".pth", ".bin"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CollapseProbeError(f"{path}: unsupported embeddings file; use .npy, .pt or .safetensors")
    except CollapseProbeError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure is bad input
        raise CollapseProbeError(f"{path}: cannot read embeddings ({describe_error(error)})") from None
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if key is not None:
            if key not in tensors:
                raise CollapseProbeError(f"{path}: no tensor {key!r}; it holds {', '.join(tensors)}")
            obj = tensors[key]
        elif "embeddings" in tensors:
            obj = tensors["embeddings"]
        elif len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            raise CollapseProbeError(_several_tensors(path, tensors))
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise CollapseProbeError(f"{path}: expected an (N, d) array, got {shape}")
    if not obj.is_floating_point():
        obj = obj.double()
    return obj


def _several_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> str:
    """The one-line refusal of an ambiguous embeddings file: what it holds and what to do."""
    if not tensors:
        return f"{path} holds no tensors"
    shown = [f"{name} {tuple(t.shape)}" for name, t in list(tensors.items())[:6]]
    listing = ", ".join(shown) + (f", ... ({len(tensors)} in all)" if len(tensors) > 6 else "")
    message = f"{path} holds {len(tensors)} tensors ({listing}): name the (N, d) embeddings with --key"
    if any(name.endswith((".weight", ".bias", ".running_mean")) for name in tensors):
        message += f"; this looks like a model's weights: probe the model with `collapse-probe spectrum {path} --arch NAME --data DIR`"
    return message
