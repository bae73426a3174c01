"""The progress journal of a strategy: every reported epoch appended as one JSON line as it arrives,
so a killed driver loses nothing that was reported, and ``--resume`` reads it back.

A driver killed mid-write leaves its last line cut short: :func:`load_rows` skips it, and before a resumed
run appends again :func:`end_cut_line` removes it. Any other line that is not one JSON record (a hand edit,
a damaged disk) is refused by :func:`check_journal` with the line number and the fix, rather than
silently dropping a reported epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray_rthpo.errors import RTHPOError
from ray_rthpo.report.files import write_error


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def append_row(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append ``row`` to the journal at ``path`` as one JSON line (numpy scalars as numbers), flushed.
    Raises :class:`~ray_rthpo.report.files.WriteError` (with the fix) when the disk is full."""
    line = json.dumps(row, default=_jsonable) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
    except OSError as err:
        raise write_error(path, err) from None


def end_cut_line(path: str | os.PathLike[str]) -> None:
    """Remove a last line cut short by a killed writer (it holds no complete report), so that the next row
    starts on a line of its own and the journal stays one JSON record per line."""
    if not Path(path).is_file():
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


class JournalError(RTHPOError):
    """A progress journal holds a line that is not a reported epoch."""


def _cut_record(line: str) -> bool:
    """A record a killed writer cut short: it starts like one and never ends."""
    text = line.strip()
    return text.startswith("{") and not text.endswith("}")


def _parse(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """(rows, bad lines as (line number, text)) of a journal; the last line, if cut short, is neither."""
    rows: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and "trial_id" in row:
            rows.append(row)
        elif number == len(lines) and line.lstrip().startswith("{"):
            continue  # the half-written last line of a killed driver
        elif _cut_record(line):
            continue  # cut by a killed driver, then resumed by a release that kept such lines
        else:
            bad.append((number, line))
    return rows, bad


def check_journal(path: str | os.PathLike[str]) -> None:
    """Raise :class:`JournalError` (one line: the file, the line number, the text, the fix) when a line of
    the journal is neither a reported epoch nor a record cut short by a killed driver."""
    load_rows(path)


def load_rows(path: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """Every row a journal holds, in the order written (one per reported epoch; a (trial, epoch) reported
    twice appears twice: :func:`ray_rthpo.report.selection.latest_reports` keeps its last report). A line
    cut short by a crash is skipped; any other line that is not a report raises :class:`JournalError`
    naming the file, the line and the fix. A missing file gives no rows."""
    if path is None or not Path(path).is_file():
        return []
    rows, bad = _parse(Path(path))
    if bad:
        number, text = bad[0]
        shown = text.strip()[:60] + ("..." if len(text.strip()) > 60 else "")
        more = f" (and {len(bad) - 1} more such lines)" if len(bad) > 1 else ""
        raise JournalError(
            f"progress journal {str(path)!r} line {number} is not a reported epoch: {shown!r}{more}; every "
            "line is one JSON record written by rthpo. Delete that line (its epoch is then missing from the "
            "table) or restore the file, and run the same command with --resume again.")
    return rows


__all__ = ["append_row", "end_cut_line", "check_journal", "load_rows", "JournalError"]
