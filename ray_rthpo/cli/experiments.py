"""The ``rthpo run``, ``rthpo compare`` and ``rthpo table1`` subcommands (Ray Tune experiments).

    rthpo compare configs/compare_digits.yaml                       # every strategy, same budget
    rthpo run configs/compare_digits.yaml --strategy rthpo          # one strategy = one Tune experiment
    rthpo compare configs/compare_digits.yaml --strategies rthpo_default exp_grid   # some strategies only
    rthpo compare configs/compare_mnist_mlp.yaml --set budget_s=120 --output runs/mnist
    rthpo compare configs/compare_digits.yaml --address auto        # on a running Ray cluster
    rthpo compare configs/compare_digits.yaml --output runs/x --resume   # continue a killed/interrupted one

Ray is imported only when one of these runs, so ``rthpo train`` never pays for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from ray_rthpo.cli.common import add_common_arguments, default_output, user_code_paths
from ray_rthpo.errors import ConfigError, RTHPOError


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rthpo compare`` (and, with :func:`add_run_arguments`, ``rthpo run``)."""
    add_common_arguments(parser)
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="join an existing Ray cluster (auto, HOST:6379 or ray://HOST:10001) instead of "
                             "starting a local Ray")
    parser.add_argument("--num-cpus", type=int, default=None, metavar="N",
                        help="CPUs of the local Ray (default: all); ignored with --address")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted experiment in --output (same config and --set "
                             "values): finished strategies and trials are not rerun")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="repeat every strategy N times (searcher and trial seeds seed, seed+1, ...), "
                             "each under the full budget: summary.md then gives means, IQMs, bootstrap CIs "
                             "and ranks (the same as --set seeds=N)")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rthpo compare``: those of :func:`add_experiment_arguments` and ``--strategies``."""
    add_experiment_arguments(parser)
    parser.add_argument("--strategies", nargs="+", default=None, metavar="NAME",
                        help="run only these strategies of the config, in this order (default: every one); "
                             "summary.md then compares these")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rthpo run``: those of compare and ``--strategy``."""
    add_experiment_arguments(parser)
    parser.add_argument("--strategy", default=None, metavar="NAME",
                        help="which strategy of the config to run (needed when it has several)")


def _execute(args: argparse.Namespace, strategy_name: str | None, command: str) -> int:
    # The config is read and checked first, with the light config layer alone: a config error is one line in
    # well under a second. torch, Ray, pandas and matplotlib are imported after it, when the run needs them.
    from ray_rthpo.experiment.config import load_experiment

    if args.seeds is not None:
        if args.seeds < 1:
            raise RTHPOError("--seeds must be an integer >= 1 (repetitions of every strategy), but got "
                             f"{args.seeds}.")
        args.overrides = [*args.overrides, f"seeds={args.seeds}"]
    if args.num_cpus is not None and args.num_cpus < 1:
        raise RTHPOError(f"--num-cpus must be >= 1, but got {args.num_cpus}.")
    check_experiment_file(args.config, command)
    exp = load_experiment(args.config, args.overrides, resolve_data=False)  # every check, without torch
    chosen = list(dict.fromkeys(getattr(args, "strategies", None) or []))  # rthpo compare --strategies
    if command == "run":
        if strategy_name is None and len(exp.strategies) > 1:
            raise RTHPOError(f"{args.config} has {len(exp.strategies)} strategies; pick one with --strategy "
                             f"NAME ({', '.join(s.name for s in exp.strategies)}), or use rthpo compare.")
        names = [exp.strategy(strategy_name).name if strategy_name else exp.strategies[0].name]
        stem = f"{Path(args.config).stem}-{names[0]}"
    else:
        names = [exp.strategy(name).name for name in chosen] or [s.name for s in exp.strategies]
        stem = Path(args.config).stem
    from ray_rthpo.factories import workload_name
    from ray_rthpo.training.user_code import check_user_code
    from ray_rthpo.tune.compare import run_comparison

    # User code (model.factory, data.factory, train.loss): the current directory and the config file's folder
    # go into train.pythonpath, so that every trial imports it, wherever Ray runs it.
    paths = next((p for s in exp.strategies if (p := user_code_paths(exp.run_config(s), args.config))), None)
    extra = [] if paths is None else [f"train.pythonpath={json.dumps(paths)}"]
    exp = load_experiment(args.config, [*args.overrides, *extra])  # data.data_dir resolved
    strategies = [exp.strategy(name) for name in names]
    out = Path(args.output) if args.output else default_output(stem, resume=args.resume)
    from ray_rthpo.tune.compare import preflight

    # A missing or truncated data file, or an output folder that holds another experiment: fail before Ray
    # starts. On a cluster (--address) the data may live on the workers only: not checked here.
    joining = bool(args.address or os.environ.get("RAY_ADDRESS"))
    for strategy in strategies:  # importable here; on a local Ray also built and run once on a few examples
        check_user_code(exp.run_config(strategy), full=not joining)
    preflight(exp, out, strategies=strategies, resume=args.resume, joined=joining)
    again = shlex.join(["rthpo", command, args.config,
                        *(["--strategy", strategy_name] if strategy_name else []),
                        *(["--strategies", *chosen] if chosen else []),
                        *[a for o in args.overrides for a in ("--set", o)],
                        *(["--address", args.address] if args.address else []),
                        "--output", str(out), "--resume"])
    start = time.time()
    print(f"rthpo {command}: {len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'} "
          f"({', '.join(s.name for s in strategies)}) on {workload_name(exp.base)}, "
          f"{exp.budget_s:g} compute-s each{f', {exp.seeds} seeds' if exp.seeds > 1 else ''} -> {out}",
          flush=True)
    from ray_rthpo.tune.runner import init_ray

    # Ctrl-C: stop everything (Tune's own handler would only end the current strategy, then go on).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    joined = init_ray(args.address, num_cpus=args.num_cpus)
    import ray

    print(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
          f"{ray.cluster_resources().get('GPU', 0):g} GPUs "
          f"on {len([n for n in ray.nodes() if n.get('Alive')])} node(s), "
          f"ready in {time.time() - start:.1f}s",
          flush=True)
    try:
        result = run_comparison(exp, out, joined=joined, strategies=strategies, checked=joined == joining,
                                progress=lambda line: print(line, flush=True), resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted; every finished epoch is kept in {out}. Continue with: {again}",
              file=sys.stderr)
        return 130
    print()
    print(result.markdown, end="")
    print(f"\nwrote {out}/summary.md, trials.csv, best_so_far.png, lr_trajectories.png "
          f"({time.time() - start:.1f}s wall in all)", flush=True)
    return 0


def check_experiment_file(path: str | Path, command: str) -> None:
    """Refuse, before anything loads, a file that is not an experiment config for ``rthpo COMMAND``: an empty
    file, a Table 1 workload, and for ``compare`` a run config (``rthpo run`` takes one as a one-trial
    experiment). Raises RTHPOError (a ConfigError) naming the file, what it is and the command to use."""
    from ray_rthpo.config import load_yaml
    from ray_rthpo.experiment.config import RUN_SECTIONS, config_kind

    shown = str(path)
    data = load_yaml(path)
    kind = config_kind(data)
    example = "e.g. configs/compare_digits.yaml"
    if kind == "empty":
        raise ConfigError(f"config file {shown!r} is empty; rthpo {command} needs an experiment config: "
                          "base (run-config sections or the path of a run config), budget_s and strategies "
                          f"({example}).")
    if kind == "table1":
        raise ConfigError(f"config file {shown!r} is a Table 1 workload (it has workload, eta0_grid, "
                          "beta_grid), not an experiment config; run it with rthpo table1 --workload "
                          f"{shown}.")
    if kind == "run" and command == "compare" and not set(data) <= set(RUN_SECTIONS):
        raise ConfigError(f"config file {shown!r} has neither base nor strategies (it has "
                          f"{', '.join(map(str, data))}), so it is no experiment config; rthpo compare needs "
                          f"base, budget_s and strategies ({example}).")
    if kind == "run" and command == "compare":
        raise ConfigError(f"config file {shown!r} is a run config (no base or strategies), so there is "
                          f"nothing to compare; train it once with rthpo train {shown}, or compare "
                          "strategies with an experiment config whose base is this file "
                          f"({example}: base, budget_s, strategies).")


def run_command(args: argparse.Namespace) -> int:
    """``rthpo run``: one strategy of an experiment config (or one trial of a run config) as one Tune
    experiment."""
    return _execute(args, args.strategy, "run")


def compare_command(args: argparse.Namespace) -> int:
    """``rthpo compare``: every strategy of an experiment config (or those ``--strategies`` names) under the
    same compute budget."""
    return _execute(args, None, "compare")


#: Where ``--workload NAME`` looks for ``NAME.yaml`` (a source checkout's configs/table1).
TABLE1_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "table1"


def add_table1_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", required=True, metavar="NAME",
                        help="mlp_mnist, lenet_mnist, resnet18_cifar10, resnet18_cifar100 "
                             "(configs/table1/NAME.yaml) or the path of a workload YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value: train.epochs=3 (run config) or bo_trials=4 (workload); "
                             "repeatable")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder (default: runs/table1_NAME)")
    parser.add_argument("--address", default=None, metavar="ADDR", help="join an existing Ray cluster")
    parser.add_argument("--num-cpus", type=int, default=None, metavar="N", help="CPUs of the local Ray")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")


def run_table1_command(args: argparse.Namespace) -> int:
    from ray_rthpo.table1.config import load_table1, table1_experiments
    from ray_rthpo.table1.run import run_table1

    path = Path(args.workload)
    if not path.suffix:
        path = TABLE1_CONFIGS / f"{args.workload}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in TABLE1_CONFIGS.glob("*.yaml"))
            raise RTHPOError(f"--workload {args.workload!r} is not one of "
                             f"{', '.join(known) or '(none found)'}; or give the path of a workload YAML.")
    cfg = load_table1(path, args.overrides)
    # checks both phases' strategies before Ray starts
    search_exp, _ = table1_experiments(cfg, reference_run_s=1.0)
    out = Path(args.output) if args.output else Path("runs") / f"table1_{path.stem}"
    if not args.address and not os.environ.get("RAY_ADDRESS"):
        from ray_rthpo.data.paths import check_data

        check_data(search_exp.base)
    command = shlex.join(["python", "experiments/table1.py", "--workload", args.workload,
                          *[a for o in args.overrides for a in ("--set", o)], "--output", str(out)])
    from ray_rthpo.tune.runner import init_ray

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    joined = init_ray(args.address, num_cpus=args.num_cpus)
    try:
        result = run_table1(cfg, out, joined=joined, resume=args.resume,
                            progress=lambda line: print(line, flush=True), command=command)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished epochs are kept in {out}. Continue with: {command} --resume",
              file=sys.stderr)
        return 130
    print(f"\nwrote {result.output}/table1.md, table1.csv, runs.csv, table1.json, sensitivity.png, "
          "accuracy_vs_compute.png, eta_schedules.png", flush=True)
    return 0


__all__ = ["add_experiment_arguments", "add_compare_arguments", "add_run_arguments", "add_table1_arguments",
           "run_command", "compare_command", "run_table1_command", "check_experiment_file", "TABLE1_CONFIGS"]
