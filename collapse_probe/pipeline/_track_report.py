"""The files a person looks at: ``trajectory.csv`` / ``.json`` / ``.png``, ``spectra.png`` and
``report.html`` for ``track``, and the same ``report.html`` for ``spectrum`` and ``compare``.

Every file is written atomically (a reader, or a ``--watch`` run updating them, never shows half
of one). ``trajectory.json`` (format ``collapse-probe/trajectory-v1``)::

    settings     data, sample, layers and the probe's conventions
    checkpoints  [{path, name, step, step_origin, status, sha256, error, duplicate_of, load_report, seconds,
                  inputs_from_the_one_decode (null: not probed by this run)}]
    rows         one per checkpoint and layer: the columns of trajectory.csv
    gate         {max_drop, max_step_drop, latest_step, checks: [...], failed} or null
    timings      {decode_s, load_s, forward_s, n_probed}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collapse_probe._utils.files import atomic_path, atomic_write_bytes, atomic_write_text
from collapse_probe.pipeline.outputs import ProbeResult, nonfinite_notes, sample_limit_notes
from collapse_probe.results.plot import plot_layers, plot_spectra
from collapse_probe.results.report_html import Report, figure_png, render_report
from collapse_probe.results.spectrum import json_safe
from collapse_probe.results.trajectory import (
    Point,
    gate_lines,
    plot_spectra_by_step,
    plot_trajectory,
    trajectory_frame,
)

if TYPE_CHECKING:
    from collapse_probe.pipeline.track import Trajectory


def step_text(step: float) -> str:
    """``300``, ``2.5``, or ``?`` for a checkpoint without a step."""
    return "?" if step != step else f"{step:g}"

TRAJECTORY_FORMAT = "collapse-probe/trajectory-v1"


def trajectory_document(trajectory: Trajectory) -> dict[str, Any]:
    """The ``trajectory.json`` document (module docstring)."""
    checkpoints = [{"path": str(c.path), "name": c.path.name, "step": c.checkpoint.step, "step_origin": c.checkpoint.origin,
                    "status": c.status, "sha256": c.sha256, "error": c.error, "duplicate_of": c.duplicate_of,
                    "load_report": c.load_summary, "seconds": c.seconds, "inputs_from_the_one_decode": c.cached_input}
                   for c in trajectory.checkpoints]
    return json_safe({"format": TRAJECTORY_FORMAT, "settings": trajectory.settings, "checkpoints": checkpoints,
                      "rows": trajectory.table.to_dict(orient="records"), "gate": trajectory.gate,
                      "timings": trajectory.timings})


def _save_figure(figure: Any, path: Path) -> bytes:
    png = figure_png(figure)
    atomic_write_bytes(path, png)
    return png


def write_trajectory(trajectory: Trajectory, out: str | Path) -> dict[str, Path]:
    """Write trajectory.csv, trajectory.json, trajectory.png, spectra.png and report.html into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("trajectory.csv", "trajectory.json", "trajectory.png", "spectra.png",
                                            "report.html")}
    with atomic_path(paths["trajectory.csv"]) as temporary:
        trajectory.table.to_csv(temporary, index=False)
    atomic_write_text(paths["trajectory.json"], json.dumps(trajectory_document(trajectory), indent=1))
    points = _points(trajectory)
    figures = []
    if points:
        figures.append(("Each metric against step, a line per layer (bands: +-1 jackknife standard error with "
                        "--groups).", _save_figure(plot_trajectory(trajectory.table), paths["trajectory.png"])))
        figures.append(("Sorted covariance eigenvalues (log scale) of every checkpoint, coloured by step.",
                        _save_figure(plot_spectra_by_step(points), paths["spectra.png"])))
    else:
        del paths["trajectory.png"], paths["spectra.png"]
    gate = None if trajectory.gate is None else (gate_lines(trajectory.gate), trajectory.gate["failed"])
    notes = [f"{Path(p.label).name}: {note}" for p in points for note in
             [*nonfinite_notes(p.spectra), *sample_limit_notes(p.spectra, "images")]]
    report = Report(
        title=f"collapse-probe track: {len(points)} checkpoint(s) on {trajectory.settings.get('data')}",
        figures=figures, table=trajectory.table, settings=trajectory.settings, gate=gate, notes=notes,
        loads=[(f"step {step_text(c.checkpoint.step)}: {c.path}", c.load_summary) for c in trajectory.checkpoints
               if c.load_summary],
        failed=[(str(c.path), c.error or "") for c in trajectory.failed])
    atomic_write_text(paths["report.html"], render_report(report))
    return paths


def _points(trajectory: Trajectory) -> list[Point]:
    return [Point(str(c.path), c.checkpoint.step, c.result.spectra, c.result.roles)
            for c in trajectory.checkpoints if c.result is not None]


def write_probe_report(results: Sequence[ProbeResult], path: str | Path, *,
                       spectra: Mapping[str, Any] | None = None, roles: Mapping[str, str] | None = None,
                       title: str | None = None) -> Path:
    """``report.html`` for ``spectrum`` (one result) or ``compare``: the spectrum plot, the table,
    the load reports and the conventions. ``spectra``/``roles`` (compare): every source's spectra
    keyed ``"SOURCE:LAYER"``, drawn on one plot and tabled by source; default: each result's layers."""
    if spectra is None:
        points = [Point(_label(r, i), i, r.spectra, r.roles, {"name": Path(_label(r, i)).name})
                  for i, r in enumerate(results)]
        figure = plot_layers(points[0].spectra, points[0].roles) if len(points) == 1 else plot_spectra_by_step(points)
    else:
        by_source: dict[str, dict[str, Any]] = {}
        for key, s in spectra.items():
            source, _, layer = key.rpartition(":")
            by_source.setdefault(source, {})[layer] = s
        points = [Point(source, i, layers, {layer: (roles or {}).get(f"{source}:{layer}", "") for layer in layers},
                        {"name": source}) for i, (source, layers) in enumerate(by_source.items())]
        figure = plot_spectra(spectra, roles=roles).figure
    first = results[0].source if results else {}
    settings = {key: first[key] for key in ("data", "n_images", "n_texts", "image_size", "resize", "pool", "center",
                                            "normalize", "precision", "max_samples", "groups", "device") if key in first}
    notes = [f"{p.extra['name']}: {n}" for p in points
             for n in [*nonfinite_notes(p.spectra), *sample_limit_notes(p.spectra, "images")]]
    report = Report(
        title=title or f"collapse-probe: {', '.join(p.extra['name'] for p in points)}",
        figures=[("Sorted covariance eigenvalues (log scale), the paper's plot.", figure_png(figure))],
        table=trajectory_frame(points).drop(columns=["step"], errors="ignore"), settings=settings, notes=notes,
        loads=[(_label(r, i), r.report.summary()) for i, r in enumerate(results) if r.report is not None])
    return atomic_write_text(path, render_report(report))


def _label(result: ProbeResult, index: int) -> str:
    return str(result.source.get("checkpoint") or result.source.get("spectrum_file") or f"source {index}")
