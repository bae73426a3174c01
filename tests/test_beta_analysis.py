"""Tests of experiments/beta_analysis.py (the windows of docs/beta.md) on hand-built run records with known
answers, and of the study's driver: its cells (experiments/beta_design.py) are valid comparison configs,
the records are read back from a cell's trials.csv (experiments/beta_robustness.py), and the document
renders from records (experiments/beta_report.py). The smoke run itself is
tests/test_documented_commands.py's (docs/beta.md's commands)."""

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
            "diverged": diverged,
            "epochs": [{"epoch": 1, "val_acc": test if val is None else val, "test_acc": test}]}


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
              {"epoch": 3, "val_acc": 0.7, "test_acc": 0.3},
              {"epoch": 4, "val_acc": float("nan"), "test_acc": 0.9}]
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
    # a: every eta good at 1e-2, 1e-1; eta 1e-3 also at 1 but eta 1e-1 not -> strict window 1e-2..1e-1
    # (1 decade)
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

    flags_c = ba.strict_flags(table, "c", "rthpo", "sign_log", ETAS, BETAS, bars["c"])
    assert ba.widest_window(BETAS, flags_c) is None
    per_eta_c = ba.per_eta_flags(table, "c", "rthpo", "sign_log", ETAS, BETAS, bars["c"])
    assert ba.widest_window(BETAS, per_eta_c[1e-1]).width == pytest.approx(3.0)  # the looser window

    common_ab = ba.widest_window(BETAS, ba.common_flags({"a": flags_a, "b": flags_b}, BETAS))
    assert common_ab.members == (1e-1,) and common_ab.width == 0.0  # one grid value: width 0

    summ = ba.summarize_rule(table, ["a", "b"], "rthpo", "sign_log", ETAS, BETAS, {w: bars[w] for w in "ab"})
    assert summ.common.members == (1e-1,) and summ.best_beta == 1e-1
    assert summ.best_coverage[:2] == (4, 4)
    assert summ.best_coverage.mean_shortfall == pytest.approx(0.5, abs=0.1)

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


# ------------------------------------------------------------------------------------------- the study
bd = _load("beta_design_under_test", "beta_design.py")
br = _load("beta_robustness_under_test", "beta_robustness.py")
rep = _load("beta_report_under_test", "beta_report.py")


def test_the_cells_hold_the_designed_grids() -> None:
    p1 = {c.name: c for c in bd.phase1_cells(["digits", "cifar10_resnet18"], bd.FULL)}
    assert sorted(p1) == ["cifar10_resnet18-exp_decay", "digits-exp_decay", "digits-rthpo"]
    assert p1["digits-exp_decay"].runs == len(bd.FULL.ref_etas) * 3
    assert p1["digits-rthpo"].runs == 4 * 4 * 9 * 3 and p1["digits-rthpo"].seeds == 3
    assert p1["cifar10_resnet18-exp_decay"].runs == len(bd.FULL.etas)  # the probe: the eta-bar grid, 1 seed
    assert bd.FULL.scale_free_betas[:3] == (1e-4, 3.16e-4, 1e-3) and bd.FULL.scale_free_betas[-1] == 1.0
    assert bd.FULL.additive_betas[0] == 1e-9 and bd.FULL.additive_betas[-1] == 0.1
    picks = bd.Picks(hd_rules=("additive", "adam_log"), probe=(("adam_log", 1e-2),), why="")
    p2 = {c.name: c for c in bd.phase2_cells(["digits", "cifar10_resnet18"], bd.FULL, picks)}
    assert p2["digits-hd"].runs == 2 * 4 * 9 * 3 * 2
    probe = p2["cifar10_resnet18-probe"].strategies[0]
    assert probe["overrides"] == {"lr.hyper_update": "adam_log", "lr.beta": 1e-2}
    assert probe["space"] == {"lr.eta0": {"grid": list(bd.FULL.etas)}}
    assert bd.planned_runs(bd.FULL) == 2667  # the number docs/beta.md states
    assert rep.fmt_beta(3.16e-4) == "3.16e-4" and rep.fmt_beta(1e-9) == "1e-9" and rep.fmt_beta(1.0) == "1e0"
    with pytest.raises(ValueError, match="renumber them from 0"):
        bd.Design("bad", (1.0,), (1.0,), (1, 2), (1.0,), (1.0,), (0,))


def test_every_cell_is_a_valid_comparison_config() -> None:
    """The configs load with the comparison's own (torch-free) loader: every strategy resolves, the study's
    setting is in the base run config."""
    from ray_rthpo.experiment.config import experiment_from_dict

    picks = bd.Picks(hd_rules=("additive", "sign_log"), probe=(("sign_log", 0.1), ("additive", 1e-4)), why="")
    workloads = list(bd.WORKLOADS)
    cells = bd.phase1_cells(workloads, bd.SMOKE) + bd.phase2_cells(workloads, bd.SMOKE, picks)
    for cell in cells:
        data = br.experiment_config(cell, bd.SMOKE)
        exp = experiment_from_dict(data, name=data["name"], resolve_data=False)
        assert [s.name for s in exp.strategies] == [s["name"] for s in cell.strategies]
        assert exp.seeds == cell.seeds and exp.base.train.epochs == 1 and exp.base.lr.beta_horizon == "step"
        assert exp.base.lr.preset == "exact" and exp.base.train.device == "cpu"
        for strategy in exp.strategies:
            assert exp.run_config(strategy).lr.hyper_update == (bd.strategy_rule(
                next(s for s in cell.strategies if s["name"] == strategy.name)) or exp.base.lr.hyper_update)
    mnist = br.experiment_config(bd.phase1_cells(["mnist_lenet"], bd.FULL)[1], bd.FULL)
    assert mnist["base"]["data"]["train_subset"] == 2048 and mnist["base"]["train"]["epochs"] == 3


def _epoch(strategy: str, trial: str, method: str, eta0: float, beta: float, epoch: int, val: float,
           test: float, lr: float, diverged: bool = False) -> dict:
    return {"strategy": strategy, "seed": 0, "trial_id": trial, "config/lr.method": method,
            "config/lr.eta0": eta0, "config/lr.beta": beta, "epoch": epoch, "step": 40 * epoch,
            "val/acc": val, "test/acc": test, "lr": lr, "diverged": diverged,
            "status": "diverged" if diverged else "finished", "time/total_s": 0.5 * epoch,
            "time/epoch_s": 0.5, "val/n": 144, "test/n": 360, "time/reported_at": 1.8e9 + epoch,
            "time/wall_elapsed_s": 2.0 * epoch, "node/device_name": "cpu (x86_64, 1 threads)"}


def test_records_are_read_from_a_cells_run_files(tmp_path: Path) -> None:
    import pandas as pd
    import yaml

    cell = tmp_path / "digits-rthpo"
    cell.mkdir()
    data = br.experiment_config(bd.phase1_cells(["digits"], bd.SMOKE)[1], bd.SMOKE)
    (cell / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    rows = [_epoch("rthpo_sign_log", "t1", "rthpo", 0.01, 0.1, 1, 0.5, 0.45, 0.05),
            _epoch("rthpo_sign_log", "t1", "rthpo", 0.01, 0.1, 2, 0.7, 0.65, 0.002),
            _epoch("rthpo_sign_log", "t1", "rthpo", 0.01, 0.1, 2, 0.8, 0.75, 0.003),  # a repeated report
            _epoch("rthpo_additive", "t2", "rthpo", 1.0, 1e-4, 1, 0.1, 0.1, float("nan"), diverged=True)]
    pd.DataFrame(rows).to_csv(cell / "trials.csv", index=False)
    records = {r["strategy"]: r for r in br.read_records(tmp_path)}
    sign = records["rthpo_sign_log"]
    assert (sign["workload"], sign["method"], sign["rule"], sign["eta0"], sign["beta"]) == \
        ("digits", "rthpo", "sign_log", 0.01, 0.1)
    assert [e["val_acc"] for e in sign["epochs"]] == [0.5, 0.8]  # the last report of an epoch counts
    assert sign["selected"]["epoch"] == 2 and sign["selected"]["test"] == pytest.approx(75.0)
    assert (sign["eta_min"], sign["eta_max"], sign["eta_final"]) == (0.003, 0.05, 0.003)
    assert sign["eta_trace"] == {"step": [0, 40, 80], "eta": [0.01, 0.05, 0.003]}
    assert sign["sizes"]["steps_per_epoch"] == 40 and sign["compute_s"] == 1.0
    add = records["rthpo_additive"]
    assert add["diverged"] and add["eta_final"] == 1.0 and add["rule"] == "additive"
    assert br.design_of(tmp_path).name == "smoke"
    assert bd.choose_picks(list(records.values()), bd.SMOKE, "auto") is None  # phase 1 is not complete


def _synthetic(design: object) -> list[dict]:
    """Records of every phase-1 and phase-2 run of ``design`` with accuracies that depend on eta-bar and
    beta, so that bars, windows and the ranking have something to find."""
    picks = bd.Picks(hd_rules=("additive", "multiplicative"), probe=(("multiplicative", 0.1),), why="")
    records = []
    workloads = list(bd.WORKLOADS)
    for cell in bd.phase1_cells(workloads, design) + bd.phase2_cells(workloads, design, picks):
        for s in cell.strategies:
            etas = s["space"]["lr.eta0"]["grid"]
            betas = s["space"].get("lr.beta", {"grid": [s.get("overrides", {}).get("lr.beta")]})["grid"]
            for eta0 in etas:
                for beta in betas:
                    for seed in range(cell.seeds):
                        acc = 0.9 - 0.05 * abs(math.log10(eta0) + 1) - (0 if beta is None else 0.01 * seed)
                        rule = bd.strategy_rule(s)
                        final = eta0 * (3.0 if beta is not None else 0.9)
                        records.append({
                            "workload": cell.workload, "method": s["method"], "rule": rule, "eta0": eta0,
                            "beta": beta, "seed": seed, "cell": cell.name, "status": "finished",
                            "diverged": False, "epochs": [{"epoch": 1, "val_acc": acc, "test_acc": acc}],
                            "selected": {"epoch": 1, "val": 100 * acc, "test": 100 * acc}, "steps": 40,
                            "eta_trace": {"step": [0, 40], "eta": [eta0, final]}, "eta_min": min(eta0, final),
                            "eta_max": max(eta0, final), "eta_final": final,
                            "sizes": {"train": 1280, "val": 144, "test": 360, "batch": 32, "val_batch": 64,
                                      "epochs": 1, "steps_per_epoch": 40},
                            "compute_s": 0.5, "wall_s": 1.0, "finished_at": 1.8e9, "device": "cpu"})
    return records


def test_the_document_renders_from_records(tmp_path: Path) -> None:
    design = bd.Design("full", etas=(1e-3, 1e-2, 1e-1), ref_etas=(1e-3, 1e-2, 1e-1), seeds=(0, 1),
                       additive_betas=(1e-6, 1e-4), scale_free_betas=(1e-2, 1e-1), probe_seeds=(0,))
    doc = tmp_path / "docs" / "beta.md"
    figures = tmp_path / "docs" / "beta"
    assert rep.write_report(design, _synthetic(design), tmp_path / "runs", doc, figures) == 0
    text = doc.read_text()
    for command in rep.COMMANDS:  # the commands tests/test_documented_commands.py runs
        assert command in text
    for section in ("## The bar", "## Windows of β", "## Recommendation", "### (2) η moves",
                    "## ResNet-18 on CIFAR-10: a probe", "## How the rules misbehave"):
        assert section in text
    assert (tmp_path / "docs" / "beta" / "heatmaps_rthpo.png").stat().st_size > 1000
