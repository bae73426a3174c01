"""Pure unit tests of ray_rthpo.table1.report (the paper's Table 1) on hand-built tables (no Ray)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import count
from typing import Any

import pandas as pd
import pytest

from ray_rthpo import metrics as M
from ray_rthpo.table1 import report as T

_clock = count(1)


def rep(strategy: str, trial: str, epoch: int, val: float, test: float, *, val_loss: float = 0.5,
        eta0: float = 0.01, beta: float | None = 1e-3, epoch_s: float = 30.0, total_s: float | None = None,
        lr: float | None = None, diverged: bool = False, t: float | None = None) -> dict[str, Any]:
    """One report; received_at increases with every call unless ``t`` is given."""
    return {"strategy": strategy, "trial_id": trial, M.EPOCH: epoch, M.VAL_ACC: val, M.VAL_LOSS: val_loss,
            M.TEST_ACC: test, M.TOTAL_SECONDS: epoch * epoch_s if total_s is None else total_s,
            M.EPOCH_SECONDS: epoch_s, M.LR: eta0 if lr is None else lr, M.DIVERGED: diverged,
            M.STATUS: "diverged" if diverged else "running", "config/lr.eta0": eta0, "config/lr.beta": beta,
            "time/received_at": float(next(_clock)) if t is None else t}


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


# (eta0, beta) -> (val, test) at the last (best) epoch; epoch 1 is always worse on validation.
GRID = {
    (1e-3, 1e-4): (0.90, 0.91),
    (1e-3, 1e-3): (0.92, 0.93),
    (1e-3, 1e-2): (0.91, 0.89),
    (1e-2, 1e-4): (0.95, 0.96),  # the best run by validation
    (1e-2, 1e-3): (0.94, 0.94),
    (1e-2, 1e-2): (0.93, 0.90),
}


def grid_rows(strategy: str = "rthpo", epoch_s: float = 30.0) -> list[dict[str, Any]]:
    rows = []
    for k, ((eta0, beta), (val, test)) in enumerate(GRID.items()):
        trial = f"{strategy}_{k}"
        # epoch 1: a *higher* test accuracy at a worse validation accuracy (must never be picked)
        rows.append(rep(strategy, trial, 1, val - 0.10, 0.99, eta0=eta0, beta=beta, epoch_s=epoch_s,
                        lr=eta0 * 1.5))
        rows.append(rep(strategy, trial, 2, val, test, eta0=eta0, beta=beta, epoch_s=epoch_s, lr=eta0 * 2))
    return rows


@pytest.fixture()
def figures() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for fig in made:
        fig.clear()


def test_grid2d_exact_numbers_from_a_2x3_grid() -> None:
    table = T.table1(frame(*grid_rows()), [T.RowSpec("RT-HPO", "rthpo", "grid2d")])
    assert list(table.columns) == list(T.TABLE1_COLUMNS)
    row = table.iloc[0]
    # best run (by validation): eta0=1e-2, beta=1e-4, test 96 (not the 99 of its worse-val epoch 1)
    assert row["best_eta0"] == 1e-2 and row["best_beta"] == 1e-4 and row["best_epoch"] == 2
    assert row["top"] == pytest.approx(96.0)
    # Fixed eta-bar = the runs at eta0=1e-2 over the beta grid: 96, 94, 90
    mean = (96 + 94 + 90) / 3
    std = math.sqrt(((96 - mean) ** 2 + (94 - mean) ** 2 + (90 - mean) ** 2) / (3 - 1))
    assert row["fixed_eta_mean"] == pytest.approx(mean) and row["fixed_eta_std"] == pytest.approx(std)
    assert row["fixed_eta_n"] == 3 and row["fixed_eta_diverged"] == 0
    # Fixed beta = the runs at beta=1e-4 over the eta-bar grid: 91, 96
    mean_b = (91 + 96) / 2
    std_b = math.sqrt(((91 - mean_b) ** 2 + (96 - mean_b) ** 2) / (2 - 1))
    assert row["fixed_beta_mean"] == pytest.approx(mean_b) and row["fixed_beta_std"] == pytest.approx(std_b)
    assert row["fixed_beta_n"] == 2
    # Time: mean over runs of the final time/total_s (2 epochs x 30 s = 1 minute each)
    assert row["time_min"] == pytest.approx(1.0)
    assert row["runs"] == 6 and row["diverged_runs"] == 0 and row["note"] == ""


def test_grid2d_with_a_missing_run_averages_the_runs_present() -> None:
    rows = [r for r in grid_rows() if r["trial_id"] != "rthpo_5"]  # (1e-2, 1e-2) errored before reporting
    row = T.table1(frame(*rows), [T.RowSpec("RT-HPO", "rthpo", "grid2d")]).iloc[0]
    assert row["fixed_eta_n"] == 2 and row["fixed_eta_mean"] == pytest.approx(95.0)
    assert row["fixed_eta_std"] == pytest.approx(math.sqrt(2.0))
    assert row["runs"] == 5


def test_best_epoch_is_chosen_by_validation_not_test() -> None:
    df = frame(rep("s", "a", 1, 0.80, 0.99), rep("s", "a", 2, 0.90, 0.85), rep("s", "a", 3, 0.85, 0.97))
    runs = T.run_results(df, "s")
    assert runs.loc[0, "epoch"] == 2 and runs.loc[0, M.TEST_ACC] == 0.85
    row = T.table1(df, [T.RowSpec("One", "s", "single")]).iloc[0]
    assert row["top"] == pytest.approx(85.0) and row["best_epoch"] == 2


def test_ties_break_on_validation_loss_then_first_reported() -> None:
    df = frame(
        rep("s", "a", 1, 0.9, 0.70, val_loss=0.40),
        rep("s", "a", 2, 0.9, 0.71, val_loss=0.30),  # same acc, lower loss: chosen for run a
        rep("s", "a", 3, 0.9, 0.99, val_loss=0.30),  # exact tie, later epoch: not chosen
        rep("s", "b", 1, 0.9, 0.50, val_loss=0.35),
        rep("s", "b", 2, 0.9, 0.98, val_loss=0.35),  # run b: epoch 1 wins the exact tie
    )
    runs = T.run_results(df, "s")
    assert runs["trial_id"].tolist() == ["a", "b"]  # a's result has the lower loss
    assert runs.loc[0, "epoch"] == 2 and runs.loc[0, M.TEST_ACC] == 0.71
    assert runs.loc[1, "epoch"] == 1 and runs.loc[1, M.TEST_ACC] == 0.50
    # across runs, equal acc and loss: the result reported first wins (report.selection's one rule, the
    # same as the comparison table's), even when the other one came at an earlier epoch
    df2 = frame(rep("s", "x", 1, 0.5, 0.1), rep("s", "x", 2, 0.9, 0.2), rep("s", "y", 1, 0.9, 0.3))
    assert T.run_results(df2, "s")["trial_id"].tolist() == ["x", "y"]
    df3 = frame(rep("s", "x", 1, 0.9, 0.2), rep("s", "y", 1, 0.9, 0.3))
    assert T.table1(df3, [T.RowSpec("S", "s", "search")]).loc[0, "best_trial"] == "x"


def test_duplicate_epoch_reports_keep_the_last_by_received_time() -> None:
    df = frame(
        rep("s", "a", 1, 0.80, 0.80, t=1.0),
        rep("s", "a", 2, 0.99, 0.99, t=2.0, total_s=60.0),  # lost with the restart, replaced below
        rep("s", "a", 2, 0.85, 0.84, t=4.0, total_s=65.0),  # the last report of epoch 2
        rep("s", "a", 3, 0.82, 0.90, t=3.0, total_s=50.0),  # row order is not report order
    )
    latest = T.latest_reports(df)
    assert len(latest) == 3 and latest["time/received_at"].tolist() == [1.0, 3.0, 4.0]
    row = T.table1(df, [T.RowSpec("A", "s", "single")]).iloc[0]
    assert row["top"] == pytest.approx(84.0) and row["best_epoch"] == 2
    # compute: each kept (trial, epoch) once, by its own time/epoch_s (report.selection.compute_spent)
    assert row["time_min"] == pytest.approx(3 * 30.0 / 60.0)


def test_diverged_runs_count_in_the_means_and_are_marked() -> None:
    rows = grid_rows()
    # run (1e-2, 1e-2) diverges at epoch 2; its result stays what it reached (epoch 2: val .93, test .90)
    for r in rows:
        if r["trial_id"] == "rthpo_5" and r[M.EPOCH] == 2:
            r[M.DIVERGED] = True
    table = T.table1(frame(*rows), [T.RowSpec("RT-HPO", "rthpo", "grid2d")])
    row = table.iloc[0]
    assert row["fixed_eta_diverged"] == 1 and row["fixed_beta_diverged"] == 0
    assert row["fixed_eta_mean"] == pytest.approx((96 + 94 + 90) / 3)  # counted with what it reached
    assert row["diverged_runs"] == 1 and not row["top_diverged"]
    text = T.table1_markdown(table, "Table 1: test.")
    assert "| RT-HPO | 93.33 ± 3.06 †1 | 93.50 ± 3.54 | **96.00** | 1.0 |" in text
    assert "†k: k runs of the cell diverged" in text


def test_top_is_marked_when_the_best_run_diverged() -> None:
    df = frame(rep("s", "a", 1, 0.9, 0.8, diverged=True), rep("s", "b", 1, 0.7, 0.95))
    table = T.table1(df, [T.RowSpec("Search", "s", "search")])
    assert bool(table.loc[0, "top_diverged"]) and table.loc[0, "diverged_runs"] == 1
    assert "| Search | - | - | **80.00** † | 1.0 |" in T.table1_markdown(table, "c")


def test_missing_strategy_gives_an_na_row_with_a_note() -> None:
    specs = [T.RowSpec("RT-HPO", "rthpo", "grid2d"), T.RowSpec("BO", "bo", "search")]
    table = T.table1(frame(*grid_rows()), specs)
    row = table.iloc[1]
    assert row["runs"] == 0 and math.isnan(row["top"]) and math.isnan(row["time_min"])
    assert "not in the results" in row["note"]
    text = T.table1_markdown(table, "caption")
    assert "| BO | n/a | n/a | n/a | n/a |" in text and "- BO: strategy 'bo' is not in the results." in text
    assert T.table1(frame(), specs)["runs"].tolist() == [0, 0]


def test_time_semantics_total_versus_mean_per_kind() -> None:
    rows = grid_rows("fo", epoch_s=60.0)  # 6 runs x 2 epochs x 1 min
    rows += [rep("grid", f"g{k}", e, 0.5 + k / 10, 0.6, eta0=eta, beta=None, epoch_s=30.0)
             for k, eta in enumerate((1e-3, 1e-2, 1e-1)) for e in (1, 2)]  # 3 runs x 1 min
    rows += [rep("bo", f"b{k}", 1, 0.5, 0.6, epoch_s=120.0) for k in range(4)]  # 4 runs x 2 min
    rows += [rep("ada", "d", e, 0.9, 0.9, epoch_s=90.0, beta=None) for e in (1, 2, 3)]  # 4.5 min
    # PBT: trial q clones p's checkpoint at epoch 2 and inherits its cumulative time/total_s
    rows += [rep("pbt", "p", 1, 0.5, 0.5, epoch_s=60.0), rep("pbt", "p", 2, 0.6, 0.6, epoch_s=60.0),
             rep("pbt", "q", 1, 0.4, 0.4, epoch_s=60.0), rep("pbt", "q", 2, 0.7, 0.75, epoch_s=60.0),
             rep("pbt", "q", 3, 0.65, 0.8, epoch_s=60.0, total_s=180.0)]
    specs = [T.RowSpec("FO", "fo", "grid2d"), T.RowSpec("Grid Search", "grid", "grid1d"),
             T.RowSpec("BO", "bo", "search"), T.RowSpec("AdaDelta", "ada", "single"),
             T.RowSpec("PBT", "pbt", "population")]
    table = T.table1(frame(*rows), specs).set_index("label")
    assert table.loc["FO", "time_min"] == pytest.approx(2.0)  # mean of one run
    assert table.loc["Grid Search", "time_min"] == pytest.approx(3.0)  # total
    assert table.loc["BO", "time_min"] == pytest.approx(8.0)  # total
    assert table.loc["AdaDelta", "time_min"] == pytest.approx(4.5)  # that run
    assert table.loc["PBT", "time_min"] == pytest.approx(5.0)  # 5 epochs x 1 min, not 2 + 3 min totals + ...
    # grid1d: Fixed eta-bar does not apply; Fixed beta is over the whole eta-bar grid
    grid = table.loc["Grid Search"]
    assert math.isnan(grid["fixed_eta_mean"]) and grid["fixed_eta_n"] == 0
    assert grid["fixed_beta_mean"] == pytest.approx(60.0) and grid["fixed_beta_n"] == 3
    assert grid["best_eta0"] == 1e-1 and math.isnan(grid["best_beta"])
    # search / single / population: Top only
    for label in ("BO", "AdaDelta", "PBT"):
        assert (math.isnan(table.loc[label, "fixed_eta_mean"])
                and math.isnan(table.loc[label, "fixed_beta_mean"]))
    assert table.loc["PBT", "top"] == pytest.approx(75.0) and table.loc["PBT", "best_trial"] == "q"
    assert table.loc["AdaDelta", "top"] == pytest.approx(90.0)


def test_single_row_with_several_runs_shows_the_best_and_says_so() -> None:
    df = frame(rep("ada", "a", 1, 0.8, 0.7, epoch_s=60.0), rep("ada", "b", 1, 0.9, 0.6, epoch_s=120.0))
    row = T.table1(df, [T.RowSpec("AdaDelta", "ada", "single")]).iloc[0]
    assert row["top"] == pytest.approx(60.0) and row["time_min"] == pytest.approx(2.0)
    assert "2 runs" in row["note"]


def test_markdown_layout_bold_ties_paper_table_and_caption() -> None:
    rows = grid_rows("a") + grid_rows("b") + [rep("ada", "d", 1, 0.5, 0.5, epoch_s=25.2)]
    specs = [T.RowSpec("First-order (Train)", "a", "grid2d"), T.RowSpec("RT-HPO", "b", "grid2d"),
             T.RowSpec("AdaDelta", "ada", "single")]
    table = T.table1(frame(*rows), specs)
    paper = {"RT-HPO": {"fixed_eta": "98.42 ± 0.08", "fixed_beta": "98.30 ± 0.01", "top": "98.49",
                        "time": "14"},
             "BO": {"top": "98.55", "time": "140"}}
    text = T.table1_markdown(table, "Table 1: Summary.", paper=paper)
    lines = text.splitlines()
    assert lines.count("| | Fixed η̄ (%) | Fixed β (%) | Top (%) | Time (min) |") == 2
    # tie: both bold
    assert "| First-order (Train) | 93.33 ± 3.06 | 93.50 ± 3.54 | **96.00** | 1.0 |" in lines
    assert "| RT-HPO | 93.33 ± 3.06 | 93.50 ± 3.54 | **96.00** | 1.0 |" in lines
    assert "| AdaDelta | - | - | 50.00 | 0.42 |" in lines
    assert "| RT-HPO | 98.42 ± 0.08 | 98.30 ± 0.01 | 98.49 | 14 |" in lines
    assert "| BO | - | - | 98.55 | 140 |" in lines
    assert lines.index("**Ours**") < lines.index("**Paper**") < lines.index("Table 1: Summary.")
    plain = T.table1_markdown(table, "cap")
    assert "**Paper**" not in plain and plain.splitlines()[0].startswith("| | Fixed η̄")


def test_formatters() -> None:
    assert T.format_minutes(14.04) == "14.0" and T.format_minutes(0.4249) == "0.42"
    assert T.format_minutes(math.nan) == "n/a"
    assert [T.format_power(v) for v in (1e-4, 0.003, 0.025, 1.0, math.nan)] == ["1e-4", "3e-3", "2.5e-2",
                                                                                 "1e0", "-"]
    with pytest.raises(ValueError, match="kind"):
        T.RowSpec("x", "y", "grid3d")


def test_sensitivity_grid_and_heatmaps(figures: list[Any]) -> None:
    rows = grid_rows()
    for r in rows:
        if r["trial_id"] == "rthpo_0" and r[M.EPOCH] == 2:
            r[M.DIVERGED] = True
    rows += [rep("grid", f"g{k}", 1, 0.5, 0.6 + k / 100, eta0=eta, beta=None)
             for k, eta in enumerate((1e-3, 1e-2))]
    df = frame(*rows)
    grid = T.sensitivity_grid(df, "rthpo")
    assert grid.index.tolist() == [1e-3, 1e-2] and grid.columns.tolist() == [1e-4, 1e-3, 1e-2]
    assert grid.loc[1e-2, 1e-4] == pytest.approx(96.0) and grid.loc[1e-3, 1e-2] == pytest.approx(89.0)
    assert grid.attrs["diverged"][0][0] and sum(map(sum, grid.attrs["diverged"])) == 1
    flat = T.sensitivity_grid(df, "grid")
    assert flat.shape == (2, 1) and math.isnan(flat.columns[0])
    fig = T.plot_sensitivity({"RT-HPO": grid, "Grid Search": flat, "Missing": T.sensitivity_grid(df, "nope")})
    figures.append(fig)
    assert len(fig.axes) == 4  # three panels and the shared colorbar
    panel = fig.axes[0]
    assert [t.get_text() for t in panel.get_xticklabels()] == ["1e-4", "1e-3", "1e-2"]
    assert any("×" in t.get_text() for t in panel.texts) and len(panel.patches) == 1
    fig.canvas.draw()  # renders with Agg
    with pytest.raises(ValueError):
        T.plot_sensitivity({})


def test_accuracy_vs_compute_and_eta_schedule_plots(figures: list[Any]) -> None:
    rows = grid_rows("fo") + grid_rows("rthpo")
    rows += [rep("grid", f"g{k}", 1, 0.5 + k / 10, 0.6, eta0=eta, beta=None)
             for k, eta in enumerate((1e-3, 1e-2))]
    rows += [rep("pbt", "p", e, 0.5 + e / 10, 0.6, eta0=0.1, lr=0.1 / e) for e in (1, 2, 3)]
    rows += [rep("bo", "b", 1, 0.5, 0.6)]
    specs = [T.RowSpec("FO", "fo", "grid2d"), T.RowSpec("RT-HPO", "rthpo", "grid2d"),
             T.RowSpec("Grid Search", "grid", "grid1d"), T.RowSpec("PBT", "pbt", "population"),
             T.RowSpec("BO", "bo", "search"), T.RowSpec("Missing", "nope", "grid2d")]
    df = frame(*rows)
    fig = T.plot_accuracy_vs_compute(df, specs)
    figures.append(fig)
    (ax,) = fig.axes
    assert len(ax.lines) == 5 and ax.get_xscale() == "log"  # every present row, not the missing one
    rthpo = next(line for line in ax.lines if line.get_label() == "RT-HPO")
    # the final point is the best-by-validation run's test accuracy after 12 epochs x 0.5 min
    assert rthpo.get_ydata()[-1] == pytest.approx(96.0) and rthpo.get_xdata()[-1] == pytest.approx(6.0)
    fig2 = T.plot_eta_schedules(df, specs)
    figures.append(fig2)
    (ax2,) = fig2.axes
    assert len(ax2.lines) == 4 and ax2.get_yscale() == "log"  # FO, RT-HPO, PBT and the Grid Search line
    best = next(line for line in ax2.lines if line.get_label().startswith("RT-HPO"))
    assert (list(best.get_xdata()) == [0, 1, 2]
            and list(best.get_ydata()) == pytest.approx([1e-2, 1.5e-2, 2e-2]))
    flat = next(line for line in ax2.lines if line.get_label().startswith("Grid Search"))
    assert list(flat.get_ydata()) == [1e-2, 1e-2]
