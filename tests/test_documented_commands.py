"""Every command the README and docs/*.md show runs, at smoke size, so that a documented command cannot rot.

The commands are read from the documents themselves: every line of a ```bash block (continuation lines
joined, comments dropped, ``a && b`` split into two commands) and every other line that starts with
``rthpo ``, ``python experiments/`` or ``bash experiments/``. ``SMOKE`` maps each of them to what makes it
smoke-sized: arguments appended to it (argparse keeps the last value of an option, so ``--set
train.epochs=1`` after ``--set train.epochs=5`` wins), or a reason why it cannot run here (a cluster, a
GPU, the test suite itself). A documented command without an entry fails
``test_every_documented_command_has_an_entry``: a new command cannot go unrun.

The commands run in a copy of the repository's documents, configs, experiments and examples (a command
that regenerates docs/results.md or docs/performance.md writes the copy), in document order, with
``after`` naming a command that must have run first (a ``--resume``, a table read from a JSON). ``rthpo``
and the Python scripts run in this process, on the session's local Ray where they need one (a script's
``subprocess`` call of ``python -m ray_rthpo.cli`` is run in this process too); ``bash`` scripts run as
subprocesses that join the same Ray (``RAY_ADDRESS``).

A command whose experiment is the same code as one run in full above (another config of the same
driver, other ``--set`` values) has ``covered_by`` that command: it runs through its program's argument
parsing, config and search-space checks, data and output pre-flight and Ray's start, up to the experiment
itself (``run_comparison`` / ``run_table1``), which a stub stands in for. That keeps the file to minutes:
each full Tune experiment costs 15-30 s of start-up and reporting at any size.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from script_runner import chdir, exit_code, run_isolated, run_script, torchrun

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PREFIXES = ("rthpo ", "python experiments/", "bash experiments/")
FENCE = re.compile(r"^\s*```(\S*)\s*$")
SHARED_DATA = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.harness


def documented_commands(path: Path) -> list[str]:
    """The command lines of one document, each as ``shlex.join`` of its words (no comments)."""
    commands: list[str] = []
    fence: str | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(raw)
        if match and not pending:
            fence = (match.group(1) or "text") if fence is None else None
            continue
        line = raw.strip()
        if not pending and fence != "bash" and not line.startswith(PREFIXES):
            continue
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        words, pending = shlex.split(pending + line, comments=True), ""
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if command:
                    commands.append(shlex.join(command))
                command = []
            else:
                command.append(word)
    return commands


def all_documented() -> dict[str, str]:
    """Every documented command (first occurrence) -> the document that shows it."""
    found: dict[str, str] = {}
    for path in DOCUMENTS:
        for command in documented_commands(path):
            found.setdefault(command, path.relative_to(REPO).as_posix())
    return found


@dataclass(frozen=True)
class Smoke:
    """How a documented command runs at smoke size."""

    args: str = ""                   # appended to the command
    skip: str | None = None          # why it cannot run here (it then has to say so)
    after: str | None = None         # a documented command that must have run first (in the same copy)
    needs: str | None = None         # a data folder under ../shared/data, skipped where it is missing
    clean: str | None = None         # a folder of the copy to delete first (two commands share an output)
    prepare: Callable[[Path], None] | None = None  # what to do in the copy before the command
    covered_by: str | None = None    # a command run in full whose experiment is this one's: stop there


#: Digits comparisons: the first report of each strategy ends its budget.
DIGITS = "--set budget_s=0.1 --set train.epochs=1"
#: MNIST runs: a slice of the data (the files are read once per process).
MNIST = ("--set train.epochs=1 --set data.train_subset=256 --set data.val_subset=128 "
         "--set data.test_subset=128")
#: Table 1 runs: the smallest grids a workload accepts (2 x 2), one epoch, the fewest BO and PBT trials.
#: (PBT's rows run equal_compute_epochs epochs and need more than their perturbation interval of 1.)
TABLE1 = ("--set train.epochs=1 --set 'eta0_grid=[1.0e-2, 1.0e-1]' --set 'beta_grid=[1.0e-6, 1.0e-4]' "
          "--set bo_trials=2 --set pbt_population=2 --set pbt_perturbation_interval=1 "
          "--set equal_compute_epochs=2 "
          "--set max_concurrent=2")
TABLE1_SLICE = "--set data.train_subset=128 --set data.val_subset=64 --set data.test_subset=64"
TABLE1_FAKE = ("--set data.fake_train_size=64 --set data.fake_test_size=32 --set 'data.fake_shape=[3, 8, 8]' "
               "--set data.batch_size=32")
#: The bench: one repetition of every default method (the list whose default once failed) on the MLP;
#: ResNet-18's BatchNorm routes cost minutes on a CPU and run in tests/test_hypergrad.py and
#: tests/test_optim.py.
BENCH = "--reps 1 --warmup 0 --models mlp"
#: The Table 1 command run in full; the other workloads' commands stop at the experiment (their models and
#: data run in tests/test_models.py, tests/test_data.py and tests/test_table1_experiment.py).
TABLE1_FULL = ("python experiments/table1.py --workload mlp_mnist --set train.epochs=5 "
               "--output runs/table1_mlp_mnist")
CLUSTER = ("needs a Ray cluster on AWS (configs/cluster/aws-gpu.yaml); tests/test_tune_cluster.py runs a "
           "local two-node one")
JOINS = "joins a running Ray cluster (--address auto); tests/test_tune_cluster.py covers joining one"
GPU = "needs a CUDA GPU; `bash experiments/gpu_checks.sh --dry-run` runs the same steps on the CPU (below)"


def _cuda_json_from_cpu(copy: Path) -> None:
    """The CUDA table's command reads the JSON of the CUDA run: stand the CPU run's JSON in for it."""
    shutil.copyfile(copy / "docs/perf/bench_step_cost_cpu.json", copy / "docs/perf/bench_step_cost_cuda.json")


SMOKE: dict[str, Smoke] = {
    # README.md
    "pip install -e '.[tune]'": Smoke(skip="installs the package these tests import"),
    "pip install -e '.[test]'": Smoke(skip="installs the package these tests import"),
    "python -m pytest -q": Smoke(skip="the test suite itself"),
    "rthpo compare configs/compare_digits.yaml": Smoke(DIGITS),
    # docs/beta.md
    "nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness":
        Smoke("--design smoke --workloads digits --workers 1"),
    "nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness --resume":
        Smoke("--design smoke --workloads digits --workers 1",
              after="nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness"),
    "nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness --resume --workers 1 "
    "--workloads digits mnist_mlp cifar10_resnet18":
        Smoke("--design smoke --workloads digits",
              after="nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness"),
    "python experiments/beta_robustness.py report --out runs/beta_robustness":
        Smoke(after="nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness"),
    "rthpo run configs/compare_digits.yaml --strategy rthpo --set resources.workers=2 "
    "--set resources.cpu_per_worker=1":  # its 2 workers run in tests/test_train_workers.py
        Smoke(DIGITS, covered_by="rthpo run configs/compare_digits.yaml --strategy rthpo"),
    "ray exec configs/cluster/aws-gpu.yaml 'cd ray_rthpo && rthpo compare configs/compare_cifar10_4gpu.yaml  "
    "--address auto --set storage_path=s3://MY-BUCKET/rthpo --set data.data_dir=/home/ubuntu/data  "
    "--set data.download=true --output runs/cifar10-4gpu' --tmux": Smoke(skip=CLUSTER),
    "ray rsync-down configs/cluster/aws-gpu.yaml /home/ubuntu/ray_rthpo/runs/cifar10-4gpu/summary.md .":
        Smoke(skip=CLUSTER),
    # docs/distributed.md
    "torchrun --standalone --nproc_per_node 2 -m ray_rthpo.cli train configs/digits.yaml "
    "--output runs/digits-2ranks": Smoke("--set train.epochs=1"),
    # docs/cli.md
    "rthpo train configs/digits.yaml": Smoke("--set train.epochs=1"),
    "rthpo train configs/mnist_mlp.yaml --set train.epochs=3 --output runs/mlp": Smoke(MNIST, needs="MNIST"),
    "rthpo train configs/mnist_mlp.yaml --set train.epochs=3 --output runs/mlp --resume":
        Smoke(MNIST, needs="MNIST",
              after="rthpo train configs/mnist_mlp.yaml --set train.epochs=3 --output runs/mlp"),
    # its seeds (paired statistics, per-seed resume) run in tests/test_tune_compare.py
    "rthpo compare configs/compare_digits.yaml --seeds 3":
        Smoke(DIGITS + " --seeds 2", covered_by="rthpo compare configs/compare_digits.yaml"),
    "rthpo run configs/compare_digits.yaml --strategy rthpo": Smoke(DIGITS),
    "rthpo compare configs/compare_digits.yaml --strategies rthpo_default exp_grid":
        Smoke(DIGITS, covered_by="rthpo compare configs/compare_digits.yaml"),
    "rthpo run configs/digits.yaml --set lr.method=hd_val": Smoke("--set train.epochs=1"),
    "rthpo compare configs/compare_digits.yaml --set budget_s=60 --set strategies.rthpo.num_samples=8":
        Smoke(DIGITS, covered_by="rthpo compare configs/compare_digits.yaml"),
    "rthpo compare configs/compare_mnist_mlp.yaml --set budget_s=20 --set train.epochs=2 "
    "--set max_concurrent=2 --output runs/mnist_cpu": Smoke("--set budget_s=0.1 " + MNIST, needs="MNIST"),
    "rthpo compare configs/compare_cifar10_resnet18.yaml --address auto": Smoke(skip=JOINS),
    # docs/cluster.md
    "ray get-auth-token --generate": Smoke(skip="writes the user's Ray token (~/.ray/auth_token)"),
    "ray up configs/cluster/aws-gpu.yaml": Smoke(skip=CLUSTER),
    "ray exec configs/cluster/aws-gpu.yaml 'cd ray_rthpo && rthpo compare "
    "configs/compare_cifar10_resnet18.yaml  "
    "--address auto --set storage_path=s3://MY-BUCKET/rthpo --set data.data_dir=/home/ubuntu/data  "
    "--set data.download=true --output runs/cifar10' --tmux": Smoke(skip=CLUSTER),
    "ray dashboard configs/cluster/aws-gpu.yaml '&'": Smoke(skip=CLUSTER),
    "RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- rthpo compare "
    "configs/compare_mnist_mlp.yaml --address auto --set storage_path=s3://MY-BUCKET/rthpo "
    "--set data.data_dir=/home/ubuntu/data --set data.download=true --output /home/ubuntu/runs/mnist":
        Smoke(skip=CLUSTER),
    "ray rsync-down configs/cluster/aws-gpu.yaml /home/ubuntu/ray_rthpo/runs/cifar10 runs/cifar10":
        Smoke(skip=CLUSTER),
    "ray down configs/cluster/aws-gpu.yaml": Smoke(skip=CLUSTER),
    # docs/comparisons.md
    "rthpo compare configs/compare_mnist_mlp.yaml --seeds 5 --set budget_s=20 --set train.epochs=2 "
    "--set max_concurrent=2 --output runs/mnist_mlp_5seeds":
        Smoke("--set budget_s=0.1 " + MNIST, needs="MNIST",
              covered_by="rthpo compare configs/compare_mnist_mlp.yaml --set budget_s=20 "
                         "--set train.epochs=2 --set max_concurrent=2 --output runs/mnist_cpu"),
    # docs/failures.md
    "rthpo compare configs/compare_digits.yaml --output runs/compare_digits --resume":
        Smoke(DIGITS, after="rthpo compare configs/compare_digits.yaml"),
    "rthpo run configs/compare_digits.yaml --strategy rthpo --output runs/compare_digits-rthpo --resume":
        Smoke(DIGITS, after="rthpo run configs/compare_digits.yaml --strategy rthpo"),
    # docs/paper.md
    "python experiments/table1.py --workload mlp_mnist --set train.epochs=5 --output runs/table1_mlp_mnist":
        Smoke(f"{TABLE1} {TABLE1_SLICE}", needs="MNIST"),
    "python experiments/results_doc.py collect runs/table1_mlp_mnist --as mlp_mnist":
        Smoke(after="python experiments/table1.py --workload mlp_mnist --set train.epochs=5 "
                    "--output runs/table1_mlp_mnist", needs="MNIST"),
    "python experiments/results_doc.py build": Smoke(),
    "python experiments/rosenbrock.py --out results/rosenbrock.png": Smoke("--long-steps 50"),
    # docs/performance.md
    "python experiments/bench_step_cost.py --device cpu --threads 1 "
    "--json docs/perf/bench_step_cost_cpu.json": Smoke(BENCH),
    "python experiments/bench_step_cost.py --markdown docs/perf/bench_step_cost_cpu.json "
    "--doc docs/performance.md":
        Smoke(after="python experiments/bench_step_cost.py --device cpu --threads 1 "
                    "--json docs/perf/bench_step_cost_cpu.json"),
    "python experiments/bench_step_cost.py --device cuda --json docs/perf/bench_step_cost_cuda.json":
        Smoke(skip=GPU),
    "python experiments/bench_step_cost.py --markdown docs/perf/bench_step_cost_cuda.json "
    "--doc docs/performance.md":
        Smoke(prepare=_cuda_json_from_cpu),
    "bash experiments/gpu_checks.sh runs/gpu_checks": Smoke(skip=GPU),
    "bash experiments/gpu_checks.sh --dry-run runs/gpu_dry_run": Smoke(),
    "python experiments/overhead.py --json docs/perf/overhead.json": Smoke(DIGITS),
    "python experiments/overhead.py --from-json docs/perf/overhead.json --markdown":
        Smoke(after="python experiments/overhead.py --json docs/perf/overhead.json"),
    "python experiments/fast_vs_exact.py --json docs/perf/fast_vs_exact.json":
        Smoke("--models mlp --seeds 0 --epochs 1", needs="MNIST"),
    "python experiments/bench_step_cost.py --device cpu --threads 1 --models mlp lenet cifar_cnn "
    "--methods sgd 'rthpo[every10,quarter]' 'rthpo[after_tuning]' adamw 'rthpo_adamw[every10,quarter]' "
    "'rthpo_adamw[after_tuning]' "
    "--json docs/perf/bench_step_cost_cheap_cpu.json": Smoke(BENCH),
    # docs/method.md
    "python experiments/suite.py run --workloads digits_mlp tabular_mlp":
        Smoke("--workloads digits_mlp --horizons 360 --seeds 1 --epochs 1"),
    "python experiments/suite.py run --workloads horizon_digits":
        Smoke("--horizons 360 --seeds 1 --epochs 1",
              covered_by="python experiments/suite.py run --workloads digits_mlp tabular_mlp"),
    # one row and one more seed of the horizon study as a part (rthpo run --strategy --set seed=1), which the
    # report below merges into the copy's kept cell
    "python experiments/suite.py run --workloads cifar10_cnn --horizons 2500 --seeds 1 --strategies grid_sgd "
    "optuna_sgd":
        Smoke("--workloads horizon_digits --horizons 360 --strategies sgd_step01_exact_lo --first-seed 1 "
              "--epochs 1"),
    # a candidate default on the default rows of a cell: the same rthpo compare as the cell's, with --set
    "python experiments/suite.py run --variant beta3 --workloads digits_mlp --horizons 360 "
    "--strategies rthpo_sgd_lo rthpo_sgd_mid rthpo_sgd_hi":
        Smoke("--seeds 1 --epochs 1",
              covered_by="python experiments/suite.py run --workloads digits_mlp tabular_mlp"),
    "python experiments/trace_row.py configs/suite/mnist_lenet.yaml rthpo_sgd_hi --epochs 1 "
    "--out runs/trace_lenet_sgd_hi.csv":
        Smoke("--set data.train_subset=512 --set data.val_subset=128 --set data.test_subset=128",
              needs="MNIST"),
    "python experiments/trace_row.py configs/suite/mnist_mlp.yaml rthpo_sgd_lo --epochs 1 "
    "--set lr.hypergrad_at=average --set train.seed=1 --out runs/trace_mlp_sgd_lo_average.csv":
        Smoke("--set data.train_subset=512 --set data.val_subset=128 --set data.test_subset=128",
              needs="MNIST"),
    "python experiments/trace_row.py configs/suite/mnist_mlp.yaml rthpo_sgd_lo --epochs 1 "
    "--set lr.agreement_gain=8 --out runs/trace_mlp_sgd_lo_agree8.csv":
        Smoke("--set data.train_subset=512 --set data.val_subset=128 --set data.test_subset=128",
              needs="MNIST"),
    "python experiments/bench_step_cost.py --device cpu --threads 1 --models mlp lenet --methods sgd "
    "'rthpo[every10,quarter]' 'rthpo[every10,quarter,average]' adamw 'rthpo_adamw[every10,quarter]' "
    "'rthpo_adamw[every10,quarter,average]'": Smoke(BENCH),
    # the copy's documents list every cell, the smoke run made one: the others are dropped in the copy
    "python experiments/suite.py report":
        Smoke("--allow-missing", after="python experiments/suite.py run --workloads digits_mlp tabular_mlp"),
    # docs/results.md (generated by experiments/results_doc.py from the runs' own commands)
    "python experiments/table1.py --workload lenet_mnist --set train.epochs=2 "
    "--output runs/table1_lenet_mnist":
        Smoke(f"{TABLE1} {TABLE1_SLICE}", needs="MNIST", covered_by=TABLE1_FULL),
    "python experiments/table1.py --workload resnet18_cifar10 --set train.epochs=1 --set data.batch_size=64 "
    "--set data.train_subset=1280 --set data.val_subset=500 --set data.test_subset=1000 "
    "--set 'eta0_grid=[1.0e-2, 1.0e-1]' --set 'beta_grid=[1.0e-6, 1.0e-4]' --set bo_trials=2 "
    "--set pbt_population=2 --set pbt_perturbation_interval=1 --set equal_compute_epochs=3 "
    "--set resources.cpu=1 --set max_concurrent=2 "
    "--output runs/table1_resnet18_cifar10":
        Smoke(f"{TABLE1} --set data.train_subset=32 --set data.val_subset=16 --set data.test_subset=16 "
              "--set data.batch_size=16", needs="cifar10-jpeg", covered_by=TABLE1_FULL),
    "python experiments/table1.py --workload resnet18_cifar10 --address auto --set data.data_dir=/data":
        Smoke(skip=JOINS),
    "python experiments/table1.py --workload resnet18_cifar100 --set data.name=fake "
    "--set data.fake_classes=100 --set data.fake_train_size=256 --set data.fake_test_size=128 "
    "--set data.batch_size=64 --set train.epochs=1 "
    "--set 'eta0_grid=[1.0e-2, 1.0e-1]' --set 'beta_grid=[1.0e-6, 1.0e-4]' --set bo_trials=2 "
    "--set pbt_population=2 --set pbt_perturbation_interval=1 --set equal_compute_epochs=2 "
    "--set resources.cpu=1 --set max_concurrent=2 "
    "--output runs/table1_resnet18_cifar100_fake": Smoke(f"{TABLE1} {TABLE1_FAKE}", covered_by=TABLE1_FULL),
    "python experiments/table1.py --workload resnet18_cifar100 --address auto --set data.data_dir=/data":
        Smoke(skip=JOINS),
    # docs/user_code.md
    "python examples/tabular/plain_pytorch.py": Smoke("--epochs 1"),
    "python examples/tabular/tune_trainable.py --storage /tmp/ray":
        Smoke("--storage runs/ray_tabular --budget-s 0.5 --epochs 1 --num-samples 2"),
    "rthpo train examples/tabular/train.yaml": Smoke("--set train.epochs=1"),
    "rthpo compare examples/tabular/compare.yaml": Smoke(DIGITS),
}


def test_every_documented_command_has_an_entry() -> None:
    documented = all_documented()
    missing = [f"{where}: {command}" for command, where in documented.items() if command not in SMOKE]
    assert not missing, ("documented commands without a smoke-size entry in SMOKE (add one: the arguments "
                         "that make it small, or why it cannot run here):\n" + "\n".join(missing))
    stale = [command for command in SMOKE if command not in documented]
    assert not stale, "SMOKE entries that no document shows any more:\n" + "\n".join(stale)
    for command, smoke in SMOKE.items():
        assert smoke.after is None or smoke.after in SMOKE, (command, smoke.after)
        if smoke.covered_by is not None:  # covered by a command that runs in full
            full = SMOKE.get(smoke.covered_by)
            assert full is not None and full.skip is None and full.covered_by is None, \
                (command, smoke.covered_by)


def test_the_readme_and_docs_show_the_commands_the_issue_names() -> None:
    documented = " ".join(all_documented())
    for needed in ("experiments/bench_step_cost.py --device cpu", "experiments/overhead.py",
                   "experiments/results_doc.py",
                   "experiments/suite.py run", "experiments/suite.py report", "experiments/table1.py",
                   "experiments/gpu_checks.sh --dry-run"):
        assert needed in documented, needed


# ------------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documents, configs, experiments and examples in a folder of their own (the package is the installed
    one); ../shared/data resolves as from the repository."""
    root = tmp_path_factory.mktemp("documented")
    target = root / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("configs", "docs", "experiments", "examples"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml"):
        shutil.copyfile(REPO / name, target / name)
    if (REPO.parent / "shared").is_dir():
        (root / "shared").symlink_to(REPO.parent / "shared")
    return target


DONE: dict[str, int] = {}


def _needs_ray(words: list[str]) -> bool:
    if words[0] == "rthpo":
        return words[1] in ("run", "compare", "table1")
    script = words[1] if words[0] == "python" else ""
    return script in ("experiments/table1.py", "experiments/suite.py", "experiments/beta_robustness.py",
                      "examples/tabular/tune_trainable.py") or (
        script == "experiments/overhead.py" and "--from-json" not in words)


def execute(command: str, copy: Path, request: pytest.FixtureRequest) -> int:
    """Run one documented command at smoke size in ``copy``; returns its exit status."""
    smoke = SMOKE[command]
    if smoke.after and smoke.after not in DONE:
        assert execute(smoke.after, copy, request) == 0, f"the command this one follows failed: {smoke.after}"
    words = shlex.split(command) + shlex.split(smoke.args)
    if words[:1] == ["nice"]:  # nice [-n N]: the same command at a lower priority
        words = words[3:] if words[1:2] == ["-n"] else words[1:]
    if smoke.clean:
        shutil.rmtree(copy / smoke.clean, ignore_errors=True)
    if smoke.prepare:
        smoke.prepare(copy)
    if _needs_ray(words) or words[0] == "bash":
        request.getfixturevalue("ray_local")
    start = time.time()
    stubbed: list[str] = []
    with chdir(copy), pytest.MonkeyPatch.context() as stubs:
        if smoke.covered_by is not None:  # everything up to the experiment, which stops here
            def stub(name: str) -> Callable[..., object]:
                def experiment(config: object, out: Path, *args: object, **kwargs: object) -> object:
                    stubbed.append(name)
                    return types.SimpleNamespace(markdown="", output=out)
                return experiment

            stubs.setattr("ray_rthpo.tune.compare.run_comparison", stub("run_comparison"))
            stubs.setattr("ray_rthpo.table1.run.run_table1", stub("run_table1"))
        if words[0] == "rthpo":
            from ray_rthpo.cli import main

            rc = exit_code(lambda: main(words[1:]))
        elif words[0] == "python" and words[1].endswith(".py"):
            rc = run_script(copy / words[1], words[2:])
        elif words[0] == "torchrun":  # PyTorch's launcher, as python -m torch.distributed.run
            proc = torchrun(words[1:], cwd=copy)
            print(proc.stdout[-4000:], proc.stderr[-4000:])
            rc = proc.returncode
        elif words[0] == "bash":
            import ray

            env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
                   "PYTHON": sys.executable}
            proc = run_isolated(words, cwd=copy, env=env, timeout=300)
            print(proc.stdout[-4000:], proc.stderr[-4000:])
            rc = proc.returncode
        else:
            raise AssertionError(f"no way to run {command!r}: give it a skip reason in SMOKE")
    if smoke.covered_by is not None and rc == 0:
        assert stubbed, f"{command!r} never reached its experiment (covered_by {smoke.covered_by!r})"
    stopped = f" (stopped at {stubbed[0]})" if stubbed else ""
    print(f"[{time.time() - start:.1f} s] {shlex.join(words)}{stopped}")
    DONE[command] = rc
    return rc


def _cases() -> list[object]:
    cases = []
    for command, where in all_documented().items():
        smoke = SMOKE.get(command, Smoke(skip="no SMOKE entry "
                                              "(test_every_documented_command_has_an_entry fails)"))
        marks = [pytest.mark.slow]
        if smoke.skip:
            marks.append(pytest.mark.skip(reason=smoke.skip))
        elif smoke.needs and not (SHARED_DATA / smoke.needs).exists():
            marks.append(pytest.mark.skip(reason=f"needs {SHARED_DATA / smoke.needs}"))
        else:
            words = shlex.split(command)
            if _needs_ray(words[3:] if words[0] == "nice" else words) or words[0] == "bash":
                marks.append(pytest.mark.ray)
        cases.append(pytest.param(command, id=f"{where}: {command[:90]}", marks=marks))
    return cases


@pytest.mark.parametrize("command", _cases())
def test_the_documented_command_runs_at_smoke_size(command: str, copy: Path, request: pytest.FixtureRequest,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc = DONE[command] if command in DONE else execute(command, copy, request)
    out = capsys.readouterr()
    assert rc == 0, f"{command!r} exited {rc}:\n{out.out[-3000:]}\n{out.err[-3000:]}"
