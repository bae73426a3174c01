"""``ruff check .`` is clean: the rules pyproject.toml selects, the 110-column limit (E501) included.

ruff is in the ``test`` extra (pip install -e ".[test]"), so the suite CI runs enforces it; CI's core leg
(.ci/core_env.py: torch and pytest only) has no ruff and skips this test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_project_states_a_110_column_limit_and_enforces_it() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    settings = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]
    assert settings["line-length"] == 110
    assert "E501" not in settings.get("lint", {}).get("ignore", []), "E501 (the column limit) is ignored"
    assert "E" in settings["lint"]["select"]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
def test_ruff_check_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, ("ruff check . found problems (fix them, or `ruff check --fix .` where it "
                                  "offers a fix):\n" + done.stdout[-6000:] + done.stderr[-2000:])
