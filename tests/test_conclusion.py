"""The comparison states its result (ray_rthpo.report.conclusion, summary, console), and its one-seed tables
and figures leave out what needs several seeds; hand-built trial tables with known answers, no Ray."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tune_helpers import tiny_experiment

from ray_rthpo.experiment.config import experiment_from_dict
from ray_rthpo.report import conclusion as C
from ray_rthpo.report import stats
from ray_rthpo.report import summary as S
from ray_rthpo.report.console import WIDTH, fit_table
from ray_rthpo.report.plots import plot_lr_trajectories
from ray_rthpo.report.stats_plots import plot_best_so_far

N = 360  # test images of the digits split


def row(strategy: str, seed: int, trial: str, epoch: int, val: float, test: float, t: float, *,
        method: str = "exp_decay", searcher: str = "random", lr: float = 0.1, eta0: float = 0.1,
        secs: float = 1.0) -> dict[str, Any]:
    return {"strategy": strategy, "seed": seed, "trial_id": trial, "epoch": epoch, "val/acc": val,
            "val/loss": 1.0 - val, "test/acc": test, "time/epoch_s": secs, "time/received_at": t,
            "diverged": False, "method": method, "searcher": searcher, "scheduler": "fifo", "lr": lr,
            "config/lr.eta0": eta0, "time/hyper_s": 0.0, "searched/lr.eta0": eta0}


def images_table(correct: dict[str, list[int]]) -> pd.DataFrame:
    """Per (strategy, seed): a worse first trial, then the chosen one (best validation) with ``correct`` of N
    test images; the val accuracy follows the test accuracy so the chosen trial is the second."""
    rows = []
    for s, values in correct.items():
        method = "rthpo" if s.startswith("rthpo") else "exp_decay"
        searcher = "none" if s == "rthpo_default" else "random"
        for seed, k in enumerate(values):
            rows.append(row(s, seed, f"{s}-{seed}-a", 1, 0.5, (k - 40) / N, float(seed), method=method,
                            searcher=searcher))
            rows.append(row(s, seed, f"{s}-{seed}-b", 1, 0.9, k / N, seed + 0.5, method=method,
                            searcher=searcher))
    return pd.DataFrame(rows)


def conclusion_of(df: pd.DataFrame, **kw: Any) -> C.Conclusion:
    outcomes = stats.seed_outcomes(df)
    return C.conclude(outcomes, stats.strategy_summary(outcomes, n_resamples=999), **kw)


def text_of(c: C.Conclusion) -> str:
    return "\n".join(c.lines())


# ---------------------------------------------------------------- (a) one seed, a clear winner


def test_one_seed_names_the_winner_and_every_difference_in_test_images() -> None:
    correct = {"rthpo_default": [340], "rthpo": [349], "exp_grid": [351], "adadelta": [345]}
    df = images_table(correct)
    c = conclusion_of(df, test_size=N, budget_s=16)
    assert c.seeds == 1 and c.best == ("exp_grid",)
    text = text_of(c)
    assert "Best: exp_grid, test accuracy 0.9750 (351 of 360 test images)" in text
    assert "1 seed, 16 compute-s per strategy; 360 test images, 1 image = 0.28 points." in text
    for name, (k,) in correct.items():  # each difference, in images, is what the numbers say
        if name != "exp_grid":
            assert f"{name} {k - 351:+d}" in text, name
            assert c.standing(name).images == k - 351 and c.standing(name).verdict == "behind"
    others = re.search(r"The others, in test images \(of 360\) against it: (.*?)\n- ", text, re.S)
    assert others and [item.split()[0] for item in others.group(1).replace("\n", " ").split(", ")] == \
        ["rthpo", "adadelta", "rthpo_default"]  # best first
    assert "One seed measures no noise between runs" in text and "--seeds 3" in text
    assert "[" not in text  # no interval with one seed


def test_one_seed_without_a_known_test_set_gives_accuracy_differences() -> None:
    c = conclusion_of(images_table({"a": [351], "b": [349]}))
    assert c.test_size is None and c.standing("b").images is None
    assert "b -0.0056" in text_of(c) and "test images" not in text_of(c)


# ---------------------------------------------------------------- (b) ties


def test_a_tie_for_the_best_is_reported_as_a_tie() -> None:
    df = images_table({"rthpo_default": [340], "a": [351], "b": [351], "c": [350]})
    c = conclusion_of(df, test_size=N)
    assert c.best == ("a", "b")
    assert [c.standing(s).verdict for s in ("a", "b", "c")] == ["tied best", "tied best", "behind"]
    assert c.standing("a").place == c.standing("b").place == 1 and c.standing("c").place == 3
    text = text_of(c)
    assert "Best, tied: a and b, test accuracy 0.9750 (351 of 360 test images) each" in text
    assert "the tie is not broken" in text and "c -1" in text
    summary = stats.strategy_summary(stats.seed_outcomes(df), n_resamples=99)
    table = stats.markdown_summary(summary, test_size=N)
    assert "| a | exp_decay | random | 0.9750 | tied best |" in table
    assert "| b | exp_decay | random | 0.9750 | tied best |" in table


def test_a_tie_over_seeds_is_a_tie_and_a_rank_tie_says_what_broke_it() -> None:
    same = images_table({"a": [340, 350, 345], "b": [340, 350, 345], "c": [300, 310, 305]})
    c = conclusion_of(same)
    assert c.best == ("a", "b") and "Best, tied: a and b" in text_of(c)
    summary = stats.strategy_summary(stats.seed_outcomes(same), n_resamples=99)
    assert stats.tied_with_best(summary) == ["a", "b"]
    assert "tied best (reference)" in stats.markdown_summary(summary)
    # equal mean ranks (each wins once), b's IQM (the mean, with 2 seeds) is lower: a is best, and the
    # lines say why
    broken = images_table({"a": [350, 301], "b": [340, 310], "c": [200, 200]})
    c = conclusion_of(broken)
    summary = stats.strategy_summary(stats.seed_outcomes(broken), n_resamples=99).set_index("strategy")
    assert summary.loc["a", "mean rank"] == summary.loc["b", "mean rank"] == 1.5, summary
    assert summary.loc["a", "test acc IQM"] > summary.loc["b", "test acc IQM"]
    assert c.best == ("a",) and "mean rank 1.50 tied with b; the higher IQM decides" in text_of(c)


# ---------------------------------------------------------------- (c) several seeds: paired CI


def test_several_seeds_sort_the_others_by_their_paired_ci() -> None:
    base = [330, 335, 340, 345, 350]
    correct = {"best": base, "noisy": [k + d for k, d in zip(base, [2, -3, 1, -2, -1], strict=True)],
               "worse": [k - 9 - d for k, d in zip(base, [0, 1, 2, 1, 0], strict=True)],
               "rthpo_default": [k - 5 + d for k, d in zip(base, [1, -1, 0, 1, -1], strict=True)]}
    df = images_table(correct)
    c = conclusion_of(df, test_size=N)
    assert c.seeds == 5 and c.best == ("best",)
    paired = stats.paired_comparison(stats.seed_outcomes(df), "best", n_resamples=999).set_index("strategy")
    for name in ("noisy", "worse", "rthpo_default"):  # the verdict is the CI's, and the CI is the stats' one
        low, high = paired.loc[name, "diff CI low"], paired.loc[name, "diff CI high"]
        s = c.standing(name)
        assert s.ci == pytest.approx((low, high)) and s.diff == pytest.approx(
            np.mean(np.array(correct[name]) - np.array(base)) / N)
        assert s.verdict == ("within noise" if low <= 0 <= high else "behind" if high < 0 else "ahead"), name
    assert c.standing("noisy").verdict == "within noise" and c.standing("worse").verdict == "behind"
    text = text_of(c)
    noisy = c.standing("noisy")
    assert (f"Within noise of it (95% paired bootstrap CI of the mean difference contains 0): noisy "
            f"{noisy.diff:+.4f} [{noisy.ci[0]:+.4f}, {noisy.ci[1]:+.4f}]") in text
    behind = text.split("Behind it (CI below 0): ")[1].split("\n- ")[0]
    assert [item.split()[0] for item in behind.replace("\n", " ").split("], ")] == ["rthpo_default", "worse"]
    assert f"mean test accuracy over 5 seeds {np.mean(base) / N:.4f}" in text


def test_several_seeds_with_no_strategy_in_the_noise_say_so() -> None:
    c = conclusion_of(images_table({"a": [350, 351, 352], "b": [300, 302, 301]}))
    assert "Within noise of it: none" in text_of(c) and c.standing("b").verdict == "behind"


# ---------------------------------------------------------------- (d) the untuned RT-HPO run


def test_where_the_untuned_run_stands() -> None:
    c = conclusion_of(images_table({"rthpo": [351], "rthpo_default": [349], "exp": [349], "ada": [340]}),
                      test_size=N, budget_s=16)
    assert c.untuned is not None and (c.untuned.place, c.untuned.tied, c.untuned.images) == (2, True, -2)
    assert ("Untuned RT-HPO (rthpo_default, one run of the defaults, no search): 0.9694, -2 of 360 test "
            "images against rthpo, tied 2nd of 4") in text_of(c).replace("\n  ", " ")
    best = conclusion_of(images_table({"rthpo_default": [352], "exp": [349]}), test_size=N)
    assert best.untuned is not None and best.untuned.verdict == "best"
    assert "0.9778, 1st of 2: the best." in text_of(best).replace("\n  ", " ")
    several = conclusion_of(images_table({"exp": [350, 351, 352], "rthpo_default": [340, 342, 341]}))
    u = several.untuned
    assert u is not None and u.verdict == "behind" and u.place == 2
    assert (f"mean {np.mean([340, 342, 341]) / N:.4f}, {u.diff:+.4f} [{u.ci[0]:+.4f}, {u.ci[1]:+.4f}] "
            "against exp: behind it; 2nd of 2") in text_of(several).replace("\n  ", " ")
    assert conclusion_of(images_table({"a": [1], "b": [2]})).untuned is None
    alone = conclusion_of(images_table({"rthpo_default": [349]}), test_size=N)  # rthpo run: one strategy
    assert text_of(alone).splitlines()[-1] == ("- One strategy, rthpo_default: test accuracy 0.9694 "
                                               "(349 of 360 test images); nothing to compare it with.")


def test_the_compute_the_untuned_run_left_unused_is_stated() -> None:
    df = images_table({"exp": [351], "rthpo_default": [349]})
    df.loc[df["strategy"] == "exp", "time/epoch_s"] = 8.0  # exp spends the budget, rthpo_default 2 of 16 s
    assert "(it spent 2.0 of the 16 compute-s)" in text_of(conclusion_of(df, test_size=N, budget_s=16))


# ---------------------------------------------------------------- the test set's size


def test_test_set_size_is_read_or_inferred_from_the_accuracies() -> None:
    df = pd.DataFrame({"test/acc": [k / N for k in (349, 351, 300, 1, 355)]})
    assert C.test_set_size(df) == N
    assert C.test_set_size(df.assign(**{"test/n": 1000})) == 1000  # the column wins
    assert C.test_set_size(pd.DataFrame({"test/acc": [0.5, 0.25]})) == 4  # a divisor of n when few values
    assert C.test_set_size(pd.DataFrame({"test/acc": [45 / N, 40 / N]})) == 72  # 1/8 and 1/9: their lcm
    assert C.test_set_size(pd.DataFrame({"test/acc": [math.pi / 4]})) is None  # not correct / n
    assert C.test_set_size(pd.DataFrame({"test/acc": [float("nan")]})) is None
    with pytest.raises(ValueError, match="test_size=0 must be the number of test examples"):
        conclusion_of(images_table({"a": [1]}), test_size=0)


# ---------------------------------------------------------------- summary.md and the console


def experiment(names: list[str], seeds: int = 1, **top: Any) -> Any:
    return experiment_from_dict(tiny_experiment(*({"name": n, "method": "exp_decay", "searcher": "none"}
                                                  for n in names), seeds=seeds, budget_s=16.0, **top),
                                resolve_data=False)


def long_table(seeds: int) -> pd.DataFrame:
    """Ten strategies with long names and long searched configurations."""
    names = [f"a_rather_long_strategy_name_{i}" for i in range(9)] + ["rthpo_default"]
    df = images_table({n: [340 + (i if i < 9 else -5) + s for s in range(seeds)]
                       for i, n in enumerate(names)})
    for k in range(6):
        df[f"searched/optim.some_long_hyperparameter_{k}"] = 0.123456
    return df


@pytest.mark.parametrize("seeds", [1, 3])
def test_summary_and_console_open_with_the_result_and_the_console_fits_120_columns(seeds: int) -> None:
    df = long_table(seeds)
    exp = experiment(list(pd.unique(df["strategy"])), seeds=seeds, target_val_acc=0.5)
    errors = {"a_rather_long_strategy_name_1": ("boom " * 60,)}
    texts = S.summary_texts(exp, df, {}, {"cpu": 1.0}, errors, 9.0)
    console = texts.console.splitlines()
    assert console[0] == "## Result" and console[2].startswith(f"{seeds} seed")
    first = next(line for line in console if line.startswith("- "))
    assert first.startswith("- Best: a_rather_long_strategy_name_8")
    assert max(len(line) for line in console) <= WIDTH, max(console, key=len)
    assert sum(line.startswith("| ") for line in console) == 11  # one table: header and ten strategies
    assert console[-1].startswith("summary.md has every column")
    headings = [line for line in texts.markdown.splitlines() if line.startswith("#")]
    assert headings[:3] == ["# tiny: learning-rate strategies at equal compute", console[0], "## Setup"]
    result = console[:next(i for i, line in enumerate(console) if line.startswith("| ")) - 1]
    assert "\n".join(result) in texts.markdown and len(result) > 5  # the same result in the file
    assert "optim.some_long_hyperparameter_5=0.123" in texts.markdown  # the file keeps every cell in full
    rows = [line for line in console if line.startswith("| a_rather")]
    assert rows[0].startswith("| a_rather_long_strategy_name_8 ")  # best first
    assert texts.conclusion.best == ("a_rather_long_strategy_name_8",)


def test_one_seed_tables_leave_out_the_columns_that_need_several_seeds() -> None:
    df = images_table({"rthpo_default": [340], "exp": [351]})
    exp = experiment(["rthpo_default", "exp"])
    texts = S.summary_texts(exp, df, {}, {"cpu": 1.0}, {}, 3.0)
    for text in (texts.markdown, texts.console):
        assert "[n/a]" not in text and "of 1 |" not in text and "CI" not in text.split("*Legend.*")[0]
        assert "wins vs best" not in text and "IQM [" not in text and "mean rank" not in text
    assert "| rthpo_default | rthpo | none | 0.9444 | -11 of 360 images | 2 |" in texts.markdown
    assert "| strategy | method | searcher | best val acc |" in texts.markdown  # every run: no seed column
    header = next(line for line in texts.console.splitlines() if line.startswith("| strategy"))
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["strategy", "test acc", "vs best"]
    assert "| exp " in texts.console and "| best " in texts.console and "| -11 of 360 " in texts.console
    several = S.summary_texts(experiment(["rthpo_default", "exp"], seeds=2),
                              images_table({"rthpo_default": [340, 341], "exp": [351, 350]}), {}, {}, {}, 3.0)
    assert "test acc IQM [95% CI]" in several.markdown and "| rthpo_default | 0 |" in several.markdown
    assert "mean rank" in several.console and "diff vs best [95% CI]" in several.console


# ---------------------------------------------------------------- figures


def curves_of(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves = stats.seed_curves(df)
    on_grid = stats.curves_on_grid(curves, stats.compute_grid(curves, n_points=10))
    return stats.aggregate_curves(on_grid), stats.rank_curves(on_grid)


def test_best_so_far_leaves_out_the_band_and_the_rank_panel_with_one_seed() -> None:
    one = plot_best_so_far(*curves_of(images_table({"a": [350], "b": [340]})), budget_s=3.0)
    assert len(one.axes) == 1 and not one.axes[0].collections  # no band, no rank panel
    assert "25–75%" not in one.axes[0].get_title() and "One seed" in one.axes[0].get_title()
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()] == ["a", "b"]
    three = plot_best_so_far(*curves_of(images_table({"a": [350, 340, 345], "b": [340, 330, 335]})),
                             budget_s=3.0)
    assert len(three.axes) == 2 and len(three.axes[0].collections) == 2  # a band per strategy
    assert "25–75%" in three.axes[0].get_title()


def test_the_lr_plot_puts_only_learning_rates_on_the_eta_axis() -> None:
    df = pd.DataFrame([
        row("exp", 0, "e", 1, 0.9, 0.9, 1.0, method="exp_decay", lr=0.09, eta0=0.1),
        row("exp", 0, "e", 2, 0.95, 0.9, 2.0, method="exp_decay", lr=0.081, eta0=0.1),
        row("ada", 0, "d", 1, 0.9, 0.9, 1.0, method="adadelta", lr=1.88, eta0=1.88),
        row("prod", 0, "p", 1, 0.9, 0.9, 1.0, method="prodigy", lr=3e-3, eta0=1.0),
        row("prod", 0, "p", 2, 0.95, 0.9, 2.0, method="prodigy", lr=4e-3, eta0=1.0),
    ])
    ax = plot_lr_trajectories(df).axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    labels = [ln.get_label() for ln in lines]
    assert len(lines) == 2 and not any(label.startswith("ada") for label in labels)
    exp, prod = lines
    assert list(exp.get_xdata()) == [0, 1, 2] and list(exp.get_ydata()) == [0.1, 0.09, 0.081]  # from eta-bar
    assert list(prod.get_xdata()) == [1, 2] and list(prod.get_ydata()) == [3e-3, 4e-3]  # no multiplier at 0
    assert "effective step size d·lr" in prod.get_label()
    plotted = np.concatenate([ln.get_ydata() for ln in ax.get_lines()])
    assert 1.88 not in plotted and 1.0 not in plotted  # neither multiplier is drawn anywhere
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("ada (adadelta): not shown") for t in legend)


# ---------------------------------------------------------------- fitting a table


def test_fit_table_drops_columns_in_order_then_shortens_one() -> None:
    headers, rows = ["name", "x", "y", "config"], [["alpha", "1", "2", "c" * 200]]
    lines = fit_table(headers, rows, width=60, drop=["y", "x"], shorten="config")
    assert all(len(line) <= 60 for line in lines) and lines[0].split("|")[2].strip() == "config"
    assert "| x " not in lines[0] and lines[2].rstrip(" |").endswith("…")
    assert fit_table(headers, [["a", "1", "2", "c"]], width=60, drop=["y"]) [0] == "| name | x | y | config |"
    with pytest.raises(ValueError, match=r"\['z'\] are not headers"):
        fit_table(headers, rows, drop=["z"])
    with pytest.raises(ValueError, match="a row has 1 cells but there are 4 headers"):
        fit_table(headers, [["a"]])
