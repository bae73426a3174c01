"""A killed driver: ``rthpo compare`` killed with SIGKILL mid-experiment, then run again with ``--resume``,
finishes without rerunning what had finished. End to end in a subprocess with its own local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tune_helpers import CLI, ETA_SPACE, recorded_statuses, tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.report.selection import compute_spent, latest_reports

pytestmark = pytest.mark.ray

EPOCHS = 3


def journal_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def all_journal_rows(out: Path) -> list[dict]:
    """Every run's journal rows (the runs share one Tune experiment, whose snapshot names them all)."""
    return [row for path in sorted((out / "progress").glob("*.jsonl")) for row in journal_rows(path)]


def finished_trials(rows: list[dict]) -> set[str]:
    return {r["trial_id"] for r in rows if r.get(M.EPOCH) == EPOCHS}


def recorded_finished(experiment: Path) -> set[str]:
    """Trial ids that Tune's newest experiment snapshot in ``experiment`` records as TERMINATED."""
    return {trial for trial, status in recorded_statuses(experiment).items() if status == "TERMINATED"}


@pytest.mark.parametrize("command", ["compare", "run"])
def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path: Path, ray_env: dict[str, str],
                                                                   command: str) -> None:
    """``rthpo compare`` (two strategies) and ``rthpo run --strategy skopt`` (one), each killed
    mid-experiment."""
    config = tmp_path / "killme.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "skopt", "method": "exp_decay", "searcher": "skopt", "num_samples": 6, "space": ETA_SPACE,
         "searcher_options": {"n_initial_points": 2}},
        {"name": "grid", "method": "exp_decay", "searcher": "grid",
         "space": {"lr.eta0": {"grid": [0.1, 0.3]}}},
        budget_s=1000.0)))
    out = tmp_path / "out"
    args = [sys.executable, "-c", CLI, command, str(config), "--output", str(out), "--num-cpus", "2",
            "--set", f"train.epochs={EPOCHS}", "--set", "model.hidden=[16]",
            *(["--strategy", "skopt"] if command == "run" else [])]
    journal = out / "progress" / "skopt.jsonl"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(args, env=ray_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        # both strategies run in one Tune experiment ("sequence"), skopt's run first
        sequence = out / "ray" / "sequence"
        while time.time() < deadline and proc.poll() is None and not recorded_finished(sequence):
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        recorded = recorded_finished(out / "ray" / "sequence")
        assert recorded, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-experiment
        proc.wait(timeout=30)
        log.close()
    # the grid run may have begun beside skopt's last trials
    done_before = finished_trials(all_journal_rows(out))
    assert not (out / "summary.md").exists()

    resumed = subprocess.Popen([*args, "--resume"], env=ray_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed, _ = resumed.communicate(timeout=120)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
        try:
            os.killpg(resumed.pid, signal.SIGKILL)  # Ray processes the driver left behind, if any
        except ProcessLookupError:
            pass
    (tmp_path / "second.log").write_text(printed)
    assert resumed.returncode == 0, printed[-4000:]
    assert "resuming the Tune experiment" in printed or "not rerun" in printed, printed[-3000:]
    # every restored trial continued from the checkpoint Tune's saved state names (none deleted under it)
    assert "trial error" not in printed and "FAILED" not in printed, printed[-3000:]
    assert (out / "summary.md").is_file() and (out / "best_so_far.png").is_file()
    after = all_journal_rows(out)
    assert recorded <= done_before
    for trial_id in done_before:  # a finished trial is never rerun: each epoch reported once. (A trial that
        # finished after Tune's last experiment snapshot, every 2 s, may redo epochs from its last
        # recorded checkpoint; the journal keeps one row per epoch.)
        epochs = [r[M.EPOCH] for r in after if r["trial_id"] == trial_id]
        assert sorted(set(epochs)) == list(range(1, EPOCHS + 1)), (trial_id, epochs)
        if trial_id in recorded:
            assert sorted(epochs) == list(range(1, EPOCHS + 1)), (trial_id, epochs)
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["strategy"]) == ({"skopt", "grid"} if command == "compare" else {"skopt"})
    assert trials.duplicated(["trial_id", M.EPOCH]).sum() == 0
    skopt = trials[trials["strategy"] == "skopt"]
    assert done_before <= set(trials["trial_id"])
    assert skopt["trial_id"].nunique() <= 6  # the searcher resumed its 6 samples, it did not start 6 more
    done = json.loads((out / "progress" / "skopt.done.json").read_text())
    assert done["errors"] == []
    # the budget counted each (trial, epoch) once, the interrupted run's journaled epochs included
    journaled = latest_reports(pd.DataFrame(journal_rows(journal)))
    assert done["compute_s"] == pytest.approx(compute_spent(journaled), abs=1e-6)
    if command == "compare":
        assert trials[trials["strategy"] == "grid"]["trial_id"].nunique() == 2


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path, ray_env: dict[str, str]) -> None:
    config = tmp_path / "ctrlc.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "rand", "method": "exp_decay", "searcher": "random", "num_samples": 8, "space": ETA_SPACE},
        budget_s=1000.0)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "compare", str(config), "--output", str(out),
                             "--num-cpus", "2", "--set", f"train.epochs={EPOCHS}", "--set",
                             "model.hidden=[16]"],
                            env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    journal = out / "progress" / "rand.jsonl"
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not journal_rows(journal):
            time.sleep(0.1)
        assert proc.poll() is None and journal_rows(journal)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        printed, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray processes left behind, if any
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"Continue with: rthpo compare {config}" in err and f"--output {out} --resume" in err, err[-3000:]
    assert journal_rows(journal) and not (out / "summary.md").exists()
