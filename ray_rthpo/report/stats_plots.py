"""Figures of the multi-seed comparison (:mod:`ray_rthpo.report.stats`): matplotlib ``Figure`` objects built
without pyplot, returned and never shown. Nothing here computes a statistic: pass the frames of ``stats``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ray_rthpo import metrics as M
from ray_rthpo.report import stats as T

_STYLES = ["-", "--", "-.", ":"]


def _figure(ncols: int, width: float, height: float = 4.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: nothing is shown, no backend state is touched

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _need(frame: pd.DataFrame, columns: list[str], what: str, made_by: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs the column(s) {missing}, but got {list(frame.columns)}; pass the "
                         f"output of {made_by}.")


def plot_best_so_far(aggregated: pd.DataFrame, ranks: pd.DataFrame | None = None,
                     budget_s: float | None = None) -> Any:
    """Figure (``best_so_far.png``): panel 1, per strategy, the median over seeds of the test accuracy of the
    best-by-validation (trial, epoch) so far against cumulative compute, with its 25-75% band
    (``stats.aggregate_curves``); panel 2, the mean rank over the budget fraction (``stats.rank_curves``).

    What needs several seeds is left out with one (``aggregated``'s ``n seeds`` at most 1): the band and the
    rank panel (a rank over one seed moves with every test image); the figure is then the curves alone.
    ``ranks=None`` leaves out the rank panel too."""
    _need(aggregated, [T.STRATEGY, T.COMPUTE, "median", "q25", "q75"], "plot_best_so_far",
          "stats.aggregate_curves()")
    if ranks is not None:
        _need(ranks, [T.STRATEGY, T.FRACTION, "mean rank"], "plot_best_so_far", "stats.rank_curves()")
    seeds_seen = pd.to_numeric(aggregated["n seeds"], errors="coerce").max() if "n seeds" in aggregated else 1
    several = bool(seeds_seen > 1)
    with_ranks = several and ranks is not None
    fig, axes = _figure(2, 13.5) if with_ranks else _figure(1, 8.5)
    ax_acc = axes[0]
    colors: dict[Any, Any] = {}
    for i, (strategy, group) in enumerate(aggregated.groupby(T.STRATEGY, sort=False)):
        x = group[T.COMPUTE].to_numpy(dtype=float)
        seeds = int(group["n seeds"].max()) if "n seeds" in group else 0
        (line,) = ax_acc.step(x, group["median"].to_numpy(dtype=float), where="post", linewidth=1.6,
                              linestyle=_STYLES[(i // 10) % len(_STYLES)],
                              label=f"{strategy} (n={seeds})" if several else str(strategy))
        colors[strategy] = line.get_color()
        if several:
            ax_acc.fill_between(x, group["q25"].to_numpy(dtype=float), group["q75"].to_numpy(dtype=float),
                                step="post", alpha=0.2, color=line.get_color(), linewidth=0)
    if budget_s:
        ax_acc.axvline(budget_s, color="grey", linestyle=":", linewidth=1)
    low = _zoom_floor(aggregated)
    if low is not None:
        top = float(pd.to_numeric(aggregated["q75"], errors="coerce").max())
        ax_acc.set_ylim(low, min(1.0, top) + 0.01)
    ax_acc.set_xlabel("cumulative compute (s, summed over trials)")
    ax_acc.set_ylabel("test accuracy of the best-by-validation trial")
    ax_acc.set_title("Median over seeds, 25–75% band (chosen by validation)" if several
                     else "One seed: test accuracy of the run chosen by validation so far")
    if with_ranks:
        ax_rank = axes[1]
        for i, (strategy, group) in enumerate(ranks.groupby(T.STRATEGY, sort=False)):
            ax_rank.step(group[T.FRACTION].to_numpy(dtype=float), group["mean rank"].to_numpy(dtype=float),
                         where="post", linewidth=1.6, linestyle=_STYLES[(i // 10) % len(_STYLES)],
                         color=colors.get(strategy), label=str(strategy))
        ax_rank.set_xlabel("fraction of the compute budget")
        ax_rank.set_ylabel("mean rank over seeds (1 = best)")
        ax_rank.set_title("Mean rank over the budget")
        strategies = ranks[T.STRATEGY].nunique()
        if strategies:
            ax_rank.set_ylim(0.8, strategies + 0.2)
        ax_rank.grid(alpha=0.3)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower right")
    return fig


def _zoom_floor(aggregated: pd.DataFrame) -> float | None:
    """A y floor that hides the first tenth of the compute (all near chance) so the end of the race shows."""
    x = pd.to_numeric(aggregated[T.COMPUTE], errors="coerce")
    later = pd.to_numeric(aggregated.loc[x >= 0.1 * x.max(), "q25"], errors="coerce").dropna()
    return None if later.empty else max(0.0, float(later.min()) - 0.02)


def plot_final_outcomes(outcomes: pd.DataFrame, summary: pd.DataFrame) -> Any:
    """Figure: one row per strategy (in ``summary`` order), every seed's chosen test accuracy as a dot, with
    the IQM and its bootstrap CI (``stats.seed_outcomes``, ``stats.strategy_summary``)."""
    _need(outcomes, [T.STRATEGY, M.TEST_ACC], "plot_final_outcomes", "stats.seed_outcomes()")
    _need(summary, [T.STRATEGY, "test acc IQM", "IQM CI low", "IQM CI high"], "plot_final_outcomes",
          "stats.strategy_summary()")
    level = round(100 * float(summary.attrs.get("confidence_level", 0.95)))
    fig, (ax,) = _figure(1, 9.0, max(2.5, 0.5 * len(summary) + 1.5))
    for y, row in enumerate(summary.to_dict("records")):
        seeds = pd.to_numeric(outcomes.loc[outcomes[T.STRATEGY] == row[T.STRATEGY], M.TEST_ACC],
                              errors="coerce")
        ax.plot(seeds.to_numpy(dtype=float), np.full(len(seeds), y), "o", markerfacecolor="none", color="C0",
                markersize=5, label="one seed" if y == 0 else None)
        center, low, high = (float(row[k]) for k in ("test acc IQM", "IQM CI low", "IQM CI high"))
        if math.isfinite(low) and math.isfinite(high):
            ax.errorbar([center], [y], xerr=[[center - low], [high - center]], fmt="none",
                        color="C3", capsize=4)
        ax.plot([center], [y], "D", color="C3", markersize=6, label=f"IQM [{level}% CI]" if y == 0 else None)
    ax.set_yticks(range(len(summary)), [str(s) for s in summary[T.STRATEGY]])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy of the (trial, epoch) chosen by validation, full budget")
    ax.set_title("Outcome of every seed")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="best")
    return fig


__all__ = ["plot_best_so_far", "plot_final_outcomes"]
