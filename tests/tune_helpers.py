"""Tiny, fast experiments for the Ray Tune tests (digits, a 32-unit MLP, a couple of epochs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``python -c CLI ...`` runs the ``rthpo`` command line in a subprocess.
CLI = "from ray_rthpo.cli import main; raise SystemExit(main())"

#: A run config that trains in well under a second per epoch on one CPU core.
TINY_BASE: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "val_batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "lr": {"method": "exp_decay", "eta0": 0.3, "gamma": 0.9},
    "train": {"epochs": 2, "seed": 0},
}
ETA_SPACE: dict[str, Any] = {"lr.eta0": {"loguniform": [1.0e-2, 1.0]}, "lr.gamma": {"uniform": [0.5, 1.0]}}


def tiny_experiment(*strategies: dict[str, Any], **top: Any) -> dict[str, Any]:
    """An experiment mapping over TINY_BASE: a large budget, 2 trials at once, the given strategies."""
    return {"name": "tiny", "base": TINY_BASE, "budget_s": 1000.0, "max_concurrent": 2, "seed": 0,
            "strategies": list(strategies), **top}


def train_fn_failing_once(config: dict[str, Any], fail: Callable[[], None]) -> None:
    """The real ``train_fn``, which calls ``fail()`` right after reporting epoch 2 (its checkpoint included),
    the first time only: ``config["test.marker"]`` is a file that records it."""
    from pathlib import Path

    from ray import tune

    from ray_rthpo.tune import trainable

    config = dict(config)
    marker = Path(config.pop("test.marker"))
    real_report = tune.report
    calls: list[int] = []

    def report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        real_report(metrics, checkpoint=checkpoint)
        calls.append(1)
        if len(calls) == 2 and not marker.exists():
            marker.touch()
            fail()

    tune.report = report
    try:
        trainable.train_fn(config)
    finally:
        tune.report = real_report


def killed_once_train_fn(config: dict[str, Any]) -> None:
    """``train_fn`` whose worker process kills itself with SIGKILL after epoch 2, once: a real dying
    worker (no exception, no cleanup)."""
    import os
    import signal

    train_fn_failing_once(config, lambda: os.kill(os.getpid(), signal.SIGKILL))


def crashed_once_train_fn(config: dict[str, Any]) -> None:
    """``train_fn`` that raises after epoch 2, once."""

    def crash() -> None:
        raise RuntimeError("simulated crash after epoch 2")

    train_fn_failing_once(config, crash)


class WorkerKiller:
    """A fault injector in the manner of Ray's own release tests: it SIGKILLs one *running trial worker* of
    the Ray whose processes descend from ``root_pid`` (the process that started that local Ray) every
    ``interval_s`` seconds or so (from ``first_after_s`` on), ``max_kills`` times at most, then stops by
    itself.

    A running trial worker is a process titled ``ray::ImplicitFunc.train`` (Tune's function-trainable actor
    executing ``train_fn``) among ``root_pid``'s descendants: never the driver, Ray's system processes
    (raylet, GCS, dashboard), idle workers, or a process of another Ray on the machine. A worker whose trial
    has reported an epoch and not finished (Tune reports each trial's ``pid``; the progress journals under
    ``journals`` show it as it arrives) is preferred, so that its trial continues from a checkpoint; when
    none shows up within ``patience_s``, any running trial worker is killed (it may be starting up: its
    trial then starts again from scratch). ``kills`` records (seconds since start, pid, trial id or None).
    """

    def __init__(self, root_pid: int, *, max_kills: int, interval_s: float = 3.0, first_after_s: float = 2.0,
                 patience_s: float = 6.0, journals: Any = None, epochs: int | None = None,
                 seed: int = 0) -> None:
        import random
        import threading

        self.root_pid, self.max_kills, self.interval_s = root_pid, max_kills, interval_s
        self.first_after_s, self.patience_s = first_after_s, patience_s
        self.journals, self.epochs = journals, epochs
        self.kills: list[tuple[float, int, str | None]] = []
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._offsets: dict[Any, int] = {}
        self._latest: dict[str, dict[str, Any]] = {}  # trial id -> its latest journal row
        self._thread = threading.Thread(target=self._run, name="worker-killer", daemon=True)

    def __enter__(self) -> WorkerKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def running_trial_workers(self) -> list[int]:
        """PIDs of the trial workers (``ray::ImplicitFunc.train``) among ``root_pid``'s descendants."""
        import importlib

        import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

        psutil = importlib.import_module("psutil")
        try:
            children = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        pids = []
        for proc in children:
            try:
                title = " ".join(proc.cmdline()).strip()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if title.startswith("ray::ImplicitFunc.train"):
                pids.append(proc.pid)
        return pids

    def mid_run_trials(self) -> dict[int, str]:
        """pid -> trial id of the trials whose latest report is an unfinished epoch (journals read as they
        grow)."""
        import json
        from pathlib import Path

        for journal in sorted(Path(self.journals).glob("*.jsonl")) if self.journals else []:
            try:
                with open(journal, "rb") as fh:
                    if self._offsets.get(journal, 0) > journal.stat().st_size:
                        self._offsets[journal] = 0  # rewritten (a resumed run cut its last line)
                    fh.seek(self._offsets.get(journal, 0))
                    data = fh.read()
            except OSError:
                continue
            complete = data[:data.rfind(b"\n") + 1]
            self._offsets[journal] = self._offsets.get(journal, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "trial_id" in row:
                    self._latest[row["trial_id"]] = row
        return {int(row["pid"]): trial for trial, row in self._latest.items()
                if row.get("pid") and row.get("status") == "running"
                and (self.epochs is None or row.get("epoch", 0) < self.epochs)}

    def _run(self) -> None:
        import os
        import signal
        import time

        start = time.time()
        if self._stop.wait(self.first_after_s):
            return
        looking_since = time.time()
        while len(self.kills) < self.max_kills and not self._stop.is_set():
            workers = self.running_trial_workers()
            mid_run = self.mid_run_trials()
            preferred = [pid for pid in workers if pid in mid_run]
            if preferred or (workers and time.time() - looking_since > self.patience_s):
                pid = self._random.choice(preferred or workers)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills.append((round(time.time() - start, 2), pid, mid_run.get(pid)))
                if self._stop.wait(self.interval_s * self._random.uniform(0.7, 1.3)):
                    return
                looking_since = time.time()
            elif self._stop.wait(0.05):
                return


def recorded_statuses(experiment: Path) -> dict[str, str]:
    """trial id -> status in Tune's newest experiment snapshot in ``experiment`` ({} while none is
    readable)."""
    from ray_rthpo.tune.checkpoints import snapshot_trials

    return {trial["trial_id"]: trial.get("status") for trial, _ in snapshot_trials(experiment)}
