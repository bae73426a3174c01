"""The design of the study behind docs/beta.md (experiments/beta_robustness.py runs it): grids, workloads and
the cells, each a comparison run by ``rthpo compare``. Pure data and functions: no I/O, no torch, no Ray.

A *cell* is one comparison (one ``rthpo compare`` run, ``OUT/WORKLOAD-GROUP``): its strategies are grids
(Ray's grid search over ``lr.eta0`` and, for the hypergradient rules, ``lr.beta``), repeated over the
design's seeds (``seeds: N``; repetition r trains with ``train.seed = r``). The groups:

* phase 1: ``exp_decay`` (the bar: SGD with eta-bar * 0.9^epoch over a half-decade eta-bar grid) on every
  workload, and ``rthpo`` (one strategy per eta-update rule, eta-bar x the rule's beta grid) on the
  full-grid workloads;
* phase 2 (it needs phase 1's results, :func:`choose_picks`): ``hd`` (``hd_val`` and ``hd_train`` with the
  additive rule and the best scale-free rule of phase 1) on the full-grid workloads, and ``probe`` (ResNet-18:
  the chosen rules at their phase-1 betas from every eta-bar, one seed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import beta_analysis as ba  # noqa: E402  (experiments/ is not a package)

RULES = ("additive", "multiplicative", "adam_log", "sign_log")
HD_METHODS = ("hd_val", "hd_train")
REFERENCE = ba.REFERENCE_METHOD
#: The study's setting on top of each workload's run config: the CPU, beta per step, every step exact, no
#: backoff (the run configs' defaults since docs/horizon.md are horizon-scaled and cheap).
STUDY_OVERRIDES = ("train.device=cpu", "train.seed=0", "lr.beta_horizon=step", "lr.preset=exact",
                   "lr.tune_fraction=1.0", "lr.backoff=null")


def _half_decades(lo_exp: int, hi_exp: int) -> tuple[float, ...]:
    """10^(k/2) for k in [2 lo_exp, 2 hi_exp], rounded to 3 significant digits (1e-4, 3.16e-4, ...)."""
    return tuple(float(f"{10.0 ** (k / 2):.3g}") for k in range(2 * lo_exp, 2 * hi_exp + 1))


@dataclass(frozen=True)
class Design:
    """The grids of one study (``full`` is the study of docs/beta.md; ``smoke`` checks the pipeline).
    Seeds are 0, 1, ... (``rthpo compare --seeds N`` trains repetition r with ``train.seed = r``)."""

    name: str
    etas: tuple[float, ...]
    ref_etas: tuple[float, ...]
    seeds: tuple[int, ...]
    additive_betas: tuple[float, ...]
    scale_free_betas: tuple[float, ...]
    probe_seeds: tuple[int, ...]
    extra_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what in ("seeds", "probe_seeds"):
            seeds = getattr(self, what)
            if tuple(seeds) != tuple(range(len(seeds))) or not seeds:
                raise ValueError(f"design {self.name}: {what} must be 0, 1, ..., N-1 (rthpo compare --seeds "
                                 "N), "
                                 f"but got {seeds!r}; renumber them from 0.")

    def betas(self, rule: str) -> tuple[float, ...]:
        """The beta grid of ``rule`` (one point a decade for the additive rule, half decades otherwise)."""
        return self.additive_betas if rule == "additive" else self.scale_free_betas


FULL = Design(
    name="full",
    etas=(1e-3, 1e-2, 1e-1, 1.0),
    ref_etas=_half_decades(-3, 0),
    seeds=(0, 1, 2),
    additive_betas=tuple(float(f"1e{e}") for e in range(-9, 0)),
    scale_free_betas=_half_decades(-4, 0),
    probe_seeds=(0,),
)
SMOKE = Design(
    name="smoke", etas=(1e-2, 1.0), ref_etas=(1e-2, 1e-1), seeds=(0,), additive_betas=(1e-6, 1e-4),
    scale_free_betas=(1e-2, 1e-1), probe_seeds=(0,),
    extra_overrides={"*": ("train.epochs=1",), "cifar10_resnet18": ("data.train_subset=16",)},
)
DESIGNS = {d.name: d for d in (FULL, SMOKE)}


@dataclass(frozen=True)
class Workload:
    """One model + dataset slice: a shipped run config and the overrides that size it for this CPU."""

    name: str
    label: str
    config: str
    overrides: tuple[str, ...]
    full_grid: bool


#: The sizes: every full-grid workload runs ~200 SGD steps of batch 32 (so that one beta means the same
#: number of eta updates everywhere) with validation minibatches of 64; docs/beta.md gives the reasons.
_MNIST = ("data.train_subset=2048", "data.batch_size=32", "data.val_batch_size=64", "data.val_subset=1000",
          "data.test_subset=2000", "train.epochs=3")
WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("digits", "MLP on digits (sklearn 8x8)", "configs/digits.yaml", ("train.epochs=5",), True),
    Workload("mnist_mlp", "MLP on MNIST (2,048-image slice)", "configs/mnist_mlp.yaml", _MNIST, True),
    Workload("mnist_lenet", "LeNet-5 on MNIST (2,048-image slice)", "configs/mnist_lenet.yaml", _MNIST, True),
    Workload("cifar10_resnet18", "ResNet-18 on CIFAR-10 (192-image JPEG slice, probe)",
             "configs/cifar10_resnet18.yaml",
             ("data.train_subset=192", "data.batch_size=8", "data.val_batch_size=8", "data.val_subset=100",
              "data.test_subset=200", "train.epochs=2"), False),
)}
FULL_GRID = tuple(w for w, spec in WORKLOADS.items() if spec.full_grid)
PROBE = tuple(w for w, spec in WORKLOADS.items() if not spec.full_grid)


def run_overrides(workload: str, design: Design) -> list[str]:
    """The ``--set`` overrides of every run of ``workload``: its sizes, the design's, the study's setting."""
    out = list(WORKLOADS[workload].overrides) + list(design.extra_overrides.get("*", ()))
    out += list(design.extra_overrides.get(workload, ()))
    return out + list(STUDY_OVERRIDES)


@dataclass(frozen=True)
class Picks:
    """What phase 1 chose for phase 2: the rules of the first-order runs and the probe's (rule, beta)."""

    hd_rules: tuple[str, ...]
    probe: tuple[tuple[str, float], ...]
    why: str


@dataclass(frozen=True)
class Cell:
    """One comparison: ``OUT/{workload}-{group}``, its strategies (``rthpo compare`` config entries) and
    its seeds. ``runs`` is the number of training runs it holds."""

    workload: str
    group: str
    phase: int
    seeds: int
    strategies: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        """The cell's folder name under the study's output folder."""
        return f"{self.workload}-{self.group}"

    @property
    def runs(self) -> int:
        """Training runs of the cell: the grid points of every strategy, times the seeds."""
        total = 0
        for strategy in self.strategies:
            points = 1
            for space in strategy.get("space", {}).values():
                points *= len(space["grid"])
            total += points
        return total * self.seeds


def _grid(values: Iterable[float]) -> dict[str, list[float]]:
    return {"grid": [float(v) for v in values]}


def strategy_rule(strategy: Mapping[str, Any]) -> str | None:
    """The eta-update rule a strategy entry sets (None for the schedule)."""
    return (strategy.get("overrides") or {}).get("lr.hyper_update")


def phase1_cells(workloads: Sequence[str], design: Design) -> list[Cell]:
    """The reference grid on every workload; RT-HPO with every rule on the full-grid workloads."""
    cells = []
    for w in workloads:
        full = WORKLOADS[w].full_grid
        ref = {"name": REFERENCE, "method": REFERENCE, "searcher": "grid",
               "space": {"lr.eta0": _grid(design.ref_etas if full else design.etas)}}
        cells.append(Cell(w, REFERENCE, 1, len(design.seeds if full else design.probe_seeds), (ref,)))
        if full:
            rules = tuple({"name": f"rthpo_{rule}", "method": "rthpo", "searcher": "grid",
                           "overrides": {"lr.hyper_update": rule},
                           "space": {"lr.eta0": _grid(design.etas), "lr.beta": _grid(design.betas(rule))}}
                          for rule in RULES)
            cells.append(Cell(w, "rthpo", 1, len(design.seeds), rules))
    return cells


def phase2_cells(workloads: Sequence[str], design: Design, picks: Picks) -> list[Cell]:
    """First-order methods on the full-grid workloads; the ResNet probe."""
    cells = []
    for w in workloads:
        if WORKLOADS[w].full_grid:
            hd = tuple({"name": f"{method}_{rule}", "method": method, "searcher": "grid",
                        "overrides": {"lr.hyper_update": rule},
                        "space": {"lr.eta0": _grid(design.etas), "lr.beta": _grid(design.betas(rule))}}
                       for method in HD_METHODS for rule in picks.hd_rules)
            cells.append(Cell(w, "hd", 2, len(design.seeds), hd))
        else:
            probe = tuple({"name": f"rthpo_{rule}_{i}", "method": "rthpo", "searcher": "grid",
                           "overrides": {"lr.hyper_update": rule, "lr.beta": float(beta)},
                           "space": {"lr.eta0": _grid(design.etas)}}
                          for i, (rule, beta) in enumerate(picks.probe))
            cells.append(Cell(w, "probe", 2, len(design.probe_seeds), probe))
    return cells


def fallback_etas(design: Design) -> tuple[float, ...]:
    """The eta-bars the choice of beta looks at when no common window exists: all but the largest (from
    eta-bar 1 plain SGD diverges on MNIST within its first steps, before any rule can act; docs/beta.md)."""
    return tuple(design.etas[:-1]) if len(design.etas) > 2 else tuple(design.etas)


def phase1_complete(records: Sequence[Mapping[str, Any]], design: Design) -> bool:
    """True when every run of phase 1 on every full-grid workload is in ``records``."""
    done = {(r["workload"], r["method"], r.get("rule"), float(r["eta0"]),
             None if r.get("beta") is None else float(r["beta"]), int(r["seed"])) for r in records}
    for w in FULL_GRID:
        for eta in design.ref_etas:
            for seed in design.seeds:
                if (w, REFERENCE, None, eta, None, seed) not in done:
                    return False
        for rule in RULES:
            for eta in design.etas:
                for beta in design.betas(rule):
                    for seed in design.seeds:
                        if (w, "rthpo", rule, eta, beta, seed) not in done:
                            return False
    return True


def choose_picks(records: Sequence[Mapping[str, Any]], design: Design, hd_rules: str) -> Picks | None:
    """Phase 2's choices from phase 1 (None while the phase-1 grids of all full-grid workloads are not
    complete): the recommended rule (widest common window, beta_analysis.rank_rules), the best scale-free
    rule for the first-order methods, the additive rule's best beta for the probe. ``hd_rules``: 'auto' or
    a comma list of rules."""
    if not phase1_complete(records, design):
        return None
    table = ba.cells(records)
    bars = {w: ba.reference_bar(table, w) for w in FULL_GRID}
    bar_test = {w: b.test for w, b in bars.items() if b is not None}
    summaries = [ba.summarize_rule(table, list(bar_test), "rthpo", rule, design.etas, design.betas(rule),
                                   bar_test, fallback_etas=fallback_etas(design)) for rule in RULES]
    ranked = ba.rank_rules(summaries)
    best = ranked[0]
    best_sf = next(s for s in ranked if s.rule != "additive")
    additive = next(s for s in ranked if s.rule == "additive")
    if hd_rules == "auto":
        chosen: tuple[str, ...] = ("additive", str(best_sf.rule))
    else:
        chosen = tuple(r.strip() for r in hd_rules.split(",") if r.strip())
        bad = [r for r in chosen if r not in RULES]
        if bad or not chosen:
            raise SystemExit(f"--hd-rules: {hd_rules!r} names no known rule ({bad or 'none'}); give a comma "
                             "list "
                             f"of {', '.join(RULES)}, or 'auto'.")
    probe = tuple(dict.fromkeys([(str(best.rule), best.best_beta), (str(best_sf.rule), best_sf.best_beta),
                                 ("additive", additive.best_beta)]))
    why = (f"recommended rule {best.rule} (beta {best.best_beta:g}); best scale-free rule {best_sf.rule} "
           f"(beta {best_sf.best_beta:g}); additive's best beta {additive.best_beta:g}")
    return Picks(hd_rules=chosen, probe=probe, why=why)


def planned_runs(design: Design, workloads: Sequence[str] = tuple(WORKLOADS)) -> int:
    """Runs of the whole study (phase 2 with two first-order rules and a probe of two (rule, beta))."""
    dummy = Picks(hd_rules=("additive", "sign_log"), probe=(("sign_log", 1.0), ("additive", 1.0)), why="")
    return sum(c.runs for c in phase1_cells(workloads, design) + phase2_cells(workloads, design, dummy))


__all__ = ["RULES", "HD_METHODS", "REFERENCE", "STUDY_OVERRIDES", "Design", "FULL", "SMOKE", "DESIGNS",
           "Workload", "WORKLOADS", "FULL_GRID", "PROBE", "run_overrides", "Picks", "Cell", "strategy_rule",
           "phase1_cells", "phase2_cells", "fallback_etas", "phase1_complete", "choose_picks", "planned_runs"]
