"""`rthpo train` as a user runs it: progress, outputs, resume, and bad input -> one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from script_runner import run_isolated

from ray_rthpo.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--set", "train.epochs=2", "--set", "model.hidden=[16]", "--set", "data.batch_size=128"]


def test_train_writes_outputs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "digits.yaml"), "--output", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2" in printed and "finished: validation accuracy" in printed
    for name in ("config.yaml", "history.csv", "checkpoint.pt", "result.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "result.json").read_text())["epoch"] == 2
    # A second run into the same folder is refused (nothing overwritten) ...
    assert main(["train", str(REPO / "configs" / "digits.yaml"), "--output", str(out), *QUICK]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # ... and --resume with more epochs continues from epoch 2.
    more = [a if a != "train.epochs=2" else "train.epochs=3" for a in QUICK]
    assert main(["train", str(REPO / "configs" / "digits.yaml"), "--output", str(out), "--resume",
                 *more]) == 0
    printed = capsys.readouterr().out
    assert "resumed at epoch 2" in printed and "epoch   3" in printed and "epoch   1 " not in printed


@pytest.mark.slow  # a subprocess that imports torch and Ray: seconds each
def test_default_output_folders_are_never_overwritten(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "digits.yaml")
    assert main(["train", config, *QUICK]) == 0
    assert main(["train", config, *QUICK]) == 0
    assert (tmp_path / "runs" / "digits" / "result.json").is_file()
    assert (tmp_path / "runs" / "digits-2" / "result.json").is_file()


BAD_INPUT = [
    (["--set", "lr.method=rthp"], "lr.method must be one of"),
    (["--set", "model.name=vgg"], "model.name must be one of"),
    (["--set", "data.name=svhn"], "data.name must be one of"),
    (["--set", "lr.eta0=-0.1"], "lr.eta0 must be a finite number > 0, but got -0.1"),
    (["--set", "lr.beta=-1.0e-3"], "lr.beta must be a finite number >= 0"),
    (["--set", "lr.beta=1e-8x"], "lr.beta must be a number, but got '1e-8x'"),
    (["--set", "lr.bta=0.1"], "unknown key 'lr.bta'; did you mean 'beta'?"),
    (["--set", "data.name=mnist", "--set", "data.data_dir=/nonexistent/folder"], "/nonexistent/folder"),
    (["--set", "train.device=cuda"] if not __import__("torch").cuda.is_available()
     else ["--set", "lr.mu=2.0"],
     "train.device" if not __import__("torch").cuda.is_available() else "lr.mu"),
]


@pytest.mark.parametrize("args,expected", BAD_INPUT, ids=[e for _, e in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    code = main(["train", str(REPO / "configs" / "digits.yaml"), "--output", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rthpo: error: "), err


@pytest.mark.slow  # a subprocess that imports torch and Ray: seconds each
def test_missing_config_file_via_the_console_script(tmp_path: Path) -> None:
    proc = run_isolated([sys.executable, "-m", "ray_rthpo.cli", "train", str(tmp_path / "missing.yaml")],
                        timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("rthpo: error: config file") and "does not exist" in proc.stderr
