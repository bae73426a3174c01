"""Text that fits a terminal: Markdown tables and bullets at most ``WIDTH`` columns wide (no Ray, no files).

A table that would be wider drops columns in the order given (the least needed first), then shortens the
cells of one free-text column with ``…``; the file (``summary.md``) keeps every column in full.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

#: The widest line the comparison prints.
WIDTH = 120
_ELLIPSIS = "…"


def table_width(widths: Sequence[int]) -> int:
    """Columns a padded Markdown table with cells of these widths takes: ``| a | b |``."""
    return sum(widths) + 3 * len(widths) + 1


def fit_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int = WIDTH,
              drop: Sequence[str] = (), shorten: str | None = None) -> list[str]:
    """The lines of a padded Markdown table of ``headers`` and ``rows`` (strings), each at most ``width``
    columns: while too wide, the columns named in ``drop`` are left out, in that order; then the cells of
    column ``shorten`` are cut (ending in ``…``, never below its header's width); then any cell still too
    wide is cut. Raises ValueError for a row of another length or a name in ``drop``/``shorten`` that is
    not a header."""
    headers = list(headers)
    table = [list(r) for r in rows]
    bad = next((r for r in table if len(r) != len(headers)), None)
    if bad is not None:
        raise ValueError(f"fit_table: a row has {len(bad)} cells but there are {len(headers)} headers "
                         f"({headers}); give every row one cell per header.")
    unknown = [name for name in [*drop, *([shorten] if shorten else [])] if name not in headers]
    if unknown:
        raise ValueError(f"fit_table: {unknown} are not headers of the table ({headers}); name columns by "
                         "their header.")
    if width < 10:
        raise ValueError(f"fit_table: width={width!r} is too narrow for a table; use at least 10 columns.")

    def widths() -> list[int]:
        return [max(len(headers[i]), *(len(r[i]) for r in table)) for i in range(len(headers))]

    for name in drop:
        if table_width(widths()) <= width:
            break
        i = headers.index(name)
        del headers[i]
        for r in table:
            del r[i]
    excess = table_width(widths()) - width
    if excess > 0 and shorten in headers:
        i = headers.index(shorten)
        limit = max(len(headers[i]), widths()[i] - excess, 2)
        for r in table:
            r[i] = _cut(r[i], limit)
    excess = table_width(widths()) - width
    while excess > 0:  # still too wide: cut the widest column (names included) a little at a time
        sizes = widths()
        i = max(range(len(sizes)), key=lambda k: sizes[k])
        if sizes[i] <= 2:
            break
        limit = sizes[i] - min(excess, sizes[i] - 2)
        headers[i] = _cut(headers[i], limit)
        for r in table:
            r[i] = _cut(r[i], limit)
        excess = table_width(widths()) - width
    sizes = widths()
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, sizes, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in sizes) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, sizes, strict=True)) + " |" for r in table]
    return lines


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(limit - 1, 1)] + _ELLIPSIS


def bullet(text: str, items: Sequence[str] = (), width: int = WIDTH) -> list[str]:
    """``- text`` followed by ``items`` (joined by ``, `` and never broken inside), wrapped to ``width``
    columns, continuation lines indented by two spaces."""
    tokens = [*text.split(), *(f"{item}," for item in items[:-1]), *items[-1:]]
    lines, line = [], "-"
    for token in tokens:
        if len(line) + 1 + len(token) > width and line.strip("- "):
            lines.append(line)
            line = " "
        line += " " + token
    lines.append(line)
    return lines


def paragraph(text: str, width: int = WIDTH) -> list[str]:
    """``text`` wrapped to ``width`` columns."""
    return textwrap.wrap(text, width=width, break_on_hyphens=False)


__all__ = ["WIDTH", "table_width", "fit_table", "bullet", "paragraph"]
