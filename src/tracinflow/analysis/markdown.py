"""Markdown the workflow writes (``cross_version/summary.md``, ``study/summary.md``,
``evaluation/summary.md``): tables whose cells may hold file, class and version names, escaped so
that a name is shown as it is and never becomes markup, HTML or a broken row in any renderer,
sanitising or not. One table layout for all of them: a frame with its cells formatted here
(:func:`markdown_table`), or cells a caller wrote itself (:func:`markdown_table_from_cells`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Entities for what would be HTML, an entity or a code span; backslash escapes (CommonMark's, for
# ASCII punctuation) for emphasis, links and strikethrough; "\|" is GFM's pipe inside a table cell.
_ESCAPES = {
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;", '"': "&quot;",
    "|": "\\|", "\\": "\\\\", "*": "\\*", "[": "\\[", "]": "\\]", "~": "\\~",
}  # fmt: skip
_CONTROLS = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def markdown_text(value) -> str:
    """``value`` as markdown that renders as its own text, on one line: HTML and code spans
    entity-escaped, emphasis, links and ``|`` backslash-escaped (``_`` only where it could start or
    end emphasis: ``self_influence`` stays as it is), and a newline or tab shown as ``\\n``,
    ``\\t`` (other control characters as ``\\xNN``)."""
    text = str(value)
    out = []
    for at, char in enumerate(text):
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char == "_":
            inside_word = (
                0 < at < len(text) - 1 and text[at - 1].isalnum() and text[at + 1].isalnum()
            )
            out.append("_" if inside_word else "\\_")
        elif char in _CONTROLS:
            out.append(_CONTROLS[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def markdown_cell(value) -> str:
    """One table cell: missing values empty, booleans yes/no, floats to 4 significant digits,
    text through :func:`markdown_text`."""
    if value is None or (
        not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)
    ):
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return markdown_text(value)


def markdown_table_from_cells(header, rows, align=None) -> str:
    """A GitHub markdown table of cells already written as markdown (escaped, formatted, possibly
    emphasised): the ``header`` line, the rule (``---`` per column, or ``align``'s, e.g. ``---:``
    to right-align), one line per row of ``rows``. No newline at the end."""
    header = list(header)
    align = list(align) if align is not None else ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    """The frame as a GitHub markdown table: a header, a rule, one line per row (cells by
    :func:`markdown_cell`, numeric columns right-aligned)."""
    align = [
        "---:"
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        else "---"
        for c in frame.columns
    ]
    return markdown_table_from_cells(
        [markdown_cell(str(c)) for c in frame.columns],
        ([markdown_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)),
        align,
    )
