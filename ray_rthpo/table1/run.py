"""Run the paper's Table 1 for one workload through Ray Tune and the comparison machinery.

    python experiments/table1.py --workload mlp_mnist --set train.epochs=5 --output runs/table1_mlp_mnist

:mod:`ray_rthpo.table1.config` turns a workload config into two experiments; :func:`run_table1` runs
them one after the other (:func:`ray_rthpo.tune.compare.run_comparison`) and writes ``table1.md``,
``table1.csv``, ``runs.csv``, ``table1.json``, ``sensitivity.png``, ``accuracy_vs_compute.png`` and
``eta_schedules.png`` atomically into the output folder (every number is defined in
:mod:`ray_rthpo.table1.report`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ray_rthpo.errors import RTHPOError
from ray_rthpo.report.files import atomic_save_figure, atomic_write_text
from ray_rthpo.table1 import report as T
from ray_rthpo.table1.config import (
    EQUAL_DIR,
    ROWS,
    SEARCH_DIR,
    Table1Config,
    caption,
    mean_run_seconds,
    table1_experiments,
)


@dataclass(frozen=True)
class Table1Result:
    """What :func:`run_table1` produced."""

    table: pd.DataFrame
    markdown: str
    trials: pd.DataFrame
    output: Path


def run_table1(cfg: Table1Config, out: Path, *, joined: bool = False, resume: bool = False,
               progress: Any = print, command: str = "") -> Table1Result:
    """Run both experiments of ``cfg`` into ``out/search`` and ``out/equal_compute`` (Ray must be
    initialised), then write the table and figures into ``out``. ``resume`` continues an interrupted
    run: finished strategies are read back, the interrupted one restored (see ``rthpo compare --resume``)."""
    from ray_rthpo.tune.compare import run_comparison

    start = time.time()
    out = Path(out)
    if out.exists() and not resume and any((out / d).exists() for d in (SEARCH_DIR, EQUAL_DIR, "table1.md")):
        raise RTHPOError(f"output folder {str(out)!r} already holds a Table 1 run; continue it with "
                         "--resume, or choose another --output.")
    out.mkdir(parents=True, exist_ok=True)
    # a bad equal-compute row fails now, not in an hour
    search_exp, _ = table1_experiments(cfg, reference_run_s=1.0)
    progress(f"# Table 1, {cfg.workload}: the paper's rows ({len(search_exp.strategies)} strategies)")
    first = run_comparison(search_exp, out / SEARCH_DIR, joined=joined, progress=progress,
                           resume=resume and (out / SEARCH_DIR / "config.yaml").is_file())
    reference = mean_run_seconds(first.trials)
    _, equal_exp = table1_experiments(cfg, reference_run_s=reference)
    assert equal_exp is not None
    progress(f"# Table 1, {cfg.workload}: the rows at RT-HPO's compute ({reference:.1f} s per run)")
    second = run_comparison(equal_exp, out / EQUAL_DIR, joined=joined, progress=progress,
                            resume=resume and (out / EQUAL_DIR / "config.yaml").is_file())
    trials = pd.concat([first.trials, second.trials], ignore_index=True)
    table = T.table1(trials, ROWS)
    devices = sorted({str(d) for d in trials.get("node/device_name", pd.Series(dtype=str)).dropna().unique()})
    meta = {
        "workload": cfg.workload, "command": command, "epochs": cfg.epochs,
        "equal_compute_epochs": cfg.equal_compute_epochs or cfg.epochs, "seed": cfg.base.train.seed,
        "searcher_seed": cfg.seed, "eta0_grid": list(cfg.eta0_grid), "beta_grid": list(cfg.beta_grid),
        "reference_run_s": reference, "device": ", ".join(devices) or "unknown",
        "host": platform.node(), "wall_s": time.time() - start,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    markdown = T.table1_markdown(table, caption(cfg, meta), paper=cfg.paper)
    atomic_write_text(out / "table1.md", markdown)
    atomic_write_text(out / "table1.csv", table.to_csv(index=False))
    runs = pd.concat([T.run_results(trials, s.strategy).assign(strategy=s.strategy, row=s.label)
                      for s in ROWS if s.strategy in set(trials["strategy"])], ignore_index=True)
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    rows = json.loads(table.to_json(orient="records"))
    atomic_write_text(out / "table1.json", json.dumps({**meta, "table": rows}, indent=2, default=str))
    grids = {s.label: T.sensitivity_grid(trials, s.strategy) for s in ROWS if s.kind in ("grid2d", "grid1d")}
    atomic_save_figure(T.plot_sensitivity(grids), out / "sensitivity.png", dpi=110)
    atomic_save_figure(T.plot_accuracy_vs_compute(trials, ROWS), out / "accuracy_vs_compute.png", dpi=110)
    atomic_save_figure(T.plot_eta_schedules(trials, ROWS), out / "eta_schedules.png", dpi=110)
    progress(markdown)
    return Table1Result(table, markdown, trials, out)


__all__ = ["Table1Result", "run_table1"]
