"""The one table renderer: rows of cells -> aligned text (the terminal) or Markdown (CI summaries).

Every table the tool prints goes through :func:`render_table`: the spectrum table
(``format_table``), LiDAR's, and the ``check`` step summary.
"""

from __future__ import annotations

from collections.abc import Sequence


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1,
                 style: str = "text") -> str:
    """``header`` and ``rows`` as one table.

    ``style="text"``: columns separated by two spaces, the first ``left`` columns left-aligned and
    the rest right-aligned (numbers), trailing spaces stripped. ``style="markdown"``: a GitHub
    Markdown table with the same alignment (``|`` in a cell escaped).

    >>> print(render_table(["layer", "dim"], [["fc", 512], ["avgpool", 2048]]))
    layer     dim
    fc        512
    avgpool  2048
    >>> print(render_table(["layer", "dim"], [["fc", 512]], style="markdown"))
    | layer | dim |
    |:--|--:|
    | fc | 512 |
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    if any(len(row) != len(header) for row in cells):
        raise ValueError("every row needs one cell per header column")
    if style == "markdown":
        align = ["|" + "|".join(":--" if i < left else "--:" for i in range(len(header))) + "|"]
        lines = ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in cells]
        return "\n".join(lines[:1] + align + lines[1:])
    if style != "text":
        raise ValueError(f"unknown table style {style!r}; use text or markdown")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip() for row in cells)
