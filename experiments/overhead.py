"""Where the wall time of a comparison goes, beyond the compute its budget counts.

    python experiments/overhead.py --json docs/perf/overhead.json             # runs the main job, measures
    python experiments/overhead.py --from-json docs/perf/overhead.json --markdown   # the table only

Runs ``rthpo compare`` on ``--config`` (default: the README's main job, ``configs/compare_digits.yaml``)
in this process with a fresh local Ray, and splits the wall time from the files it writes and the
clock of this driver:

* **Ray start**: ``ray.init`` (once per comparison);
* per run (strategy, seed): **wall** (its Tune experiment, ``Tuner.fit``), **compute** (what the budget
  counts: the trials' ``time/epoch_s``), the **ideal** wall ``compute / slots`` (slots = trials at once),
  **setup** (``time/setup_s``: each trial attempt building its trainer, i.e. data load and model, plus a
  checkpoint restore), **checkpoint** (``time/checkpoint_s``: writing checkpoints and handing reports to
  Tune), **start-up** (per trial: from Tune starting it, ``time/started_at``, to its first report, less
  that report's epoch, setup and checkpoint: actor and process start, imports, scheduling), and
  **searcher** (the searcher's own suggest/complete time, measured apart on the same space without
  Ray: ``searcher_seconds``) and **other** (the wall not explained: Tune's bookkeeping, stopping,
  waiting for a slot; computed as wall - (compute + setup + checkpoint + start-up) / slots - searcher).

Everything is printed as a table and, with ``--json``, saved with the command, the machine and the load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from ray_rthpo import metrics as M  # noqa: E402
from ray_rthpo.experiment.config import ExperimentConfig, load_experiment  # noqa: E402
from ray_rthpo.report.selection import compute_spent, latest_reports  # noqa: E402

SETUP, CHECKPOINT, STARTED = "time/setup_s", "time/checkpoint_s", "time/started_at"
COLUMNS = ["run", "trials", "wall s", "compute s", "ideal s", "setup s", "checkpoint s", "start-up s",
           "searcher s", "other s", "wall / ideal"]


def searcher_seconds(exp: ExperimentConfig, name: str, trials: int) -> float:
    """Seconds the strategy's searcher spends in ``suggest`` + ``on_trial_complete`` for ``trials`` trials,
    measured without Ray on the same space (grid, random and none: Ray's variant generator, ~0)."""
    strategy = exp.strategy(name)
    if strategy.searcher in ("none", "grid", "random") or trials == 0:
        return 0.0
    from ray_rthpo.tune.runner import param_space
    from ray_rthpo.tune.searchers import build_searcher

    searcher = build_searcher(strategy.searcher, seed=exp.seed, options=strategy.searcher_options)
    searcher.set_search_properties(M.SELECTION_METRIC, M.SELECTION_MODE, param_space(exp.resolved(strategy)))
    start = time.perf_counter()
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        value = 0.5 + 0.4 * math.sin(7.0 * float(config.get("lr.eta0", 0.1)))  # any smooth objective
        searcher.on_trial_complete(f"t{i}", {M.SELECTION_METRIC: value})
    return time.perf_counter() - start


def split(exp: ExperimentConfig, trials: pd.DataFrame, walls: dict[str, float], slots: int) -> pd.DataFrame:
    """One row per run with the columns of :data:`COLUMNS` (seconds), from the trials table and walls."""
    rows = []
    for (strategy, seed), group in latest_reports(trials).groupby(["strategy", "seed"], sort=False):
        name = exp.run_name(strategy, int(seed))
        first = group.sort_values("time/received_at").groupby("trial_id").head(1)
        last = group.sort_values(M.EPOCH).groupby("trial_id").tail(1)
        setup = float(first[SETUP].sum()) if SETUP in first else math.nan
        checkpoint = float(last[CHECKPOINT].sum()) if CHECKPOINT in last else math.nan
        startup = math.nan
        if STARTED in first:
            gap = (first["time/received_at"] - first[STARTED] - first[M.EPOCH_SECONDS]
                   - first[SETUP].fillna(0.0) - first[CHECKPOINT].fillna(0.0))
            startup = float(gap.clip(lower=0.0).sum())
        compute = compute_spent(group)
        wall = float(walls.get(name, math.nan))
        searcher = searcher_seconds(exp, strategy, int(group["trial_id"].nunique()))
        explained = (compute + _zero(setup) + _zero(checkpoint) + _zero(startup)) / slots + searcher
        rows.append({"run": name, "trials": int(group["trial_id"].nunique()), "wall s": wall,
                     "compute s": compute, "ideal s": compute / slots, "setup s": setup,
                     "checkpoint s": checkpoint, "start-up s": startup, "searcher s": searcher,
                     "other s": wall - explained, "wall / ideal": wall / (compute / slots) if compute
                     else math.nan})
    order = {exp.run_name(strategy, seed): i for i, (seed, strategy) in enumerate(
        (seed, strategy) for seed in exp.repetitions() for strategy in exp.strategies)}
    rows.sort(key=lambda row: order.get(row["run"], len(order)))  # the config's order
    return pd.DataFrame(rows, columns=COLUMNS)


def _zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def markdown(report: dict[str, Any]) -> str:
    """The measurement as Markdown: the per-run table, then the totals against the ideal."""
    table = pd.DataFrame(report["runs"], columns=COLUMNS)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in table.to_dict("records"):
        cells = [str(row["run"]), str(row["trials"])]
        cells += [f"{row[c]:.1f}" if isinstance(row[c], float) and math.isfinite(row[c]) else "n/a"
                  for c in COLUMNS[2:-1]]
        cells.append(f"{row['wall / ideal']:.2f}" if math.isfinite(row["wall / ideal"]) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    totals = table[["wall s", "compute s", "setup s", "checkpoint s", "start-up s", "searcher s",
                    "other s"]].sum()
    ideal = totals["compute s"] / report["slots"]
    lines += ["", f"Whole comparison: {report['wall_s']:.1f} s of wall time for {totals['compute s']:.1f} "
              f"compute-s on {report['slots']} slots, ideal {ideal:.1f} s: **{report['wall_s'] / ideal:.2f}x "
              f"the ideal**. Ray start {report['ray_init_s']:.1f} s; summed over runs: setup "
              f"{totals['setup s']:.1f} s, checkpoints {totals['checkpoint s']:.1f} s, trial start-up "
              f"{totals['start-up s']:.1f} s, searchers {totals['searcher s']:.1f} s, other "
              f"{totals['other s']:.1f} s (per slot where it runs in a trial). Measured {report['when']} on "
              f"{report['machine']} (load average {report['load']}), command: `{report['command']}`."]
    return "\n".join(lines) + "\n"


def measure(config: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """Run the comparison (fresh local Ray) and return the measurement."""
    from ray_rthpo.tune.compare import run_comparison
    from ray_rthpo.tune.runner import init_ray

    exp = load_experiment(config, overrides)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    start = time.time()
    init_ray(num_cpus=os.cpu_count())
    ray_init = time.time() - start
    result = run_comparison(exp, out, progress=lambda line: print(line, flush=True))
    wall = time.time() - start  # the searchers' own time is measured below, apart: not part of the wall
    walls = {p.name.removesuffix(".done.json"): json.loads(p.read_text())["wall_s"]
             for p in (out / "progress").glob("*.done.json")}
    slots = min(exp.max_concurrent, os.cpu_count() or 1)
    runs = split(exp, result.trials, walls, slots)
    return {"command": " ".join(["python experiments/overhead.py", *sys.argv[1:]]), "config": config,
            "overrides": overrides, "machine": f"{platform.node()} ({os.cpu_count()} CPUs, "
                                               f"{platform.processor()})",
            "load": round(load, 2), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "slots": slots, "ray_init_s": ray_init, "wall_s": wall, "runs": runs.to_dict("records")}


def main(argv: list[str] | None = None) -> int:
    """Measure (or read) and print the overhead table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/compare_digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="output folder of the comparison "
                                                    "(default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the measurement here")
    parser.add_argument("--from-json", default=None, help="print the table of an earlier measurement")
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rthpo-overhead-")) / "out"
        report = measure(args.config, args.overrides, out)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
