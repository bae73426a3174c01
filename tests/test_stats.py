"""Tests of ray_rthpo.report.stats (multi-seed statistics) on hand-built trial tables with known answers."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from ray_rthpo.report import stats
from ray_rthpo.report.stats_plots import plot_best_so_far, plot_final_outcomes


@pytest.fixture(autouse=True)
def _warnings_are_errors() -> Iterator[None]:
    """No warning may leak out of the statistics (constant samples, all-NaN grid points, tiny n)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def row(strategy: str, seed: int, trial: str, epoch: int, val: float, test: float, t: float, *,
        loss: float | None = None, secs: float = 1.0, diverged: bool = False) -> dict[str, object]:
    return {"strategy": strategy, "seed": seed, "trial_id": trial, "epoch": epoch, "val/acc": val,
            "val/loss": 1.0 - val if loss is None else loss, "test/acc": test, "time/epoch_s": secs,
            "time/received_at": t, "diverged": diverged, "method": f"m-{strategy}", "searcher": "random"}


def final_table(accs: dict[str, list[float]]) -> pd.DataFrame:
    """One trial, one epoch per (strategy, seed); val = test = the given accuracy, seeds 0..n-1."""
    return pd.DataFrame([row(s, seed, f"{s}-{seed}", 1, acc, acc, t=float(seed))
                         for s, values in accs.items() for seed, acc in enumerate(values)])


def summary_of(df: pd.DataFrame, **kw: object) -> pd.DataFrame:
    return stats.strategy_summary(stats.seed_outcomes(df, **kw), n_resamples=999).set_index("strategy")


# ---------------------------------------------------------------- bootstrap, IQM


@pytest.mark.parametrize("statistic", ["mean", "iqm"])
@pytest.mark.parametrize("value", [0.8, 0.1, 1 / 3])
def test_ci_of_a_constant_is_exactly_that_point(statistic: str, value: float) -> None:
    assert stats.bootstrap_ci([value] * 5, statistic) == (value, value)
    assert stats.bootstrap_ci([value, value], statistic) == (value, value)


def test_ci_with_fewer_than_two_values_is_nan_and_ignores_nan() -> None:
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.7]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    assert stats.bootstrap_ci([0.5, float("nan"), 0.5]) == (0.5, 0.5)


def test_ci_is_seeded_ordered_and_inside_the_sample() -> None:
    x = [0.70, 0.72, 0.75, 0.71, 0.90]
    low, high = stats.bootstrap_ci(x, "iqm", n_resamples=999, random_state=3)
    assert (low, high) == stats.bootstrap_ci(x, "iqm", n_resamples=999, random_state=3)
    assert min(x) <= low < high <= max(x)
    low2, high2 = stats.bootstrap_ci([0.5, 0.6], "mean", n_resamples=999)
    assert 0.5 <= low2 <= 0.55 <= high2 <= 0.6


def test_ci_rejects_bad_arguments_by_name() -> None:
    with pytest.raises(ValueError, match="statistic='median'"):
        stats.bootstrap_ci([1, 2], "median")
    with pytest.raises(ValueError, match="confidence_level=95"):
        stats.bootstrap_ci([1, 2], confidence_level=95)


def test_iqm_of_known_samples() -> None:
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3..6
    assert stats.iqm([1, 2, 3, 100]) == pytest.approx(2.5)  # the outliers are trimmed
    assert stats.iqm([0.2, 0.4, 0.9]) == pytest.approx(0.5)  # n < 4: nothing trimmed
    assert math.isnan(stats.iqm([]))


# ---------------------------------------------------------------- per-seed outcomes


def test_outcome_is_chosen_by_validation_never_test() -> None:
    df = pd.DataFrame([
        row("A", 0, "a1", 1, 0.60, 0.99, t=1),  # highest test acc, lower val acc: never chosen
        row("A", 0, "a1", 2, 0.80, 0.70, t=2),
        row("A", 0, "a2", 1, 0.80, 0.95, t=3, loss=0.5),  # same val acc, higher loss: loses the tie
        row("A", 0, "a2", 2, 0.50, 0.98, t=4, diverged=True),
    ])
    out = stats.seed_outcomes(df, wall_seconds={("A", 0): 12.5}).iloc[0]
    assert (out["trial_id"], out["epoch"], out["val/acc"], out["test/acc"]) == ("a1", 2, 0.80, 0.70)
    assert (out["trials"], out["diverged trials"], out["compute s"], out["wall s"]) == (2, 1, 4.0, 12.5)
    assert (out["method"], out["searcher"]) == ("m-A", "random")
    curve = stats.seed_curves(df)
    assert list(curve["test/acc"]) == [0.99, 0.70, 0.70, 0.70]
    assert list(curve["compute/cumulative_s"]) == [1.0, 2.0, 3.0, 4.0]


def test_duplicate_reports_of_a_trial_epoch_count_once() -> None:
    df = pd.DataFrame([
        row("A", 0, "a1", 1, 0.50, 0.50, t=1),
        row("A", 0, "a1", 2, 0.95, 0.10, t=2),  # redone after a restart: only the last report counts
        row("A", 0, "a1", 2, 0.60, 0.60, t=3),
        row("A", 0, "a1", 1, 0.50, 0.50, t=4),
    ])
    out = stats.seed_outcomes(df).iloc[0]
    assert (out["test/acc"], out["compute s"], out["trials"]) == (0.60, 2.0, 1)
    assert list(stats.seed_curves(df)["compute/cumulative_s"]) == [1.0, 2.0]


def test_outcomes_are_per_repetition_in_order() -> None:
    df = final_table({"B": [0.2, 0.3], "A": [0.5, 0.4]}).iloc[::-1]
    out = stats.seed_outcomes(df)
    assert list(zip(out["strategy"], out["seed"], strict=True)) == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
    assert list(out["test/acc"]) == [0.5, 0.4, 0.2, 0.3]
    assert out["wall s"].isna().all()


def test_bad_tables_raise_errors_that_name_the_problem() -> None:
    df = final_table({"A": [0.5, 0.6]})
    with pytest.raises(ValueError, match=r"\['seed'\]"):
        stats.seed_outcomes(df.drop(columns="seed"))
    with pytest.raises(ValueError, match="empty"):
        stats.seed_outcomes(df.iloc[:0])
    reused = df.assign(trial_id="same")
    with pytest.raises(ValueError, match="trial_id 'same' appears under more than one"):
        stats.seed_outcomes(reused)
    with pytest.raises(ValueError, match="time/epoch_s"):
        stats.seed_curves(df.assign(**{"time/epoch_s": [1.0, float("nan")]}))


# ---------------------------------------------------------------- ranks, reference, paired comparison


def test_dominated_strategy_has_the_worst_rank_and_no_wins() -> None:
    summary = summary_of(final_table({"A": [0.9, 0.8, 0.85], "B": [0.7, 0.75, 0.8], "C": [0.1, 0.2, 0.3]}))
    assert summary.loc["C", "mean rank"] == 3.0
    assert summary.loc["A", "mean rank"] == 1.0
    assert (summary["reference"] == "A").all()
    assert summary.loc["C", "wins vs reference"] == 0.0
    assert summary.loc["C", "diff vs reference"] == pytest.approx(np.mean([-0.8, -0.6, -0.55]))
    assert summary.loc["C", "diff CI high"] < 0
    assert summary.loc["A", "wins vs reference"] == 0.5  # against itself: all ties
    assert (summary.loc["A", "diff CI low"], summary.loc["A", "diff CI high"]) == (0.0, 0.0)


def test_ties_get_average_ranks_and_count_half_a_win() -> None:
    df = final_table({"A": [0.9, 0.9], "B": [0.9, 0.8], "C": [0.5, 0.5]})
    ranks = stats.seed_ranks(stats.seed_outcomes(df))
    seed0 = ranks[ranks["seed"] == 0].set_index("strategy")["rank"]
    assert dict(seed0) == {"A": 1.5, "B": 1.5, "C": 3.0}
    summary = summary_of(df)
    assert summary.loc["A", "mean rank"] == 1.25 and summary.loc["B", "mean rank"] == 1.75
    assert summary.loc["B", "wins vs reference"] == 0.25  # a tie (1/2) and a loss over 2 seeds


def test_identical_strategies_have_a_zero_paired_difference() -> None:
    df = final_table({"A": [0.6, 0.7, 0.9], "B": [0.6, 0.7, 0.9]})
    paired = stats.paired_comparison(stats.seed_outcomes(df), "A", n_resamples=999).set_index("strategy")
    assert (paired.loc["B", "diff CI low"], paired.loc["B", "diff CI high"]) == (0.0, 0.0)
    assert paired.loc["B", "wins vs reference"] == 0.5
    assert paired.loc["B", "diff vs reference"] == 0.0
    with pytest.raises(ValueError, match="reference='Z'"):
        stats.paired_comparison(stats.seed_outcomes(df), "Z")


def test_best_strategy_ties_on_mean_rank_go_to_the_higher_iqm() -> None:
    # A and B each win two of four seeds (equal mean rank 1.5); B's IQM is higher.
    df = final_table({"A": [0.9, 0.9, 0.1, 0.2], "B": [0.8, 0.8, 0.5, 0.6]})
    assert stats.best_strategy(stats.seed_outcomes(df)) == "B"
    # then first
    assert stats.best_strategy(stats.seed_outcomes(final_table({"A": [0.5], "B": [0.5]}))) == "A"


def test_strategies_cut_short_rank_only_on_shared_seeds() -> None:
    df = final_table({"A": [0.9, 0.9, 0.1], "B": [0.5, 0.5]})  # B lacks seed 2, where A is poor
    summary = summary_of(df)
    assert (summary.loc["A", "n seeds"], summary.loc["B", "n seeds"]) == (3, 2)
    assert (summary.loc["A", "ranked seeds"], summary.loc["A", "mean rank"]) == (2, 1.0)
    assert summary.loc["B", "paired seeds"] == 2 and summary.loc["B", "wins vs reference"] == 0.0
    assert summary.loc["A", "test acc mean"] == pytest.approx(1.9 / 3)


def test_summary_totals_and_means_of_seconds_and_trials() -> None:
    df = pd.DataFrame([
        row("A", 0, "a1", 1, 0.5, 0.5, t=1, secs=2.0),
        row("A", 0, "a2", 1, 0.6, 0.6, t=2, secs=3.0, diverged=True),
        row("A", 1, "a3", 1, 0.7, 0.7, t=1, secs=5.0),
    ])
    summary = summary_of(df, wall_seconds={("A", 0): 10.0, ("A", 1): 20.0})
    a = summary.loc["A"]
    assert (a["trials"], a["diverged trials"]) == (3, 1)
    assert (a["compute s mean"], a["compute s total"], a["wall s mean"],
            a["wall s total"]) == (5.0, 10.0, 15.0, 30.0)
    assert (a["test acc mean"], a["test acc IQM"]) == (pytest.approx(0.65), pytest.approx(0.65))
    partial = summary_of(df, wall_seconds={("A", 0): 10.0})
    assert partial.loc["A", "wall s mean"] == 10.0 and math.isnan(partial.loc["A", "wall s total"])


def test_one_seed_works_everywhere() -> None:
    df = final_table({"A": [0.7], "B": [0.6]})
    outcomes = stats.seed_outcomes(df)
    summary = stats.strategy_summary(outcomes, n_resamples=99).set_index("strategy")
    assert summary.loc["A", "test acc IQM"] == 0.7 and summary.loc["B", "mean rank"] == 2.0
    assert math.isnan(summary.loc["A", "IQM CI low"]) and math.isnan(summary.loc["B", "diff CI low"])
    assert summary.loc["B", "wins vs reference"] == 0.0
    text = stats.markdown_summary(summary.reset_index()).split("*Legend.*")[0]  # one seed: no CI, IQM, wins
    assert "| A | m-A | random | 0.7000 | best | 1 |" in text and "[n/a]" not in text and "IQM" not in text
    assert "| B | m-B | random | 0.6000 | -0.1000 | 2 |" in text  # no test-set size: a difference of accuracy
    with_size = stats.markdown_summary(summary.reset_index(), test_size=10)
    assert "| B | m-B | random | 0.6000 | -1 of 10 images | 2 |" in with_size
    curves = stats.seed_curves(df)
    on_grid = stats.curves_on_grid(curves, stats.compute_grid(curves, n_points=5))
    agg = stats.aggregate_curves(on_grid)
    assert agg["median"].equals(agg["q25"]) and agg["median"].equals(agg["q75"])
    assert agg["median"].iloc[-1] == 0.6 and agg["median"].isna().iloc[0]  # NaN before the first report


# ---------------------------------------------------------------- anytime curves


def anytime_table() -> pd.DataFrame:
    """A (seeds 0, 1) reports at compute 1, 2, 3; B (seeds 0, 1) reports at compute 2, 3 (epoch_s 2 then
    1)."""
    return pd.DataFrame([
        row("A", 0, "a0", 1, 0.5, 0.50, t=1), row("A", 0, "a0", 2, 0.6, 0.60, t=2),
        row("A", 0, "a0", 3, 0.7, 0.70, t=3), row("A", 1, "a1", 1, 0.4, 0.40, t=1),
        row("A", 1, "a1", 2, 0.8, 0.80, t=2), row("A", 1, "a1", 3, 0.3, 0.99, t=3),
        row("B", 0, "b0", 1, 0.9, 0.90, t=2, secs=2.0), row("B", 0, "b0", 2, 0.95, 0.95, t=3),
        row("B", 1, "b1", 1, 0.2, 0.20, t=2, secs=2.0), row("B", 1, "b1", 2, 0.1, 0.99, t=3), ])


def test_curves_on_grid_are_steps_and_nan_before_the_first_report() -> None:
    curves = stats.seed_curves(anytime_table())
    grid = stats.compute_grid(curves, n_points=6)
    assert list(grid) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    on_grid = stats.curves_on_grid(curves, grid)
    b0 = on_grid[(on_grid["strategy"] == "B") & (on_grid["seed"] == 0)]
    assert b0["test/acc"].isna().tolist() == [True, True, True, False, False, False]
    assert list(b0["test/acc"].iloc[3:]) == [0.90, 0.90, 0.95]
    a1 = on_grid[(on_grid["strategy"] == "A") & (on_grid["seed"] == 1)]
    assert list(a1["test/acc"].iloc[1:]) == [0.40, 0.40, 0.80, 0.80, 0.80]  # 0.99 at val 0.3 never chosen
    assert list(on_grid["budget fraction"].iloc[:6]) == pytest.approx([1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6, 1.0])


def test_aggregate_curves_leave_out_repetitions_without_a_report() -> None:
    curves = stats.seed_curves(anytime_table())
    agg = stats.aggregate_curves(stats.curves_on_grid(curves, [1.0, 2.0, 3.0]))
    agg = agg.set_index(["strategy", "compute s"])
    assert agg.loc[("B", 1.0), "n seeds"] == 0 and math.isnan(agg.loc[("B", 1.0), "median"])
    assert agg.loc[("A", 1.0), "n seeds"] == 2
    assert agg.loc[("A", 1.0), "median"] == pytest.approx(0.45)
    assert (agg.loc[("A", 1.0), "q25"],
            agg.loc[("A", 1.0), "q75"]) == (pytest.approx(0.425), pytest.approx(0.475))
    assert agg.loc[("B", 3.0), "median"] == pytest.approx((0.95 + 0.20) / 2)


def test_rank_curves_rank_no_report_last_over_shared_seeds() -> None:
    df = pd.concat([anytime_table(), pd.DataFrame([row("A", 2, "a2", 1, 0.1, 0.1, t=1)])])  # seed 2: A only
    curves = stats.seed_curves(df)
    ranks = stats.rank_curves(stats.curves_on_grid(curves, [1.0, 3.0])).set_index(["strategy", "compute s"])
    assert (ranks["ranked seeds"] == 2).all()
    assert ranks.loc[("A", 1.0), "mean rank"] == 1.0 and ranks.loc[("B", 1.0), "mean rank"] == 2.0
    # at 3 s: seed 0 B (0.95) beats A (0.70); seed 1 A (0.80) beats B (0.20)
    assert ranks.loc[("A", 3.0), "mean rank"] == 1.5 and ranks.loc[("B", 3.0), "mean rank"] == 1.5
    assert list(ranks.loc[("A", 3.0), ["budget fraction"]]) == [1.0]


def test_grid_arguments_are_checked() -> None:
    curves = stats.seed_curves(anytime_table())
    assert stats.compute_grid(curves, n_points=2, budget_s=10.0).tolist() == [5.0, 10.0]
    with pytest.raises(ValueError, match="budget_s=-1"):
        stats.compute_grid(curves, budget_s=-1)
    with pytest.raises(ValueError, match="n_points=0"):
        stats.compute_grid(curves, n_points=0)
    with pytest.raises(ValueError, match="increasing"):
        stats.curves_on_grid(curves, [2.0, 1.0])


# ---------------------------------------------------------------- time to target


def test_time_to_target_counts_seeds_that_never_reach_it() -> None:
    per_seed = stats.seed_time_to_target(anytime_table(), 0.75)
    a = per_seed[per_seed["strategy"] == "A"]
    assert a["reached"].tolist() == [False, True]
    assert math.isnan(a["compute s"].iloc[0]) and a["compute s"].iloc[1] == 2.0
    table = stats.time_to_target(per_seed).set_index("strategy")
    assert (table.loc["A", "seeds reached"], table.loc["A", "n seeds"],
            table.loc["A", "median compute s"]) == (1, 2, 2.0)
    assert (table.loc["B", "seeds reached"], table.loc["B", "median compute s"]) == (1, 2.0)
    never = stats.time_to_target(stats.seed_time_to_target(anytime_table(), 1.0)).set_index("strategy")
    assert (never["seeds reached"] == 0).all() and never["median compute s"].isna().all()
    text = stats.markdown_time_to_target(never.reset_index())
    assert "| A | 1.0000 | 0 of 2 | n/a |" in text and "Legend" in text


def test_time_to_target_uses_validation_and_checks_the_target() -> None:
    per_seed = stats.seed_time_to_target(anytime_table(), 0.9)
    b1 = per_seed[(per_seed["strategy"] == "B") & (per_seed["seed"] == 1)]
    assert not b1["reached"].iloc[0]  # its test acc 0.99 at val 0.1 does not count
    with pytest.raises(ValueError, match="target_val_acc=85"):
        stats.seed_time_to_target(anytime_table(), 85)


# ---------------------------------------------------------------- Markdown and figures


def test_markdown_summary_formats_accuracies_to_four_decimals() -> None:
    df = final_table({"A": [0.9, 0.8, 0.85], "C": [0.1, 0.2, 0.3]})
    summary = stats.strategy_summary(stats.seed_outcomes(df, wall_seconds={("A", 0): 1.0}), n_resamples=999)
    text = stats.markdown_summary(summary)
    lines = text.splitlines()
    assert lines[0].startswith("| strategy | method | searcher | n seeds | test acc mean [95% CI]")
    a_line = next(line for line in lines if line.startswith("| A |"))
    c_line = next(line for line in lines if line.startswith("| C |"))
    assert "| 0.8500 [" in a_line and "best (reference)" in a_line and "| 1.00 (3 seeds) |" in a_line
    assert "| 0.00 of 3 |" in c_line and "| -0.6500 [-0.8000, -0.5500] |" in c_line and "| 0 of 3 |" in c_line
    assert "| 1.0 | 1.0 |" in a_line and c_line.endswith("| 1.0 | n/a |")
    assert "*Legend.*" in text and "interquartile mean" in text


@pytest.mark.parametrize("seeds", [1, 3])
def test_figures_save_to_png(seeds: int) -> None:
    df = final_table({"A": [0.9, 0.8, 0.85][:seeds], "B": [0.7, 0.75, 0.8][:seeds]})
    df = pd.concat([df, anytime_table().query("seed < @seeds")], ignore_index=True)
    outcomes = stats.seed_outcomes(df)
    summary = stats.strategy_summary(outcomes, n_resamples=99)
    curves = stats.seed_curves(df)
    on_grid = stats.curves_on_grid(curves, stats.compute_grid(curves, n_points=20))
    figures = [plot_best_so_far(stats.aggregate_curves(on_grid), stats.rank_curves(on_grid), budget_s=3.0),
               plot_final_outcomes(outcomes, summary)]
    for fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=40)
        assert buf.getvalue().startswith(b"\x89PNG")


def test_figure_saves_through_atomic_save_figure(tmp_path: object) -> None:
    from ray_rthpo.report.files import atomic_save_figure

    curves = stats.seed_curves(anytime_table())
    on_grid = stats.curves_on_grid(curves, stats.compute_grid(curves))
    path = atomic_save_figure(plot_best_so_far(stats.aggregate_curves(on_grid), stats.rank_curves(on_grid)),
                              tmp_path / "best_so_far.png", dpi=40)  # type: ignore[operator]
    assert path.read_bytes().startswith(b"\x89PNG")
