"""Run several strategies one after the other, each under the same compute budget and repeated over
``seeds``, and write the results.

    from ray_rthpo.tune.compare import run_comparison
    from ray_rthpo.experiment.config import load_experiment
    from ray_rthpo.tune.runner import init_ray

    exp = load_experiment("configs/compare_digits.yaml")
    joined = init_ray()
    result = run_comparison(exp, Path("runs/compare_digits"), joined=joined)
    print(result.markdown)   # the result, then one table, at most 120 columns (summary.md has them all)

Output folder (every file written atomically)::

    summary.md           the result first (the best strategy, who is within its noise, where the
                         untuned RT-HPO run stands: ray_rthpo/report/conclusion.py), then per strategy
                         over seeds (mean, IQM, bootstrap CIs, ranks, paired comparison; with one seed
                         only what one seed measures), the compute to reach target_val_acc, and one row
                         per run (strategy, seed)
    trials.csv           every reported epoch of every trial (+ trials.parquet when pyarrow is installed)
    best_so_far.png      median over seeds (25-75% band) of the test acc of the best-by-validation trial vs
                         cumulative compute, and the mean rank over the budget (one seed: the curves alone)
    lr_trajectories.png  eta per epoch of each strategy's best-by-validation run (first seed): learning rates
                         only (Prodigy's, D-Adaptation's and DoG's effective step size, labelled; AdaDelta's
                         multiplier is left out)
    config.yaml          the resolved experiment config
    ray/                 Ray Tune's storage (checkpoints, Ray's own result files), unless storage_path is set
    progress/            per run (strategy, seed): every reported epoch as it arrived (NAME.jsonl),
                         NAME.done.json once over (NAME is the strategy's name, with -seedN when the
                         experiment has seeds > 1)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ray_rthpo.data.paths import check_data
from ray_rthpo.errors import RTHPOError
from ray_rthpo.experiment.config import ExperimentConfig, Resources, StrategyConfig
from ray_rthpo.experiment.output import PROGRESS_DIR, check_output, check_storage_path, ray_storage
from ray_rthpo.report import stats, stats_plots
from ray_rthpo.report.conclusion import Conclusion
from ray_rthpo.report.files import atomic_save_figure, atomic_write_text, write_trials
from ray_rthpo.report.journal import check_journal, load_rows
from ray_rthpo.report.plots import plot_lr_trajectories
from ray_rthpo.report.selection import compute_spent, latest_reports
from ray_rthpo.report.summary import summary_texts
from ray_rthpo.tune.checkpoints import check_trial_checkpoints
from ray_rthpo.tune.runner import (
    ProgressFn,
    TrialResources,
    run_strategy,
    trial_resources,
    unchecked_resources,
)
from ray_rthpo.tune.sequence import in_sequence, run_sequence


@dataclass(frozen=True)
class ComparisonResult:
    """The tables a comparison produced, and where it wrote them. ``markdown``: what to print at the end
    (the result, then one table, best first, every line at most 120 columns); ``summary_md``: the text of
    ``summary.md`` (the same result, then every table in full); ``conclusion``: the result's numbers
    (:class:`ray_rthpo.report.conclusion.Conclusion`)."""

    trials: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    wall_s: float
    output: Path
    summary_md: str = ""
    conclusion: Conclusion | None = None


def preflight(exp: ExperimentConfig, out: Path, *, strategies: Sequence[StrategyConfig] | None = None,
              resume: bool = False, joined: bool = False) -> str:
    """What can be checked before Ray starts, once: a ``storage_path`` without credentials in it, every
    strategy's data (unless trials run on a cluster this process joined, whose workers may hold data this
    machine lacks) and the output folder (refused when it holds another experiment or cannot be written;
    with ``resume``, it must hold this one, with readable progress journals, done markers and trial
    checkpoints: :func:`check_resumable`). Writes nothing. Returns the text of the resolved
    ``config.yaml``."""
    check_storage_path(exp.storage_path)
    if not joined:
        for strategy in strategies or exp.strategies:
            check_data(exp.run_config(strategy))
    config_text = yaml.safe_dump(exp.to_dict(), sort_keys=False)
    check_output(Path(out), resume=resume, config_text=config_text)
    if resume:
        check_resumable(exp, Path(out), strategies or exp.strategies)
    return config_text


def check_resumable(exp: ExperimentConfig, out: Path, strategies: Sequence[StrategyConfig]) -> None:
    """What ``--resume`` will read back, checked before Ray starts: every run's progress journal (a line that
    is not a reported epoch is refused; the last line cut short by a killed driver is fine), its done marker
    (valid JSON), and for a run that had not finished, the trial checkpoints Ray will restore (on local
    storage: each ``trainer.pt`` Ray would restore must be a whole file,
    :func:`ray_rthpo.tune.checkpoints.check_trial_checkpoints`). Raises RTHPOError naming the file and the
    fix."""
    journals = out / PROGRESS_DIR
    storage = ray_storage(exp, out)
    for seed in exp.repetitions():
        for strategy in strategies:
            name = exp.run_name(strategy, seed)
            check_journal(journals / f"{name}.jsonl")
            done = journals / f"{name}.done.json"
            if done.is_file():
                try:
                    state = json.loads(done.read_text(encoding="utf-8"))
                    float(state["wall_s"]), list(state["errors"])
                except (ValueError, KeyError, TypeError) as err:
                    raise RTHPOError(f"--resume: {str(done)!r} is damaged ({type(err).__name__}: {err}); "
                                     f"delete it and run the same command again: run {name} is then restored "
                                     "from Ray's experiment state (its finished trials are "
                                     "not rerun).") from None
            elif "://" not in storage:  # a run without a scheduler lives in the shared 'sequence' experiment
                check_trial_checkpoints(Path(storage) / ("sequence" if in_sequence(exp, strategy) else name))


def run_comparison(exp: ExperimentConfig, out: Path, *, joined: bool = False,
                   strategies: Sequence[StrategyConfig] | None = None,
                   progress: ProgressFn = print, resume: bool = False,
                   checked: bool = False) -> ComparisonResult:
    """Run ``strategies`` (default: all of ``exp``'s) sequentially, each under ``exp.budget_s``, and
    write the output folder ``out`` (see the module doc). Ray must be initialised
    (:func:`ray_rthpo.tune.runner.init_ray`).

    ``resume``: continue the interrupted experiment in ``out`` (same config): strategies that had
    finished are read back, not rerun; the one that was running is restored from Ray's experiment state
    (its finished trials kept, the others continued from their last checkpoint, the searcher restored,
    the compute already spent counted against the budget); the rest run as usual. ``checked``: the caller
    already ran :func:`preflight` with the same arguments (the command line does, before Ray starts)."""
    start = time.time()
    strategies = list(strategies or exp.strategies)
    config_text = yaml.safe_dump(exp.to_dict(), sort_keys=False)
    if not checked:
        preflight(exp, out, strategies=strategies, resume=resume, joined=joined)
    # what each strategy's trials ask for, checked against the cluster before anything runs (once per
    # distinct request: a note or warning is printed once)
    checked: list[tuple[Resources, TrialResources]] = []  # Resources holds a dict: not hashable
    resources: dict[str, TrialResources] = {}
    for strategy in strategies:
        res = exp.resources_of(strategy)
        found = next((t for known, t in checked if known == res), None)
        if found is None:
            found = trial_resources(res, joined=joined, note=progress)
            checked.append((res, found))
        resources[strategy.name] = found
    shared_resources = next((t for known, t in checked if known == exp.resources),
                            unchecked_resources(exp.resources))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(out / "config.yaml", config_text)
    storage = ray_storage(exp, out)
    journals = out / PROGRESS_DIR
    journals.mkdir(exist_ok=True)
    tables: dict[str, pd.DataFrame] = {}  # run name -> its reports (a run may be told done twice: once)
    walls: dict[tuple[str, int], float] = {}
    errors: dict[str, tuple[str, ...]] = {}
    # every seed complete in turn
    runs = [(seed, strategy) for seed in exp.repetitions() for strategy in strategies]
    finished: set[str] = set()
    headers = {exp.run_name(strategy, seed): f"[{i}/{len(runs)}] {exp.run_name(strategy, seed)}"
               for i, (seed, strategy) in enumerate(runs, 1)}
    if resume:
        for seed, strategy in runs:
            name = exp.run_name(strategy, seed)
            journal, done = journals / f"{name}.jsonl", journals / f"{name}.done.json"
            if done.is_file():  # finished before the interruption: never rerun
                state = json.loads(done.read_text(encoding="utf-8"))
                walls[(strategy.name, seed)], errors[name] = float(state["wall_s"]), tuple(state["errors"])
                table = latest_reports(pd.DataFrame(load_rows(journal)))
                if not table.empty:
                    tables[name] = table
                finished.add(name)
                progress(f"== {headers[name]}: finished before the interruption "
                         f"({table['trial_id'].nunique() if not table.empty else 0} trials), not rerun")

    def run_done(name: str, seed: int, strategy: StrategyConfig, outcome: Any) -> None:
        walls[(strategy.name, seed)], errors[name] = outcome.wall_s, outcome.errors
        atomic_write_text(journals / f"{name}.done.json", json.dumps({
            "wall_s": outcome.wall_s, "errors": list(outcome.errors), "compute_s": outcome.compute_s,
            "reported_s": outcome.reported_s, "repeated_reports": outcome.repeated_reports,
            "retries": outcome.retries}))
        for err in outcome.errors[:3]:
            progress(f"[{name}] trial error: {err}")
        if not outcome.table.empty:
            tables[name] = outcome.table
            # partial results survive a crash
            write_trials(pd.concat(tables.values(), ignore_index=True), out)
        redone = (f", {outcome.retries} retries, {outcome.reported_s - outcome.compute_s:.1f} "
                  "compute-s redone (not counted)") if outcome.retries or outcome.repeated_reports else ""
        progress(f"== {headers[name]}: "
                 f"{outcome.table['trial_id'].nunique() if not outcome.table.empty else 0} trials, "
                 f"{compute_spent(outcome.table):.1f} compute-s, {outcome.wall_s:.1f} wall-s{redone}")

    # Runs without a scheduler or with ASHA share ONE Tune experiment (ray_rthpo/tune/sequence.py): its trial
    # processes serve every run, instead of each run paying an experiment's start-up and fresh trial
    # processes.
    shared = [(seed, strategy) for seed, strategy in runs if in_sequence(exp, strategy)]
    by_name = {exp.run_name(strategy, seed): (seed, strategy) for seed, strategy in runs}
    if any(exp.run_name(strategy, seed) not in finished for seed, strategy in shared):
        from ray import tune

        restoring = resume and tune.Tuner.can_restore(f"{storage.rstrip('/')}/sequence")
        pending = shared if restoring else [r for r in shared if exp.run_name(r[1], r[0]) not in finished]
        run_sequence(exp, pending, storage_path=storage, resources=shared_resources, journals=journals,
                     resume=restoring, progress=progress,
                     on_run_done=lambda name, outcome: run_done(name, *by_name[name], outcome)
                     if name not in finished else None, headers=headers)
    for seed, strategy in runs:  # a PBT run, or one with resources of its own: a Tune experiment of its own
        name = exp.run_name(strategy, seed)
        if in_sequence(exp, strategy) or name in finished:
            continue
        workers = exp.resources_of(strategy).workers
        progress(f"== {headers[name]}: {exp.run_config(strategy).lr.method} by {strategy.searcher} + "
                 f"{strategy.scheduler.upper()}, budget {exp.budget_s:g} compute-s"
                 + (f", {workers} Ray Train workers per trial" if workers > 1 else ""))
        outcome = run_strategy(exp, strategy, storage_path=storage, resources=resources[strategy.name],
                               progress=progress,
                               journal=journals / f"{name}.jsonl", resume=resume, seed=seed)
        run_done(name, seed, strategy, outcome)
    if not tables:
        first = next((e[0] for e in errors.values() if e), "no trial reported an epoch")
        raise RTHPOError(f"every trial failed (e.g. {first}); Ray's logs are in {storage}.")
    # config order
    trials = pd.concat([tables[name] for name in headers if name in tables], ignore_index=True)
    # again, in the config's order: a resumed experiment may have read every run back
    write_trials(trials, out)
    wall = time.time() - start
    texts = summary_texts(exp, trials, walls, shared_resources.ray, errors, wall)
    atomic_write_text(out / "summary.md", texts.markdown)
    write_figures(trials, exp.budget_s, out)
    return ComparisonResult(trials, texts.per_strategy, texts.console, wall, out, texts.markdown,
                            texts.conclusion)


def write_figures(trials: pd.DataFrame, budget_s: float, out: Path) -> None:
    """``best_so_far.png`` (median over seeds with the 25-75% band, and the mean rank over the budget; with
    one seed the curves alone) and ``lr_trajectories.png`` (the learning rate of each strategy's chosen run in
    the first seed) into ``out``."""
    curves = stats.seed_curves(trials)
    on_grid = stats.curves_on_grid(curves, stats.compute_grid(curves, budget_s=budget_s))
    several = trials["seed"].nunique() > 1 if "seed" in trials else False
    figure = stats_plots.plot_best_so_far(stats.aggregate_curves(on_grid),
                                          stats.rank_curves(on_grid) if several else None, budget_s)
    atomic_save_figure(figure, out / "best_so_far.png", dpi=120)
    first = trials[trials["seed"] == trials["seed"].min()] if "seed" in trials else trials
    atomic_save_figure(plot_lr_trajectories(first), out / "lr_trajectories.png", dpi=120)


__all__ = ["ComparisonResult", "preflight", "check_resumable", "run_comparison", "write_figures"]
