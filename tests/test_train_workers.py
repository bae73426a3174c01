"""Ray Train workers inside a Tune trial (issue 19, part 2): ``resources.workers: N``.

* ``shard_positions``: the ranks' shards are the global batch, and their heads the global head.
* The Trainer under ``torch.distributed`` (2 gloo processes, float64, no Ray): RT-HPO and plain SGD with
  momentum end with the same eta trajectory, losses, accuracies and weights as one process on the same global
  batches (to 1e-10), and a checkpoint written by rank 0 resumes both ranks exactly.
* The config, the trial resources and the worker-seconds of a report.
* On the local Ray (``@pytest.mark.ray``; CPU, gloo, 2 workers per trial): a small comparison end to end,
  whose 2-worker trial's eta trajectory equals one process's, whose budget counted 2 x seconds, whose summary
  says 2 workers, and one of whose workers is SIGKILLed after epoch 2: the retried trial continues from its
  checkpoint and nothing is counted twice.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from gloo_ranks import finish_rank, free_port, spawn_ranks

from ray_rthpo import metrics as M
from ray_rthpo.config import config_from_dict
from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.config import Resources, experiment_from_dict
from ray_rthpo.training.trainer import head_size, run_training, shard_positions
from ray_rthpo.tune.train_workers import EPOCH_WALL_SECONDS, WORKERS, to_worker_seconds

pytestmark = pytest.mark.harness

#: digits, a 32-unit MLP, float64 (the 2-process sums differ from one process's in the last bits only).
BASE: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "val_batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "lr": {"method": "rthpo", "eta0": 0.05, "beta": 0.5, "tune_fraction": 1.0},  # eta moves every epoch
    "optim": {"momentum": 0.9, "weight_decay": 1.0e-4},
    "train": {"epochs": 3, "seed": 0, "dtype": "float64", "device": "cpu"},
}
#: Per-epoch metrics that must agree between 1 and 2 processes.
SAME = (M.STEP, M.TRAIN_LOSS, M.TRAIN_ACC, M.VAL_LOSS, M.VAL_ACC, M.TEST_LOSS, M.TEST_ACC, M.LR, M.HYPERGRAD)


def with_lr(**lr: Any) -> dict[str, Any]:
    return {**BASE, "lr": {**BASE["lr"], **lr}}


# ------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize(("n", "size", "fraction"), [(64, 2, 1.0), (64, 2, 0.25), (65, 4, 0.5), (7, 3, 1.0)])
def test_shards_are_the_global_batch_and_their_heads_the_global_head(n: int, size: int,
                                                                      fraction: float) -> None:
    shards = [shard_positions(n, size, r, fraction) for r in range(size)]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    k = head_size(n, fraction)
    heads = [s[:len(torch.tensor_split(torch.arange(k), size)[r])] for r, s in enumerate(shards)]
    assert torch.cat(heads).tolist() == list(range(k))
    if fraction == 1.0:  # contiguous slices, in order
        assert torch.cat(shards).tolist() == list(range(n))


# ------------------------------------------------------------------------------- the Trainer, 2 processes


def _worker(rank: int, port: int, cases: dict[str, dict[str, Any]], out: str) -> None:
    import torch.distributed as dist

    from ray_rthpo.training.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results: dict[str, Any] = {}
    for name, raw in cases.items():
        trainer = Trainer(config_from_dict(raw))
        history = [trainer.run_epoch()]
        saved = io.BytesIO()
        torch.save(trainer.state_dict(), saved)  # after epoch 1, as Trainer.save writes it
        history += [trainer.run_epoch() for _ in range(2)]
        resumed = Trainer(config_from_dict(raw))
        saved.seek(0)
        resumed.load_state_dict(torch.load(saved, weights_only=False))
        again = [resumed.run_epoch() for _ in range(2)]
        weights = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        results[name] = {"history": history, "again": again, "weights": weights}
    finish_rank(results, out, rank)


CASES = {"rthpo": with_lr(), "rthpo_fractions": with_lr(hvp_batch_fraction=0.5, val_batch_fraction=0.5),
         "sgd_momentum": with_lr(method="fixed")}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    return spawn_ranks(_worker, (free_port(), CASES, str(out)), 2, out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_train_as_one_process_on_the_global_batch(two_ranks: list[dict[str, Any]],
                                                            case: str) -> None:
    one = run_training(config_from_dict(CASES[case]))
    if case.startswith("rthpo"):
        assert len({round(r[M.LR], 6) for r in one}) == 3  # eta moved in every epoch
    for rank in range(2):
        got = two_ranks[rank][case]
        for epoch, (a, b) in enumerate(zip(got["history"], one, strict=True), 1):
            for key in SAME:
                assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), (case, rank, epoch, key)
        # the resumed run continues exactly as the uninterrupted one (both ranks from rank 0's state)
        for a, b in zip(got["again"], got["history"][1:], strict=True):
            assert all(a[key] == b[key] for key in SAME), (case, rank)
    # the ranks bitwise alike
    assert torch.equal(two_ranks[0][case]["weights"], two_ranks[1][case]["weights"])


# ------------------------------------------------------------------------------------ config, accounting


def test_resources_workers() -> None:
    one = Resources()
    assert one.workers == 1 and one.as_ray() == {"cpu": 1.0, "gpu": 0.0}  # unchanged
    assert Resources(cpu_per_worker=2, gpu_per_worker=0.5).as_ray() == {"cpu": 2.0, "gpu": 0.5}
    four = Resources(workers=4, gpu_per_worker=1, custom={"slot": 1})
    assert four.as_ray() == {"cpu": 0.01, "gpu": 0.0, "slot": 1.0}  # the trial's own process only
    assert four.per_worker() == {"CPU": 1.0, "GPU": 1.0} and four.per_worker(use_gpu=False) == {"CPU": 1.0}
    with pytest.raises(ConfigError, match="gpu_per_worker instead"):
        Resources(workers=2, gpu=1)
    with pytest.raises(ConfigError, match="resources.workers must be an integer >= 1"):
        Resources(workers=0)
    with pytest.raises(ConfigError, match="cpu_per_worker must be a number >= 0"):
        Resources(workers=2, cpu_per_worker=-1)


def test_a_strategy_names_resources_of_its_own() -> None:
    """A strategy's ``resources`` go over the experiment's; one that sets ``workers`` sets its trials' whole
    shape (keeps ``custom`` and ``cpu_fallback``); such a strategy runs outside the shared sequence, and the
    summary names its resources. Errors name the strategy and the key."""
    from ray_rthpo.report.summary import summary_texts
    from ray_rthpo.tune.sequence import in_sequence

    exp = experiment_from_dict({
        "base": BASE, "resources": {"cpu": 1, "gpu": 0.5, "custom": {"slot": 1}, "cpu_fallback": False},
        "strategies": [{"name": "same", "searcher": "none"},
                       {"name": "two", "searcher": "none",
                        "resources": {"workers": 2, "cpu_per_worker": 0.5}},
                       {"name": "cpu2", "searcher": "none", "resources": {"cpu": 2}},
                       {"name": "asis", "searcher": "none", "resources": {"cpu": 1}}]})
    assert exp.resources_of("same") is exp.resources
    assert exp.resources_of("two") == Resources(workers=2, cpu_per_worker=0.5, custom={"slot": 1},
                                                cpu_fallback=False)
    assert exp.resources_of("cpu2") == Resources(cpu=2, gpu=0.5, custom={"slot": 1}, cpu_fallback=False)
    assert [in_sequence(exp, s) for s in exp.strategies] == [True, False, False, True]
    rows = [{"strategy": name, "seed": 0, "trial_id": f"{name}_0", M.EPOCH: 1, M.VAL_ACC: 0.5,
             M.VAL_LOSS: 1.0, M.TEST_ACC: 0.5, M.DIVERGED: False, M.EPOCH_SECONDS: 1.0, M.LR: 0.1,
             "method": "rthpo"}
            for name in ("same", "two", "cpu2", "asis")]
    frame = __import__("pandas").DataFrame(rows)
    text = summary_texts(exp, frame, {}, exp.resources.as_ray(), {}, 1.0).markdown
    assert ("Strategy two: per trial 2 Ray Train workers ({'CPU': 0.5} each). Strategy cpu2: per trial "
            "{'cpu': 2.0, 'gpu': 0.5, 'slot': 1.0}. The compute of a trial of several workers is counted as "
            "workers x seconds.") in text, text
    assert "Strategy same" not in text and "Strategy asis" not in text
    for own, match in (({"wrkers": 2}, r"strategy b: unknown key 'resources\.wrkers'; did you mean "
                                       r"'workers'"),
                       ({"workers": 2, "gpu": 1}, r"strategy b: resources\.gpu is 1\.0, but with "
                                                  r"resources\.workers 2"),
                       ({"workers": 0}, r"strategy b: resources\.workers must be an integer >= 1")):
        with pytest.raises(ConfigError, match=match):
            experiment_from_dict({"base": BASE, "strategies": [{"name": "b", "resources": own}]})
    with pytest.raises(ConfigError, match=r"strategy p: scheduler pbt clones Tune checkpoints"):
        experiment_from_dict({"base": BASE, "strategies": [
            {"name": "p", "method": "fixed", "scheduler": "pbt", "num_samples": 2,
             "resources": {"workers": 2}, "space": {"lr.eta0": {"loguniform": [0.01, 1.0]}}}]})


def test_the_cluster_example_loads() -> None:
    from ray_rthpo.experiment.config import load_experiment

    exp = load_experiment(Path(__file__).parent.parent / "configs" / "compare_cifar10_4gpu.yaml")
    assert exp.resources.workers == 4 and exp.resources.per_worker() == {"CPU": 4.0, "GPU": 1.0}


def test_a_report_counts_worker_seconds() -> None:
    metrics = {M.EPOCH: 3, M.EPOCH_SECONDS: 1.5, M.TOTAL_SECONDS: 4.5, M.TRAIN_SECONDS: 1.0,
               M.HYPER_SECONDS: 0.25, M.EVAL_SECONDS: 0.25, M.LR: 0.1}
    out = to_worker_seconds(metrics, 4)
    assert out[M.EPOCH_SECONDS] == 6.0 and out[M.TOTAL_SECONDS] == 18.0 and out[EPOCH_WALL_SECONDS] == 1.5
    assert out[M.TRAIN_SECONDS] + out[M.HYPER_SECONDS] + out[M.EVAL_SECONDS] == out[M.EPOCH_SECONDS]
    assert out[WORKERS] == 4 and out[M.LR] == 0.1


def test_batchnorm_and_tiny_batches_are_refused_under_data_parallelism(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray_rthpo.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "data_parallel_world", lambda: (0, 2))
    tiny = {**BASE, "data": {**BASE["data"], "val_batch_size": 1}}
    with pytest.raises(ConfigError, match="data.val_batch_size is 1: every worker needs at least one"):
        trainer_module.Trainer(config_from_dict(tiny))
    resnet = {**BASE, "data": {"name": "fake", "fake_train_size": 32, "fake_test_size": 8, "batch_size": 8,
                               "val_batch_size": 8}, "model": {"name": "resnet18"}}
    with pytest.raises(ConfigError, match="the model has BatchNorm"):
        trainer_module.Trainer(config_from_dict(resnet))


# ------------------------------------------------------------------------------------ on the local Ray


def _kill_a_train_worker_after(journal: Path, epoch: int, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL one Ray Train worker process (``ray::RayTrainWorker``) of this process's Ray once the journal
    shows ``epoch``."""
    import importlib

    import ray  # noqa: F401  (Ray's bundled psutil)

    psutil = importlib.import_module("psutil")
    while not stop.is_set() and not killed:
        rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()] \
            if journal.is_file() else []
        if any(row.get(M.EPOCH, 0) >= epoch for row in rows):
            for proc in psutil.Process(os.getpid()).children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if title.startswith("ray::RayTrainWorker"):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
        time.sleep(0.2)


@pytest.mark.ray
def test_a_comparison_of_two_worker_trials_on_the_local_ray(ray_local: None, tmp_path: Path) -> None:
    """One RT-HPO trial of 2 workers (0.5 CPU each: the session's Ray has 2), 4 epochs, a worker killed after
    epoch 2: the trial is retried and continues from its checkpoint; its reported eta trajectory and metrics
    equal one process's; the budget counted 2 x each epoch's seconds, each epoch once. The same RT-HPO run as
    a strategy of 1 worker (its own resources) in the same comparison: the same eta trajectory, and the
    summary says how many workers each strategy used. Then a grid of two plain-SGD trials, one after the
    other, each equal to one process."""
    from ray_rthpo.report.journal import load_rows
    from ray_rthpo.report.selection import compute_spent, latest_reports
    from ray_rthpo.tune import compare

    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("the session's Ray is an outside cluster: its workers are not this process's to kill")
    base = {**BASE, "train": {**BASE["train"], "epochs": 4, "eval_test": True}}
    exp = experiment_from_dict({
        "name": "workers", "base": base, "budget_s": 1000.0, "max_concurrent": 1, "seed": 0,
        "max_failures": 2,
        "resources": {"workers": 2, "cpu_per_worker": 0.5},
        "strategies": [{"name": "rthpo2", "method": "rthpo", "searcher": "none"},
                       {"name": "rthpo1", "method": "rthpo", "searcher": "none", "resources": {"workers": 1}},
                       {"name": "sgd2", "method": "fixed", "searcher": "grid",
                        "space": {"lr.eta0": {"grid": [0.05, 0.2]}}}]}, name="workers")
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_train_worker_after,
                              args=(out / "progress" / "rthpo2.jsonl", 2, killed, stop), daemon=True)
    lines: list[str] = []
    killer.start()
    try:
        compare.run_comparison(exp, out, progress=lines.append)
    finally:
        stop.set()
        killer.join(timeout=10)
    printed = "\n".join(lines)
    assert "trial error" not in printed, printed[-3000:]
    rows = load_rows(out / "progress" / "rthpo2.jsonl")
    table = latest_reports(__import__("pandas").DataFrame(rows))
    assert list(table[M.EPOCH]) == [1, 2, 3, 4] and set(table[WORKERS]) == {2}
    one = run_training(config_from_dict(base))
    assert len({round(r[M.LR], 6) for r in one}) == 4  # eta moved every epoch: a trajectory worth comparing
    for (_, row), ref in zip(table.iterrows(), one, strict=True):
        for key in SAME:
            assert row[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-12), (row[M.EPOCH], key)
    # compute: 2 workers x each epoch's wall seconds, each (trial, epoch) once
    assert table[M.EPOCH_SECONDS].tolist() == pytest.approx((2 * table[EPOCH_WALL_SECONDS]).tolist())
    done = json.loads((out / "progress" / "rthpo2.done.json").read_text())
    assert done["compute_s"] == pytest.approx(compute_spent(table)) and done["compute_s"] == pytest.approx(
        2 * float(table[EPOCH_WALL_SECONDS].sum()))
    # the 1-worker strategy of the same comparison: the same global batches, the same eta trajectory
    single = latest_reports(__import__("pandas").DataFrame(load_rows(out / "progress" / "rthpo1.jsonl")))
    assert list(single[M.EPOCH]) == [1, 2, 3, 4] and WORKERS not in single.dropna(axis=1, how="all")
    assert single[M.LR].tolist() == pytest.approx(table[M.LR].tolist(), rel=1e-10, abs=1e-12)
    assert single[M.VAL_LOSS].tolist() == pytest.approx(table[M.VAL_LOSS].tolist(), rel=1e-10, abs=1e-12)
    summary = (out / "summary.md").read_text()
    assert "| trials | workers |" in summary and "Each trial ran on 2 Ray Train workers" in summary
    assert "Strategy rthpo1: per trial {'cpu': 1.0, 'gpu': 0.0}." in summary, summary
    every_run = summary.split("## Every run", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in every_run if line.startswith("|")]
    workers = {row[0]: row[cells[0].index("workers")] for row in cells[2:]}
    assert workers == {"rthpo2": "2", "rthpo1": "1", "sgd2": "2"}, every_run
    if killed:  # the kill landed mid-run: the trial was retried and went on from a checkpoint
        assert done["retries"] >= 1, done
        first = [r for r in rows if r[M.EPOCH] == 1]
        assert len(rows) - len(table) == done["repeated_reports"]
        assert math.isclose(done["reported_s"] - done["compute_s"],
                            sum(r[M.EPOCH_SECONDS] for r in rows) - float(table[M.EPOCH_SECONDS].sum()))
        assert len(first) == 1, "the retried trial started again from scratch instead of its checkpoint"
    # a grid of plain SGD with momentum (the Trainer's own all_reduce of the gradient), two trials one after
    # the other on the same Ray: each equals one process at its eta0
    sgd = latest_reports(__import__("pandas").DataFrame(load_rows(out / "progress" / "sgd2.jsonl")))
    assert sgd["trial_id"].nunique() == 2 and set(sgd[WORKERS]) == {2}
    for trial_id, trial in sgd.groupby("trial_id"):
        eta0 = float(trial["searched/lr.eta0"].iloc[0])
        ref = run_training(config_from_dict({**base, "lr": {"method": "fixed", "eta0": eta0}}))
        assert list(trial[M.EPOCH]) == [1, 2, 3, 4], trial_id
        for (_, row), r in zip(trial.iterrows(), ref, strict=True):
            for key in (M.STEP, M.TRAIN_LOSS, M.TRAIN_ACC, M.VAL_LOSS, M.VAL_ACC, M.TEST_ACC, M.LR):
                assert row[key] == pytest.approx(r[key], rel=1e-10, abs=1e-12), (eta0, row[M.EPOCH], key)
    print("TRAIN-WORKERS", json.dumps({"killed": killed, "retries": done["retries"], "rows": len(rows),
                                       "compute_s": round(done["compute_s"], 2), "lines": lines[-3:]}))
