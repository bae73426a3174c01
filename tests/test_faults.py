"""Faults while a comparison runs (issue #14), on a real local Ray: a worker killer that SIGKILLs running
trial workers, a driver killed mid-experiment and resumed with ``--resume`` under the same killer, and the
resume path fed a journal with repeated epochs, a hand-edited trials.csv and a corrupt trial checkpoint.

What must hold after the faults: every trial ends (finished, diverged, or stopped by the budget), none
errored (``max_failures`` is set high); the grid strategy's per-trial metrics equal a clean
``run_training`` of the same configs exactly (CPU, same seeds); each (trial, epoch) is counted once in the
budget (the stopper's ``compute_s`` in the done marker equals the de-duplicated journal) and appears once
in trials.csv; the budget stops each budget-bound strategy within one epoch per running trial; summary.md
is written once, complete. The measured numbers (kills, retries, compute redone) are printed as one
``FAULT-NUMBERS`` JSON line per test (``pytest -s``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from script_runner import run_isolated, stop_group
from tune_helpers import CLI, WorkerKiller, recorded_statuses, tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.experiment.config import ExperimentConfig, experiment_from_dict
from ray_rthpo.report.journal import load_rows
from ray_rthpo.report.selection import compute_spent, latest_reports
from ray_rthpo.training.trainer import run_training
from ray_rthpo.tune.checkpoints import restorable_checkpoints

pytestmark = pytest.mark.ray

EPOCHS = 8
BUDGET_S = 3.0
GRID = [0.05, 0.2, 0.5]
STRATEGIES = ("grid", "skopt", "rthpo")
#: Metrics a clean run must reproduce exactly.
EXACT = (M.STEP, M.TRAIN_LOSS, M.TRAIN_ACC, M.VAL_LOSS, M.VAL_ACC, M.TEST_LOSS, M.TEST_ACC, M.LR)


def chaos_experiment() -> dict[str, Any]:
    """Three strategies on digits: a grid (finishes inside the budget), skopt's GP and RT-HPO by random search
    (both stopped by the budget: their 200 samples are far more than its 3 s hold, even where an epoch takes
    10 ms, as on a fast machine, where 40 ended 2.97 s short of it); retries set high."""
    experiment = tiny_experiment(
        {"name": "grid", "method": "exp_decay", "searcher": "grid", "space": {"lr.eta0": {"grid": GRID}}},
        {"name": "skopt", "method": "exp_decay", "searcher": "skopt", "num_samples": 200,
         "space": {"lr.eta0": {"loguniform": [1.0e-2, 1.0]}}, "searcher_options": {"n_initial_points": 3}},
        {"name": "rthpo", "method": "rthpo", "searcher": "random", "num_samples": 200,
         "space": {"lr.eta0": {"loguniform": [1.0e-2, 1.0]}, "lr.beta": {"loguniform": [1.0e-5, 1.0e-2]}}},
        budget_s=BUDGET_S, max_failures=50)
    experiment["base"] = {**experiment["base"], "train": {"epochs": EPOCHS, "seed": 0}}
    return experiment


def check_comparison(out: Path, exp: ExperimentConfig) -> dict[str, Any]:
    """The checks every faulty comparison must pass; returns the numbers it measured."""
    trials = pd.read_csv(out / "trials.csv")
    assert not trials.duplicated(["strategy", "trial_id", M.EPOCH]).any()  # each (trial, epoch) once
    assert set(trials["strategy"]) == set(STRATEGIES)
    summary = (out / "summary.md").read_text()
    for name in STRATEGIES:  # complete: a row per strategy in both tables
        assert sum(line.startswith(f"| {name} |") for line in summary.splitlines()) == 2, (name, summary)
    numbers: dict[str, Any] = {"retries": 0, "repeated_reports": 0, "redone_s": 0.0,
                               "restored_from_checkpoint": 0}
    for name in STRATEGIES:
        rows = load_rows(out / "progress" / f"{name}.jsonl")
        table = latest_reports(pd.DataFrame(rows))
        done = json.loads((out / "progress" / f"{name}.done.json").read_text())
        assert done["errors"] == [], (name, done["errors"])  # no trial errored beyond max_failures
        # the budget stopper counted each (trial, epoch) once, repeats included in the journal or not
        assert done["compute_s"] == pytest.approx(compute_spent(table), abs=1e-6), name
        assert done["reported_s"] == pytest.approx(sum(r[M.EPOCH_SECONDS] for r in rows), abs=1e-6), name
        assert len(trials[trials["strategy"] == name]) == len(table), name
        for trial_id, group in table.groupby("trial_id"):  # no epoch lost: 1..last, each once
            assert sorted(group[M.EPOCH]) == list(range(1, group[M.EPOCH].max() + 1)), (name, trial_id)
        last = table.sort_values(M.EPOCH).groupby("trial_id").last()
        ended = last[M.STATUS].isin([M.STATUS_FINISHED, M.STATUS_DIVERGED])
        if name == "grid":  # inside the budget: every trial ran to the end
            assert len(last) == len(GRID) and ended.all() and (last[M.EPOCH] == EPOCHS).all(), last
            assert done["compute_s"] < BUDGET_S
        else:  # stopped by the budget, within one epoch per running trial (max_concurrent = 2)
            assert (ended | (last[M.EPOCH] < EPOCHS)).all()
            overshoot = exp.max_concurrent * table[M.EPOCH_SECONDS].max()
            assert BUDGET_S <= done["compute_s"] <= BUDGET_S + overshoot
        numbers["retries"] += done["retries"]
        numbers["repeated_reports"] += done["repeated_reports"]
        numbers["redone_s"] += done["reported_s"] - done["compute_s"]
        numbers["restored_from_checkpoint"] += sum(
            1 for r in rows if r.get("iterations_since_restore") == 1 and r[M.EPOCH] > 1)
        numbers[f"{name}_trials"] = len(last)
        numbers[f"{name}_compute_s"] = round(done["compute_s"], 3)
        numbers[f"{name}_wall_s"] = round(done["wall_s"], 1)
    check_grid_is_exact(pd.DataFrame(load_rows(out / "progress" / "grid.jsonl")), exp)
    numbers["redone_s"] = round(numbers["redone_s"], 3)
    return numbers


def check_grid_is_exact(rows: pd.DataFrame, exp: ExperimentConfig) -> None:
    """Every report of every grid trial (repeats included) equals a clean run_training of its config."""
    for eta0, group in rows.groupby("config/lr.eta0"):
        clean = run_training(exp.run_config("grid").replace(**{"lr.eta0": float(eta0)}))
        assert group["trial_id"].nunique() == 1
        for record in group.to_dict("records"):
            expected = clean[record[M.EPOCH] - 1]
            for key in EXACT:
                assert record[key] == expected[key], (eta0, record[M.EPOCH], key, record[key], expected[key])


def test_a_comparison_under_a_worker_killer(ray_local: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from ray_rthpo.tune import compare

    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("the session's Ray is an outside cluster: its trial workers are not this "
                    "process's to kill")
    exp = experiment_from_dict(chaos_experiment(), name="chaos")
    out = tmp_path / "out"
    written: Counter[str] = Counter()
    real_write = compare.atomic_write_text

    def counting_write(path: Any, text: str) -> Path:
        written[Path(path).name] += 1
        return real_write(path, text)

    monkeypatch.setattr(compare, "atomic_write_text", counting_write)
    lines: list[str] = []
    start = time.time()
    # this process started the session's Ray: its trial workers descend from it
    with WorkerKiller(os.getpid(), max_kills=4, interval_s=3.0, patience_s=20.0, journals=out / "progress",
                      epochs=EPOCHS) as killer:
        compare.run_comparison(exp, out, progress=lines.append)
    wall = time.time() - start
    printed = "\n".join(lines)
    assert "FAILED" not in printed and "trial error" not in printed, printed[-3000:]
    assert written["summary.md"] == 1  # written once, at the end
    numbers = check_comparison(out, exp)
    assert len(killer.kills) >= 2, (killer.kills, printed[-3000:])
    assert numbers["retries"] >= 1, numbers  # Tune restarted the killed trials
    # a worker killed mid-run: its trial resumed from a checkpoint
    if any(trial for _, _, trial in killer.kills):
        assert numbers["restored_from_checkpoint"] >= 1, numbers
    print("FAULT-NUMBERS", json.dumps({"test": "worker killer", "kills": len(killer.kills),
                                       "kills_mid_run": sum(1 for k in killer.kills if k[2]), **numbers,
                                       "wall_s": round(wall, 1)}))


# ------------------------------------------------------------------------------ a killed driver, resumed


def latest_by_trial(journal: Path) -> dict[str, dict[str, Any]]:
    return {row["trial_id"]: row for row in load_rows(journal)} if journal.is_file() else {}


def test_a_killed_driver_resumes_under_a_worker_killer(tmp_path: Path, ray_env: dict[str, str]) -> None:
    """``rthpo compare`` under the worker killer, its driver SIGKILLed while the grid runs, then (after the
    journal got every reported epoch twice, trials.csv was edited by hand and a trial checkpoint was cut)
    ``--resume``: refused once for the cut checkpoint, then continued under the killer to a complete
    result."""
    config = tmp_path / "chaos.yaml"
    config.write_text(yaml.safe_dump(chaos_experiment()))
    exp = experiment_from_dict(chaos_experiment(), name="chaos")
    out = tmp_path / "out"
    args = [sys.executable, "-c", CLI, "compare", str(config), "--output", str(out), "--num-cpus", "2"]
    journal = out / "progress" / "grid.jsonl"
    # Tune's snapshot every 0.1 s (the CLI's default is 2 s): the grid's trials last about a second on a fast
    # machine, and the kill below waits for the snapshot to record one of them finished
    ray_env = {**ray_env, "TUNE_GLOBAL_CHECKPOINT_S": "0.1"}
    start = time.time()
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(args, env=ray_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with WorkerKiller(proc.pid, max_kills=2, interval_s=3.0, patience_s=20.0, journals=out / "progress",
                          epochs=EPOCHS) as first_killer:
            # every run shares one Tune experiment ("sequence"), the grid's run first: the first trial Tune's
            # snapshot records as TERMINATED is a grid trial. Killed then, at once (a fast machine ends the
            # grid within seconds); better still while another grid trial is mid-run.
            deadline, fallback = time.time() + 300, None
            grid_marker = out / "progress" / "grid.done.json"
            while time.time() < deadline and proc.poll() is None and not grid_marker.exists():
                recorded = recorded_statuses(out / "ray" / "sequence")
                if "TERMINATED" in recorded.values():
                    fallback = fallback or time.time() + 0.5
                    mid_run = [t for t, r in latest_by_trial(journal).items()
                               if r[M.STATUS] == M.STATUS_RUNNING]
                    if mid_run or time.time() > fallback:
                        break
                time.sleep(0.02)
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert "TERMINATED" in recorded_statuses(out / "ray" / "sequence").values()
    finally:
        stop_group(proc)  # the driver killed mid-experiment, with its Ray
        proc.wait(timeout=30)
        log.close()
    assert not (out / "summary.md").exists() and not (out / "progress" / "grid.done.json").exists()

    # A journal with every reported epoch twice (as when trials redo epochs from their checkpoints), fed to
    # the resume path: the budget must count each (trial, epoch) once.
    rows = load_rows(journal)
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows + rows))
    # trials.csv edited by hand: --resume reads the journals and rewrites it.
    (out / "trials.csv").write_text("strategy,trial_id,epoch,val/acc\ngrid,edited-by-hand,1,0.99\n")
    # A cut checkpoint of a trial Tune will restore: refused with the fix, before Ray starts.
    cut = [folder / "trainer.pt" for folder in restorable_checkpoints(out / "ray" / "sequence").values()
           if (folder / "trainer.pt").is_file()][:1]
    if cut:
        data = cut[0].read_bytes()
        cut[0].write_bytes(data[: len(data) // 2])
        refused = run_isolated([*args, "--resume"], env=ray_env, timeout=120)
        assert refused.returncode == 2, refused.stderr[-3000:]
        err = refused.stderr.strip()
        assert err.startswith("rthpo: error: --resume: Ray trial checkpoint") and "\n" not in err, err
        assert str(cut[0]) in err and "delete that file" in err, err
        assert (out / "trials.csv").read_text().endswith("edited-by-hand,1,0.99\n")  # nothing written
        cut[0].unlink()  # the fix it gave: that trial starts again from its first epoch

    resume_log = tmp_path / "second.log"
    with resume_log.open("w") as log:
        resumed = subprocess.Popen([*args, "--resume"], env=ray_env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            with WorkerKiller(resumed.pid, max_kills=2, interval_s=3.0, patience_s=20.0,
                              journals=out / "progress", epochs=EPOCHS, seed=1) as second_killer:
                resumed.wait(timeout=400)
        finally:
            stop_group(resumed)  # Ray processes the driver left behind, if any
    printed = resume_log.read_text()
    wall = time.time() - start
    assert resumed.returncode == 0, printed[-4000:]
    assert "[sequence] resuming the Tune experiment" in printed, printed[-3000:]
    assert "FAILED" not in printed and "trial error" not in printed, printed[-3000:]
    numbers = check_comparison(out, exp)
    assert "edited-by-hand" not in (out / "trials.csv").read_text()  # rewritten from the journals
    grid_done = json.loads((out / "progress" / "grid.done.json").read_text())
    assert grid_done["repeated_reports"] >= len(rows)  # the doubled journal was read back, and counted once
    numbers["repeated_reports"] -= len(rows)  # the numbers below: what the faults cost, not the doubling
    numbers["redone_s"] = round(numbers["redone_s"] - sum(r[M.EPOCH_SECONDS] for r in rows), 3)
    kills = first_killer.kills + second_killer.kills
    print("FAULT-NUMBERS", json.dumps({"test": "driver killed + worker killer", "kills": len(kills),
                                       "kills_mid_run": sum(1 for k in kills if k[2]),
                                       "cut_checkpoint_refused": bool(cut), **numbers,
                                       "wall_s_both_runs": round(wall, 1)}))


# ---------------------------------------------------- the resume path, a full disk (on the session's Ray)


def small_experiment(tmp: Path, epochs: int = 2) -> Path:
    config = tmp / "small.yaml"
    experiment = tiny_experiment(
        {"name": "grid", "method": "exp_decay", "searcher": "grid",
         "space": {"lr.eta0": {"grid": [0.1, 0.3]}}},
        budget_s=1000.0)
    experiment["base"] = {**experiment["base"], "model": {"name": "mlp", "hidden": [16]},
                          "train": {"epochs": epochs, "seed": 0}}
    config.write_text(yaml.safe_dump(experiment))
    return config


@pytest.fixture(scope="module")
def finished(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, output folder) of a finished one-strategy comparison: a grid of 2 trials x 2 epochs."""
    from ray_rthpo.cli import main

    root = tmp_path_factory.mktemp("finished")
    config = small_experiment(root)
    assert main(["compare", str(config), "--output", str(root / "out")]) == 0
    return config, root / "out"


def test_resume_counts_a_repeated_epoch_once_and_rewrites_a_hand_edited_trials_csv(
        finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The journal fed to the resume path holds every epoch twice (as when trials redo epochs from their
    checkpoints after a driver kill): the budget counts each (trial, epoch) once, and trials.csv, edited by
    hand meanwhile, is rewritten from the journal."""
    from ray_rthpo.cli import main

    config, done_out = finished
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    journal = out / "progress" / "grid.jsonl"
    rows = load_rows(journal)
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows + rows))
    # as if the driver died before the strategy was marked done
    (out / "progress" / "grid.done.json").unlink()
    (out / "trials.csv").write_text("strategy,trial_id,epoch,val/acc\ngrid,edited-by-hand,1,0.99\n")
    capsys.readouterr()
    assert main(["compare", str(config), "--output", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    once = compute_spent(latest_reports(pd.DataFrame(rows)))
    assert f"(2 trial(s) already reported, {once:.1f} compute-s spent)" in printed, printed
    done = json.loads((out / "progress" / "grid.done.json").read_text())
    assert done["compute_s"] == pytest.approx(once, abs=1e-9)  # a stopper summing repeats would give twice
    assert done["reported_s"] == pytest.approx(2 * once, abs=1e-9) and done["repeated_reports"] == len(rows)
    trials = pd.read_csv(out / "trials.csv")
    assert "edited-by-hand" not in set(trials["trial_id"]) and len(trials) == len(rows) == 4
    assert not trials.duplicated(["trial_id", M.EPOCH]).any()


def test_a_full_disk_while_writing_the_summary_is_one_line(finished: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``--resume`` of a finished comparison rewrites its results; the disk is full when summary.md is written
    (simulated: fsync raises ENOSPC): one line with the fix, the earlier summary.md intact, no temporary."""
    import errno

    from ray_rthpo.cli import main
    from ray_rthpo.report import files

    config, done_out = finished
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    before = (out / "summary.md").read_bytes()
    names: dict[int, str] = {}
    real_mkstemp, real_fsync = files.tempfile.mkstemp, files.os.fsync

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = Path(name).name
        return fd, name

    def fsync(fd: int) -> None:
        if names.get(fd, "").startswith(".summary.md."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(files.os, "fsync", fsync)
    capsys.readouterr()
    assert main(["compare", str(config), "--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: cannot write") and "\n" not in err, err
    assert str(out / "summary.md") in err and "ENOSPC" in err and "free some space" in err, err
    assert (out / "summary.md").read_bytes() == before
    assert not [p for p in out.rglob("*.tmp")]


def test_a_full_disk_while_journaling_stops_at_once_and_resume_completes(
        ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal cannot take the third report (ENOSPC): the comparison stops at once with one line (as
    Ctrl-C would: that report is as if never received), the two journaled epochs intact; once there is room,
    ``--resume`` finishes with every epoch of every trial, each once."""
    import builtins
    import errno

    from ray_rthpo.cli import main
    from ray_rthpo.report import journal as journal_module

    config = small_experiment(tmp_path, epochs=3)
    out = tmp_path / "out"
    appends: list[str] = []

    def full_after_two(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "a":
            appends.append(str(path))
            if len(appends) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(journal_module, "open", full_after_two, raising=False)
    assert main(["compare", str(config), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: cannot write") and "\n" not in err, err
    assert str(out / "progress" / "grid.jsonl") in err and "ENOSPC" in err and "--resume" in err, err
    assert len(load_rows(out / "progress" / "grid.jsonl")) == 2
    assert not (out / "summary.md").exists() and not (out / "progress" / "grid.done.json").exists()
    monkeypatch.undo()  # room again
    assert main(["compare", str(config), "--output", str(out), "--resume"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials.groupby("trial_id")[M.EPOCH].apply(sorted).tolist()) == [[1, 2, 3], [1, 2, 3]]
    done = json.loads((out / "progress" / "grid.done.json").read_text())
    assert done["errors"] == [] and done["compute_s"] == pytest.approx(compute_spent(trials), abs=1e-6)
