"""Pure functions over the table of per-epoch trial results: selection by validation, summaries, plots.

The table has one row per reported epoch, with at least the columns ``strategy``, ``trial_id``,
``epoch``, ``val/acc``, ``val/loss``, ``test/acc``, ``lr``, ``time/epoch_s``, ``time/received_at``
and ``diverged`` (see :mod:`ray_rthpo.tune.runner`). Nothing here starts Ray or reads files.

Selection rule, everywhere: the best (trial, epoch) of a strategy is the one with the highest
validation accuracy; ties go to the lower validation loss, then to the one reported first. Its test
accuracy is what the tables and plots report. The test accuracy never takes part in choosing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ray_rthpo import metrics as M

STRATEGY = "strategy"
TRIAL_ID = "trial_id"
#: When the driver received the report (one clock for every node): the order of events.
RECEIVED_AT = "time/received_at"
CUMULATIVE_COMPUTE = "compute/cumulative_s"


def in_report_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by strategy (in order of first appearance), each sorted by report time, with
    ``compute/cumulative_s``: the compute seconds (sum of ``time/epoch_s``) the strategy had spent over
    all its trials when the row was reported."""
    if df.empty:
        return df.assign(**{CUMULATIVE_COMPUTE: pd.Series(dtype=float)})
    rank = {name: i for i, name in enumerate(pd.unique(df[STRATEGY]))}
    order = (df.assign(_rank=df[STRATEGY].map(rank)).sort_values(["_rank", RECEIVED_AT], kind="stable")
             .drop(columns="_rank").reset_index(drop=True))
    cumulative = order.groupby(STRATEGY, sort=False)[M.EPOCH_SECONDS].cumsum()
    return order.assign(**{CUMULATIVE_COMPUTE: cumulative})


def _better(row: Mapping[str, Any], best: Mapping[str, Any] | None) -> bool:
    """True when ``row`` beats ``best`` by validation accuracy, then validation loss (never test)."""
    if best is None:
        return True
    acc, best_acc = float(row[M.VAL_ACC]), float(best[M.VAL_ACC])
    if acc != best_acc:
        return acc > best_acc
    loss, best_loss = float(row[M.VAL_LOSS]), float(best[M.VAL_LOSS])
    return loss < best_loss


def best_so_far(df: pd.DataFrame) -> pd.DataFrame:
    """One row per report, in report order: the strategy's best (trial, epoch) by validation so far.

    Columns: strategy, compute/cumulative_s, the chosen row's trial_id, epoch, val/acc, test/acc.
    """
    rows: list[dict[str, Any]] = []
    for strategy, group in in_report_order(df).groupby(STRATEGY, sort=False):
        best: dict[str, Any] | None = None
        for record in group.to_dict("records"):
            if _better(record, best):
                best = record
            rows.append({STRATEGY: strategy, CUMULATIVE_COMPUTE: record[CUMULATIVE_COMPUTE],
                         TRIAL_ID: best[TRIAL_ID], M.EPOCH: best[M.EPOCH],
                         M.VAL_ACC: best[M.VAL_ACC], M.TEST_ACC: best.get(M.TEST_ACC)})
    columns = [STRATEGY, CUMULATIVE_COMPUTE, TRIAL_ID, M.EPOCH, M.VAL_ACC, M.TEST_ACC]
    return pd.DataFrame(rows, columns=columns)


def best_by_validation(df: pd.DataFrame) -> pd.Series:
    """The row (trial, epoch) of ``df`` with the best validation accuracy (ties: lower val loss, earlier)."""
    if df.empty:
        raise ValueError("best_by_validation needs at least one reported epoch, but the table is empty.")
    best: dict[str, Any] | None = None
    for record in in_report_order(df).to_dict("records"):
        if _better(record, best):
            best = record
    return pd.Series(best)


def summary_table(df: pd.DataFrame, wall_seconds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per strategy: best validation accuracy, the test accuracy of that (trial, epoch), the
    chosen configuration, trials run, diverged trials, compute seconds and wall seconds.

    Strategies appear in the order of their first row; ``wall_seconds`` maps strategy -> elapsed seconds.
    """
    rows = []
    for strategy, group in df.groupby(STRATEGY, sort=False):
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
            "compute s": float(group[M.EPOCH_SECONDS].sum()),
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


def _figure(ncols: int, width: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: nothing is shown, no backend state is touched

    fig = Figure(figsize=(width, 4.2), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def plot_best_so_far(curve: pd.DataFrame, budget_s: float | None = None) -> Any:
    """Figure: the test accuracy of the best-so-far (by validation) trial against cumulative compute
    seconds, every strategy on one axis; a second panel shows the best validation accuracy itself."""
    fig, (ax_test, ax_val) = _figure(2, 13.5)
    styles = ["-", "--", "-.", ":"]
    for i, (strategy, group) in enumerate(curve.groupby(STRATEGY, sort=False)):
        x = group[CUMULATIVE_COMPUTE].to_numpy()
        style = {"where": "post", "label": strategy, "linestyle": styles[(i // 10) % len(styles)], "linewidth": 1.6}
        ax_test.step(x, group[M.TEST_ACC].astype(float).to_numpy(), **style)
        ax_val.step(x, group[M.VAL_ACC].astype(float).to_numpy(), **style)
    for ax, column, what in ((ax_test, M.TEST_ACC, "test accuracy of the best-by-validation trial"),
                             (ax_val, M.VAL_ACC, "best validation accuracy so far")):
        ax.set_xlabel("cumulative compute (s, summed over trials)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if budget_s:
            ax.axvline(budget_s, color="grey", linestyle=":", linewidth=1)
        low = _zoom_floor(curve, column, budget_s)
        if low is not None:
            top = float(curve[column].astype(float).max())
            ax.set_ylim(low, min(1.0, top) + 0.01 if math.isfinite(top) else None)
    ax_test.set_title("Test accuracy at equal compute (chosen by validation)")
    ax_val.set_title("Validation accuracy (the searched metric)")
    ax_val.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _zoom_floor(curve: pd.DataFrame, column: str, budget_s: float | None) -> float | None:
    """A y-axis floor that hides the first few reports (all near chance) so the end of the race shows."""
    horizon = budget_s or (curve[CUMULATIVE_COMPUTE].max() if not curve.empty else 0.0)
    later = curve.loc[curve[CUMULATIVE_COMPUTE] >= 0.1 * horizon, column].astype(float).dropna()
    if later.empty:
        return None
    return max(0.0, float(later.min()) - 0.02)


def plot_lr_trajectories(df: pd.DataFrame) -> Any:
    """Figure: eta per epoch of each strategy's best-by-validation trial (log scale), starting at eta-bar."""
    fig, (ax,) = _figure(1, 11.0)
    markers, styles = "osv^DPXhd", ["-", "--", "-.", ":"]  # identical runs stay visible on top of each other
    for i, (strategy, group) in enumerate(df.groupby(STRATEGY, sort=False)):
        best = best_by_validation(group)
        trial = group[group[TRIAL_ID] == best[TRIAL_ID]].sort_values(M.EPOCH)
        epochs, lrs = list(trial[M.EPOCH]), list(trial[M.LR].astype(float))
        if "config/lr.eta0" in trial and pd.notna(trial["config/lr.eta0"].iloc[0]):
            epochs, lrs = [0, *epochs], [float(trial["config/lr.eta0"].iloc[0]), *lrs]
        method = str(trial["method"].iloc[0]) if "method" in trial else ""
        note = " lr multiplier" if method == "adadelta" else ""
        label = f"{strategy} ({method}{note}), chosen epoch {int(best[M.EPOCH])}"
        if M.DIVERGED in group:
            diverged = int(group.groupby(TRIAL_ID)[M.DIVERGED].any().sum())
            label += (" DIVERGED" if bool(best[M.DIVERGED]) else "") + (f"; {diverged} trial(s) diverged"
                                                                         if diverged else "")
        (line,) = ax.plot(epochs, [max(v, 1e-12) for v in lrs], marker=markers[i % len(markers)], markersize=4,
                          linestyle=styles[i % len(styles)], label=label, markerfacecolor="none")
        ax.plot([int(best[M.EPOCH])], [max(float(best[M.LR]), 1e-12)], marker="*", markersize=11,
                color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate η (end of epoch)")
    ax.set_title("η of each strategy's best-by-validation run (★: the chosen epoch)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


__all__ = ["in_report_order", "best_so_far", "best_by_validation", "summary_table", "markdown_table",
           "plot_best_so_far", "plot_lr_trajectories", "CUMULATIVE_COMPUTE", "STRATEGY", "TRIAL_ID",
           "RECEIVED_AT"]
