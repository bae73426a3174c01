"""The suite that answers "should I use RT-HPO?": workloads x horizons, every row run by ``rthpo compare``.

Each workload is a comparison config in ``configs/suite/`` (its rows are strategies: RT-HPO's defaults
from three starting points, grid- and Optuna-tuned schedules, AdamW, the learning-rate-free optimizers);
each horizon sets ``train.epochs``. A cell is one ``rthpo compare`` run in ``runs/suite/WORKLOAD-hSTEPS``,
continued with ``--resume`` when it was interrupted, so this script keeps no journal, pool or state of its
own: it only runs the cells and reads their ``trials.csv``::

    python experiments/suite.py run --workloads digits_mlp --horizons 360 3600      # resumable
    python experiments/suite.py run --workloads cifar10_cnn --horizons 2500 --seeds 1 --strategies grid_sgd
    python experiments/suite.py report                                      # docs/suite.md, docs/horizon.md

A cell too long for one session is run in parts: ``--strategies ROW ...`` runs those rows only (``rthpo
compare --strategies``) into ``CELL/parts/``, and ``--first-seed K`` adds seeds K, K+1, ... to a cell run
before; ``report`` merges the parts that ran to their end into the cell (a part's (row, seed) pairs replace
the same pairs of what was there) and keeps the result, so parts run in several sessions add up. A cell
that still lacks rows or seeds is shown as partial and left out of the targets and the scores. Its rows'
times then come from different sessions, perhaps different loads on the machine: read them as such.

``report`` writes ``docs/suite.md`` (per-cell tables, the targets, time to target in the AlgoPerf manner,
performance profiles and the AlgoPerf score) and ``docs/horizon.md`` (the study behind the defaults,
``configs/suite/horizon_digits.yaml``) with their figures in ``docs/suite/``, from the run files alone.
It keeps a copy of each cell's ``trials.csv`` (the columns it reads, gzipped) in ``docs/suite/cells/``, which
is committed while ``runs/`` is not: a checkout that lacks some cells' run files regenerates the documents
from the copies, and a document that lists a cell neither here nor kept is not rewritten (the cells found
are still kept, so cells run in several sessions add up; ``--allow-missing`` drops the missing ones).
A candidate change of the defaults (``VARIANTS``: ``--set`` overrides) is measured with ``run --variant
NAME``: the cell's default rows (or ``--strategies`` among them), same seeds, under the variant, into
``CELL/variants/NAME/``, never merged into the cell. ``report`` compares each variant with the defaults on
the same runs against the same grid (docs/suite.md, "Candidate defaults") and keeps its runs in
``docs/suite/cells/variants/NAME/``::

    python experiments/suite.py run --variant beta3 --workloads digits_mlp --horizons 360 \
        --strategies rthpo_sgd_lo rthpo_sgd_mid rthpo_sgd_hi

The analysis is pure functions over data frames (tested in tests/test_suite.py).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import math
import platform
import re
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ray_rthpo.experiment.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Workload:
    """A comparison config, its steps per epoch, the epochs of each horizon (steps -> epochs), its seeds."""

    config: str
    steps_per_epoch: int
    horizons: dict[int, int]
    seeds: int = 3
    doc: str = "suite"
    #: What the untuned rows' target compares with the grid's: ``"acc"`` (test accuracy within
    #: :data:`WITHIN`) or ``"loss"`` (the best validation loss within :data:`WITHIN_LOSS` of the grid's).
    target: str = "acc"


WORKLOADS: dict[str, Workload] = {
    "digits_mlp": Workload("configs/suite/digits_mlp.yaml", 40, {360: 9, 3600: 90, 10000: 250}),
    "tabular_mlp": Workload("configs/suite/tabular_mlp.yaml", 11, {330: 30, 3300: 300}),
    "mnist_mlp": Workload("configs/suite/mnist_mlp.yaml", 421, {421: 1, 4210: 10}),
    "mnist_lenet": Workload("configs/suite/mnist_lenet.yaml", 421, {421: 1, 4210: 10}),
    "char_lm_adamw": Workload("configs/suite/char_lm_adamw.yaml", 200, {200: 1, 2000: 10}, target="loss"),
    "cifar10_cnn": Workload("configs/suite/cifar10_cnn.yaml", 250, {250: 1, 2500: 10}),
    "horizon_digits": Workload("configs/suite/horizon_digits.yaml", 40, {360: 9, 3600: 90}, seeds=2,
                               doc="horizon"),
}
#: Workloads the suite is meant to hold that have no config yet (reported as missing in docs/suite.md).
PLANNED: tuple[str, ...] = ()
#: Rows that are RT-HPO's defaults (untuned), and the grid each is held against.
DEFAULT_ROWS = {f"rthpo_{base}_{start}": f"grid_{base}"
                for base in ("sgd", "adamw") for start in ("lo", "mid", "hi")}
GRIDS = ("grid_sgd", "grid_adamw")
COLLAPSE = 0.02   # a last epoch more than 2 points below the run's best validation accuracy is a collapse
WITHIN = 0.01     # target: within 1 point of the grid's test accuracy
WITHIN_LOSS = 0.02  # the language model's target: a best validation loss within 2% of the grid's
R_MAX = 4.0       # AlgoPerf's r_max
#: The learning-rate-free peers' rows, which RT-HPO's defaults are ranked against.
LRFREE_ROWS = ("prodigy", "schedule_free_sgd", "schedule_free_adamw", "dog", "dadapt_adam")
#: The README's block that ``report`` rewrites: the profile figure and one sentence of what it says.
README_MARKERS = ("<!-- suite-profile:start -->", "<!-- suite-profile:end -->")


@dataclass(frozen=True)
class Variant:
    """A candidate change of RT-HPO's defaults: ``--set`` overrides that ``run --variant NAME`` applies to a
    cell's default rows (:data:`DEFAULT_ROWS`), run apart from the cell and reported beside its defaults."""

    sets: tuple[str, ...]
    what: str


#: The candidate defaults the suite can measure before one is adopted (docs/method.md describes each).
VARIANTS: dict[str, Variant] = {
    "average": Variant(("lr.hypergrad_at=average",),
                       "the hypergradient at a running average of the weights, along the averaged tangent"),
    # the default until 2026-12-07 (backoff_rollback then became the default over SGD): its runs are the rows
    # the rollback's runs replaced in the cells
    "no_rollback": Variant(("lr.backoff_rollback=false",),
                           "a back-off halves the scale and goes on from the spike (no rollback over SGD)"),
    "beta3": Variant(("lr.beta=3.0",),
                     "the hyper-learning rate 3 per sqrt(T) steps instead of 1: a start a decade off can "
                     "move further"),
    "agree8": Variant(("lr.agreement_gain=8",),
                      "the multiplicative step times the count of agreeing hypergradient signs in a row (at "
                      "most 8): a consistent hypergradient moves further, a noisy one as far as before"),
}


def profile_sentence(score: pd.Series, n_cells: int) -> str:
    """One sentence on the AlgoPerf scores ``score`` (row -> score, over ``n_cells`` cells): the best row,
    RT-HPO's best default row against the learning-rate-free peers and the grids."""
    best = score.idxmax()
    defaults = score[[r for r in DEFAULT_ROWS if r in score.index]]
    peers = score[[r for r in LRFREE_ROWS if r in score.index]]
    grids = score[[r for r in GRIDS if r in score.index]]
    text = (f"Over {n_cells} cells (workloads x run lengths), the best AlgoPerf score (time to the tuned "
            f"grid's target, every second of a row's search counted; 1 would be fastest everywhere) is "
            f"{best}'s, {score[best]:.2f}")
    if not defaults.empty:
        top = defaults.idxmax()
        above = [r for r in peers.index if peers[r] <= defaults[top]]
        text += ("; that is RT-HPO's best untuned row, at or above " if top == best else
                 f"; RT-HPO's best untuned row, {top}, scores {defaults[top]:.2f}, at or above ")
        text += f"{len(above)} of the {len(peers)} learning-rate-free peers"
        if not peers.empty:
            text += f" (best peer: {peers.idxmax()}, {peers.max():.2f})"
        if not grids.empty:
            text += (", and " + ("above" if defaults[top] > grids.max() else "not above")
                     + f" the grids, searches counted ({grids.max():.2f} at best)")
        worst = defaults.idxmin()
        text += f"; its weakest default row, {worst}, scores {defaults[worst]:.2f}"
    return text + ". The suite is small and its digits cells are noisy: docs/suite.md has every number."


def write_block(path: Path, markers: tuple[str, str], body: str) -> bool:
    """Replace the text between ``markers`` in the file ``path`` with ``body``; returns False (writing
    nothing) where the file or its markers are absent."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    start, end = markers
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")
    return True


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def write_readme_block(readme: Path, figure: str, sentence: str) -> bool:
    """Replace the text between :data:`README_MARKERS` in ``readme`` with the profile ``figure`` (a path
    relative to the README) and ``sentence``; returns False (writing nothing) where the file or its
    markers are absent."""
    return write_block(readme, README_MARKERS,
                       f"![performance profiles over the suite]({figure})\n\n{_wrap(sentence)}")


#: docs/method.md's block that ``report`` rewrites: what the suite's targets table says, in two sentences.
METHOD_MARKERS = ("<!-- suite-targets:start -->", "<!-- suite-targets:end -->")


def targets_sentence(table: pd.DataFrame, cells: Sequence[str]) -> str:
    """What :func:`target_rows`' ``table`` says over the ``cells`` it covers: how many (start, base, cell)
    pairs end within the target of the grid, the misses per starting point, and the collapses."""
    met, n = int(table["met"].sum()), len(table)
    workloads = sorted({c.split(" h")[0] for c in cells})
    start = table["row"].str.rsplit("_", n=1).str[1]
    misses = (~table["met"]).groupby(start).sum()
    by_start = ", ".join(f"{int(misses.get(k, 0))} from {label}" for k, label in
                         (("lo", "a tenth of the tuned peak"), ("mid", "the peak"), ("hi", "ten times it")))
    return (f"Over {len(cells)} cells ({len(workloads)} workloads: {', '.join(workloads)}), the untuned "
            f"defaults end within the target of the grid-tuned schedule (1 point of test accuracy; the "
            f"language model: 2% of validation loss) in {met} of their {n} (start, base, cell) pairs; the "
            f"{n - met} misses are {by_start}. {int(table['collapses'].sum())} of their "
            f"{int(table['runs'].sum())} runs collapse late (last epoch more than 2 points below the best).")


def cell_dir(out: Path, workload: str, steps: int) -> Path:
    """The folder of one cell: ``OUT/WORKLOAD-hSTEPS``."""
    return out / f"{workload}-h{steps}"


def compare_command(config: Path | str, folder: Path, *, sets: Sequence[str] = (), seeds: int | None = None,
                    num_cpus: int | None = None, strategies: Sequence[str] = ()) -> list[str]:
    """The ``rthpo compare`` command that runs comparison config ``config`` into ``folder`` (a cell), with
    ``--set`` overrides, ``--seeds`` and ``--num-cpus`` when given, and ``--resume`` when ``folder`` already
    holds a run (its ``config.yaml``): a cell continues where it stopped. With ``strategies``, only those
    rows of the config (``--strategies``)."""
    cmd = [sys.executable, "-m", "ray_rthpo.cli", "compare", str(config)]
    if strategies:
        cmd += ["--strategies", *strategies]
    for text in sets:
        cmd += ["--set", text]
    if seeds is not None:
        cmd += ["--seeds", str(seeds)]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    cmd += ["--output", str(folder)]
    if (Path(folder) / "config.yaml").exists():
        cmd.append("--resume")
    return cmd


def run_cell(cmd: Sequence[str], label: str) -> int:
    """Run one cell's command from the repository root (configs name repository paths: train.pythonpath),
    printing the command, then its exit status and wall seconds; returns the exit status."""
    print("$", shlex.join(["python", *cmd[1:]]), flush=True)
    start = time.time()
    rc = subprocess.call(list(cmd), cwd=REPO)
    print(f"{label}: exit {rc} in {time.time() - start:.0f} s", flush=True)
    return rc


@functools.cache
def workload_experiment(workload: str) -> ExperimentConfig:
    """``workload``'s comparison config as ``rthpo compare`` reads it (every check and default; no data
    resolved, no torch), read once per process."""
    from ray_rthpo.experiment.config import load_experiment

    return load_experiment(REPO / WORKLOADS[workload].config, [], resolve_data=False)


def config_strategies(workload: str) -> list[str]:
    """The names of the rows (strategies) of ``workload``'s comparison config, in its order."""
    return [s.name for s in workload_experiment(workload).strategies]


def config_seeds(workload: str) -> tuple[int, int]:
    """The seeds of ``workload``'s comparison config: its first searcher seed (``seed``) and its base run's
    ``train.seed``; repetition r of a cell uses ``seed + r`` and ``train.seed + r``."""
    exp = workload_experiment(workload)
    return int(exp.seed), int(exp.base.train.seed)


def parts_root(out: Path, workload: str, steps: int, variant: str | None = None) -> Path:
    """Where a cell's parts live: ``CELL/parts`` (merged into the cell), or ``CELL/variants/NAME`` for the
    parts run under variant ``NAME`` (:data:`VARIANTS`; reported beside the cell, never merged into it)."""
    cell = cell_dir(out, workload, steps)
    return cell / "parts" if variant is None else cell / "variants" / variant


def part_dir(out: Path, workload: str, steps: int, *, strategies: Sequence[str], first_seed: int,
             seeds: int, variant: str | None = None) -> Path:
    """The folder of one part of a cell run piecewise: ``CELL/parts/ROW+ROW-seedsA-B`` (``all`` for every
    row; ``Nrows-HASH`` for a long list), an ``rthpo compare --strategies`` experiment of its own that
    ``report`` merges into the cell; under :func:`parts_root` ``CELL/variants/NAME`` for a variant's."""
    import hashlib

    rows = "+".join(strategies) or "all"
    if len(rows) > 80:
        rows = f"{len(strategies)}rows-{hashlib.sha1(rows.encode()).hexdigest()[:8]}"
    return parts_root(out, workload, steps, variant) / f"{rows}-seeds{first_seed}-{first_seed + seeds - 1}"


def default_rows(workload: str) -> list[str]:
    """The rows of ``workload``'s config that are RT-HPO's untuned defaults (:data:`DEFAULT_ROWS`)."""
    return [row for row in config_strategies(workload) if row in DEFAULT_ROWS]


def cell_command(workload: str, steps: int, out: Path, *, seeds: int | None = None,
                 epochs: int | None = None, strategies: Sequence[str] = (),
                 first_seed: int | None = None, variant: str | None = None) -> list[str]:
    """The ``rthpo compare`` command of one cell (``--resume`` when its folder already holds a run). With
    ``strategies`` (some rows only, ``--strategies``) or ``first_seed`` (the seeds ``first_seed``,
    ``first_seed + 1``, ...: ``--set seed=...``), the command of one part of the cell instead, into its
    :func:`part_dir`: a cell too long for one session is assembled from parts run in several. With
    ``variant`` (a name in :data:`VARIANTS`), the cell's default rows (or those of ``strategies``) under the
    variant's ``--set`` overrides, into ``CELL/variants/NAME/``: the same seeds as the cell's rows."""
    w = WORKLOADS[workload]
    seeds = seeds if seeds is not None else w.seeds
    sets = [f"train.epochs={epochs if epochs is not None else w.horizons[steps]}"]
    if variant is not None:
        if variant not in VARIANTS:
            raise SystemExit(f"suite: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")
        rows = default_rows(workload)
        other = [s for s in strategies if s not in rows]
        if other:
            raise SystemExit(f"suite: a variant runs RT-HPO's default rows only; "
                             f"{', '.join(map(repr, other))} is not one of {workload}'s: {', '.join(rows)}.")
        strategies = list(strategies) or rows
        sets += list(VARIANTS[variant].sets)
    elif not strategies and first_seed is None:
        return compare_command(REPO / w.config, cell_dir(out, workload, steps), sets=sets, seeds=seeds)
    seed, train_seed = config_seeds(workload)
    first = seed if first_seed is None else first_seed
    if first_seed is not None:  # the pairs of a whole run's repetitions first_seed - seed, ...: both seeds
        sets += [f"seed={first_seed}", f"train.seed={train_seed + first_seed - seed}"]
    folder = part_dir(out, workload, steps, strategies=strategies, first_seed=first, seeds=seeds,
                      variant=variant)
    return compare_command(REPO / w.config, folder, sets=sets, seeds=seeds, strategies=strategies)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) every requested cell, one after the other; with ``--strategies`` or
    ``--first-seed``, only that part of each cell (:func:`cell_command`)."""
    out = Path(args.out).resolve()
    for name in args.workloads:
        if name not in WORKLOADS:
            raise SystemExit(f"suite: unknown workload {name!r}; choose from {', '.join(WORKLOADS)}.")
        w = WORKLOADS[name]
        rows = config_strategies(name)
        unknown = [s for s in args.strategies or () if s not in rows]
        if unknown:
            raise SystemExit(f"suite: {name} has no row {', '.join(map(repr, unknown))}; its rows "
                             f"({w.config}): {', '.join(rows)}.")
        if args.first_seed is not None and args.first_seed < 0:
            raise SystemExit(f"suite: --first-seed must be >= 0, but got {args.first_seed}.")
        for steps in args.horizons or list(w.horizons):
            if steps not in w.horizons:
                raise SystemExit(f"suite: {name} has horizons {', '.join(map(str, w.horizons))}, not "
                                 f"{steps}.")
            cmd = cell_command(name, steps, out, seeds=args.seeds, epochs=args.epochs,
                               strategies=args.strategies or (), first_seed=args.first_seed,
                               variant=args.variant)
            label = f"{name} h{steps}" + (f" ({', '.join(args.strategies)})" if args.strategies else "")
            rc = run_cell(cmd, label + (f" [{args.variant}]" if args.variant else ""))
            if rc != 0:
                return rc
    return 0


# ------------------------------------------------------------------------------------------ analysis
def seed_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, seed): the trial a searcher chose (best validation accuracy over its trials'
    epochs), its test accuracy at that best-validation epoch and at its last epoch, the best and last
    validation accuracy of that trial, the compute of all its trials (the search included), and the
    run's last learning rate and tuned value, and the lowest validation loss over all its trials' epochs."""
    rows = []
    for (strategy, seed), group in trials.groupby(["strategy", "seed"], sort=False):
        best = group.loc[group["val/acc"].idxmax()]
        chosen = group[group["trial_id"] == best["trial_id"]].sort_values("epoch")
        last = chosen.iloc[-1]
        compute = float(group.groupby("trial_id")["time/total_s"].max().sum())
        rows.append({"strategy": strategy, "seed": int(seed), "trials": int(group["trial_id"].nunique()),
                     "best_val": float(best["val/acc"]), "test_at_best": float(best["test/acc"]),
                     "last_val": float(last["val/acc"]), "test_last": float(last["test/acc"]),
                     "steps": int(last["step"]), "compute_s": compute, "lr_last": float(last["lr"]),
                     "scale_last": float(last.get("lr_scale", last["lr"])),
                     "best_val_loss": float(group["val/loss"].min()) if "val/loss" in group else math.nan,
                     "collapsed": bool(best["val/acc"] - last["val/acc"] > COLLAPSE)})
    return pd.DataFrame(rows)


def time_to_target(trials: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per (strategy, seed): the compute seconds until a validation accuracy >= ``target`` first appears,
    counting every trial of the search that finished before (trials in the order they started) and the
    reaching trial up to that epoch; inf when none reaches it."""
    rows = []
    for (strategy, seed), group in trials.groupby(["strategy", "seed"], sort=False):
        spent, reached = 0.0, math.inf
        order = group.groupby("trial_id")["time/started_at"].min().sort_values().index
        for trial in order:
            t = group[group["trial_id"] == trial].sort_values("epoch")
            hit = t[t["val/acc"] >= target]
            if len(hit):
                reached = spent + float(hit["time/total_s"].iloc[0])
                break
            spent += float(t["time/total_s"].max())
        rows.append({"strategy": strategy, "seed": int(seed), "time_s": reached})
    return pd.DataFrame(rows)


def performance_profile(times: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """``times``: one row per cell, one column per method (a median time to target, inf if not reached).
    rho(tau) per method: the fraction of cells whose ratio t / min_t is <= tau (AlgoPerf)."""
    best = times.min(axis=1)
    ratios = times.div(best, axis=0)
    ratios[~np.isfinite(best.to_numpy())] = np.inf  # a cell no method reached counts for none
    return pd.DataFrame({m: [(ratios[m] <= tau).mean() for tau in taus] for m in times.columns}, index=taus)


def algoperf_score(profile: pd.DataFrame) -> pd.Series:
    """Integral of rho from 1 to r_max, divided by r_max - 1 (the trapezoid rule on the profile's grid)."""
    taus = profile.index.to_numpy(dtype=float)
    return pd.Series({m: float(np.trapezoid(profile[m].to_numpy(), taus)) / (R_MAX - 1)
                      for m in profile.columns})


def archive_path(archive: Path, workload: str, steps: int) -> Path:
    """Where ``report`` keeps a cell's ``trials.csv``: ``ARCHIVE/WORKLOAD-hSTEPS.csv.gz``."""
    return archive / f"{workload}-h{steps}.csv.gz"


#: The columns of a cell's ``trials.csv`` that ``report`` keeps (what its analysis reads, and the losses): the
#: rest of a run file is bookkeeping (node ids, dates, pids) that would make the archive several times larger.
ARCHIVED_COLUMNS = ("strategy", "seed", "method", "searcher", "trial_id", "epoch", "step", "val/acc",
                    "test/acc", "val/loss", "test/loss", "diverged", "lr", "lr_scale", "time/total_s",
                    "time/started_at", "time/wall_elapsed_s")
#: Kept to 7 significant digits (accuracies stay exact: they are compared with each other and with targets).
ROUNDED_COLUMNS = ("val/loss", "test/loss", "lr", "lr_scale", "time/total_s", "time/started_at",
                   "time/wall_elapsed_s")


def archive_cell(trials: pd.DataFrame, target: Path) -> bool:
    """Keep a cell's ``trials`` (its ``trials.csv`` as read) gzipped at ``target``: its
    :data:`ARCHIVED_COLUMNS`, the :data:`ROUNDED_COLUMNS` to 7 significant digits, no timestamp (the same run
    file gives the same archive). True when ``target`` changed."""
    frame = trials[[c for c in ARCHIVED_COLUMNS if c in trials]].copy()
    for column in ROUNDED_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map(lambda v: "" if pd.isna(v) else f"{float(v):.7g}")
    data = gzip.compress(frame.to_csv(index=False).encode("utf-8"), mtime=0)
    if target.is_file() and target.read_bytes() == data:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return True


def cell_complete(folder: Path) -> bool:
    """True when the cell in ``folder`` ran to its end: ``rthpo compare`` writes ``summary.md`` after the last
    ``trials.csv`` (an interrupted or running cell has a newer ``trials.csv``, or no summary)."""
    trials, summary = folder / "trials.csv", folder / "summary.md"
    return trials.is_file() and summary.is_file() and summary.stat().st_mtime >= trials.stat().st_mtime


def load_cell(out: Path, workload: str, steps: int,
              archive: Path | None = None) -> tuple[pd.DataFrame, str] | None:
    """One cell's trials and where they came from. The run file under ``out`` where this machine ran the cell
    to its end, else the copy an earlier ``report`` kept in ``archive`` (run files are not committed; the
    archive is, so cells run on other machines or in earlier checkouts stay in the documents), else the run
    file of a cell still unfinished here (:func:`cell_source`); then the complete parts of the cell
    (:func:`complete_parts`, run piecewise, perhaps over several sessions) replace the (row, seed) pairs
    they hold and add the others (:func:`merge_pairs`), kind ``"assembled"``. An unfinished whole-cell run
    is not merged with parts. None when there is nothing."""
    source = cell_source(out, workload, steps, archive)
    parts = complete_parts(out, workload, steps)
    if not parts:
        return None if source is None else (pd.read_csv(source[1]), source[0])
    frames = [pd.read_csv(source[1])] if source is not None and source[0] != "unfinished" else []
    frames += [pd.read_csv(part / "trials.csv") for part in parts]
    return merge_pairs(frames), "assembled"


def complete_parts(out: Path, workload: str, steps: int, variant: str | None = None) -> list[Path]:
    """The parts of a cell (``CELL/parts/*``, :func:`part_dir`; a variant's: ``CELL/variants/NAME/*``) that
    ran to their end (:func:`cell_complete`), the one finished first first."""
    root = parts_root(out, workload, steps, variant)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and cell_complete(p)]
    return sorted(done, key=lambda p: ((p / "summary.md").stat().st_mtime, p.name))


def variant_archive(archive: Path, variant: str) -> Path:
    """Where ``report`` keeps a variant's cells: ``ARCHIVE/variants/NAME`` (:func:`archive_path` below it)."""
    return archive / "variants" / variant


def load_variant(out: Path, workload: str, steps: int, variant: str,
                 archive: Path | None = None) -> pd.DataFrame | None:
    """The trials variant ``variant`` ran on one cell: its copy kept by an earlier ``report``, then its parts
    that ran to their end here (:func:`complete_parts`) replacing the (row, seed) pairs they hold. None when
    it has not run on this cell."""
    kept = archive_path(variant_archive(archive, variant), workload, steps) if archive is not None else None
    frames = [pd.read_csv(kept)] if kept is not None and kept.is_file() else []
    frames += [pd.read_csv(part / "trials.csv") for part in complete_parts(out, workload, steps, variant)]
    return merge_pairs(frames) if frames else None


def variant_targets(cell: pd.DataFrame, ran: pd.DataFrame, key: tuple[str, int]) -> pd.DataFrame:
    """A variant's targets on one cell beside the defaults' on the same runs: :func:`target_rows` of the
    cell's trials ``cell`` with its default rows kept to the (row, seed) pairs the variant ran (``ran``), and
    of the same with those pairs replaced by the variant's; one row per default row the variant ran, with
    ``value``/``met``/``collapses`` of the defaults and ``variant``/``variant_met``/``variant_collapses``,
    against the same grid (all its seeds). ``key`` is the cell's ``(workload, steps)``."""
    pairs = pd.MultiIndex.from_frame(ran[["strategy", "seed"]].drop_duplicates())
    own = pd.MultiIndex.from_frame(cell[["strategy", "seed"]])
    base = cell[~cell["strategy"].isin(DEFAULT_ROWS) | own.isin(pairs)]
    before = target_rows({key: base}).set_index("row")
    after = target_rows({key: merge_pairs([base, ran])}).set_index("row")
    rows = [r for r in after.index if r in set(ran["strategy"])]
    table = before.loc[rows, ["cell", "metric", "grid", "value", "met", "runs", "collapses"]].copy()
    table["variant"] = after.loc[rows, "value"]
    table["variant_met"] = after.loc[rows, "met"]
    table["variant_collapses"] = after.loc[rows, "collapses"]
    return table.reset_index()


def variant_lines(name: str, tables: Sequence[pd.DataFrame]) -> list[str]:
    """The markdown of one variant over the cells it ran (:func:`variant_targets` of each): what it sets, a
    sentence of the targets met by the defaults and by it on the same runs (per base optimizer), and the
    table."""
    v = VARIANTS[name]
    table = pd.concat(tables, ignore_index=True)
    sets = " ".join(f"--set {s}" for s in v.sets)
    counts, moves = [], []
    for base in ("sgd", "adamw"):
        mine = table[table["row"].str.startswith(f"rthpo_{base}_")]
        label = "SGD" if base == "sgd" else "AdamW"
        if len(mine):
            counts.append(f"over {label} {int(mine['met'].sum())} → {int(mine['variant_met'].sum())} of "
                          f"{len(mine)}")
        acc = mine[mine["metric"] == "test %"]
        if len(acc):  # the mean change of test accuracy, per start (the LM's losses are in the table)
            change = 100 * (acc["variant"] - acc["value"])
            starts = ", ".join(f"{k} {change[acc['row'].str.endswith('_' + k)].mean():+.1f}"
                               for k in ("lo", "mid", "hi") if acc["row"].str.endswith("_" + k).any())
            moves.append(f"over {label} {change.mean():+.1f} points ({starts})")
    lines = [f"### {name}: {v.what}", "",
             # the command without "python experiments/": a wrapped line starting so would read as a
             # documented command (tests/test_documented_commands.py) with placeholders in it
             _wrap(f"`{sets}` on the default rows (`suite.py run --variant {name}`), over "
                   f"{table['cell'].nunique()} cells. Within target, defaults → {name} on the same runs: "
                   f"{'; '.join(counts)}; late collapses {int(table['collapses'].sum())} → "
                   f"{int(table['variant_collapses'].sum())} of {int(table['runs'].sum())} runs. Mean "
                   f"change of the test accuracy over those cells' (row, cell) pairs: "
                   f"{'; '.join(moves) or 'none (losses only)'}."), "",
             "| cell | row | runs | metric | defaults | variant | grid | within target | collapses |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        met = f"{'met' if r.met else 'NOT met'} → {'met' if r.variant_met else 'NOT met'}"
        lines.append(f"| {r.cell} | {r.row} | {r.runs} | {r.metric} | {_metric(r.value, r.metric)} | "
                     f"{_metric(r.variant, r.metric)} | {_metric(r.grid, r.metric)} | {met} | "
                     f"{r.collapses} → {r.variant_collapses} |")
    return lines


def candidate_lines(variants: dict[str, dict[tuple[str, int], pd.DataFrame]],
                    whole: dict[tuple[str, int], pd.DataFrame]) -> list[str]:
    """docs/suite.md's section on the candidate defaults: each variant (name -> cell -> its trials) over the
    whole cells ``whole`` it ran on (:func:`variant_lines`); nothing when none ran on a whole cell."""
    ran = {v: {cell: trials for cell, trials in by_cell.items() if cell in whole}
           for v, by_cell in variants.items()}
    if not any(ran.values()):
        return []
    lines = ["## Candidate defaults", "",
             _wrap("Candidate changes of the defaults (`VARIANTS` in experiments/suite.py), each run on the "
                   "default rows of some whole cells apart from the cells (`suite.py run --variant NAME`, "
                   "into `CELL/variants/NAME/`; kept in `docs/suite/cells/variants/`). Each is compared with "
                   "the defaults on the same runs (the same rows and seeds) against the same grid; the cells "
                   "and the targets above are the defaults'."), ""]
    for name, by_cell in ran.items():
        if by_cell:
            tables = [variant_targets(whole[cell], trials, cell) for cell, trials in sorted(by_cell.items())]
            lines += [*variant_lines(name, tables), ""]
    return lines[:-1]


def merge_pairs(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The trials of several runs of one cell as one: each frame's (strategy, seed) pairs replace those of
    the frames before it; the other pairs are kept."""
    merged: pd.DataFrame | None = None
    for frame in frames:
        if merged is None:
            merged = frame.copy()
            continue
        pairs = pd.MultiIndex.from_frame(frame[["strategy", "seed"]].drop_duplicates())
        kept = ~pd.MultiIndex.from_frame(merged[["strategy", "seed"]]).isin(pairs)
        merged = pd.concat([merged[kept], frame], ignore_index=True)
    if merged is None:
        raise ValueError("merge_pairs needs at least one frame of trials.")
    return merged


def missing_rows(trials: pd.DataFrame, workload: str) -> list[str]:
    """What a cell's ``trials`` lack against its workload's config: every row absent (its name), and every
    row that lacks a seed another row has (``ROW (seeds A, B)``): an empty list for a whole cell."""
    seeds = set(trials["seed"].unique()) if "seed" in trials else set()
    have = trials.groupby("strategy")["seed"].unique().to_dict() if len(trials) else {}
    lacking = []
    for row in config_strategies(workload):
        if row not in have:
            lacking.append(row)
        elif gap := sorted(seeds - set(have[row])):
            lacking.append(f"{row} (seed{'s' if len(gap) > 1 else ''} {', '.join(str(int(g)) for g in gap)})")
    return lacking


def cell_source(out: Path, workload: str, steps: int, archive: Path | None = None) -> tuple[str, Path] | None:
    """Where :func:`load_cell` reads a cell from before its parts, and what that is: ``("run", trials.csv)``
    for a cell this machine ran to its end under ``out``, else ``("kept", copy)`` for its copy in
    ``archive``, else ``("unfinished", trials.csv)`` for a cell still running or interrupted here; None when
    there is none."""
    folder = cell_dir(out, workload, steps)
    kept = archive_path(archive, workload, steps) if archive is not None else None
    if cell_complete(folder):
        return "run", folder / "trials.csv"
    if kept is not None and kept.is_file():
        return "kept", kept
    if (folder / "trials.csv").is_file():
        return "unfinished", folder / "trials.csv"
    return None


#: A cell's heading in docs/suite.md and docs/horizon.md (``## digits_mlp, 360 steps``).
CELL_HEADING = re.compile(r"^## (\w+), (\d+) steps$", re.MULTILINE)


def documented_cells(path: Path) -> set[tuple[str, int]]:
    """The cells a generated document lists (its ``## WORKLOAD, N steps`` headings); none if it is absent."""
    if not path.is_file():
        return set()
    return {(m.group(1), int(m.group(2))) for m in CELL_HEADING.finditer(path.read_text(encoding="utf-8"))}


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.1f}"


def cell_table(rows: pd.DataFrame) -> list[str]:
    """Markdown rows: mean ± std over seeds per strategy."""
    agg = rows.groupby("strategy", sort=False).agg(
        seeds=("seed", "count"), trials=("trials", "mean"), test=("test_at_best", "mean"),
        test_sd=("test_at_best", "std"), test_last=("test_last", "mean"), best_val=("best_val", "mean"),
        last_val=("last_val", "mean"), collapses=("collapsed", "sum"), compute=("compute_s", "mean"),
        scale=("scale_last", "median"))
    lines = ["| row | seeds | trials | test % (best val) | test % (last) | val % best / last | collapses | "
             "compute-s | lr_scale at end |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in agg.iterrows():
        sd = "" if not math.isfinite(r.test_sd) else f" ± {100 * r.test_sd:.1f}"
        lines.append(f"| {name} | {int(r.seeds)} | {r.trials:g} | {_pct(r.test)}{sd} | {_pct(r.test_last)} | "
                     f"{_pct(r.best_val)} / {_pct(r.last_val)} | {int(r.collapses)} | {r.compute:.1f} | "
                     f"{r.scale:.3g} |")
    return lines


def target_rows(cells: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """The targets of each default row per cell: its mean over seeds against its grid's (test accuracy at the
    best-validation epoch; for a ``target="loss"`` workload the best validation loss), whether it is within
    the target (1 point; 2% of the grid's loss), its runs and its collapses."""
    out = []
    for (name, steps), trials in sorted(cells.items()):
        rows = seed_rows(trials)
        by_loss = name in WORKLOADS and WORKLOADS[name].target == "loss"
        means = rows.groupby("strategy")["best_val_loss" if by_loss else "test_at_best"].mean()
        for row, grid in DEFAULT_ROWS.items():
            if row not in means or grid not in means:
                continue
            ok = (means[row] <= means[grid] * (1 + WITHIN_LOSS) if by_loss
                  else means[row] >= means[grid] - WITHIN)
            mine = rows[rows.strategy == row]
            out.append({"cell": f"{name} h{steps}", "row": row, "metric": "val loss" if by_loss else "test %",
                        "value": float(means[row]), "grid": float(means[grid]), "met": bool(ok),
                        "runs": len(mine), "collapses": int(mine["collapsed"].sum())})
    return pd.DataFrame(out, columns=["cell", "row", "metric", "value", "grid", "met", "runs", "collapses"])


def _metric(value: float, metric: str) -> str:
    return f"{value:.4f}" if metric == "val loss" else _pct(value)


def targets(cells: dict[tuple[str, int], pd.DataFrame]) -> list[str]:
    """The issue's targets per cell as markdown: a count of what is met, then each default row against its
    grid (within 1 point of its test accuracy; the language model: within 2% of its validation loss), and
    its collapses."""
    table = target_rows(cells)
    if table.empty:
        return []
    lines = [f"- Within the target of its grid (1 point of test accuracy; the language model: 2% of "
             f"validation loss): {int(table['met'].sum())} of {len(table)} (default row, cell) pairs.",
             f"- No late collapse: {int(table['collapses'].sum())} of {int(table['runs'].sum())} default "
             "runs collapsed (last epoch more than 2 points of validation accuracy below the run's best).",
             "",
             "| cell | row | metric | mean | grid | within target | collapses |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.cell} | {r.row} | {r.metric} | {_metric(r.value, r.metric)} | "
                     f"{_metric(r.grid, r.metric)} | {'met' if r.met else 'NOT met'} | {r.collapses} |")
    return lines


def start_scale(workload: str, row: str) -> float:
    """The scale ``row`` of ``workload``'s config starts from: its run config's ``lr.eta0``."""
    exp = workload_experiment(workload)
    return float(exp.run_config(exp.strategy(row)).lr.eta0)


def scale_moves(cells: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """How far the untuned default rows moved their scale: per default row (index) and cell (columns), the
    median over seeds of the tuned scale at the run's end over the scale it started from."""
    moves: dict[str, dict[str, float]] = {}
    for (name, steps), trials in sorted(cells.items()):
        rows = seed_rows(trials)
        for row in DEFAULT_ROWS:
            last = rows.loc[rows.strategy == row, "scale_last"]
            if len(last) and name in WORKLOADS:
                moves.setdefault(f"{name} h{steps}", {})[row] = float(last.median()) / start_scale(name, row)
    return pd.DataFrame(moves).reindex([r for r in DEFAULT_ROWS if any(r in m for m in moves.values())])


def scale_move_lines(moves: pd.DataFrame) -> list[str]:
    """The markdown of :func:`scale_moves`: a sentence with the range per start, then the table."""
    if moves.empty:
        return []
    spans = []
    for start in ("lo", "mid", "hi"):
        values = moves.loc[[r for r in moves.index if r.endswith(f"_{start}")]].to_numpy().ravel()
        values = values[np.isfinite(values)]
        if values.size:
            spans.append(f"{start} x{np.min(values):.2g} to x{np.max(values):.2g} (median "
                         f"x{np.median(values):.2g})")
    lines = ["## How far the defaults move the scale", "",
             _wrap("The tuned scale at the end of each default run over the scale it started from (the row's "
                   "lr.eta0), median over seeds. The starts lo, mid and hi are a decade apart, so defaults "
                   "that reached the same scale from each would read about x10 more on lo than on mid and "
                   "x10 less on hi. Over these cells: " + "; ".join(spans) + "."), "",
             "| row | " + " | ".join(moves.columns) + " |", "|---|" + "---|" * len(moves.columns)]
    for row, values in moves.iterrows():
        lines.append(f"| {row} | " + " | ".join("–" if not math.isfinite(v) else f"x{v:.2g}" for v in values)
                     + " |")
    return lines


#: The step-cost measurement of the run configs' default (docs/performance.md), relative to the docs folder.
COST_JSON = "perf/bench_step_cost_cheap_cpu.json"
COST_COMMAND = ("python experiments/bench_step_cost.py --device cpu --threads 1 --models mlp lenet cifar_cnn "
                "--methods sgd 'rthpo[every10,quarter]' 'rthpo[after_tuning]' adamw "
                "'rthpo_adamw[every10,quarter]' 'rthpo_adamw[after_tuning]' "
                "--json docs/perf/bench_step_cost_cheap_cpu.json")


def cost_lines(docs: Path) -> list[str]:
    """The cost target (the default at most 1.3x its base optimizer's step) as docs/performance.md measures
    it: experiments/bench_step_cost.py's table of :data:`COST_JSON` in ``docs``, with its command; nothing
    when the file is absent."""
    path = docs / COST_JSON
    if not path.is_file():
        return []
    import json

    import bench_step_cost  # beside this script

    results = json.loads(path.read_text(encoding="utf-8"))
    return ["Default cost, from `docs/" + COST_JSON + "` (measured side by side in one process, one thread; "
            f"docs/performance.md): `{COST_COMMAND}`", "", bench_step_cost.measured_on(results), "",
            *bench_step_cost.default_cost_table(results)]


def medians_to_target(cells: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """One row per cell, one column per strategy: the median over seeds of the time to the target (the
    better grid's median best validation accuracy)."""
    out = {}
    for (name, steps), trials in sorted(cells.items()):
        rows = seed_rows(trials)
        grids = [rows[rows.strategy == g]["best_val"].median() for g in GRIDS if g in set(rows.strategy)]
        if not grids:
            continue
        times = time_to_target(trials, max(grids))
        out[f"{name} h{steps}"] = times.groupby("strategy")["time_s"].median()
    return pd.DataFrame(out).T


def report(args: argparse.Namespace) -> int:
    """Write docs/suite.md and docs/horizon.md (and their figures) from the cells' run files."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, docs = Path(args.out), Path(args.docs)
    figs = docs / "suite"
    archive = figs / "cells"
    sources = {doc: {(name, steps): found for name, w in WORKLOADS.items() if w.doc == doc
                     for steps in w.horizons if (found := load_cell(out, name, steps, archive)) is not None}
               for doc in ("suite", "horizon")}
    loaded = {doc: {cell: found[0] for cell, found in doc_cells.items()}
              for doc, doc_cells in sources.items()}
    # every cell this machine ran to its end, and every cell with parts run here, is kept first, so that
    # cells (and the parts of cells) run in several sessions add up
    for doc_cells in sources.values():
        for (name, steps), (trials, kind) in sorted(doc_cells.items()):
            folder, kept = cell_dir(out, name, steps), archive_path(archive, name, steps)
            if kind in ("run", "assembled") and archive_cell(trials, kept):  # the frames load_cell read
                print(f"kept {folder / ('trials.csv' if kind == 'run' else 'parts')} in {kept}")
    variants: dict[str, dict[tuple[str, int], pd.DataFrame]] = {}
    for variant in VARIANTS:  # each variant's runs, kept as the cells are (parts here + the kept copy)
        for name, steps in sources["suite"]:
            ran = load_variant(out, name, steps, variant, archive)
            if ran is None:
                continue
            variants.setdefault(variant, {})[(name, steps)] = ran
            kept = archive_path(variant_archive(archive, variant), name, steps)
            if complete_parts(out, name, steps, variant) and archive_cell(ran, kept):
                print(f"kept {parts_root(out, name, steps, variant)} in {kept}")
    dropped = sorted(f"{n} h{s} ({doc}.md)" for doc, cells in loaded.items()
                     for n, s in documented_cells(docs / f"{doc}.md") - set(cells))
    if dropped and not args.allow_missing:
        print(f"suite.py report: error: the documents list cells whose run files are neither under {out} nor "
              f"kept in {archive}: {', '.join(dropped)}; rewriting them would drop those cells (the cells "
              "found are kept in the archive). Run the missing cells (suite.py run), point --out at their "
              "run files, or pass --allow-missing to drop them.", file=sys.stderr)
        return 2
    figs.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    for doc in ("suite", "horizon"):
        cells = loaded[doc]
        lines = [f"# {'The suite' if doc == 'suite' else 'The horizon study'}", "",
                 "Generated by `python experiments/suite.py report` from the cells' `trials.csv` "
                 f"(`{args.out}/WORKLOAD-hSTEPS`, or the copy kept in `docs/suite/cells/`); do not edit by "
                 f"hand. Machine: {machine}.", ""]
        if doc == "horizon":
            lines += HORIZON_INTRO
        else:
            lines += SUITE_INTRO
        missing = [f"{n} h{s}" for n, w in WORKLOADS.items() if w.doc == doc for s in w.horizons
                   if (n, s) not in cells]
        if doc == "suite":
            missing += [f"{p} (no config yet)" for p in PLANNED]
        lines += ["## Cells", "",
                  "Seeds: where a cell is longer than a session's machine allows it has fewer seeds than its "
                  "workload's default, and its command says so (`--seeds`). An unfinished cell (a run still "
                  "going or interrupted, continued by the same command) is marked; its rows are partial.", "",
                  "| cell | steps | seeds | wall of its runs | command |", "|---|---|---|---|---|"]
        partial = {}
        for (name, steps), trials in sorted(cells.items()):
            wall = trials.groupby(["strategy", "seed"])["time/wall_elapsed_s"].max().sum() \
                if "time/wall_elapsed_s" in trials else float("nan")
            seeds = int(trials["seed"].nunique())
            cmd = shlex.join(["python", "experiments/suite.py", "run", "--workloads", name,
                              "--horizons", str(steps),
                              *(["--seeds", str(seeds)] if seeds != WORKLOADS[name].seeds else [])])
            lacking = missing_rows(trials, name)
            mark = " (UNFINISHED)" if sources[doc][(name, steps)][1] == "unfinished" else ""
            if lacking:
                partial[(name, steps)] = lacking
                mark += f" (PARTIAL: {len(lacking)} row{'s' if len(lacking) > 1 else ''} to run)"
            lines.append(f"| {name}{mark} | {steps} | {seeds} | {wall / 60:.0f} min (summed) | `{cmd}` |")
        lines += ["", f"Missing: {', '.join(missing) if missing else 'none'}.", ""]
        for (name, steps), lacking in sorted(partial.items()):
            lines += [_wrap(f"{name} h{steps} is partial (its rows are run piecewise: `suite.py run ... "
                            f"--strategies ROW ... [--first-seed K]`); it is shown below but left out of the "
                            f"targets and the scores until it is whole. To run: {', '.join(lacking)}."), ""]
        whole = {cell: trials for cell, trials in cells.items() if cell not in partial}
        if doc == "suite" and whole:
            lines += ["## Targets", "", *targets(whole), "", *cost_lines(docs), ""]
            lines += [*scale_move_lines(scale_moves(whole)), ""]
            lines += [*candidate_lines(variants, whole), ""]
            table = target_rows(whole)
            if not table.empty and write_block(docs / "method.md", METHOD_MARKERS,
                                               _wrap(targets_sentence(table, sorted(set(table["cell"]))))):
                print(f"wrote the suite's targets block of {docs / 'method.md'}")
            med = medians_to_target(whole)
            if not med.empty:
                taus = np.linspace(1.0, R_MAX, 61)
                profile = performance_profile(med.fillna(np.inf), taus)
                score = algoperf_score(profile).sort_values(ascending=False)
                lines += ["## Time to target and the AlgoPerf score", "",
                          "Target per cell: the better grid's median best validation accuracy; time: every "
                          "compute second a row spends to first reach it, its search included (median over "
                          "seeds; – = not reached). Score: the integral of the performance profile from 1 to "
                          f"{R_MAX:g}, over {R_MAX - 1:g}.", "",
                          "| row | score | " + " | ".join(med.index) + " |",
                          "|---|---|" + "---|" * len(med.index)]
                for m in score.index:
                    cells_txt = " | ".join("–" if not math.isfinite(med.loc[c, m])
                                           else f"{med.loc[c, m]:.1f} s"
                                           for c in med.index)
                    lines.append(f"| {m} | {score[m]:.3f} | {cells_txt} |")
                fig, ax = plt.subplots(figsize=(8, 4.5))
                for m in score.index[:12]:
                    ax.step(taus, profile[m], where="post", label=f"{m} ({score[m]:.2f})")
                ax.set_xlabel("tau (time to target / best time)")
                ax.set_ylabel("fraction of cells")
                ax.set_title("Performance profiles (AlgoPerf score in brackets)")
                ax.legend(fontsize=7, ncol=2)
                fig.tight_layout()
                fig.savefig(figs / "profile.png", dpi=110)
                plt.close(fig)
                lines += ["", "![performance profiles](suite/profile.png)", ""]
                readme = docs.parent / "README.md"  # the README beside these docs, where it has the block
                figure = (figs / "profile.png").relative_to(docs.parent).as_posix()
                if write_readme_block(readme, figure, profile_sentence(score, len(med.index))):
                    print(f"wrote the suite's profile block of {readme}")
        for (name, steps), trials in sorted(cells.items()):
            lines += [f"## {name}, {steps} steps", "", *cell_table(seed_rows(trials)), ""]
            fig, ax = plt.subplots(figsize=(8, 4))
            rt = trials[trials["method"] == "rthpo"]
            colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(rt["strategy"]))}
            for (strategy, seed), t in rt.groupby(["strategy", "seed"], sort=False):
                t = t.sort_values("epoch")
                ax.semilogy(t["step"], t["lr"].clip(lower=1e-8), lw=0.8, color=colours[strategy],
                            label=strategy if seed == t["seed"].min() and seed == rt["seed"].min() else None)
            ax.set_xlabel("step")
            ax.set_ylabel("learning rate at the epoch's last step")
            ax.set_title(f"{name}, {steps} steps: RT-HPO's learning rate")
            ax.legend(fontsize=6, ncol=3)
            fig.tight_layout()
            fname = f"{name}-h{steps}_lr.png"
            fig.savefig(figs / fname, dpi=100)
            plt.close(fig)
            lines += [f"![learning rates](suite/{fname})", ""]
        (docs / f"{doc}.md").write_text("\n".join(lines))
        print(f"wrote {docs / f'{doc}.md'} ({len(cells)} cells)")
    return 0


SUITE_INTRO = [
    "Rows (configs/suite/*.yaml): `rthpo_{sgd,adamw}_{lo,mid,hi}` are RT-HPO's defaults (warmup + cosine, "
    "its peak tuned online from a tenth of, at and ten times the grid's best peak); `grid_*` the same "
    "schedule with its peak tuned by a 7-point half-decade grid, `optuna_*` by 7 TPE trials; `adamw_1e-3` "
    "AdamW at 1e-3 on the schedule; `prodigy`, `schedule_free_*`, `dog` (with its averager), `dadapt_adam` "
    "at their documented defaults; `rthpo_old_default` RT-HPO's default before this suite (flat eta, beta "
    "0.1 per step, exact), run with the suite's loss-spike backoff (lr.backoff 2, no rollback), which that "
    "default lacked. Test accuracy is read at the best-validation epoch of the trial a row chose, "
    "and at its last epoch; a collapse is a last epoch more than 2 points below the run's best validation "
    "accuracy. `lr_scale at end`: RT-HPO's tuned scale s (the schedule's peak); for the other rows their "
    "last learning rate. compute-s: the epoch seconds of all a row's trials (its search included), mean "
    "over seeds.",
    "",
    "How much to read into it: on digits the validation split is 144 images (one image is 0.69 points) and "
    "the test split 360 (0.28 points), so the time-to-target target (the better grid's median best "
    "validation accuracy) sits at the top of the validation noise, and many rows never reach it; the "
    "AlgoPerf score below is noise-dominated on this workload. The within-1-point targets are the steadier "
    "reading.",
    "",]
HORIZON_INTRO = [
    "What the defaults rest on: candidate updates of log s over SGD (momentum 0.9) and AdamW on digits "
    "(configs/suite/horizon_digits.yaml), from a tenth of, at and ten times the tuned peak, at 360 and "
    "3,600 steps. `step01_exact` is beta 0.1 per step, the old default: its per-step change adds up over a "
    "longer run. `sqrt1` divides beta 1 by sqrt(T), so the drift of a noisy hypergradient over the whole "
    "run is the same at every T. `cheap_tf25` computes the hypergradient every 10th step on a quarter "
    "batch over the first quarter of the run only. The defaults (lr.beta_horizon sqrt, lr.beta 1, "
    "lr.preset cheap, lr.tune_fraction 0.25) are the `sqrt1_cheap_tf25` rows, plus lr.backoff 2.0 (not in "
    "these rows: see the suite's `rthpo_*_hi` rows). When the run's length is unknown (RTHPO without "
    "total_steps), `beta_horizon='sqrt'` assumes 1,000 steps.",
    "",]


def main(argv: list[str] | None = None) -> int:
    """The command line: ``run`` (cells through rthpo compare) and ``report`` (the documents)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run or continue cells (rthpo compare --resume)")
    p_run.add_argument("--workloads", nargs="+", default=["digits_mlp"], metavar="NAME")
    p_run.add_argument("--horizons", nargs="+", type=int, default=None, metavar="STEPS")
    p_run.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the workload's)")
    p_run.add_argument("--epochs", type=int, default=None, help="override the horizon's epochs (smoke runs)")
    p_run.add_argument("--strategies", nargs="+", default=None, metavar="ROW",
                       help="run only these rows of each cell, as a part of it (rthpo compare "
                            "--strategies) that report merges into the cell: a cell too long for one session")
    p_run.add_argument("--first-seed", type=int, default=None, metavar="K",
                       help="run the seeds K, K+1, ... (--seeds of them) as a part of the cell that report "
                            "merges with the seeds run before (default: the config's seed, for a whole run)")
    p_run.add_argument("--variant", default=None, choices=list(VARIANTS),
                       help="run the cell's default rows (or --strategies among them) under this candidate "
                            "change of the defaults, apart from the cell; report shows it beside the cell")
    p_run.add_argument("--out", default="runs/suite")
    p_rep = sub.add_parser("report", help="write docs/suite.md and docs/horizon.md from the run files")
    p_rep.add_argument("--out", default="runs/suite")
    p_rep.add_argument("--docs", default=str(REPO / "docs"))
    p_rep.add_argument("--allow-missing", action="store_true",
                       help="rewrite the documents even where they list cells whose run files are gone")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
