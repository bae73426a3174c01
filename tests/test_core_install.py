"""The optimizer installs and runs with torch alone (pyproject.toml: ``dependencies`` vs the extra ``tune``).

Each test runs a fresh interpreter in which the harness's modules cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError), so that a module-level
import of Ray, Optuna, ... anywhere on the optimizer's path fails the test.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What ``pip install ray_rthpo`` must not need: the extra ``tune``'s modules and what they pull in.
HARNESS = ("ray", "optuna", "skopt", "sklearn", "torchvision", "pandas", "matplotlib", "yaml", "scipy",
           "PIL", "threadpoolctl", "greenlet", "prodigyopt", "schedulefree", "dog", "dadaptation",
           "lightning", "pytorch_lightning", "mlflow")


def run_without_harness(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where none of :data:`HARNESS` can be imported."""
    prologue = f"import sys\nfor _name in {HARNESS!r}:\n    sys.modules[_name] = None\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def test_the_optimizer_imports_and_steps_without_the_harness() -> None:
    result = run_without_harness("""
        import torch
        import ray_rthpo
        from ray_rthpo import RTHPO, ModelClosure
        from ray_rthpo.optim import schedules, settings
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        xv, yv = torch.randn(16, 4), torch.randint(0, 3, (16,))
        loss_fn = torch.nn.functional.cross_entropy
        for base in ("sgd", "adamw"):
            opt = RTHPO(model.parameters(), lr=0.05, base=base, schedule="warmup_cosine", total_steps=20)
            for _ in range(20):
                opt.step(ModelClosure(model, loss_fn, x, y), val_closure=ModelClosure(model, loss_fn, xv, yv))
            assert opt.scale != 0.05, (base, opt.scale)
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in {h for h in {HARNESS!r}}
                        and sys.modules[n] is not None)
        print("loaded:", loaded)
    """.replace("{HARNESS!r}", repr(HARNESS)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout


@pytest.mark.harness
def test_the_config_layer_loads_without_torch() -> None:
    """Config errors come before torch loads (it takes seconds): the config layer does not import it."""
    result = subprocess.run([sys.executable, "-c", "import sys, ray_rthpo.config, ray_rthpo.cli; "
                             "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"],
                            capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_the_command_line_without_the_harness_says_how_to_install_it() -> None:
    result = run_without_harness("""
        from ray_rthpo.cli import main
        raise SystemExit(main(["compare", "configs/compare_digits.yaml"]))
    """)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'ray_rthpo[tune]'" in result.stderr
    assert "missing: yaml, ray" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_installed_distribution_requires_torch_alone() -> None:
    try:
        requires = importlib.metadata.requires("ray_rthpo") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ray_rthpo is not installed (pip install -e .); the requirement is read from "
                    "its metadata")
    core = [r for r in requires if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in core] == ["torch"], core
    tune = [r for r in requires if 'extra == "tune"' in r]
    assert any(r.startswith("ray[tune]") for r in tune), tune
