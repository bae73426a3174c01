"""Tests of experiments/rosenbrock.py: the paper's Figure 1 (problem (1) on the Rosenbrock function)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from script_runner import run_isolated

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "rosenbrock.py"
_spec = importlib.util.spec_from_file_location("rosenbrock_experiment", SCRIPT)
assert _spec is not None and _spec.loader is not None
rb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rb)

START = rb.DEFAULT_START


@pytest.fixture(scope="module")
def learned() -> tuple[torch.Tensor, torch.Tensor]:
    return rb.optimize_schedule(START, steps=4)


def test_function_gradient_and_residuals() -> None:
    w = torch.tensor([[-1.2, 1.0], [1.0, 1.0], [0.3, -0.7]], dtype=torch.float64, requires_grad=True)
    f = rb.rosenbrock(w)
    assert f[1].item() == 0.0 and f[0].item() == pytest.approx(24.2)
    (auto,) = torch.autograd.grad(f.sum(), w)
    assert torch.allclose(rb.rosenbrock_grad(w), auto)
    assert torch.allclose((rb.rosenbrock_residuals(w) ** 2).sum(-1), f)


def test_unrolled_descent_matches_manual_steps() -> None:
    etas = torch.tensor([1e-3, 2e-3], dtype=torch.float64)
    trajectory = rb.unrolled_descent(START, etas)
    w = torch.tensor(START, dtype=torch.float64)
    for t, eta in enumerate(etas):
        assert torch.allclose(trajectory[t], w)
        w = w - eta * rb.rosenbrock_grad(w)
    assert trajectory.shape == (3, 2) and torch.allclose(trajectory[-1], w)


def test_hypergradient_by_autograd_matches_finite_differences() -> None:
    etas = torch.tensor([1e-3, 2e-3, 1e-3, 5e-4], dtype=torch.float64, requires_grad=True)
    (hyper,) = torch.autograd.grad(rb.rosenbrock(rb.unrolled_descent(START, etas)[-1]), etas)
    for t in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[t] = 1e-8
        fd = (rb.final_value(START, etas.detach() + step)
              - rb.final_value(START, etas.detach() - step)) / 2e-8
        assert hyper[t].item() == pytest.approx(fd, rel=1e-5)


def test_learned_four_step_schedule_reaches_optimum(learned: tuple[torch.Tensor, torch.Tensor]) -> None:
    etas, trajectory = learned
    assert etas.shape == (4,) and bool((etas > 0).all())
    assert trajectory.shape == (5, 2)
    assert torch.equal(trajectory[0], torch.tensor(START, dtype=torch.float64))
    assert torch.allclose(trajectory, rb.unrolled_descent(START, etas))
    w4 = trajectory[-1]
    assert abs(w4[0].item() - 1.0) < 1e-3 and abs(w4[1].item() - 1.0) < 1e-3
    assert rb.rosenbrock(w4).item() < 1e-12


def test_schedule_optimisation_is_deterministic(learned: tuple[torch.Tensor, torch.Tensor]) -> None:
    etas, _ = rb.optimize_schedule(START, steps=4)
    assert torch.equal(etas, learned[0])


@pytest.mark.parametrize("steps", [4, 1000])
def test_one_over_t_descent_does_not_reach_optimum(steps: int) -> None:
    trajectory = rb.one_over_t_descent(START, rb.DEFAULT_ETA_BAR, steps)
    assert trajectory.shape == (steps + 1, 2)
    assert bool(torch.isfinite(trajectory).all())
    assert rb.distance_to_optimum(trajectory[-1]) > 1e-3
    assert rb.rosenbrock(trajectory[-1]).item() > 1.0


def test_one_over_t_misses_optimum_for_every_eta_bar_of_the_grid() -> None:
    """Fairness: no eta_bar in 1e-4..1e-1 makes 1/t descent reach [1, 1] within 1e-3 in 1000 steps."""
    sweep = rb.one_over_t_sweep(START, rb.ETA_BAR_GRID, 1000)
    assert sweep.shape == (1001, len(rb.ETA_BAR_GRID), 2)
    assert torch.allclose(sweep[:, 4], rb.one_over_t_descent(START, rb.ETA_BAR_GRID[4], 1000))
    for k, eta_bar in enumerate(rb.ETA_BAR_GRID):
        assert rb.distance_to_optimum(sweep[-1, k]) > 1e-3, eta_bar
    eta_bar, trajectory = rb.best_eta_bar(START, 1000)
    assert eta_bar in rb.ETA_BAR_GRID
    baseline = rb.one_over_t_descent(START, 1e-3, 1000)[-1]
    assert 0 < rb.rosenbrock(trajectory[-1]).item() < rb.rosenbrock(baseline).item()


def test_main_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs" / "rosenbrock.png"
    assert rb.main(["--out", str(out), "--start", str(START[0]), str(START[1])]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["rosenbrock.png"]  # no temporary file left behind
    text = capsys.readouterr().out
    assert "learned schedule" in text and "1/t descent" in text and "NOTE" not in text


def test_main_rejects_non_finite_start(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        rb.main(["--out", str(tmp_path / "x.png"), "--start", "nan", "1"])
    assert info.value.code == 2


@pytest.mark.slow  # a subprocess that imports torch and Ray: seconds each
def test_experiment_script_runs_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "fig.png"
    done = run_isolated([sys.executable, str(SCRIPT), "--out", str(out), "--long-steps", "10"], timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG") and "figure written to" in done.stdout
