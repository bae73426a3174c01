"""Experiment tracking without Ray: one MLflow run per ``rthpo train``, its parameters and per-epoch metrics.

    tracking: {mlflow: file:///abs/mlruns, experiment: digits}     # in a run config (docs/tracking.md)

    run = MLflowRun(config.tracking, experiment="digits", run_name="digits-run", params=run_params(config))
    run.start()
    for ...:
        run.report(trainer.run_epoch())      # the metrics of one epoch, at step = its epoch number
    run.end("FINISHED")

Under Ray Tune the comparison logs through Ray's own ``MLflowLoggerCallback`` instead
(:mod:`ray_rthpo.tune.tracking`); both share the helpers here. MLflow is imported only when a run is tracked:
the config layer calls :func:`check_mlflow`, which looks for it without importing it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_rthpo.errors import RTHPOError
from ray_rthpo.uris import DATABASE_SCHEMES, check_mlflow, scheme  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ray_rthpo.config import Config, TrackingConfig

#: MLflow refuses its file store (a folder, ``file:`` URIs) unless this variable is true (MLflow >= 3.x).
FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
#: URI schemes of MLflow's database store: they need sqlalchemy and alembic (the full ``mlflow`` package).
#: MLflow's limits on one ``log_batch`` call.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
#: The run-config keys that say where a run is logged, not what it is: never logged as parameters.
TRACKING_PREFIX = "tracking."


def is_file_store(uri: str) -> bool:
    """True when ``uri`` names MLflow's file store: a folder, or a ``file:`` URI."""
    return scheme(uri) in ("", "file")


def tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """The URI MLflow is given: a plain path (relative to ``cwd``, default the current directory) becomes
    an absolute ``file:`` URI; any other URI is kept as written."""
    if scheme(uri):
        return uri
    path = Path(uri).expanduser()
    return (path if path.is_absolute() else (cwd or Path.cwd()) / path).resolve().as_uri()


@contextlib.contextmanager
def file_store_allowed(uri: str | None) -> Iterator[None]:
    """Inside: ``MLFLOW_ALLOW_FILE_STORE=true`` in this process when ``uri`` is MLflow's file store and the
    variable is unset (a value the user set is kept); restored on exit. Only this process needs it: the
    Tune callback logs from the driver, never from a trial."""
    if uri is None or not is_file_store(uri) or FILE_STORE_ENV in os.environ:
        yield
        return
    os.environ[FILE_STORE_ENV] = "true"
    try:
        yield
    finally:
        os.environ.pop(FILE_STORE_ENV, None)


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it (a string); numpy scalars as their Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, str)):
        value = value.item()
    return str(value)


def flat_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """A trial's (a run's) flat config as MLflow parameters, without the ``tracking.*`` keys."""
    return {str(key): param_value(value) for key, value in flat.items()
            if not str(key).startswith(TRACKING_PREFIX)}


def run_params(config: Config) -> dict[str, str]:
    """The parameters of one run of ``config``: its flat config (``lr.eta0``, ``data.name``, ...)."""
    return flat_params(config.to_flat())


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one report MLflow can keep: its numbers and booleans (as 0/1), nested mappings
    (Tune's ``config``) and text left out; NaN and infinities are kept (a diverged run)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if hasattr(value, "item") and not isinstance(value, (list, tuple, str, dict)):
            value = value.item()
        if isinstance(value, (bool, int, float)):
            out[str(key)] = float(value)
    return out


def log_batch(client: Any, run_id: str, *, params: Mapping[str, str] | None = None,
              metrics: Mapping[str, float] | None = None, step: int = 0) -> None:
    """Log ``params`` and ``metrics`` (at ``step``) to MLflow run ``run_id`` in as few calls as MLflow
    allows."""
    from mlflow.entities import Metric, Param

    items = list((params or {}).items())
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + MAX_PARAMS_PER_BATCH]])
    now = int(time.time() * 1000)
    values = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    for start in range(0, len(values), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=values[start:start + MAX_METRICS_PER_BATCH])


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def epoch_step(result: Mapping[str, Any], default: int = 0) -> int:
    """The MLflow step of one epoch's report: its ``epoch`` (1, 2, ...), else ``default``."""
    from ray_rthpo import metrics as M

    epoch = result.get(M.EPOCH)
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and math.isfinite(epoch):
        return int(epoch)
    return default


class MLflowRun:
    """One MLflow run logged through MLflow's client: ``start`` (parameters), ``report`` per epoch, ``end``.

    ``run_id``: continue that run (``rthpo train --resume``) instead of creating one; a run that no longer
    exists is replaced by a new one."""

    def __init__(self, tracking: TrackingConfig, *, experiment: str, run_name: str,
                 params: Mapping[str, str], tags: Mapping[str, str] | None = None,
                 run_id: str | None = None) -> None:
        if tracking.mlflow is None:
            raise ValueError("MLflowRun needs tracking.mlflow")  # the caller checks tracking.enabled
        self.uri = tracking_uri(tracking.mlflow)
        self.experiment = tracking.experiment or experiment
        self.run_name, self.params, self.tags = run_name, dict(params), dict(tags or {})
        self.run_id = run_id
        self._client: Any = None
        self._steps = 0

    def start(self) -> str:
        """Create (or continue) the run and log its parameters; returns its run id."""
        from mlflow.exceptions import MlflowException

        try:
            return self._start()
        except (MlflowException, OSError) as err:
            raise RTHPOError(f"tracking.mlflow {self.uri!r}: MLflow could not start the run: "
                             f"{_first_line(err)}; check the URI (a writable folder, or a running tracking "
                             "server), or delete the tracking section.") from None

    def _start(self) -> str:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        with file_store_allowed(self.uri):
            self._client = client = MlflowClient(tracking_uri=self.uri)
            logged: dict[str, str] = {}
            if self.run_id is not None:
                try:
                    run = client.get_run(self.run_id)
                    logged = dict(run.data.params)
                    client.update_run(self.run_id, status="RUNNING")
                except MlflowException:
                    self.run_id = None
            if self.run_id is None:
                found = client.get_experiment_by_name(self.experiment)
                experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
                run = client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
                self.run_id = run.info.run_id
            # a value logged before is kept (MLflow refuses to change a parameter); new keys are added
            log_batch(client, self.run_id, params={k: v for k, v in self.params.items() if k not in logged})
        return self.run_id

    def report(self, metrics: Mapping[str, Any], trainer: Any = None) -> None:
        """Log one epoch's ``metrics`` at its epoch number (``run_training``'s report signature)."""
        if self._client is None or self.run_id is None:
            self.start()
        self._steps += 1
        with file_store_allowed(self.uri):
            log_batch(self._client, str(self.run_id), metrics=numeric_metrics(metrics),
                      step=epoch_step(metrics, self._steps))

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``status`` (FINISHED, FAILED or KILLED)."""
        if self._client is not None and self.run_id is not None:
            with file_store_allowed(self.uri):
                self._client.set_terminated(self.run_id, status=status)


__all__ = ["MLflowRun", "check_mlflow", "tracking_uri", "is_file_store", "file_store_allowed", "flat_params",
           "run_params", "numeric_metrics", "log_batch", "epoch_step", "FILE_STORE_ENV", "DATABASE_SCHEMES"]
