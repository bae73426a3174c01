"""Bad input, table-driven: every bad config or command line gets one line on stderr (``rthpo: error: ...``)
naming the key or file, the bad value and the fix, exit status 2, no traceback, and nothing earlier
overwritten. These fail before Ray starts, so they need none."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tune_helpers import ETA_SPACE, tiny_experiment

from ray_rthpo.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.yaml")
MNIST_RAW = Path("/work/shared/data/MNIST/raw")

#: (subcommand, extra arguments, what the one line must contain). ``{exp}`` is a tiny experiment file,
#: ``{bad_yaml}`` a run config with a number that is not one, ``{truncated}`` a data folder with a cut MNIST file.
CASES: list[tuple[str, list[str], list[str]]] = [
    ("train", ["--set", "lr.bta=0.1"], ["unknown key 'lr.bta'", "beta"]),
    ("train", ["--set", "trian.epochs=2"], ["trian"]),
    ("train", ["--set", "train.epochs=two"], ["train.epochs", "two"]),
    ("train", ["--set", "train.epochs=2.5"], ["train.epochs", "2.5"]),
    ("train", ["--set", "lr.beta=small"], ["lr.beta", "must be a number", "small"]),
    ("train", ["--config-is-missing"], []),  # placeholder replaced below: argparse error
    ("train", ["--set", "lr.eta0=-0.1"], ["lr.eta0", "-0.1", "> 0"]),
    ("train", ["--set", "lr.eta0=0.0"], ["lr.eta0", "0.0", "> 0"]),
    ("train", ["--set", "lr.beta=-1.0e-3"], ["lr.beta", "-0.001", ">= 0"]),
    ("train", ["--set", "lr.method=marthe", "--set", "lr.mu=1.5"], ["lr.mu", "1.5"]),
    ("train", ["--set", "lr.method=marthe", "--set", "lr.mu=-0.1"], ["lr.mu", "-0.1"]),
    ("train", ["--set", "data.name=svhn"], ["data.name", "svhn", "must be one of"]),
    ("train", ["--set", "model.name=vgg"], ["model.name", "vgg", "must be one of"]),
    ("train", ["--set", "lr.method=rthp"], ["lr.method", "rthp", "must be one of"]),
    ("train", ["--set", "lr.beta"], ["lr.beta", "key=value"]),
    ("train", ["{bad_yaml}"], ["lr.eta0", "must be a number", "'1e-2x'"]),
    ("train", ["--set", "data.name=mnist", "--set", "data.data_dir=/nonexistent/folder"], ["/nonexistent/folder"]),
    ("train", ["--set", "data.name=mnist", "--set", "data.data_dir={truncated}"],
     ["train-images-idx3-ubyte.gz", "truncated"]),
    ("compare", ["{exp}", "--set", "budget_s=0"], ["budget_s", "0"]),
    ("compare", ["{exp}", "--set", "budget_s=-5.0"], ["budget_s", "-5.0"]),
    ("compare", ["{exp}", "--set", "budget_s=lots"], ["budget_s", "must be a number", "lots"]),
    ("compare", ["{exp}", "--set", "strategies.a.searcher=hyperband"], ["searcher", "hyperband"]),
    ("compare", ["{exp}", "--set", "strategies.a.method=rthp"], ["method", "rthp"]),
    ("compare", ["{exp}", "--set", "strategies.a.scheduler=pbt2"], ["scheduler", "pbt2"]),
    ("compare", ["{exp}", "--set", "strategies.a.space.lr.eta0={{loguniform: [1.0, 0.1]}}"], ["lr.eta0"]),
    ("compare", ["{exp}", "--set", "strategies.nope.num_samples=3"], ["nope"]),
    ("compare", ["{exp}", "--set", "max_concurrent=0"], ["max_concurrent", "0"]),
    ("compare", ["{exp}", "--set", "data.name=imagenet"], ["data.name", "imagenet"]),
    ("compare", ["{exp}", "--num-cpus", "0"], ["--num-cpus", "0"]),
    ("compare", ["{exp}", "--set", "data.name=mnist", "--set", "data.data_dir={truncated}"],
     ["train-images-idx3-ubyte.gz", "truncated"]),
    ("compare", ["{exp}", "--resume"], ["--resume", "no experiment"]),
    ("run", ["{exp}", "--strategy", "zzz"], ["zzz"]),
    ("run", ["{exp}", "--set", "budget_s=0.0"], ["budget_s", "0.0"]),
]
CASES = [c for c in CASES if c[1] != ["--config-is-missing"]]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_input")
    exp = root / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "a", "method": "exp_decay", "searcher": "random", "num_samples": 2, "space": ETA_SPACE},
        {"name": "b", "method": "exp_decay", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.1, 0.3]}}})))
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("lr:\n  eta0: 1e-2x\n")
    truncated = root / "mnist_cut"
    raw = truncated / "MNIST" / "raw"
    raw.mkdir(parents=True)
    if MNIST_RAW.is_dir():
        for f in MNIST_RAW.iterdir():
            shutil.copy(f, raw / f.name)
        data = (raw / "train-images-idx3-ubyte.gz").read_bytes()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 3])
    else:  # no MNIST here: a gzip of the right name cut in the middle
        blob = gzip.compress(os.urandom(200_000))
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            (raw / f"{name}.gz").write_bytes(blob[: len(blob) // 3])
    return {"exp": str(exp), "bad_yaml": str(bad_yaml), "truncated": str(truncated)}


@pytest.mark.parametrize("command,args,expected", CASES,
                         ids=[f"{c}:{' '.join(a)}"[:60] for c, a, _ in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(inputs: dict[str, str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], command: str,
                                                args: list[str], expected: list[str]) -> None:
    args = [a.format(**inputs) for a in args]
    first = [] if args and not args[0].startswith("-") else [DIGITS if command == "train" else inputs["exp"]]
    out = tmp_path / "out"
    code = main([command, *first, *args, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rthpo: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not out.exists() or not any(out.iterdir())  # nothing written for a refused run


@pytest.mark.parametrize("command", ["train", "compare", "run"])
def test_an_output_folder_holding_an_earlier_experiment_is_left_untouched(
        inputs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    out = tmp_path / "earlier"
    out.mkdir()
    files = {"config.yaml": "earlier config\n", "summary.md": "earlier results\n", "trials.csv": "a,b\n1,2\n"}
    for name, text in files.items():
        (out / name).write_text(text)
        os.utime(out / name, (1_000_000_000, 1_000_000_000))
    config = DIGITS if command == "train" else inputs["exp"]
    extra = ["--strategy", "a"] if command == "run" else []
    assert main([command, config, *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: ") and "\n" not in err and str(out) in err and "--output" in err, err
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (out / name).read_text() == text and (out / name).stat().st_mtime == 1_000_000_000


def test_resume_with_another_config_is_refused(inputs: dict[str, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "config.yaml").write_text("name: other\n")
    assert main(["compare", inputs["exp"], "--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: --resume") and "another config" in err and "\n" not in err
    assert (out / "config.yaml").read_text() == "name: other\n"


@pytest.mark.slow  # a subprocess that imports torch and Ray: seconds each
def test_bad_input_through_the_console_script_prints_no_traceback(inputs: dict[str, str], tmp_path: Path) -> None:
    for argv in (["compare", inputs["exp"], "--set", "strategies.a.searcher=hyperband"],
                 ["train", inputs["bad_yaml"], "--output", str(tmp_path / "o")]):
        proc = subprocess.run([sys.executable, "-m", "ray_rthpo.cli", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("rthpo: error: ")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
