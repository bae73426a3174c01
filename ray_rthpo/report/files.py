"""Writing results safely: every file is written to a temporary name and renamed into place, so a
crash never leaves a half-written table, CSV or plot that looks complete. A write that fails (a full
disk, a read-only folder) raises :class:`WriteError` naming the file and the fix, and leaves the file
as it was (no temporary left behind)."""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_rthpo.errors import RTHPOError

if TYPE_CHECKING:
    import pandas as pd

#: errno -> what the user can do about it.
_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (or choose an --output on another disk)",
    errno.EDQUOT: "the disk quota is used up: free some space (or choose an --output on another disk)",
    errno.EROFS: "the file system is read-only: choose a writable --output",
    errno.EACCES: "this user may not write there: choose a writable --output (or fix the folder's "
                  "permissions)",
    errno.EPERM: "this user may not write there: choose a writable --output (or fix the folder's "
                 "permissions)",
}


class WriteError(RTHPOError, OSError):
    """A results file could not be written (full disk, read-only or forbidden folder); the message names the
    file and the fix. Files written before are intact."""


def write_error(path: str | os.PathLike[str], err: OSError) -> WriteError:
    """The :class:`WriteError` for ``err`` (an OSError) raised while writing ``path``: one line, with the
    fix."""
    code = errno.errorcode.get(err.errno or 0, "")
    fix = _FIXES.get(err.errno or 0, "check that the folder exists and can be written")
    why = err.strerror or str(err) or type(err).__name__
    return WriteError(f"cannot write {str(path)!r}: {why}{f' ({code})' if code else ''}; {fix}, then run the "
                      "same command with --resume to continue. Files written before are intact.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Raises :class:`WriteError` (with the fix) when the disk is full or the folder cannot be written; ``path``
    then keeps its earlier content."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_history_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write a list of per-epoch metric dicts as CSV (columns: the union of keys, in first-seen order)."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def atomic_save_figure(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def write_trials(table: pd.DataFrame, out: Path) -> list[Path]:
    """Write every reported epoch as ``trials.csv`` and, when pyarrow can, ``trials.parquet``."""
    written = [atomic_write_text(out / "trials.csv", table.to_csv(index=False))]
    try:
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
    except (ImportError, ValueError, TypeError) as err:  # no pyarrow, or a column it cannot store
        print(f"note: trials.parquet not written ({type(err).__name__}: {err}); trials.csv has everything.")
    else:
        written.append(atomic_write_bytes(out / "trials.parquet", buf.getvalue()))
    return written
