"""What a comparison reports (no Ray, no files): one row per run, chosen by validation, at what cost
(:func:`summary_table`), and the texts of ``summary.md`` and of the console (:func:`summary_texts`), which
open with the result (:mod:`ray_rthpo.report.conclusion`).

The input is the table of per-epoch reports (columns in :mod:`ray_rthpo.report.selection`); the
selection rule and the compute spent are :mod:`ray_rthpo.report.selection`'s, the only definitions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from ray_rthpo.experiment.config import ExperimentConfig, Resources

from ray_rthpo import metrics as M
from ray_rthpo.report.conclusion import Conclusion, conclude, test_set_size
from ray_rthpo.report.console import WIDTH, bullet, fit_table, paragraph
from ray_rthpo.report.selection import STRATEGY, TRIAL_ID, best_by_validation, compute_spent, latest_reports

#: What a trial of Ray Train workers reports as its number of workers (ray_rthpo.tune.train_workers.WORKERS).
WORKERS = "resources/workers"

SEED = "seed"


def summary_table(df: pd.DataFrame, wall_seconds: Mapping[Any, float] | None = None) -> pd.DataFrame:
    """One row per run of a strategy (per (strategy, seed) when the table has a ``seed`` column): best
    validation accuracy, the test accuracy of that (trial, epoch), the chosen configuration, trials run,
    diverged trials, compute seconds and wall seconds.

    Strategies appear in the order of their first row in ``df`` (a comparison's table is in the config's
    order), seeds sorted; ``wall_seconds`` maps strategy (or (strategy, seed)) -> elapsed seconds.
    """
    rows = []
    keys = [STRATEGY, SEED] if SEED in df else [STRATEGY]
    for key, group in latest_reports(df).groupby(keys, sort=False):
        strategy = key[0] if isinstance(key, tuple) else key
        wall_key = tuple(key) if len(keys) == 2 else strategy
        best = best_by_validation(group)
        trials = group.groupby(TRIAL_ID)[M.DIVERGED].any()
        searched = [c for c in group.columns if c.startswith("searched/") and group[c].notna().any()]
        config = ", ".join(f"{c.removeprefix('searched/')}={_fmt(best[c])}" for c in searched) or "no search"
        rows.append({
            "strategy": strategy,
            **({"seed": int(key[1])} if len(keys) == 2 else {}),
            "method": group["method"].iloc[0] if "method" in group else "",
            "searcher": _searcher_label(group),
            "best val acc": float(best[M.VAL_ACC]),
            "test acc (chosen by val)": _float(best.get(M.TEST_ACC)),
            "chosen diverged": bool(best[M.DIVERGED]),
            "epoch": int(best[M.EPOCH]),
            "trials": int(len(trials)),
            # Ray Train workers per trial (resources.workers; its trials report resources/workers), else 1
            "workers": int(pd.to_numeric(group[WORKERS], errors="coerce").max()) if WORKERS in group
            and group[WORKERS].notna().any() else 1,
            "diverged trials": int(trials.sum()),
            "compute s": compute_spent(group),
            "hypergrad s": float(group[M.HYPER_SECONDS].sum()) if M.HYPER_SECONDS in group else math.nan,
            "wall s": float((wall_seconds or {}).get(wall_key, math.nan)),
            "chosen config": config,
        })
    order = {name: i for i, name in enumerate(pd.unique(df[STRATEGY]))} if len(df) else {}
    rows.sort(key=lambda r: (order.get(r["strategy"], len(order)), r.get("seed", 0)))
    return pd.DataFrame(rows)


def _searcher_label(group: pd.DataFrame) -> str:
    searcher = str(group["searcher"].iloc[0]) if "searcher" in group else ""
    if "scheduler" in group and str(group["scheduler"].iloc[0]) not in ("fifo", "nan", ""):
        searcher += f" + {group['scheduler'].iloc[0]}"
    return searcher


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _resources_text(res: Resources) -> str:
    """``2 Ray Train workers ({'CPU': 0.5} each)`` or a single-process trial's request."""
    if res.workers > 1:
        return f"{res.workers} Ray Train workers ({res.per_worker()} each)"
    return str(res.as_ray())


def _workers_line(exp: ExperimentConfig) -> str:
    """What the setup line adds about resources: ``Each trial ran on N Ray Train workers`` when the
    experiment's ``resources.workers`` > 1, one sentence per strategy that named resources of its own, and
    that several workers' compute is workers x seconds; nothing when every trial was one process of the
    experiment's resources."""
    res = exp.resources
    own = [s for s in exp.strategies if exp.resources_of(s) != res]
    text = ""
    if res.workers > 1:
        text += f" Each trial ran on {_resources_text(res)}" + (", unless its strategy said otherwise." if own
                                                                else ".")
    for strategy in own:
        text += f" Strategy {strategy.name}: per trial {_resources_text(exp.resources_of(strategy))}."
    if res.workers > 1 or any(exp.resources_of(s).workers > 1 for s in own):
        text += " The compute of a trial of several workers is counted as workers x seconds."
    return text


def markdown_table(summary: pd.DataFrame) -> str:
    """The runs as a Markdown table (accuracies to 4 digits, seconds to 1; diverged choices marked). The
    ``seed`` column shows only when the runs have more than one seed."""
    seeded = "seed" in summary and summary["seed"].nunique() > 1
    workers = "workers" in summary and bool((summary["workers"] > 1).any())  # shown when a run had several
    headers = ["strategy", *(["seed"] if seeded else []), "method", "searcher", "best val acc",
               "test acc (chosen by val)", "trials", *(["workers"] if workers else []), "diverged trials",
               "compute s", "wall s", "chosen config"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in summary.to_dict("records"):
        test = row["test acc (chosen by val)"]
        cells = [row["strategy"], *([str(row["seed"])] if seeded else []), row["method"], row["searcher"],
                 f"{row['best val acc']:.4f}", "n/a" if math.isnan(test) else f"{test:.4f}",
                 str(row["trials"]), *([str(row["workers"])] if workers else []), str(row["diverged trials"]),
                 f"{row['compute s']:.1f}",
                 "n/a" if math.isnan(row["wall s"]) else f"{row['wall s']:.1f}",
                 f"{row['chosen config']} (epoch {row['epoch']})" + (" DIVERGED"
                                                                     if row["chosen diverged"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SummaryTexts:
    """What a comparison reports: ``markdown`` (the text of ``summary.md``: the result, then every table in
    full), ``console`` (the result, then one table, every line at most 120 columns), ``per_strategy``
    (``stats.strategy_summary``) and ``conclusion`` (:class:`ray_rthpo.report.conclusion.Conclusion`)."""

    markdown: str
    console: str
    per_strategy: pd.DataFrame
    conclusion: Conclusion


def summary_texts(exp: ExperimentConfig, trials: pd.DataFrame, walls: Mapping[tuple[Any, Any], float],
                  resources: dict[str, float], errors: Mapping[str, tuple[str, ...]], wall_s: float,
                  overhead: str = "") -> SummaryTexts:
    """``summary.md`` and the console's closing lines. ``summary.md`` opens with the result
    (:mod:`ray_rthpo.report.conclusion`: the best strategy, who is within its noise, where the untuned
    RT-HPO run stands), then what was compared and how it was chosen, per strategy over seeds
    (:mod:`ray_rthpo.report.stats`; with one seed, without the columns that need several), the time to
    ``target_val_acc`` when the experiment names one, every run (strategy, seed), then failed trials. The
    console text has the same result and one table, best first, at most 120 columns wide."""
    from ray_rthpo.factories import workload_name
    from ray_rthpo.report import stats

    outcomes = stats.seed_outcomes(trials, dict(walls))
    per_strategy = stats.strategy_summary(outcomes)
    test_size = test_set_size(trials)
    conclusion = conclude(outcomes, per_strategy, test_size=test_size, budget_s=exp.budget_s)
    result = conclusion.lines(WIDTH)
    seeds = exp.repetitions()
    runs = summary_table(trials, walls)
    lines = [
        f"# {exp.name}: learning-rate strategies at equal compute", "", *result, "", "## Setup", "",
        f"- Budget: {exp.budget_s:g} compute seconds per strategy and seed (time/epoch_s summed over "
        "its trials: training, hypergradient and evaluation time), the same for every strategy.",
        f"- Repetitions: {len(seeds)} (searcher seeds {', '.join(map(str, seeds))}; repetition r trains with "
        "train.seed + r): the same seeds for every strategy, so comparisons are paired.",
        f"- Per trial: {resources}; at most {exp.max_concurrent} trials at once." + _workers_line(exp),
        f"- Workload: {workload_name(exp.base)}, {exp.base.train.epochs} epochs per trial "
        "(unless a strategy overrides it)" + (f"; {test_size} test images." if test_size else "."),
        "- Selection: each run's (trial, epoch) with the highest validation accuracy (ties: lower validation "
        "loss, then the one reported first). Its test accuracy is reported; test accuracy is never used to "
        "choose.",
        f"- Wall time of the whole comparison: {wall_s:.1f} s.{overhead}", "",
        "## Per strategy" + (", over seeds" if conclusion.seeds > 1 else " (one seed)"), "",
        stats.markdown_summary(per_strategy, test_size=test_size),
    ]
    if exp.target_val_acc is not None:
        target = stats.time_to_target(stats.seed_time_to_target(trials, exp.target_val_acc))
        lines += ["## Compute to reach the target", "", stats.markdown_time_to_target(target)]
    lines += ["## Every run", "", markdown_table(runs)]
    failed = {name: errs for name, errs in errors.items() if errs}
    if failed:
        lines.append("Failed trials:\n")
        lines += [f"- {name}: {len(errs)} trial(s), e.g. {errs[0]}" for name, errs in failed.items()]
    console = [*result, "", *console_table(conclusion, per_strategy, runs), ""]
    if failed:
        console += bullet("Failed trials:", [f"{name} {len(errs)}" for name, errs in failed.items()])
    more = "the compute to reach the target, " if exp.target_val_acc is not None else ""
    console += paragraph(f"summary.md has every column, {more}every run and a legend"
                         f"{' and the failed trials' if failed else ''}.")
    return SummaryTexts("\n".join(lines) + "\n", "\n".join(console) + "\n", per_strategy, conclusion)


def console_table(conclusion: Conclusion, per_strategy: pd.DataFrame, runs: pd.DataFrame,
                  width: int = WIDTH) -> list[str]:
    """One table for the console, best first, at most ``width`` columns. One seed: each strategy's test
    accuracy, its difference to the best (test images when the test set's size is known), validation
    accuracy, trials, diverged trials, compute seconds and the chosen configuration (cut to fit). Several
    seeds: mean test accuracy with its CI, mean rank, paired difference to the best with its CI, diverged
    trials and compute seconds per seed."""
    order = {s.strategy: i for i, s in enumerate(conclusion.standings)}
    if conclusion.seeds <= 1:
        headers = ["strategy", "test acc", "vs best", "val acc", "trials", "diverged", "compute s",
                   "chosen config (epoch)"]
        rows = []
        for run in sorted(runs.to_dict("records"), key=lambda r: order.get(r["strategy"], len(order))):
            standing = conclusion.standing(run["strategy"])
            config = re.sub(r"(^|, )lr\.", r"\1", str(run["chosen config"]))
            chosen = f"{config} (epoch {run['epoch']})" + (" DIVERGED" if run["chosen diverged"] else "")
            rows.append([str(run["strategy"]), _acc(run["test acc (chosen by val)"]),
                         _versus(conclusion, standing), _acc(run["best val acc"]), str(run["trials"]),
                         str(run["diverged trials"]), f"{run['compute s']:.1f}", chosen])
        return fit_table(headers, rows, width=width, drop=["val acc", "trials", "diverged"],
                         shorten="chosen config (epoch)")
    level = round(100 * conclusion.confidence_level)
    headers = ["strategy", "seeds", f"test acc mean [{level}% CI]", "mean rank",
               f"diff vs best [{level}% CI]", "diverged", "compute s/seed"]
    rows = []
    for r in sorted(per_strategy.to_dict("records"), key=lambda r: order.get(r["strategy"], len(order))):
        standing = conclusion.standing(r["strategy"])
        mean = _acc(r["test acc mean"]) + (f" [{_acc(r['mean CI low'])}, {_acc(r['mean CI high'])}]"
                                           if math.isfinite(r["mean CI low"]) else "")
        rows.append([str(r["strategy"]), str(r["n seeds"]), mean,
                     f"{r['mean rank']:.2f}" if math.isfinite(r["mean rank"]) else "n/a",
                     _versus(conclusion, standing), f"{r['diverged trials']} of {r['trials']}",
                     f"{r['compute s mean']:.1f}"])
    return fit_table(headers, rows, width=width, drop=["compute s/seed", "diverged", "seeds"],
                     shorten=f"diff vs best [{level}% CI]")


def _versus(conclusion: Conclusion, standing: Any) -> str:
    if standing.verdict in ("best", "tied best", "no test accuracy"):
        return {"no test accuracy": "n/a"}.get(standing.verdict, standing.verdict)
    if conclusion.seeds <= 1:
        if standing.images is not None:
            return f"{standing.images:+d} of {conclusion.test_size}"
        return f"{standing.diff:+.4f}"
    low, high = standing.ci
    ci = f" [{low:+.4f}, {high:+.4f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{standing.diff:+.4f}{ci}"


def _acc(value: Any) -> str:
    number = _float(value)
    return "n/a" if math.isnan(number) else f"{number:.4f}"


def summary_markdown(exp: ExperimentConfig, trials: pd.DataFrame, walls: Mapping[tuple[Any, Any], float],
                     resources: dict[str, float], errors: Mapping[str, tuple[str, ...]], wall_s: float,
                     overhead: str = "") -> tuple[str, pd.DataFrame]:
    """The text of ``summary.md`` and the per-strategy statistics it shows (:func:`summary_texts`)."""
    texts = summary_texts(exp, trials, walls, resources, errors, wall_s, overhead)
    return texts.markdown, texts.per_strategy


__all__ = ["summary_table", "markdown_table", "SummaryTexts", "summary_texts", "console_table",
           "summary_markdown"]
