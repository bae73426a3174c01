"""Issue #11: how much search does beta need? The driver of the study behind docs/beta.md.

    python experiments/beta_robustness.py plan                          # the cells and runs, nothing run
    nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness              # the study
    nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness --resume     # continue it
    python experiments/beta_robustness.py report --out runs/beta_robustness   # docs/beta.md, docs/beta/

The study runs on the suite's machinery (experiments/suite.py): every grid is a comparison config
(written to ``OUT/configs/CELL.yaml`` from the design in experiments/beta_design.py) run as one ``rthpo
compare`` cell into ``OUT/CELL`` (``WORKLOAD-GROUP``: ``digits-exp_decay``, ``digits-rthpo``, ...), continued
with ``rthpo compare --resume`` when it was interrupted. This script keeps no pool, journal or state of its
own: ``report`` reads the cells' ``trials.csv`` and ``config.yaml`` alone. ``--workers N`` is the CPUs of each
cell's local Ray (``rthpo compare --num-cpus N``): N trials side by side, one thread each.

Phase 2 (first-order methods, the ResNet-18 probe) is planned from phase 1's results, once the phase-1
cells of every full-grid workload are complete. The analysis is in experiments/beta_analysis.py, the
document in experiments/beta_report.py. This module runs nothing when imported.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import beta_analysis as ba  # noqa: E402  (experiments/ is not a package)
import beta_design as bd  # noqa: E402
import suite  # noqa: E402

DEFAULT_OUT = "runs/beta_robustness"
CONFIGS_DIR = "configs"
#: Budget of every cell: no strategy is cut, every grid point runs to its end.
BUDGET_S = 1.0e12
#: Trials a cell may start at once; the local Ray's CPUs (--workers) bound it.
MAX_CONCURRENT = 16


def experiment_config(cell: bd.Cell, design: bd.Design) -> dict[str, Any]:
    """The comparison config of ``cell``: the workload's run config with the study's overrides as its base,
    the cell's strategies, no budget cut, one CPU per trial, the cell's seeds."""
    from ray_rthpo.config import load_config

    spec = bd.WORKLOADS[cell.workload]
    base = load_config(REPO / spec.config, bd.run_overrides(cell.workload, design)).to_dict()
    return {"name": f"beta_{design.name}_{cell.name}", "base": base, "budget_s": BUDGET_S,
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": MAX_CONCURRENT, "seed": 0,
            "seeds": cell.seeds, "strategies": [dict(s) for s in cell.strategies]}


def write_config(out: Path, cell: bd.Cell, design: bd.Design) -> Path:
    """Write the cell's comparison config to ``OUT/configs/CELL.yaml`` (the same text on every run)."""
    import yaml

    from ray_rthpo.report.files import atomic_write_text

    path = out / CONFIGS_DIR / f"{cell.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# {cell.name}: phase {cell.phase} of the beta study, design {design.name} "
            "(written by experiments/beta_robustness.py)\n")
    atomic_write_text(path, text + yaml.safe_dump(experiment_config(cell, design), sort_keys=False))
    return path


def run_cells(out: Path, cells: Sequence[bd.Cell], design: bd.Design, workers: int) -> int:
    """Run (or continue, ``--resume``) every cell as ``rthpo compare``, one after the other; the exit status
    of the first that fails, else 0."""
    for cell in cells:
        config = write_config(out, cell, design)
        cmd = suite.compare_command(config, out / cell.name, num_cpus=workers)
        rc = suite.run_cell(cmd, f"{cell.name} ({cell.runs} runs)")
        if rc != 0:
            return rc
    return 0


# ------------------------------------------------------------------------------------ reading the cells
def _float(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def cell_records(folder: Path) -> list[dict[str, Any]]:
    """The run records (beta_analysis's format) of one cell folder: one per (strategy, seed, trial), from its
    ``trials.csv`` (every reported epoch) and ``config.yaml`` (the strategies' rules, the run sizes). eta is
    read at eta-bar and at the end of every epoch (trials.csv's ``lr``); [] when the cell has no trials."""
    import pandas as pd
    import yaml

    trials_path, config_path = folder / "trials.csv", folder / "config.yaml"
    if not trials_path.is_file() or not config_path.is_file():
        return []
    workload = folder.name.rsplit("-", 1)[0]
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    rules = {s["name"]: bd.strategy_rule(s) for s in config["strategies"]}
    fixed_beta = {s["name"]: (s.get("overrides") or {}).get("lr.beta") for s in config["strategies"]}
    base = config["base"]
    trials = pd.read_csv(trials_path)
    trials = trials.drop_duplicates(["strategy", "seed", "trial_id", "epoch"], keep="last")
    records = []
    for (strategy, seed, trial_id), t in trials.groupby(["strategy", "seed", "trial_id"], sort=False):
        t = t.sort_values("epoch")
        first, last = t.iloc[0], t.iloc[-1]
        method = str(first["config/lr.method"])
        rule = rules.get(strategy)
        beta = None
        if method != bd.REFERENCE:
            beta = _float(first.get("config/lr.beta"))
            beta = beta if beta is not None else _float(fixed_beta.get(strategy))
        eta0 = float(first["config/lr.eta0"])
        lrs = [x for x in (_float(v) for v in t["lr"]) if x is not None]
        epochs = [{"epoch": int(r["epoch"]), "step": int(r["step"]),
                   "train_loss": _float(r.get("train/loss")),
                   "val_loss": _float(r.get("val/loss")), "val_acc": _float(r["val/acc"]),
                   "test_acc": _float(r["test/acc"]), "lr": _float(r["lr"]), "diverged": bool(r["diverged"]),
                   "status": str(r["status"]), "time_s": _float(r.get("time/epoch_s"))}
                  for _, r in t.iterrows()]
        steps_per_epoch = int(first["step"]) // max(1, int(first["epoch"]))
        sel = ba.select_by_validation(epochs)
        records.append({
            "key": f"{workload}|{method}|{rule or '-'}|eta0={eta0!r}|beta={beta!r}|seed={int(seed)}",
            "workload": workload, "method": method, "rule": rule, "eta0": eta0, "beta": beta,
            "seed": int(seed), "cell": folder.name, "strategy": str(strategy), "trial_id": str(trial_id),
            "status": str(last["status"]), "diverged": any(e["diverged"] for e in epochs), "epochs": epochs,
            "selected": None if sel is None else {"epoch": sel.epoch, "val": sel.val, "test": sel.test},
            "steps": int(last["step"]),
            "eta_trace": {"step": [0] + [e["step"] for e in epochs if e["lr"] is not None],
                          "eta": [eta0, *lrs]},
            "eta_min": min([eta0, *lrs]), "eta_max": max([eta0, *lrs]),
            "eta_final": lrs[-1] if lrs else eta0,
            "sizes": {"train": steps_per_epoch * int(base["data"]["batch_size"]),
                      "val": int(first.get("val/n", 0) or 0), "test": int(first.get("test/n", 0) or 0),
                      "batch": int(base["data"]["batch_size"]),
                      "val_batch": base["data"].get("val_batch_size"),
                      "epochs": int(base["train"]["epochs"]), "steps_per_epoch": steps_per_epoch},
            "compute_s": float(t["time/total_s"].max()),
            "wall_s": _float(t["time/wall_elapsed_s"].max()) if "time/wall_elapsed_s" in t else None,
            "finished_at": _float(t["time/reported_at"].max()) if "time/reported_at" in t else None,
            "device": str(first.get("node/device_name", "")),
        })
    return records


def read_records(out: Path) -> list[dict[str, Any]]:
    """The run records of every cell under ``out`` (the folders that hold a ``trials.csv``)."""
    records: list[dict[str, Any]] = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        records += cell_records(folder)
    return records


def design_of(out: Path) -> bd.Design:
    """The design the cells under ``out`` were run with (their comparison configs are named
    ``beta_DESIGN_CELL``); SystemExit when there is none or more than one."""
    import yaml

    names = set()
    for path in sorted(out.glob("*/config.yaml")):
        name = str(yaml.safe_load(path.read_text(encoding="utf-8")).get("name", ""))
        names.add(name.split("_")[1] if name.startswith("beta_") else "?")
    if len(names) != 1 or next(iter(names)) not in bd.DESIGNS:
        raise SystemExit(f"{out} holds cells of design(s) {sorted(names) or 'none'}; run the study first "
                         "(beta_robustness.py run --out DIR), one design per folder.")
    return bd.DESIGNS[next(iter(names))]


# ------------------------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    """Phase 1's cells, then (when phase 1 is complete on every full-grid workload) phase 2's."""
    design = bd.DESIGNS[args.design]
    out = Path(args.out).resolve()
    workloads = args.workloads or list(bd.WORKLOADS)
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1 (the CPUs of each cell's local Ray), but got "
                         f"{args.workers}.")
    started = sorted(p.parent.name for p in out.glob("*/config.yaml")) if out.is_dir() else []
    if started and not args.resume:
        raise SystemExit(f"{out} already holds cells ({', '.join(started)}); pass --resume to continue that "
                         "study, or --out a new folder.")
    if started and design_of(out).name != design.name:
        raise SystemExit(f"{out} holds the {design_of(out).name!r} design; resume with --design "
                         f"{design_of(out).name}, or use a new --out.")
    rc = run_cells(out, bd.phase1_cells(workloads, design), design, args.workers)
    if rc != 0:
        return rc
    picks = bd.choose_picks(read_records(out), design, args.hd_rules)
    if picks is None:
        print("phase 2 waits: it needs the phase-1 cells of every full-grid workload "
              f"({', '.join(bd.FULL_GRID)}); run them (then --resume).", flush=True)
        return 0
    print(f"phase 2 picks: {picks.why}; first-order rules {', '.join(picks.hd_rules)}", flush=True)
    return run_cells(out, bd.phase2_cells(workloads, design, picks), design, args.workers)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the cells and runs of the study (phase 2 with a stand-in choice), running nothing."""
    design = bd.DESIGNS[args.design]
    workloads = args.workloads or list(bd.WORKLOADS)
    dummy = bd.Picks(hd_rules=("additive", "sign_log"), probe=(("sign_log", 1e-2), ("additive", 1e-6)),
                     why="")
    cells = bd.phase1_cells(workloads, design) + bd.phase2_cells(workloads, design, dummy)
    for cell in cells:
        print(f"phase {cell.phase}  {cell.name:28s} {len(cell.strategies):2d} strategies x {cell.seeds} "
              "seed(s): "
              f"{cell.runs:4d} runs")
    print(f"total {sum(c.runs for c in cells)} runs in {len(cells)} cells")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write docs/beta.md and its figures from the cells under ``--out``."""
    import beta_report

    out = Path(args.out)
    records = read_records(out)
    if not records:
        raise SystemExit(f"{out} holds no cell with finished runs; run the study first.")
    return beta_report.write_report(design_of(out), records, out, Path(args.doc), Path(args.figures))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``plan``, ``run`` and ``report``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the study's cells (phase 1, then phase 2) with rthpo compare")
    p_run.add_argument("--workloads", nargs="+", choices=list(bd.WORKLOADS), help="default: all four")
    p_run.add_argument("--out", default=DEFAULT_OUT)
    p_run.add_argument("--resume", action="store_true",
                       help="continue the cells in OUT (rthpo compare --resume; finished runs are not rerun)")
    p_run.add_argument("--workers", type=int, default=2,
                       help="CPUs of each cell's local Ray (rthpo compare --num-cpus): trials side by side, "
                            "one thread each (default 2)")
    p_run.add_argument("--hd-rules", default="auto",
                       help="rules of the hd_val/hd_train runs: 'auto' (additive + phase 1's best scale-free "
                            "rule) or a comma list")
    p_run.add_argument("--design", choices=list(bd.DESIGNS), default="full",
                       help="'smoke': a tiny grid of 1-epoch runs, to check the pipeline")
    p_run.set_defaults(fn=cmd_run)
    p_plan = sub.add_parser("plan", help="print the study's cells and runs (runs nothing)")
    p_plan.add_argument("--workloads", nargs="+", choices=list(bd.WORKLOADS))
    p_plan.add_argument("--design", choices=list(bd.DESIGNS), default="full")
    p_plan.set_defaults(fn=cmd_plan)
    p_rep = sub.add_parser("report", help="write docs/beta.md and docs/beta/*.png from the cells in OUT")
    p_rep.add_argument("--out", default=DEFAULT_OUT)
    p_rep.add_argument("--doc", default=str(REPO / "docs" / "beta.md"))
    p_rep.add_argument("--figures", default=str(REPO / "docs" / "beta"))
    p_rep.set_defaults(fn=cmd_report)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
