"""Tests of experiments/beta_analysis.py (the windows of docs/beta.md) on hand-built run records with known
answers, and of experiments/beta_robustness.py's plan and record (importable, runs nothing on import)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ba = _load("beta_analysis_under_test", "beta_analysis.py")

ETAS = (1e-3, 1e-1)
BETAS = (1e-3, 1e-2, 1e-1, 1.0)


def rec(workload: str, eta0: float, beta: float | None, seed: int, test: float, *, method: str = "rthpo",
        rule: str | None = "sign_log", val: float | None = None, diverged: bool = False) -> dict:
    """A one-epoch run record with the given test (and validation) accuracy, as fractions."""
    return {"workload": workload, "method": method, "rule": rule, "eta0": eta0, "beta": beta, "seed": seed,
            "diverged": diverged, "epochs": [{"epoch": 1, "val_acc": test if val is None else val, "test_acc": test}]}


def bar_records(workload: str, test: float) -> list[dict]:
    """exp_decay at two eta-bars: 0.1 is best by validation (its test accuracy is the bar); 0.01 has a higher
    test accuracy but a lower validation accuracy, so it must not be chosen."""
    return [rec(workload, 0.1, None, s, test, method="exp_decay", rule=None, val=0.9) for s in (0, 1)] + \
           [rec(workload, 0.01, None, s, test + 0.05, method="exp_decay", rule=None, val=0.5) for s in (0, 1)]


def grid(workload: str, good: dict[float, set[float]], bar: float) -> list[dict]:
    """A sign_log grid: cells in ``good[eta]`` are at the bar - 0.5 point, the others 5 points below."""
    out = []
    for eta in ETAS:
        for beta in BETAS:
            acc = bar - (0.005 if beta in good.get(eta, set()) else 0.05)
            out += [rec(workload, eta, beta, s, acc + (0.001 if s else -0.001)) for s in (0, 1, 2)]
    return out


def test_select_by_validation_first_best_epoch_and_nan() -> None:
    epochs = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.1}, {"epoch": 2, "val_acc": 0.7, "test_acc": 0.2},
              {"epoch": 3, "val_acc": 0.7, "test_acc": 0.3}, {"epoch": 4, "val_acc": float("nan"), "test_acc": 0.9}]
    sel = ba.select_by_validation(epochs)
    assert (sel.epoch, sel.val, sel.test) == (2, pytest.approx(70.0), pytest.approx(20.0))
    assert ba.select_by_validation([]) is None
    assert ba.select_by_validation([{"epoch": 1, "val_acc": None, "test_acc": 0.5}]) is None


def test_cells_average_seeds_and_count_divergence() -> None:
    table = ba.cells([rec("w", 0.1, 0.01, 0, 0.90), rec("w", 0.1, 0.01, 1, 0.80, diverged=True),
                      rec("w", 0.1, 0.01, 2, 0.70)])
    cell = table[("w", "rthpo", "sign_log", 0.1, 0.01)]
    assert cell.n == 3 and cell.diverged == 1
    assert cell.test == pytest.approx(80.0) and cell.test_std == pytest.approx(10.0)


def test_bar_is_chosen_by_validation_not_test() -> None:
    bar = ba.reference_bar(ba.cells(bar_records("w", 0.95)), "w")
    assert bar.eta0 == 0.1 and bar.test == pytest.approx(95.0) and bar.val == pytest.approx(90.0)
    assert ba.reference_bar(ba.cells(bar_records("w", 0.95)), "other") is None


def test_window_width_common_window_and_empty_window() -> None:
    records = bar_records("a", 0.95) + bar_records("b", 0.90) + bar_records("c", 0.80)
    # a: every eta good at 1e-2, 1e-1; eta 1e-3 also at 1 but eta 1e-1 not -> strict window 1e-2..1e-1 (1 decade)
    records += grid("a", {1e-3: {1e-2, 1e-1, 1.0}, 1e-1: {1e-3, 1e-2, 1e-1}}, 0.95)
    # b: strict window 1e-1..1 (1 decade); 1e-3 good from both etas too, but not contiguous with it
    records += grid("b", {1e-3: {1e-3, 1e-1, 1.0}, 1e-1: {1e-3, 1e-1, 1.0}}, 0.90)
    # c: never good from eta 1e-3 -> empty window
    records += grid("c", {1e-1: set(BETAS)}, 0.80)
    table = ba.cells(records)
    bars = {w: ba.reference_bar(table, w).test for w in "abc"}

    flags_a = ba.strict_flags(table, "a", "rthpo", "sign_log", ETAS, BETAS, bars["a"])
    assert flags_a == {1e-3: False, 1e-2: True, 1e-1: True, 1.0: False}
    win_a = ba.widest_window(BETAS, flags_a)
    assert (win_a.lo, win_a.hi, win_a.n_points) == (1e-2, 1e-1, 2) and win_a.width == pytest.approx(1.0)

    flags_b = ba.strict_flags(table, "b", "rthpo", "sign_log", ETAS, BETAS, bars["b"])
    win_b = ba.widest_window(BETAS, flags_b)
    assert (win_b.lo, win_b.hi) == (1e-1, 1.0)  # the longer of the two runs (1e-3 alone is shorter)

    assert ba.widest_window(BETAS, ba.strict_flags(table, "c", "rthpo", "sign_log", ETAS, BETAS, bars["c"])) is None
    per_eta_c = ba.per_eta_flags(table, "c", "rthpo", "sign_log", ETAS, BETAS, bars["c"])
    assert ba.widest_window(BETAS, per_eta_c[1e-1]).width == pytest.approx(3.0)  # the looser window

    common_ab = ba.widest_window(BETAS, ba.common_flags({"a": flags_a, "b": flags_b}, BETAS))
    assert common_ab.members == (1e-1,) and common_ab.width == 0.0  # one grid value: width 0

    summ = ba.summarize_rule(table, ["a", "b"], "rthpo", "sign_log", ETAS, BETAS, {w: bars[w] for w in "ab"})
    assert summ.common.members == (1e-1,) and summ.best_beta == 1e-1
    assert summ.best_coverage[:2] == (4, 4) and summ.best_coverage.mean_shortfall == pytest.approx(0.5, abs=0.1)

    summ_abc = ba.summarize_rule(table, ["a", "b", "c"], "rthpo", "sign_log", ETAS, BETAS, bars)
    assert summ_abc.common is None and summ_abc.windows["c"] is None
    # empty common window: the beta with the smallest worst shortfall (then the most good cells); 1e-1
    assert summ_abc.best_beta == 1e-1 and summ_abc.best_coverage[:2] == (5, 6)
    assert summ_abc.best_coverage.worst == pytest.approx(5.0, abs=0.2)  # c at eta 1e-3 is 5 points short
    assert summ_abc.best_coverage.mean_shortfall == pytest.approx((5 * 0.5 + 5.0) / 6, abs=0.1)


def test_missing_cell_is_not_in_the_window() -> None:
    records = bar_records("a", 0.95) + [r for r in grid("a", {e: set(BETAS) for e in ETAS}, 0.95)
                                        if not (r["eta0"] == 1e-3 and r["beta"] == 1e-2)]
    table = ba.cells(records)
    flags = ba.strict_flags(table, "a", "rthpo", "sign_log", ETAS, BETAS, 95.0)
    assert flags == {1e-3: True, 1e-2: False, 1e-1: True, 1.0: True}
    assert ba.widest_window(BETAS, flags).members == (1e-1, 1.0)


def test_rank_rules_prefers_the_widest_common_window() -> None:
    def summary(rule: str, window: ba.Window | None, cov: ba.Coverage) -> ba.RuleSummary:
        return ba.RuleSummary("rthpo", rule, {}, {}, window, 1e-2, cov, cov)

    wide = summary("x", ba.Window((1e-2, 3e-2, 1e-1)), ba.Coverage(3, 3, 0.0, 0.0))
    narrow = summary("y", ba.Window((1e-2,)), ba.Coverage(3, 3, 0.0, 0.0))
    empty_worse = summary("z", None, ba.Coverage(2, 3, 9.0, 3.0))
    empty_better = summary("w", None, ba.Coverage(1, 3, 1.0, 0.5))
    empty_tie = summary("v", None, ba.Coverage(2, 3, 1.0, 4.0))
    ranked = ba.rank_rules([empty_better, narrow, empty_tie, empty_worse, wide])
    # windows tied (empty): the smaller worst shortfall, then more good cells
    assert [s.rule for s in ranked] == ["x", "y", "v", "w", "z"]


def test_heatmap_and_eta_movement() -> None:
    table = ba.cells([rec("w", 1e-3, 1e-2, 0, 0.5, diverged=True)])
    acc, div, n = ba.heatmap(table, "w", "rthpo", "sign_log", (1e-3, 1e-1), (1e-2, 1e-1))
    assert acc[0][0] == pytest.approx(50.0) and div[0][0] == 1 and n[0][0] == 1
    assert math.isnan(acc[1][1]) and n[1][1] == 0
    assert ba.eta_movement(1e-2, 1e-3, 2e-2) == pytest.approx(10.0)
    assert ba.eta_movement(1e-2, 5e-3, 1e-1) == pytest.approx(10.0)
    assert ba.eta_movement(1e-2, 0.0, 1e-2) == math.inf
    assert ba.log_distance(1e-3, 1e-1) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- the script
br = _load("beta_robustness_under_test", "beta_robustness.py")


def test_script_plan_and_formatting() -> None:
    p1 = br.plan_phase1(["digits"], br.FULL)
    assert len(p1) == len(br.FULL.ref_etas) * 3 + 4 * 4 * 9 * 3
    assert len({t.key for t in p1}) == len(p1)
    assert br.FULL.scale_free_betas[:3] == (1e-4, 3.16e-4, 1e-3) and br.FULL.scale_free_betas[-1] == 1.0
    assert br.FULL.additive_betas[0] == 1e-9 and br.FULL.additive_betas[-1] == 0.1
    picks = br.Picks(hd_rules=("additive", "adam_log"), probe=(("adam_log", 1e-2),), why="")
    p2 = br.plan_phase2(["digits", "cifar10_resnet18"], br.FULL, picks)
    assert sum(t.workload == "digits" for t in p2) == 2 * 4 * 9 * 3 * 2
    assert [t.eta0 for t in p2 if t.workload == "cifar10_resnet18"] == list(br.FULL.etas)
    assert br.fmt_beta(3.16e-4) == "3.16e-4" and br.fmt_beta(1e-9) == "1e-9" and br.fmt_beta(1.0) == "1e0"
    task = br.Task("digits", "rthpo", "sign_log", 0.01, 0.0316, 2, 1)
    assert "lr.hyper_update=sign_log" in task.overrides() and "train.seed=2" in task.overrides()
    config = br.build_config(task)
    assert (config.lr.beta, config.lr.hyper_update, config.train.epochs) == (0.0316, "sign_log", 5)


def test_one_run_is_recorded_and_deterministic() -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        task = br.Task("digits", "rthpo", "sign_log", 0.01, 0.1, 0, 1, design="smoke")  # 1 epoch, 40 steps
        a, b = br.run_one(task), br.run_one(task)
    finally:
        torch.set_num_threads(threads)
    assert a["status"] == "finished" and a["steps"] == 40 and len(a["epochs"]) == 1
    assert a["epochs"] == [{**e, "time_s": a["epochs"][0]["time_s"], "hyper_s": a["epochs"][0]["hyper_s"]}
                           for e in b["epochs"]]
    assert a["eta_trace"] == b["eta_trace"] and a["eta_trace"]["eta"][0] == 0.01
    assert a["eta_max"] > 0.01 * 1.5  # sign_log with beta 0.1 moves eta within 40 steps
