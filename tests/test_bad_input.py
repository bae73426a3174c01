"""Bad input, table-driven: every bad config or command line gets one line on stderr
(``rthpo: error: ...``) naming the key or file, the bad value and the fix, exit status 2, no traceback,
and nothing earlier overwritten. These fail before Ray starts, so they need none."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from script_runner import run_isolated
from tune_helpers import ETA_SPACE, tiny_experiment

from ray_rthpo.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.yaml")
MNIST_RAW = Path("/work/shared/data/MNIST/raw")

#: (subcommand, extra arguments, what the one line must contain). ``{exp}`` is a tiny experiment file,
#: ``{bad_yaml}`` a run config with a number that is not one, ``{truncated}`` a data folder with a cut
#: MNIST file.
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
    ("train", ["--set", "data.name=mnist", "--set", "data.data_dir=/nonexistent/folder"],
     ["/nonexistent/folder"]),
    ("train", ["--set", "data.name=mnist", "--set", "data.data_dir={truncated}"],
     ["train-images-idx3-ubyte.gz", "truncated"]),
    ("compare", ["{exp}", "--set", "budget_s=0"], ["budget_s", "0"]),
    ("compare", ["{exp}", "--set", "budget_s=-5.0"], ["budget_s", "-5.0"]),
    ("compare", ["{exp}", "--set", "budget_s=lots"], ["budget_s", "must be a number", "lots"]),
    ("compare", ["{exp}", "--set", "strategies.a.searcher=hyperband"], ["searcher", "hyperband"]),
    ("compare", ["{exp}", "--set", "strategies.a.method=rthp"], ["method", "rthp"]),
    ("compare", ["{exp}", "--set", "strategies.a.scheduler=pbt2"], ["scheduler", "pbt2"]),
    ("compare", ["{exp}", "--set", "strategies.a.space.lr.eta0={{loguniform: [1.0, 0.1]}}"],
     ["lr.eta0"]),
    ("compare", ["{exp}", "--set", "strategies.nope.num_samples=3"], ["nope"]),
    ("compare", ["{exp}", "--set", "max_concurrent=0"], ["max_concurrent", "0"]),
    ("compare", ["{exp}", "--set", "data.name=imagenet"], ["data.name", "imagenet"]),
    ("compare", ["{exp}", "--num-cpus", "0"], ["--num-cpus", "0"]),
    ("compare", ["{exp}", "--set", "data.name=mnist", "--set", "data.data_dir={truncated}"],
     ["train-images-idx3-ubyte.gz", "truncated"]),
    ("compare", ["{exp}", "--resume"], ["--resume", "no experiment"]),
    ("run", ["{exp}", "--strategy", "zzz"], ["zzz"]),
    ("compare", ["{exp}", "--strategies", "a", "zzz"], ["zzz", "this experiment has"]),
    ("run", ["{exp}", "--set", "budget_s=0.0"], ["budget_s", "0.0"]),
]
CASES = [c for c in CASES if c[1] != ["--config-is-missing"]]
#: A user's own code (model.factory, data.factory, train.loss): ``{user}`` is a run config and
#: ``{user_exp}`` an experiment naming the functions of ``rthpo_bad_user.py`` beside them (USER_CODE),
#: found through the config file's folder. Every case fails before a run folder is made or Ray starts.
CASES += [
    ("train", ["{user}", "--set", "model.factory=no_such_pkg_xyz.models:build"],
     ["model.factory", "no_such_pkg_xyz", "train.pythonpath"]),
    ("train", ["{user}", "--set", "model.factory=rthpo_bad_user:no_such_fn"],
     ["model.factory", "'rthpo_bad_user:no_such_fn'", "has no attribute 'no_such_fn'"]),
    ("train", ["{user}", "--set", "model.factory=rthpo_bad_user:NOT_CALLABLE"],
     ["model.factory", "not callable"]),
    ("train", ["{user}", "--set", "model.factory=rthpo_bad_user.build"],
     ["model.factory", "'module:function'"]),
    ("train", ["{user}", "--set", "model.factory=rthpo_bad_user:model_string"],
     ["model.factory", "model_string", "returned a str", "torch.nn.Module"]),
    ("train", ["{user}", "--set", "model.factory=rthpo_bad_user:model_wrong_classes"],
     ["model.factory", "returned (4, 3)", "logits of shape (4, 2)"]),
    ("train", ["{user}", "--set", "model.factory_args={{width: 3}}"],
     ["model.factory", "unexpected keyword argument 'width'", "model.factory_args"]),
    ("train", ["--set", "model.factory_args={{hidden: 3}}"],
     ["model.factory_args", "model.factory is null"]),
    ("train", ["{user}", "--set", "data.factory=rthpo_bad_user:data_list"],
     ["data.factory", "data_list", "returned a list of length 2", "(train, val, test)"]),
    ("train", ["{user}", "--set", "data.factory=rthpo_bad_user:data_val_is_test"],
     ["data.factory", "the same object as validation and test", "must differ"]),
    ("train", ["{user}", "--set", "data.factory=rthpo_bad_user:data_val_equals_test"],
     ["data.factory", "identical tensors as validation and test"]),
    ("train", ["{user}", "--set", "data.factory=rthpo_bad_user:data_float_labels"],
     ["data.factory", "float32", "integer class indices"]),
    ("train", ["{user}", "--set", "data.factory=rthpo_bad_user:data_raises"],
     ["data.factory", "FileNotFoundError", "/data/missing.csv"]),
    ("train", ["{user}", "--set", "data.augment=true"], ["data.augment", "data.factory"]),
    ("train", ["{user}", "--set", "train.loss=rthpo_bad_user:loss_per_example"],
     ["train.loss", "loss_per_example", "shape (4,)", "scalar"]),
    ("train", ["{user}", "--set", "train.loss=rthpo_bad_user:loss_item"],
     ["train.loss", "returned float", "scalar"]),
    ("compare", ["{user_exp}", "--set", "model.factory=no_such_pkg_xyz:build"],
     ["model.factory", "no_such_pkg_xyz"]),
    ("compare", ["{user_exp}", "--set", "data.factory=rthpo_bad_user:data_val_is_test"],
     ["data.factory", "the same object"]),
    ("compare", ["{user_exp}", "--set", "train.loss=rthpo_bad_user:loss_per_example"],
     ["train.loss", "scalar"]),
    ("run", ["{user_exp}", "--set", "model.factory=rthpo_bad_user:model_string"],
     ["model.factory", "torch.nn.Module"]),
]
#: A file given to the wrong subcommand, and budgets that are not finite (issue 21): ``{empty}`` is an
#: empty YAML file, ``{digits}`` a run config, ``{compare_digits}`` an experiment, ``{table1}`` a Table 1
#: workload, ``{nan_budget}`` an experiment whose YAML says ``budget_s: nan``.
CASES += [
    ("compare", ["{empty}"], ["'{empty}' is empty", "experiment config", "budget_s and strategies"]),
    ("run", ["{empty}"], ["'{empty}' is empty", "rthpo run needs an experiment config"]),
    ("train", ["{empty}"],
     ["'{empty}' is empty", "rthpo train needs a run config", "configs/digits.yaml"]),
    ("compare", ["{digits}"],
     ["'{digits}' is a run config", "nothing to compare", "rthpo train {digits}"]),
    ("compare", ["{digits}", "--set", "lr.eta0=0.5"], ["is a run config", "rthpo train"]),
    ("compare", ["{table1}"], ["Table 1 workload", "rthpo table1 --workload {table1}"]),
    ("train", ["{exp}"],
     ["'{exp}' is an experiment config", "base, strategies", "rthpo compare {exp}"]),
    ("train", ["{compare_digits}"],
     ["is an experiment config", "rthpo compare {compare_digits}", "rthpo run"]),
    ("train", ["{table1}"], ["Table 1 workload", "rthpo table1 --workload {table1}"]),
    ("compare", ["{exp}", "--set", "budget_s=nan"],
     ["budget_s must be a finite number of seconds > 0", "'nan'"]),
    ("compare", ["{exp}", "--set", "budget_s=NaN"],
     ["budget_s must be a finite number of seconds > 0", "'NaN'"]),
    ("compare", ["{exp}", "--set", "budget_s=inf"],
     ["budget_s must be a finite number of seconds > 0", "'inf'"]),
    ("compare", ["{exp}", "--set", "budget_s=.nan"],
     ["budget_s must be a finite number of seconds > 0", "nan"]),
    ("run", ["{exp}", "--strategy", "a", "--set", "budget_s=-inf"],
     ["budget_s must be a finite number", "-inf"]),
    ("compare", ["{nan_budget}"], ["budget_s must be a finite number of seconds > 0", "'nan'"]),
]

#: The user module of the cases above: one good factory of each kind, and one wrong in each way.
USER_CODE = """
import torch
import torch.nn.functional as F
from torch import nn

NOT_CALLABLE = 3


def _split(n, offset):
    g = torch.Generator().manual_seed(offset)
    return torch.randn(n, 5, generator=g), torch.randint(0, 2, (n,), generator=g)


def data_ok(seed=0):
    return _split(40, 1), _split(20, 2), _split(20, 3)


def data_list(seed=0):
    return [_split(40, 1), _split(20, 3)]


def data_val_is_test(seed=0):
    test = _split(20, 3)
    return {"train": _split(40, 1), "val": test, "test": test}


def data_val_equals_test(seed=0):
    x, y = _split(20, 3)
    return _split(40, 1), (x.clone(), y.clone()), (x, y)


def data_float_labels(seed=0):
    x, y = _split(40, 1)
    return (x, y.float()), _split(20, 2), _split(20, 3)


def data_raises(seed=0):
    raise FileNotFoundError("/data/missing.csv")


def model_ok(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)


def model_string(input_shape, num_classes):
    return "a model"


def model_wrong_classes(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes + 1)


def loss_per_example(output, target):
    return F.cross_entropy(output, target, reduction="none")


def loss_item(output, target):
    return F.cross_entropy(output, target).item()
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_input")
    exp = root / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "a", "method": "exp_decay", "searcher": "random", "num_samples": 2, "space": ETA_SPACE},
        {"name": "b", "method": "exp_decay", "searcher": "grid",
         "space": {"lr.eta0": {"grid": [0.1, 0.3]}}})))
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
    user = root / "user"
    user.mkdir()
    (user / "rthpo_bad_user.py").write_text(USER_CODE)
    run_config = {"data": {"factory": "rthpo_bad_user:data_ok"},
                  "model": {"factory": "rthpo_bad_user:model_ok"},
                  "lr": {"method": "fixed", "eta0": 0.1}, "train": {"epochs": 1}}
    (user / "run.yaml").write_text(yaml.safe_dump(run_config))
    (user / "exp.yaml").write_text(yaml.safe_dump({**tiny_experiment(
        {"name": "a", "method": "fixed", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.1, 0.3]}}}),
        "base": run_config}))
    (root / "empty.yaml").write_text("")
    (root / "nan_budget.yaml").write_text(exp.read_text().replace("budget_s: 1000.0", "budget_s: nan"))
    assert "budget_s: nan" in (root / "nan_budget.yaml").read_text()
    return {"exp": str(exp), "bad_yaml": str(bad_yaml), "truncated": str(truncated),
            "user": str(user / "run.yaml"), "user_exp": str(user / "exp.yaml"),
            "empty": str(root / "empty.yaml"),
            "digits": DIGITS, "compare_digits": str(REPO / "configs" / "compare_digits.yaml"),
            "table1": str(REPO / "configs" / "table1" / "mlp_mnist.yaml"),
            "nan_budget": str(root / "nan_budget.yaml")}


def assert_one_error_line(code: int, err: str, expected: list[str]) -> None:
    """Exit status 2 and one line ``rthpo: error: ...`` on stderr that holds every part of ``expected``."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rthpo: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("command,args,expected", CASES,
                         ids=[f"{c}:{' '.join(a)}"[:60] for c, a, _ in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(inputs: dict[str, str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], command: str,
                                                args: list[str], expected: list[str]) -> None:
    args = [a.format(**inputs) for a in args]
    first = [] if args and not args[0].startswith("-") else [DIGITS if command == "train" else inputs["exp"]]
    out = tmp_path / "out"
    code = main([command, *first, *args, "--output", str(out)])
    printed = capsys.readouterr()
    assert_one_error_line(code, printed.err, [part.format(**inputs) for part in expected])
    assert not out.exists() or not any(out.iterdir())  # nothing written for a refused run
    # ... and no output folder named that was never made (a failing factory)
    assert str(out) not in printed.out


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
def test_bad_input_through_the_console_script_prints_no_traceback(inputs: dict[str, str],
                                                                   tmp_path: Path) -> None:
    for argv in (["compare", inputs["exp"], "--set", "strategies.a.searcher=hyperband"],
                 ["train", inputs["bad_yaml"], "--output", str(tmp_path / "o")]):
        proc = run_isolated([sys.executable, "-m", "ray_rthpo.cli", *argv], timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("rthpo: error: ")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


#: Config errors that must appear before torch, Ray, pandas or matplotlib load (issue 21: they took 3-17 s).
QUICK_ERRORS = [
    ["compare", "{bad_exp}"],
    ["compare", "{empty}"],
    ["compare", "{digits}"],
    ["compare", "{exp}", "--set", "budget_s=nan"],
    ["compare", "{exp}", "--set", "strategies.a.searcher=hyperband"],
    ["compare", "{exp}", "--num-cpus", "0"],
    ["run", "{exp}", "--strategy", "zzz"],
    ["compare", "{exp}", "--strategies", "zzz"],
    ["train", "{exp}"],
    ["train", "{bad_yaml}"],
    ["train", "{digits}", "--set", "lr.bta=0.1"],
]
HEAVY_MODULES = ("torch", "ray", "pandas", "matplotlib", "scipy")


def test_config_errors_are_reported_before_torch_and_ray_are_imported(inputs: dict[str, str],
                                                                      tmp_path: Path) -> None:
    """Each command of QUICK_ERRORS, in one fresh interpreter: exit 2 with none of HEAVY_MODULES imported (so
    the line appears in well under a second), and nothing written."""
    bad_exp = tmp_path / "bad_exp.yaml"
    bad_exp.write_text(yaml.safe_dump({**yaml.safe_load(Path(inputs["exp"]).read_text()),
                                       "base": {"lr": {"eta0": "1e-2x"}}}))  # an experiment, a bad number
    argvs = [[a.format(bad_exp=bad_exp, **inputs) for a in argv] + ["--output", str(tmp_path / "out")]
             for argv in QUICK_ERRORS]
    script = ("import json, sys\nfrom ray_rthpo.cli import main\nout = []\n"
              f"for argv in {argvs!r}:\n    out.append(main(argv))\n"
              f"print(json.dumps([out, [m for m in {HEAVY_MODULES!r} if m in sys.modules]]))\n")
    proc = run_isolated([sys.executable, "-c", script], timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    codes, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert codes == [2] * len(QUICK_ERRORS) and len(errors) == len(QUICK_ERRORS), proc.stderr
    assert all(line.startswith("rthpo: error: ") for line in errors), proc.stderr
    assert loaded == [], f"imported before the error: {loaded}"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bad input beyond configs: files on disk
#
# Each case builds a folder as a crash, a hand edit or a full disk would leave it, runs one command, and
# expects one line ``rthpo: error: ...`` (the file, what is wrong, the fix), exit status 2, and every file
# that was there before unchanged (content and modification time).

def trained_run(root: Path, epochs: int = 1) -> Path:
    """An output folder of ``rthpo train`` (digits, a 16-unit MLP) after ``epochs`` epochs."""
    out = root / "run"
    assert main(["train", DIGITS, "--set", f"train.epochs={epochs}", "--set", "model.hidden=[16]",
                 "--output", str(out)]) == 0
    return out


def resume_train(out: Path, *extra: str) -> list[str]:
    return ["train", DIGITS, "--set", "train.epochs=2", "--set", "model.hidden=[16]", *extra,
            "--output", str(out), "--resume"]


def cut_checkpoint(root: Path) -> tuple[list[str], list[str]]:
    out = trained_run(root)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    return resume_train(out), ["checkpoint.pt", "truncated or corrupt", "delete it", "without --resume"]


def garbage_checkpoint(root: Path) -> tuple[list[str], list[str]]:
    out = trained_run(root)
    (out / "checkpoint.pt").write_bytes(os.urandom(4096))
    return resume_train(out), ["checkpoint.pt", "truncated or corrupt"]


def empty_checkpoint(root: Path) -> tuple[list[str], list[str]]:
    out = trained_run(root)
    (out / "checkpoint.pt").write_bytes(b"")  # a full disk while it was copied
    return resume_train(out), ["checkpoint.pt", "truncated or corrupt"]


def foreign_checkpoint(root: Path) -> tuple[list[str], list[str]]:
    import torch

    out = trained_run(root)
    torch.save([1, 2, 3], out / "checkpoint.pt")  # a torch file, but not a ray_rthpo checkpoint
    return resume_train(out), ["checkpoint.pt", "not a ray_rthpo checkpoint", "list"]


def gutted_checkpoint(root: Path) -> tuple[list[str], list[str]]:
    import torch

    out = trained_run(root)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    del state["model"], state["optimizer"]
    torch.save(state, out / "checkpoint.pt")
    return resume_train(out), ["not a ray_rthpo checkpoint", "missing model, optimizer"]


def other_config_checkpoint(root: Path) -> tuple[list[str], list[str]]:
    out = trained_run(root)  # refused before config.yaml is rewritten with the other value
    return resume_train(out, "--set", "lr.eta0=0.5"), ["different configuration", "lr.eta0"]


def experiment_folder(root: Path, exp_file: str) -> Path:
    """An interrupted ``rthpo compare`` folder: config.yaml, strategy a's journal (one trial finished, one at
    epoch 1 of 2), its Tune experiment with a checkpoint per trial, and an earlier trials.csv."""
    from ray_rthpo.experiment.config import load_experiment
    from ray_rthpo.training.trainer import Trainer

    out = root / "exp"
    (out / "progress").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(load_experiment(exp_file).to_dict(), sort_keys=False))
    rows = [{"strategy": "a", "trial_id": "abc12_00000", "epoch": e, "status": s, "time/epoch_s": 0.1}
            for e, s in ((1, "running"), (2, "finished"))]
    rows.append({"strategy": "a", "trial_id": "abc12_00001", "epoch": 1, "status": "running",
                 "time/epoch_s": 0.1})
    (out / "progress" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(load_experiment(exp_file).run_config("a"))
    for trial in ("abc12_00000", "abc12_00001"):
        folder = out / "ray" / "sequence" / f"train_fn_{trial}_0_lr.eta0=0.1_2026-01-01" / "checkpoint_000000"
        trainer.save(folder / "trainer.pt")
    # Tune's experiment snapshot (Ray 2.60's layout): the first trial over, the second to be restored
    trial_data = [[json.dumps({"trial_id": trial, "status": status}),
                   json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000000"}})]
                  for trial, status in (("abc12_00000", "TERMINATED"), ("abc12_00001", "RUNNING"))]
    (out / "ray" / "sequence" / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": trial_data}))
    (out / "trials.csv").write_text("strategy,trial_id,epoch\na,abc12_00000,1\n")
    return out


def resume_compare(out: Path, exp_file: str) -> list[str]:
    return ["compare", exp_file, "--output", str(out), "--resume"]


def journal_garbage_line(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    out = experiment_folder(root, exp_file)
    lines = (out / "progress" / "a.jsonl").read_text().splitlines(keepends=True)
    lines.insert(1, "this line was typed by hand\n")
    (out / "progress" / "a.jsonl").write_text("".join(lines))
    return resume_compare(out, exp_file), ["a.jsonl", "line 2", "this line was typed by hand",
                                           "Delete that line"]


def journal_foreign_record(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    out = experiment_folder(root, exp_file)
    lines = (out / "progress" / "a.jsonl").read_text().splitlines(keepends=True)
    lines.insert(2, '{"note": "not a report"}\n')
    (out / "progress" / "a.jsonl").write_text("".join(lines))
    return resume_compare(out, exp_file), ["a.jsonl", "line 3", "not a reported epoch"]


def damaged_done_marker(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    out = experiment_folder(root, exp_file)
    (out / "progress" / "a.done.json").write_text('{"wall_s": 3.0, "err')
    return resume_compare(out, exp_file), ["a.done.json", "is damaged", "delete it"]


def cut_ray_checkpoint(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    out = experiment_folder(root, exp_file)
    file = next((out / "ray" / "sequence").glob("*abc12_00001*/checkpoint_*/trainer.pt"))
    file.write_bytes(file.read_bytes()[:1000])
    return resume_compare(out, exp_file), ["Ray trial checkpoint", "abc12_00001", "truncated or corrupt",
                                           "delete that file (keep its folder)", "first epoch"]


def flipped_ray_checkpoint(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    out = experiment_folder(root, exp_file)
    file = next((out / "ray" / "sequence").glob("*abc12_00001*/checkpoint_*/trainer.pt"))
    import zipfile

    with zipfile.ZipFile(file) as archive:  # one byte changed in the middle of the largest record's data
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(file.read_bytes())
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    return resume_compare(out, exp_file), ["Ray trial checkpoint", "abc12_00001", "CRC", "delete that file"]


def credentials_in_storage_path(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    uri = "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@my-bucket/rthpo"
    return (["compare", exp_file, "--set", f"storage_path={uri}", "--output", str(root / "new")],
            ["storage_path", "s3://***@my-bucket/rthpo", "holds credentials", "instance profile"])


def credentials_in_storage_query(root: Path, exp_file: str) -> tuple[list[str], list[str]]:
    exp = yaml.safe_load(Path(exp_file).read_text())
    exp["storage_path"] = "s3://my-bucket/rthpo?access_key=AKIAIOSFODNN7EXAMPLE&secret_key=abc/def&region=us-west-2"
    config = root / "with_keys.yaml"
    config.write_text(yaml.safe_dump(exp))
    return (["run", str(config), "--strategy", "a", "--output", str(root / "new")],
            ["access_key=***&secret_key=***&region=us-west-2", "AWS_ACCESS_KEY_ID"])


FILE_CASES = {
    "train --resume: checkpoint cut in half": cut_checkpoint,
    "train --resume: checkpoint of random bytes": garbage_checkpoint,
    "train --resume: empty checkpoint": empty_checkpoint,
    "train --resume: a torch file that is no checkpoint": foreign_checkpoint,
    "train --resume: checkpoint without model and optimizer": gutted_checkpoint,
    "train --resume: another config": other_config_checkpoint,
    "compare --resume: journal with a garbage line in the middle": journal_garbage_line,
    "compare --resume: journal with a foreign record in the middle": journal_foreign_record,
    "compare --resume: damaged done marker": damaged_done_marker,
    "compare --resume: Ray trial checkpoint cut short": cut_ray_checkpoint,
    "compare --resume: Ray trial checkpoint with a flipped byte": flipped_ray_checkpoint,
    "compare: storage_path with KEY:SECRET@": credentials_in_storage_path,
    "run: storage_path with ?access_key=&secret_key=": credentials_in_storage_query,
}


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and modification time (ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_damaged_files_are_one_clear_line_and_lose_nothing(inputs: dict[str, str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           case: str) -> None:
    build = FILE_CASES[case]
    argv, expected = build(tmp_path) if case.startswith("train") else build(tmp_path, inputs["exp"])
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert_one_error_line(code, err, expected)
    assert "wJalrXUtnFEMI" not in err and "abc/def" not in err  # a secret is never printed
    assert snapshot(tmp_path) == before  # nothing written, nothing lost


# -------------------------------------------------------------- folders that cannot be written, a full disk

@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_output_on_a_read_only_file_system_is_refused_before_anything_runs(
        inputs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    real = os.statvfs

    class ReadOnly:  # what os.statvfs says of a read-only mount
        def __init__(self, result: os.statvfs_result) -> None:
            self.result = result

        def __getattr__(self, name: str) -> object:
            return os.ST_RDONLY | self.result.f_flag if name == "f_flag" else getattr(self.result, name)

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real(p)) if Path(p) == mount else real(p))
    config = DIGITS if command == "train" else inputs["exp"]
    assert main([command, config, "--output", str(mount / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: output folder") and "\n" not in err, err
    assert "read-only file system" in err and "--output" in err and str(mount) in err
    assert list(mount.iterdir()) == []


def test_an_output_folder_this_user_may_not_write_is_refused(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: answer as the kernel does for any other user
        real = os.access
        monkeypatch.setattr(os, "access",
                            lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
    try:
        assert main(["train", DIGITS, "--output", str(locked / "out")]) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert (err.startswith("rthpo: error: output folder") and "not writable by this user" in err
            and "\n" not in err)
    assert list(locked.iterdir()) == []


def test_an_output_below_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    assert main(["train", DIGITS, "--output", str(tmp_path / "afile" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: ") and "is a file, not a folder" in err and "\n" not in err
    assert (tmp_path / "afile").read_text() == "not a folder\n"


@pytest.mark.parametrize("failing", ["checkpoint.pt", "history.csv"])
def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_good_epoch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        failing: str) -> None:
    """The disk fills up while epoch 2 is saved (simulated: the atomic writer's fsync raises ENOSPC for that
    file from then on): one line with the fix, epoch 1's checkpoint and history intact, no temporary file
    left, and ``--resume`` continues from epoch 1 once there is room."""
    import errno

    import torch

    from ray_rthpo.report import files

    out = tmp_path / "run"
    args = ["train", DIGITS, "--set", "train.epochs=2", "--set", "model.hidden=[16]", "--output", str(out)]
    names: dict[int, str] = {}  # fd -> name of the temporary file the atomic writer opened
    real_mkstemp, real_fsync = files.tempfile.mkstemp, files.os.fsync
    writes: list[str] = []

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = Path(name).name
        return fd, name

    def fsync(fd: int) -> None:
        if names.get(fd, "").startswith(f".{failing}."):
            writes.append(names[fd])
            if len(writes) > 1:  # the disk is full from the second write of that file on
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(files.os, "fsync", fsync)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rthpo: error: cannot write") and "\n" not in err, err
    assert str(out / failing) in err and "No space left on device (ENOSPC)" in err and "--resume" in err, err
    # no temporary
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "history.csv"]
    assert len((out / "history.csv").read_text().splitlines()) == 2  # the header and epoch 1
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == (
        1 if failing == "checkpoint.pt" else 2)
    monkeypatch.setattr(files.os, "fsync", real_fsync)  # room again
    assert main([*args, "--resume"]) == 0
    assert "resumed at epoch" in capsys.readouterr().out
    assert len((out / "history.csv").read_text().splitlines()) == 3
