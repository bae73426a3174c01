"""Run several strategies one after the other, each under the same compute budget, and write the results.

    from ray_rthpo.tune.compare import run_comparison
    from ray_rthpo.tune.experiment_config import load_experiment
    from ray_rthpo.tune.runner import init_ray

    exp = load_experiment("configs/compare_digits.yaml")
    joined = init_ray()
    result = run_comparison(exp, Path("runs/compare_digits"), joined=joined)
    print(result.markdown)

Output folder (every file written atomically)::

    summary.md           one row per strategy: best val acc, test acc of the val-chosen (trial, epoch), ...
    trials.csv           every reported epoch of every trial (+ trials.parquet when pyarrow is installed)
    best_so_far.png      test acc of the best-by-validation trial vs cumulative compute, all strategies
    lr_trajectories.png  eta per epoch of each strategy's best-by-validation run
    config.yaml          the resolved experiment config
    ray/                 Ray Tune's storage (checkpoints, Ray's own result files), unless storage_path is set
    progress/            per strategy: every reported epoch as it arrived (NAME.jsonl), NAME.done.json once over
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from ray_rthpo import metrics as M
from ray_rthpo.errors import RTHPOError
from ray_rthpo.results_io import atomic_save_figure, atomic_write_bytes, atomic_write_text
from ray_rthpo.tune import analysis
from ray_rthpo.tune.data_paths import check_data
from ray_rthpo.tune.experiment_config import ExperimentConfig, StrategyConfig
from ray_rthpo.tune.runner import ProgressFn, load_rows, run_strategy, trial_resources

#: Files whose presence means a folder already holds an experiment (never overwritten silently).
MARKERS = ("config.yaml", "summary.md", "trials.csv", "ray")
#: Sub-folder of the output holding each strategy's journal (``NAME.jsonl``, every reported epoch as it
#: arrives) and, once the strategy is over, ``NAME.done.json`` (its wall seconds and errors).
PROGRESS_DIR = "progress"


@dataclass(frozen=True)
class ComparisonResult:
    """The tables a comparison produced, and where it wrote them."""

    trials: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    wall_s: float
    output: Path


def prepare_output(out: Path, *, resume: bool = False, config_text: str | None = None) -> Path:
    """Create ``out``; refuse a folder that already holds an experiment unless ``resume``.

    With ``resume``, ``out`` must hold an experiment whose ``config.yaml`` equals ``config_text`` (when
    given): resuming with other settings would mix two experiments in one table.
    """
    held = [m for m in MARKERS if (out / m).exists()]
    if held and not resume:
        raise RTHPOError(f"output folder {str(out)!r} already holds an experiment ({', '.join(held)}); "
                         "continue it with --resume, or choose another --output (or delete that folder).")
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise RTHPOError(f"--resume: {str(saved)!r} does not exist, so {str(out)!r} holds no experiment to "
                             "resume; run without --resume to start it.")
        if config_text is not None and saved.read_text(encoding="utf-8") != config_text:
            raise RTHPOError(f"--resume: the experiment in {str(out)!r} was started with another config "
                             f"(see {str(saved)!r}); resume with the same config file and --set values, or "
                             "start afresh with another --output.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def ray_storage(exp: ExperimentConfig, out: Path) -> str:
    """Where Ray Tune keeps checkpoints: ``<out>/ray``, or ``<storage_path>/<out folder name>`` (a URI such
    as ``s3://bucket/rthpo`` or a shared mount) so that runs sharing a storage_path do not mix."""
    if not exp.storage_path:
        return str((out / "ray").resolve())
    if "://" in exp.storage_path:
        return f"{exp.storage_path.rstrip('/')}/{out.resolve().name}"
    return str(Path(exp.storage_path).expanduser().resolve() / out.resolve().name)


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


def summary_markdown(exp: ExperimentConfig, summary: pd.DataFrame, resources: dict[str, float],
                     errors: dict[str, tuple[str, ...]], wall_s: float) -> str:
    """The text of ``summary.md``: what was compared, how it was chosen, and the table."""
    lines = [
        f"# {exp.name}: learning-rate strategies at equal compute", "",
        f"- Budget: {exp.budget_s:g} compute seconds per strategy (time/total_s summed over its trials: "
        "training, hypergradient and evaluation time), the same for every strategy.",
        f"- Per trial: {resources}; at most {exp.max_concurrent} trials at once; searcher seed {exp.seed}.",
        f"- Workload: {exp.base.data.name} / {exp.base.model.name}, {exp.base.train.epochs} epochs per trial "
        "(unless a strategy overrides it).",
        "- Selection: each strategy's (trial, epoch) with the highest validation accuracy (ties: lower "
        "validation loss, then the earlier one). Its test accuracy is reported; test accuracy is never used "
        "to choose.",
        f"- Wall time of the whole comparison: {wall_s:.1f} s.", "",
        analysis.markdown_table(summary),
    ]
    failed = {name: errs for name, errs in errors.items() if errs}
    if failed:
        lines.append("Failed trials:\n")
        lines += [f"- {name}: {len(errs)} trial(s), e.g. {errs[0]}" for name, errs in failed.items()]
    return "\n".join(lines) + "\n"


def run_comparison(exp: ExperimentConfig, out: Path, *, joined: bool = False,
                   strategies: Sequence[StrategyConfig] | None = None,
                   progress: ProgressFn = print, resume: bool = False) -> ComparisonResult:
    """Run ``strategies`` (default: all of ``exp``'s) sequentially, each under ``exp.budget_s``, and
    write the output folder ``out`` (see the module doc). Ray must be initialised (:func:`init_ray`).

    ``resume``: continue the interrupted experiment in ``out`` (same config): strategies that had
    finished are read back, not rerun; the one that was running is restored from Ray's experiment state
    (its finished trials kept, the others continued from their last checkpoint, the searcher restored,
    the compute already spent counted against the budget); the rest run as usual."""
    start = time.time()
    strategies = list(strategies or exp.strategies)
    if not joined:  # on a cluster the data may live on the workers only
        for strategy in strategies:
            check_data(exp.run_config(strategy))
    resources = trial_resources(exp, joined=joined, note=progress)
    config_text = yaml.safe_dump(exp.to_dict(), sort_keys=False)
    out = prepare_output(Path(out), resume=resume, config_text=config_text)  # checked before anything is written
    if not resume:
        atomic_write_text(out / "config.yaml", config_text)
    storage = ray_storage(exp, out)
    journals = out / PROGRESS_DIR
    journals.mkdir(exist_ok=True)
    tables: list[pd.DataFrame] = []
    walls: dict[str, float] = {}
    errors: dict[str, tuple[str, ...]] = {}
    for i, strategy in enumerate(strategies, 1):
        config = exp.run_config(strategy)
        journal, done = journals / f"{strategy.name}.jsonl", journals / f"{strategy.name}.done.json"
        if resume and done.is_file():  # finished before the interruption: never rerun
            state = json.loads(done.read_text(encoding="utf-8"))
            walls[strategy.name], errors[strategy.name] = float(state["wall_s"]), tuple(state["errors"])
            table = pd.DataFrame(load_rows(journal))
            if not table.empty:
                tables.append(table)
            progress(f"== [{i}/{len(strategies)}] {strategy.name}: finished before the interruption "
                     f"({table['trial_id'].nunique() if not table.empty else 0} trials), not rerun")
            continue
        progress(f"== [{i}/{len(strategies)}] {strategy.name}: {config.lr.method} by {strategy.searcher}"
                 f"{' + ' + strategy.scheduler.upper() if strategy.scheduler != 'fifo' else ''}, budget {exp.budget_s:g} compute-s")
        outcome = run_strategy(exp, strategy, storage_path=storage, resources=resources, progress=progress,
                               journal=journal, resume=resume)
        walls[strategy.name], errors[strategy.name] = outcome.wall_s, outcome.errors
        atomic_write_text(done, json.dumps({"wall_s": outcome.wall_s, "errors": list(outcome.errors)}))
        for err in outcome.errors[:3]:
            progress(f"[{strategy.name}] trial error: {err}")
        if not outcome.table.empty:
            tables.append(outcome.table)
            write_trials(pd.concat(tables, ignore_index=True), out)  # partial results survive a crash
        spent = outcome.table[M.EPOCH_SECONDS].sum() if not outcome.table.empty else 0.0
        progress(f"== {strategy.name}: {outcome.table['trial_id'].nunique() if not outcome.table.empty else 0} "
                 f"trials, {spent:.1f} compute-s, {outcome.wall_s:.1f} wall-s")
    if not tables:
        first = next((e[0] for e in errors.values() if e), "no trial reported an epoch")
        raise RTHPOError(f"every trial failed (e.g. {first}); Ray's logs are in {storage}.")
    trials = pd.concat(tables, ignore_index=True)
    write_trials(trials, out)  # again: a resumed experiment may have read every strategy back
    summary = analysis.summary_table(trials, walls)
    wall = time.time() - start
    markdown = summary_markdown(exp, summary, resources, errors, wall)
    atomic_write_text(out / "summary.md", markdown)
    atomic_save_figure(analysis.plot_best_so_far(analysis.best_so_far(trials), exp.budget_s),
                       out / "best_so_far.png", dpi=120)
    atomic_save_figure(analysis.plot_lr_trajectories(trials), out / "lr_trajectories.png", dpi=120)
    return ComparisonResult(trials, summary, markdown, wall, out)


__all__ = ["ComparisonResult", "run_comparison", "prepare_output", "ray_storage", "write_trials", "summary_markdown",
           "MARKERS", "PROGRESS_DIR"]
