"""One row per strategy of a comparison: what was chosen by validation, at what cost (no Ray, no files).

The input is the table of per-epoch reports (columns in :mod:`ray_rthpo.report.selection`); the
selection rule and the compute spent are :mod:`ray_rthpo.report.selection`'s, the only definitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from ray_rthpo.experiment.config import ExperimentConfig

from ray_rthpo import metrics as M
from ray_rthpo.report.selection import STRATEGY, TRIAL_ID, best_by_validation, compute_spent, latest_reports

SEED = "seed"


def summary_table(df: pd.DataFrame, wall_seconds: Mapping[Any, float] | None = None) -> pd.DataFrame:
    """One row per run of a strategy (per (strategy, seed) when the table has a ``seed`` column): best
    validation accuracy, the test accuracy of that (trial, epoch), the chosen configuration, trials run,
    diverged trials, compute seconds and wall seconds.

    Rows appear in the order of their first report; ``wall_seconds`` maps strategy (or (strategy, seed))
    -> elapsed seconds.
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
            "diverged trials": int(trials.sum()),
            "compute s": compute_spent(group),
            "hypergrad s": float(group[M.HYPER_SECONDS].sum()) if M.HYPER_SECONDS in group else math.nan,
            "wall s": float((wall_seconds or {}).get(wall_key, math.nan)),
            "chosen config": config,
        })
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


def markdown_table(summary: pd.DataFrame) -> str:
    """The runs as a Markdown table (accuracies to 4 digits, seconds to 1; diverged choices marked)."""
    seeded = "seed" in summary
    headers = ["strategy", *(["seed"] if seeded else []), "method", "searcher", "best val acc",
               "test acc (chosen by val)", "trials", "diverged trials", "compute s", "wall s", "chosen config"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in summary.to_dict("records"):
        test = row["test acc (chosen by val)"]
        cells = [row["strategy"], *([str(row["seed"])] if seeded else []), row["method"], row["searcher"],
                 f"{row['best val acc']:.4f}", "n/a" if math.isnan(test) else f"{test:.4f}", str(row["trials"]),
                 str(row["diverged trials"]), f"{row['compute s']:.1f}",
                 "n/a" if math.isnan(row["wall s"]) else f"{row['wall s']:.1f}",
                 f"{row['chosen config']} (epoch {row['epoch']})" + (" DIVERGED" if row["chosen diverged"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(exp: ExperimentConfig, trials: pd.DataFrame, walls: Mapping[tuple[Any, Any], float],
                     resources: dict[str, float], errors: Mapping[str, tuple[str, ...]], wall_s: float,
                     overhead: str = "") -> tuple[str, pd.DataFrame]:
    """The text of ``summary.md`` and the per-strategy statistics it shows: what was compared and how it
    was chosen; per strategy over seeds (:mod:`ray_rthpo.report.stats`); the time to ``target_val_acc``
    when the experiment names one; then every run (strategy, seed); then failed trials."""
    from ray_rthpo.factories import workload_name
    from ray_rthpo.report import stats

    outcomes = stats.seed_outcomes(trials, dict(walls))
    per_strategy = stats.strategy_summary(outcomes)
    seeds = exp.repetitions()
    lines = [
        f"# {exp.name}: learning-rate strategies at equal compute", "",
        f"- Budget: {exp.budget_s:g} compute seconds per strategy and seed (time/epoch_s summed over its trials: "
        "training, hypergradient and evaluation time), the same for every strategy.",
        f"- Repetitions: {len(seeds)} (searcher seeds {', '.join(map(str, seeds))}; repetition r trains with "
        "train.seed + r): the same seeds for every strategy, so comparisons are paired.",
        f"- Per trial: {resources}; at most {exp.max_concurrent} trials at once.",
        f"- Workload: {workload_name(exp.base)}, {exp.base.train.epochs} epochs per trial "
        "(unless a strategy overrides it).",
        "- Selection: each run's (trial, epoch) with the highest validation accuracy (ties: lower validation "
        "loss, then the one reported first). Its test accuracy is reported; test accuracy is never used to "
        "choose.",
        f"- Wall time of the whole comparison: {wall_s:.1f} s.{overhead}", "",
        "## Per strategy, over seeds", "", stats.markdown_summary(per_strategy),
    ]
    if exp.target_val_acc is not None:
        target = stats.time_to_target(stats.seed_time_to_target(trials, exp.target_val_acc))
        lines += ["## Compute to reach the target", "", stats.markdown_time_to_target(target)]
    lines += ["## Every run", "", markdown_table(summary_table(trials, walls))]
    failed = {name: errs for name, errs in errors.items() if errs}
    if failed:
        lines.append("Failed trials:\n")
        lines += [f"- {name}: {len(errs)} trial(s), e.g. {errs[0]}" for name, errs in failed.items()]
    return "\n".join(lines) + "\n", per_strategy


__all__ = ["summary_table", "markdown_table", "summary_markdown"]
