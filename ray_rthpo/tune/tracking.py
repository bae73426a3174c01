"""Experiment tracking under Ray Tune: every trial an MLflow run, through Ray's own ``MLflowLoggerCallback``.

    tracking: {mlflow: file:///abs/mlruns, experiment: compare_digits}    # in an experiment config

:func:`tracking_callbacks` gives the callbacks the runner (:func:`ray_rthpo.tune.runner.run_strategy`) and the
sequence (:func:`ray_rthpo.tune.sequence.run_sequence`) add to their ``RunConfig``; they run in the driver,
like Tune's own loggers, and log whatever Tune hands the callbacks, so they work while the comparison has
Tune's per-trial file loggers switched off (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``). What
:class:`RTHPOMLflowLoggerCallback` adds to Ray's callback, and why:

* the parameters are the trial's flat run config once, when it starts (MLflow refuses to change a logged
  parameter: a population-based-training exploit that mutates ``lr.eta0`` would end the experiment);
* the metrics of each report at step = its ``epoch`` (Ray: ``training_iteration``), without Tune's copy of
  the config;
* tags naming the strategy, its repetition and the Tune experiment, and a resumed comparison
  (``--resume``) goes on logging to its trials' runs instead of starting new ones;
* runs a stopped experiment leaves open (the compute budget spent) are ended as KILLED.

MLflow's file store (a folder, ``file:`` URIs) needs ``MLFLOW_ALLOW_FILE_STORE=true`` in the driver only:
:func:`ray_rthpo.tracking.file_store_allowed` sets it around ``Tuner.fit``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from ray_rthpo.tracking import epoch_step, flat_params, log_batch, numeric_metrics
from ray_rthpo.tracking import tracking_uri as resolve_uri

#: A trial -> the tags of its MLflow run beside the callback's own.
TagsFn = Callable[[Any], Mapping[str, str]]
#: The tags that find a trial's run again when its comparison is resumed.
TUNE_EXPERIMENT_TAG = "rthpo.tune_experiment"
TRIAL_ID_TAG = "rthpo.trial_id"


class RTHPOMLflowLoggerCallback(MLflowLoggerCallback):
    """Ray's ``MLflowLoggerCallback`` with the changes the module doc lists. ``experiment_path``: the Tune
    experiment's path (a tag, and the key a resumed comparison finds its runs by); ``tags_of``: a picklable
    function of a trial giving more tags (its strategy, repetition, method)."""

    def __init__(self, tracking_uri: str, *, experiment_name: str, experiment_path: str,
                 tags: Mapping[str, str] | None = None, tags_of: TagsFn | None = None) -> None:
        super().__init__(tracking_uri, experiment_name=experiment_name,
                         tags={**(tags or {}), TUNE_EXPERIMENT_TAG: experiment_path})
        self.experiment_path = experiment_path
        self.tags_of = tags_of
        self._logged: dict[Any, dict[str, str]] = {}
        self._ended: set[Any] = set()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Ray's setup (MLflow's URI, the experiment, created when missing), and no trial logged yet."""
        super().setup(*args, **kwargs)
        self._logged, self._ended = {}, set()

    def _client(self) -> Any:
        return self.mlflow_util._get_client()

    def _find_run(self, client: Any, trial: Any) -> str | None:
        """The open or ended run of ``trial`` in this Tune experiment (a resumed comparison), else None."""
        found = client.search_runs([self.mlflow_util.experiment_id],
                                   filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial.trial_id}'")
        for run in found:
            if run.data.tags.get(TUNE_EXPERIMENT_TAG) == self.experiment_path:
                return run.info.run_id
        return None

    def log_trial_start(self, trial: Any) -> None:
        """Create the trial's run (or find it again: a retried, a resumed trial), log its new parameters."""
        client = self._client()
        if trial not in self._trial_runs:
            run_id = self._find_run(client, trial)
            if run_id is None:
                tags = {**self.tags, "trial_name": str(trial), TRIAL_ID_TAG: trial.trial_id,
                        **(self.tags_of(trial) if self.tags_of is not None else {})}
                run_id = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
                self._logged[trial] = {}
            else:
                self._logged[trial] = dict(client.get_run(run_id).data.params)
            self._trial_runs[trial] = run_id
        run_id = self._trial_runs[trial]
        if trial in self._ended:  # Tune retries a failed trial in the same run
            self._ended.discard(trial)
            client.update_run(run_id, status="RUNNING")
        logged = self._logged.setdefault(trial, {})
        new = {k: v for k, v in flat_params(trial.config).items() if k not in logged}
        log_batch(client, run_id, params=new)
        logged.update(new)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        """One report's numbers at step = its epoch (Tune's copy of the config left out)."""
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        metrics = numeric_metrics({k: v for k, v in result.items() if k != "config"})
        log_batch(self._client(), self._trial_runs[trial], metrics=metrics,
                  step=epoch_step(result, int(result.get("training_iteration") or 0)))

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        """Ray's: the run FINISHED (or FAILED)."""
        if trial in self._trial_runs:
            super().log_trial_end(trial, failed=failed)
            self._ended.add(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """End the runs of the trials the experiment stopped (the budget spent) as KILLED."""
        for trial, run_id in self._trial_runs.items():
            if trial not in self._ended:
                self.mlflow_util.end_run(run_id=run_id, status="KILLED")
                self._ended.add(trial)


def _sequence_tags(experiment_path: str, by_run: Mapping[str, Mapping[str, str]],
                   live_sequence: Callable[[str], Any], trial: Any) -> dict[str, str]:
    """The tags of a trial of the sequence at ``experiment_path`` (found by ``live_sequence``, the sequence's
    own lookup): those of the run it belongs to."""
    sequence = live_sequence(experiment_path)
    run = None if sequence is None else sequence.run_of(trial.trial_id)
    return dict(by_run.get(run.name, {})) if run is not None else {}


def run_tags(exp: Any, strategy: Any, seed: int) -> dict[str, str]:
    """The tags of one repetition's trials: strategy, run name, searcher seed, method, searcher, scheduler."""
    resolved = exp.resolved(strategy)
    return {"rthpo.experiment": exp.name, "rthpo.strategy": resolved.strategy.name,
            "rthpo.run": exp.run_name(resolved.strategy, seed), "rthpo.seed": str(seed),
            "rthpo.method": resolved.method, "rthpo.searcher": resolved.strategy.searcher,
            "rthpo.scheduler": resolved.strategy.scheduler}


def tracking_callbacks(exp: Any, *, experiment_path: str, runs: list[tuple[int, Any]],
                       live_sequence: Callable[[str], Any] | None = None) -> list[Any]:
    """The ``RunConfig`` callbacks that log the trials of Tune experiment ``experiment_path`` (none when
    ``exp.tracking`` is off). ``runs``: its (seed, strategy) pairs. ``live_sequence``: for the comparison's
    shared sequence, its lookup (``ray_rthpo.tune.sequence.live_sequence``), whose trials are tagged with
    the run Tune's trial belongs to (found by trial id); None: one run, whose tags every trial gets."""
    tracking = exp.tracking
    if not tracking.enabled:
        return []
    tags: dict[str, str] | None = None
    tags_of = None
    if live_sequence is not None:
        by_run = {exp.run_name(strategy, seed): run_tags(exp, strategy, seed) for seed, strategy in runs}
        tags_of = functools.partial(_sequence_tags, experiment_path, by_run, live_sequence)
    else:
        ((seed, strategy),) = runs
        tags = run_tags(exp, strategy, seed)
    assert tracking.mlflow is not None
    return [RTHPOMLflowLoggerCallback(resolve_uri(tracking.mlflow),
                                      experiment_name=tracking.experiment or exp.name,
                                      experiment_path=experiment_path, tags=tags, tags_of=tags_of)]


__all__ = ["RTHPOMLflowLoggerCallback", "tracking_callbacks", "run_tags", "TUNE_EXPERIMENT_TAG",
           "TRIAL_ID_TAG"]
