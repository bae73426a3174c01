"""The ``rthpo run`` and ``rthpo compare`` subcommands (registered with :func:`ray_rthpo.cli.register`).

    rthpo compare configs/compare_digits.yaml                       # every strategy, same budget
    rthpo run configs/compare_digits.yaml --strategy rthpo          # one strategy = one Tune experiment
    rthpo compare configs/compare_mnist_mlp.yaml --set budget_s=120 --output runs/mnist
    rthpo compare configs/compare_digits.yaml --address auto        # on a running Ray cluster

Ray is imported only when one of these runs, so ``rthpo train`` never pays for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ray_rthpo.cli import add_common_arguments, default_output, register
from ray_rthpo.errors import RTHPOError


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="join an existing Ray cluster (auto, HOST:6379 or ray://HOST:10001) instead of "
                             "starting a local Ray")
    parser.add_argument("--num-cpus", type=int, default=None, metavar="N",
                        help="CPUs of the local Ray (default: all); ignored with --address")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _experiment_arguments(parser)
    parser.add_argument("--strategy", default=None, metavar="NAME",
                        help="which strategy of the config to run (needed when it has several)")


def _execute(args: argparse.Namespace, strategy_name: str | None, command: str) -> int:
    from ray_rthpo.tune.compare import run_comparison
    from ray_rthpo.tune.experiment_config import load_experiment

    exp = load_experiment(args.config, args.overrides)
    if command == "run":
        if strategy_name is None and len(exp.strategies) > 1:
            raise RTHPOError(f"{args.config} has {len(exp.strategies)} strategies; pick one with --strategy NAME "
                             f"({', '.join(s.name for s in exp.strategies)}), or use rthpo compare.")
        strategies = [exp.strategy(strategy_name) if strategy_name else exp.strategies[0]]
        stem = f"{Path(args.config).stem}-{strategies[0].name}"
    else:
        strategies = list(exp.strategies)
        stem = Path(args.config).stem
    out = Path(args.output) if args.output else default_output(stem)
    if args.num_cpus is not None and args.num_cpus < 1:
        raise RTHPOError(f"--num-cpus must be >= 1, but got {args.num_cpus}.")
    start = time.time()
    print(f"rthpo {command}: {len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'} "
          f"({', '.join(s.name for s in strategies)}) on {exp.base.data.name}/{exp.base.model.name}, "
          f"{exp.budget_s:g} compute-s each -> {out}", flush=True)
    from ray_rthpo.tune.runner import init_ray

    # Ctrl-C: stop everything (Tune's own handler would only end the current strategy, then go on).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    joined = init_ray(args.address, num_cpus=args.num_cpus)
    import ray

    print(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs "
          f"on {len([n for n in ray.nodes() if n.get('Alive')])} node(s), ready in {time.time() - start:.1f}s",
          flush=True)
    try:
        result = run_comparison(exp, out, joined=joined, strategies=strategies,
                                progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished strategies are in {out}/trials.csv.", file=sys.stderr)
        return 130
    print()
    print(result.markdown, end="")
    print(f"\nwrote {out}/summary.md, trials.csv, best_so_far.png, lr_trajectories.png "
          f"({time.time() - start:.1f}s wall in all)", flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    return _execute(args, args.strategy, "run")


def _compare(args: argparse.Namespace) -> int:
    return _execute(args, None, "compare")


register("run", "one strategy as one Ray Tune experiment (searcher + budget)", _run_arguments, _run)
register("compare", "several strategies under the same compute budget, with tables and plots",
         _experiment_arguments, _compare)
