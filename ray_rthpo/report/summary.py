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


def summary_table(df: pd.DataFrame, wall_seconds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per strategy: best validation accuracy, the test accuracy of that (trial, epoch), the
    chosen configuration, trials run, diverged trials, compute seconds and wall seconds.

    Strategies appear in the order of their first row; ``wall_seconds`` maps strategy -> elapsed seconds.
    """
    rows = []
    for strategy, group in latest_reports(df).groupby(STRATEGY, sort=False):
        best = best_by_validation(group)
        trials = group.groupby(TRIAL_ID)[M.DIVERGED].any()
        searched = [c for c in group.columns if c.startswith("searched/") and group[c].notna().any()]
        config = ", ".join(f"{c.removeprefix('searched/')}={_fmt(best[c])}" for c in searched)
        rows.append({
            "strategy": strategy,
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
            "wall s": float((wall_seconds or {}).get(strategy, math.nan)),
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
    """The summary as a Markdown table (accuracies to 4 digits, seconds to 1; diverged choices marked)."""
    headers = ["strategy", "method", "searcher", "best val acc", "test acc (chosen by val)", "trials",
               "diverged trials", "compute s", "wall s", "chosen config"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in summary.to_dict("records"):
        test = row["test acc (chosen by val)"]
        cells = [row["strategy"], row["method"], row["searcher"], f"{row['best val acc']:.4f}",
                 "n/a" if math.isnan(test) else f"{test:.4f}", str(row["trials"]), str(row["diverged trials"]),
                 f"{row['compute s']:.1f}", "n/a" if math.isnan(row["wall s"]) else f"{row['wall s']:.1f}",
                 f"{row['chosen config']} (epoch {row['epoch']})" + (" DIVERGED" if row["chosen diverged"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
        markdown_table(summary),
    ]
    failed = {name: errs for name, errs in errors.items() if errs}
    if failed:
        lines.append("Failed trials:\n")
        lines += [f"- {name}: {len(errs)} trial(s), e.g. {errs[0]}" for name, errs in failed.items()]
    return "\n".join(lines) + "\n"


__all__ = ["summary_table", "markdown_table", "summary_markdown"]
