"""``report.html``: one self-contained file to share: the plots, the table, each checkpoint's load
report and the conventions behind every number.

Self-contained means: every image is inline (``data:image/png;base64``), the style is inline,
there is no script and no reference to any server, so the file reads the same offline, attached
to an e-mail or opened from a CI artefact. :func:`render_report` takes plain pieces (PNG bytes,
a DataFrame, texts), so ``track``, ``spectrum`` and ``compare`` write the same report.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

#: The table's columns (those the frame has), in this order; the CSV/JSON hold every metric.
TABLE_COLUMNS = ("name", "step", "layer", "role", "dim", "n_samples", "effective_rank", "rankme", "numerical_rank",
                 "collapsed_dims", "unobserved_dims", "sample_limited", "stable_rank", "alpha")
#: What each number means: the conventions section (docs/metrics.md says more).
CONVENTIONS = (
    ("eigenvalues", "of the covariance C = M2 / (N - ddof) of each layer's embeddings (centred; with --no-center "
                    "the second moment Z^T Z / (N - ddof)), float64, streamed; sorted largest first in the plots"),
    ("effective rank", "exp(entropy) of p_k = s_k / sum s, s_k = sqrt(eigenvalue_k) the singular values of the "
                       "centred embedding matrix (Roy & Vetterli 2007), over the max_rank = min(d, N - 1) "
                       "eigenvalues the samples can show"),
    ("RankMe", "exp(entropy) of p_k = s_k / ||s||_1 + 1e-7, s the singular values of the uncentred embedding "
               "matrix (Garrido et al. 2023)"),
    ("collapsed dims", "eigenvalues at or below rtol x the largest (rtol: the most variance rounding the "
                       "embeddings to their dtype can add), among the max_rank the samples show"),
    ("unobserved dims", "d - max_rank: dimensions N samples cannot show (N - 1 < d); neither collapsed nor healthy"),
    ("stable rank", "sum of the eigenvalues / the largest"),
    ("alpha", "power-law slope of eigenvalue_i ~ i^-alpha, least squares over ranks 1 .. numerical rank"),
    ("+- / bands", "delete-a-group jackknife standard error over --groups K groups (batch i -> group i mod K)"),
)


@dataclass(frozen=True)
class Report:
    """The pieces of one report. ``figures``: (caption, PNG bytes); ``loads``: (checkpoint, load
    report text); ``settings``: what was probed how (data, options); ``gate``: lines of the gate
    and whether it failed (None: no gate); ``notes``: warnings worth a reader's eye."""

    title: str
    figures: Sequence[tuple[str, bytes]]
    table: pd.DataFrame
    loads: Sequence[tuple[str, str]] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    gate: tuple[Sequence[str], bool] | None = None
    notes: Sequence[str] = ()
    failed: Sequence[tuple[str, str]] = ()


def figure_png(figure: Any, dpi: int = 110) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _cell(value: Any, se: Any = None) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        text = f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
        if isinstance(se, float) and not math.isnan(se):
            text += f" &plusmn; {se:.2f}"
        return text
    if isinstance(value, bool):
        return "yes" if value else ""
    return html.escape(str(value))


def table_html(frame: pd.DataFrame) -> str:
    """The table as HTML: :data:`TABLE_COLUMNS` the frame has, ``value +- se`` where it has ``_se``."""
    columns = [c for c in TABLE_COLUMNS if c in frame.columns]
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(f"<td>{_cell(row[c], row.get(f'{c}_se'))}</td>" for c in columns)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1250px;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .86em; margin: .5em 0; }
th, td { border: 1px solid #d4d4d4; padding: .25em .55em; text-align: right; }
td { white-space: nowrap; }
th { background: #f2f2f2; } td:nth-child(-n+4) { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; border: 1px solid #e4e4e4; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; white-space: pre-wrap; }
dt { font-weight: 600; } dd { margin: 0 0 .4em 1.4em; }
table.settings th { text-align: left; font-weight: 600; } table.settings td { text-align: left; }
.fail { color: #a40000; font-weight: 600; } .ok { color: #176b17; font-weight: 600; }
"""


def render_report(report: Report) -> str:
    """The whole HTML document (UTF-8 text): no script, no external reference."""
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    shown = {k: v for k, v in report.settings.items() if v is not None}
    if shown:
        items = "".join(f"<tr><th>{html.escape(str(k).replace('_', ' '))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in shown.items())
        parts.append(f'<table class="settings">{items}</table>')
    if report.gate is not None:
        lines, failed = report.gate
        verdict = '<p class="fail">gate: FAIL</p>' if failed else '<p class="ok">gate: pass</p>'
        parts.append("<h2>Gate</h2>" + verdict + "<pre>" + html.escape("\n".join(lines)) + "</pre>")
    if report.failed:
        rows = "".join(f"<li><code>{html.escape(p)}</code>: {html.escape(e)}</li>" for p, e in report.failed)
        parts.append(f'<h2 class="fail">Checkpoints that could not be probed</h2><ul>{rows}</ul>')
    if report.notes:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("<h2>Plots</h2>")
    for caption, png in report.figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Table</h2>" + table_html(report.table))
    if report.loads:
        parts.append("<h2>Load reports</h2>")
        parts.extend(f"<h3>{html.escape(label)}</h3><pre>{html.escape(text)}</pre>" for label, text in report.loads)
    conventions = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in CONVENTIONS)
    parts.append(f"<h2>Conventions</h2><dl>{conventions}</dl>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
