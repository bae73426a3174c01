"""The comparison's figures: best-so-far curves and learning-rate trajectories (matplotlib, no pyplot).

Pure functions over the table of per-epoch reports (:mod:`ray_rthpo.report.selection` says how a
(trial, epoch) is chosen); each returns a ``Figure`` for :func:`ray_rthpo.report.files.atomic_save_figure`.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ray_rthpo import metrics as M
from ray_rthpo.report.selection import (
    CUMULATIVE_COMPUTE,
    STRATEGY,
    TRIAL_ID,
    best_by_validation,
    latest_reports,
)


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
        style = {"where": "post", "label": strategy, "linestyle": styles[(i // 10) % len(styles)],
                 "linewidth": 1.6}
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


#: Methods whose reported ``lr`` is not a learning rate: AdaDelta's ``lr`` multiplies a per-parameter step
#: (sqrt of its running averages), so no scalar of it is one. Left out of the learning-rate plot.
NOT_A_LEARNING_RATE = {"adadelta": "its lr multiplies a per-parameter step; it has no learning rate"}
#: Methods whose reported ``lr`` is an effective step size (``training.methods.read_lr``), while their
#: ``lr.eta0`` is a multiplier: plotted without the multiplier at epoch 0, and labelled.
EFFECTIVE_STEP = {"prodigy": "effective step size d·lr", "dadapt": "effective step size d·lr",
                  "dog": "DoG's step size"}


def plot_lr_trajectories(df: pd.DataFrame) -> Any:
    """Figure: the learning rate per epoch of each strategy's best-by-validation trial (log scale), starting
    at eta-bar. Only learning rates share the η axis: for Prodigy and D-Adaptation the effective step size
    d·lr and for DoG its step size (labelled so, their eta-bar is a multiplier and is not drawn); AdaDelta,
    whose lr is a multiplier, is left out, and the legend says so (:data:`NOT_A_LEARNING_RATE`)."""
    fig, (ax,) = _figure(1, 11.0)
    markers, styles = "osv^DPXhd", ["-", "--", "-.", ":"]  # identical runs stay visible on top of each other
    left_out: list[str] = []
    effective = False
    reports = latest_reports(df)
    for i, strategy in enumerate(pd.unique(df[STRATEGY])):  # in the table's (the config's) order
        group = reports[reports[STRATEGY] == strategy]
        best = best_by_validation(group)
        trial = group[group[TRIAL_ID] == best[TRIAL_ID]].sort_values(M.EPOCH)
        method = str(trial["method"].iloc[0]) if "method" in trial else ""
        if method in NOT_A_LEARNING_RATE:
            left_out.append(f"{strategy} ({method}): not shown, {NOT_A_LEARNING_RATE[method]}")
            continue
        epochs, lrs = list(trial[M.EPOCH]), list(trial[M.LR].astype(float))
        eta0 = trial["config/lr.eta0"].iloc[0] if "config/lr.eta0" in trial else None
        if method not in EFFECTIVE_STEP and eta0 is not None and pd.notna(eta0):
            epochs, lrs = [0, *epochs], [float(eta0), *lrs]
        note = f", {EFFECTIVE_STEP[method]}" if method in EFFECTIVE_STEP else ""
        effective = effective or bool(note)
        label = f"{strategy} ({method}{note}), chosen epoch {int(best[M.EPOCH])}"
        if M.DIVERGED in group:
            diverged = int(group.groupby(TRIAL_ID)[M.DIVERGED].any().sum())
            label += (" DIVERGED" if bool(best[M.DIVERGED]) else "") + (f"; {diverged} trial(s) diverged"
                                                                         if diverged else "")
        (line,) = ax.plot(epochs, [max(v, 1e-12) for v in lrs], marker=markers[i % len(markers)],
                          markersize=4, linestyle=styles[i % len(styles)], label=label,
                          markerfacecolor="none")
        ax.plot([int(best[M.EPOCH])], [max(float(best[M.LR]), 1e-12)], marker="*", markersize=11,
                color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    where = "; effective step size where labelled" if effective else ""
    ax.set_ylabel(f"learning rate η (end of epoch){where}")
    ax.set_title("η of each strategy's best-by-validation run (★: the chosen epoch)")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    if left_out:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], linestyle="none") for _ in left_out]
        labels += left_out
    ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


__all__ = ["NOT_A_LEARNING_RATE", "EFFECTIVE_STEP", "plot_best_so_far", "plot_lr_trajectories"]
