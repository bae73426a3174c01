"""Results are written atomically (temporary file, then rename): a crash mid-write never leaves a
half-written table or plot under the real name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_rthpo.report.files import atomic_save_figure, atomic_write_bytes, atomic_write_text, write_trials

SIZE = 64 * 2**20


@pytest.mark.slow  # a subprocess that imports torch and Ray: seconds each
def test_a_process_killed_mid_write_leaves_the_old_file_or_the_whole_new_one(tmp_path: Path) -> None:
    target = tmp_path / "trials.csv"
    target.write_text("old complete table\n")
    writer = textwrap.dedent(f"""
        import sys
        from ray_rthpo.report.files import atomic_write_bytes
        print("ready", flush=True)
        while True:
            atomic_write_bytes({str(target)!r}, b"x" * {SIZE})
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)  # a real crash, somewhere inside the write loop
    finally:
        proc.wait(timeout=30)
    size = target.stat().st_size
    assert target.read_text() == "old complete table\n" if size < SIZE else size == SIZE


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    atomic_write_text(target, "earlier summary\n")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]  # fails after the temp file exists
    assert target.read_text() == "earlier summary\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]

    class Broken:
        def savefig(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("the renderer crashed")

    png = tmp_path / "best_so_far.png"
    png.write_bytes(b"\x89PNG earlier")
    with pytest.raises(RuntimeError):
        atomic_save_figure(Broken(), png)
    assert png.read_bytes() == b"\x89PNG earlier" and len(list(tmp_path.iterdir())) == 2


def test_write_trials_replaces_both_tables_whole(tmp_path: Path) -> None:
    table = pd.DataFrame({"trial_id": ["a", "b"], "val/acc": [0.5, 0.7]})
    written = write_trials(table, tmp_path)
    assert tmp_path / "trials.csv" in written
    assert pd.read_csv(tmp_path / "trials.csv").equals(table)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_journal_skips_a_line_cut_short_and_keeps_the_last_report_of_each_epoch(tmp_path: Path) -> None:
    from ray_rthpo.report.journal import load_rows
    from ray_rthpo.report.selection import latest_reports

    journal = tmp_path / "s.jsonl"
    journal.write_text('{"trial_id": "a", "epoch": 1, "x": 1}\n{"trial_id": "a", "epoch": 2, "x": 2}\n'
                       '{"trial_id": "a", "epoch": 2, "x": 3}\n{"trial_id": "b", "ep')
    assert latest_reports(pd.DataFrame(load_rows(journal))).to_dict("records") == [
        {"trial_id": "a", "epoch": 1, "x": 1}, {"trial_id": "a", "epoch": 2, "x": 3}]
    assert load_rows(tmp_path / "missing.jsonl") == []


def test_the_journal_refuses_a_garbage_line_in_the_middle_and_tolerates_a_cut_one(tmp_path: Path) -> None:
    from ray_rthpo.report.journal import JournalError, end_cut_line, load_rows

    journal = tmp_path / "s.jsonl"
    good = '{"trial_id": "a", "epoch": 1}\n{"trial_id": "a", "epoch": 2}\n'
    journal.write_text(good + 'not json at all\n{"trial_id": "b", "epoch": 1}\n')
    with pytest.raises(JournalError, match=r"s\.jsonl' line 3 is not a reported epoch: 'not json at "
                                           r"all'.*Delete"):
        load_rows(journal)
    # a record cut by a killed driver, then rows appended by a resumed one: the cut record is skipped
    journal.write_text(good + '{"trial_id": "b", "ep\n{"trial_id": "b", "epoch": 1}\n')
    assert [r["trial_id"] for r in load_rows(journal)] == ["a", "a", "b"]
    # a resumed run removes a cut last line before it appends
    journal.write_text(good + '{"trial_id": "b", "ep')
    end_cut_line(journal)
    assert journal.read_text() == good


def test_a_journal_append_on_a_full_disk_says_which_file_and_the_fix(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import errno

    from ray_rthpo.report import journal as journal_module
    from ray_rthpo.report.files import WriteError

    path = tmp_path / "s.jsonl"
    journal_module.append_row(path, {"trial_id": "a", "epoch": 1})

    def full(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(journal_module, "open", full, raising=False)
    with pytest.raises(WriteError, match=r"cannot write '.*s\.jsonl': No space left on device "
                                         r"\(ENOSPC\); the disk is full.*--resume"):
        journal_module.append_row(path, {"trial_id": "a", "epoch": 2})
    assert path.read_text() == '{"trial_id": "a", "epoch": 1}\n'
