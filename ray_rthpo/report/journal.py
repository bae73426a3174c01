"""The progress journal of a strategy: every reported epoch appended as one JSON line as it arrives,
so a killed driver loses nothing that was reported, and ``--resume`` reads it back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def append_row(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append ``row`` to the journal at ``path`` as one JSON line (numpy scalars as numbers), flushed."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=_jsonable) + "\n")
        fh.flush()


def end_cut_line(path: str | os.PathLike[str]) -> None:
    """End a last line cut short by a killed writer, so that the next row starts on a line of its own."""
    if not Path(path).is_file():
        return
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
            fh.write(b"\n")


def load_rows(path: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """Every row a journal holds, in the order written (one per reported epoch; a (trial, epoch) reported
    twice appears twice: :func:`ray_rthpo.report.selection.latest_reports` keeps its last report). A line
    cut short by a crash is skipped. A missing file gives no rows."""
    if path is None or not Path(path).is_file():
        return []
    rows: list[dict[str, Any]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the half-written last line of a killed driver
        if isinstance(row, dict):
            rows.append(row)
    return rows


__all__ = ["append_row", "end_cut_line", "load_rows"]
