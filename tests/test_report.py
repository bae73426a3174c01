"""Pure unit tests of ray_rthpo.report (selection, summary, plots) on hand-made tables (no Ray)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from ray_rthpo import metrics as M
from ray_rthpo.report import plots as P
from ray_rthpo.report import selection as A
from ray_rthpo.report import summary as S


def row(strategy: str, trial: str, epoch: int, t: float, val: float, test: float, *, val_loss: float = 0.5,
        epoch_s: float = 1.0, lr: float = 0.1, diverged: bool = False, **extra: Any) -> dict[str, Any]:
    return {"strategy": strategy, "method": "fixed", "searcher": "random", "scheduler": "fifo",
            "trial_id": trial, M.EPOCH: epoch, "time/received_at": t, M.VAL_ACC: val, M.VAL_LOSS: val_loss,
            M.TEST_ACC: test, M.EPOCH_SECONDS: epoch_s, M.HYPER_SECONDS: 0.0, M.LR: lr,
            M.DIVERGED: diverged, **extra}


def table(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_chosen_test_accuracy_comes_from_the_best_validation_trial_not_the_best_test_trial() -> None:
    df = table(
        row("s", "a", 1, 1.0, val=0.90, test=0.99),  # best test accuracy, worse validation
        row("s", "b", 1, 2.0, val=0.95, test=0.80),  # best validation: this one is chosen
        row("s", "c", 1, 3.0, val=0.70, test=1.00),
    )
    best = A.best_by_validation(df)
    assert best["trial_id"] == "b" and best[M.TEST_ACC] == 0.80
    summary = S.summary_table(df)
    assert summary.loc[0, "test acc (chosen by val)"] == 0.80
    assert summary.loc[0, "best val acc"] == 0.95
    curve = A.best_so_far(df)
    assert curve[M.TEST_ACC].tolist() == [0.99, 0.80, 0.80]  # goes *down* when validation says so


def test_ties_break_on_validation_loss_then_first_reported_never_on_test() -> None:
    df = table(
        row("s", "a", 1, 1.0, val=0.9, test=0.5, val_loss=0.30),
        row("s", "b", 1, 2.0, val=0.9, test=0.9, val_loss=0.40),  # same acc, higher loss: not chosen
        row("s", "c", 1, 3.0, val=0.9, test=0.99, val_loss=0.30),  # exact tie: the earlier one stays
    )
    assert A.best_by_validation(df)["trial_id"] == "a"
    assert A.best_so_far(df)[M.TEST_ACC].tolist() == [0.5, 0.5, 0.5]


def test_best_epoch_of_a_trial_can_be_chosen_and_report_order_is_by_time_not_by_row() -> None:
    df = table(
        row("s", "a", 2, 4.0, val=0.80, test=0.70, epoch_s=2.0),
        row("s", "a", 1, 1.0, val=0.85, test=0.75, epoch_s=1.0),
        row("s", "b", 1, 2.0, val=0.60, test=0.90, epoch_s=0.5),
    )
    ordered = A.in_report_order(df)
    assert ordered["time/received_at"].tolist() == [1.0, 2.0, 4.0]
    assert ordered[A.CUMULATIVE_COMPUTE].tolist() == [1.0, 1.5, 3.5]
    best = A.best_by_validation(df)
    assert (best["trial_id"], best[M.EPOCH], best[M.TEST_ACC]) == ("a", 1, 0.75)


def test_curve_is_per_strategy_with_its_own_cumulative_compute() -> None:
    df = table(
        row("x", "a", 1, 1.0, val=0.5, test=0.5, epoch_s=2.0),
        row("y", "b", 1, 1.5, val=0.9, test=0.8, epoch_s=3.0),
        row("x", "c", 1, 2.0, val=0.7, test=0.6, epoch_s=2.0),
    )
    curve = A.best_so_far(df)
    x = curve[curve["strategy"] == "x"]
    assert x[A.CUMULATIVE_COMPUTE].tolist() == [2.0, 4.0] and x[M.TEST_ACC].tolist() == [0.5, 0.6]
    y = curve[curve["strategy"] == "y"]
    assert y[A.CUMULATIVE_COMPUTE].tolist() == [3.0]
    assert list(pd.unique(curve["strategy"])) == ["x", "y"]  # order of first appearance kept


def test_summary_counts_trials_diverged_compute_and_wall() -> None:
    df = table(
        row("s", "a", 1, 1.0, val=0.9, test=0.8, epoch_s=1.5),
        row("s", "a", 2, 2.0, val=0.92, test=0.81, epoch_s=1.5),
        row("s", "b", 1, 3.0, val=0.1, test=0.1, epoch_s=0.5, diverged=True),
        row("t", "c", 1, 1.0, val=0.3, test=0.3, diverged=True, **{"searched/lr.eta0": 3.0}),
    )
    summary = S.summary_table(df, {"s": 12.0})
    s, t = summary.iloc[0], summary.iloc[1]
    assert (s["trials"], s["diverged trials"], s["compute s"], s["wall s"]) == (2, 1, 3.5, 12.0)
    assert not s["chosen diverged"] and t["chosen diverged"] and math.isnan(t["wall s"])
    assert t["chosen config"] == "lr.eta0=3"
    text = S.markdown_table(summary)
    assert text.count("\n") == 4 and "DIVERGED" in text
    assert "| s | fixed | random | 0.9200 | 0.8100 | 2 | 1 |" in text


def test_scheduler_shows_in_the_searcher_column() -> None:
    df = table(row("s", "a", 1, 1.0, val=0.9, test=0.8, scheduler="asha"))
    assert S.summary_table(df).loc[0, "searcher"] == "random + asha"


def test_missing_test_accuracy_reads_na() -> None:
    df = table(row("s", "a", 1, 1.0, val=0.9, test=float("nan")))
    assert "n/a" in S.markdown_table(S.summary_table(df))


def test_best_by_validation_of_an_empty_table_says_so() -> None:
    with pytest.raises(ValueError, match="empty"):
        A.best_by_validation(pd.DataFrame(columns=["strategy", "time/received_at", M.EPOCH_SECONDS]))


def test_plots_are_figures_with_one_line_per_strategy(tmp_path: Any) -> None:
    from matplotlib.figure import Figure

    from ray_rthpo.report.files import atomic_save_figure

    df = table(
        row("x", "a", 1, 1.0, val=0.5, test=0.5, **{"config/lr.eta0": 0.2}),
        row("x", "a", 2, 2.0, val=0.6, test=0.55, lr=0.05, **{"config/lr.eta0": 0.2}),
        row("y", "b", 1, 1.5, val=0.9, test=0.8, **{"config/lr.eta0": 0.1}),
    )
    curve_fig = P.plot_best_so_far(A.best_so_far(df), budget_s=5.0)
    lr_fig = P.plot_lr_trajectories(df)
    assert isinstance(curve_fig, Figure) and isinstance(lr_fig, Figure)
    assert len(curve_fig.axes[0].get_lines()) >= 2
    lr_lines = [ln for ln in lr_fig.axes[0].get_lines() if len(ln.get_xdata()) > 1]
    assert [list(ln.get_xdata()) for ln in lr_lines] == [[0, 1, 2], [0, 1]]  # starts at eta-bar (epoch 0)
    path = atomic_save_figure(curve_fig, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
