"""The pure computations behind docs/beta.md (experiments/beta_robustness.py): no I/O, no torch.

A *run record* is a dict, one training run of the study (experiments/beta_robustness.py reads them from the
cells' ``trials.csv``): ``workload``, ``method``, ``rule`` (None for a schedule), ``eta0``, ``beta`` (None for
a schedule), ``seed``, ``status``, and ``epochs``, a list of ``{"epoch", "val_acc", "test_acc", ...}``
(accuracies as fractions in [0, 1]).

Definitions (every accuracy below is in percentage points):

* **Selected accuracy of a run**: the test accuracy of its best-validation epoch (the first one on ties).
* **Cell**: all seeds of one ``(workload, method, rule, eta0, beta)``; its accuracy is the seed-mean of
  the selected accuracies.
* **Bar of a workload**: the reference the targets are measured against: the ``exp_decay`` cell whose
  seed-mean *validation* accuracy is best; its seed-mean *test* accuracy is the bar.
* **Good cell**: its accuracy is at least ``bar - tol`` (``tol`` = 1 point): within one point of the bar,
  or better.
* **Window** (strict) of a rule on a workload: the grid values of beta at which the cell of *every* eta-bar
  of the grid is good (a missing cell is not good). Its **width** is ``log10(hi / lo)`` of the longest run of
  consecutive in-window grid values (one value alone: width 0; none: empty, ``None``).
* **Per-eta-bar window**: the same for one eta-bar only (looser).
* **Common window** of a rule: the grid values in the window of *every* workload, and its widest run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

#: The tolerance of a good cell, in percentage points.
TOL_POINTS = 1.0
#: The method whose grid search is the bar.
REFERENCE_METHOD = "exp_decay"

CellKey = tuple[str, str, "str | None", float, "float | None"]


@dataclass(frozen=True)
class Selected:
    """The epoch a run would be stopped at, chosen on validation: its (1-based) epoch and accuracies
    (points)."""

    epoch: int
    val: float
    test: float


@dataclass(frozen=True)
class Cell:
    """All seeds of one grid point: seed-mean selected test and validation accuracy (points)."""

    test: float
    val: float
    n: int
    diverged: int
    tests: tuple[float, ...]

    @property
    def test_std(self) -> float:
        """Sample standard deviation of the selected test accuracies over seeds (0 for one seed)."""
        if self.n < 2:
            return 0.0
        return math.sqrt(sum((t - self.test) ** 2 for t in self.tests) / (self.n - 1))


@dataclass(frozen=True)
class Bar:
    """The reference of one workload: the best-by-validation cell of the reference method."""

    workload: str
    eta0: float
    val: float
    test: float
    test_std: float
    n: int


@dataclass(frozen=True)
class Window:
    """A run of consecutive grid values of beta, ``lo`` to ``hi`` (inclusive)."""

    members: tuple[float, ...]

    @property
    def lo(self) -> float:
        """The smallest beta of the window."""
        return self.members[0]

    @property
    def hi(self) -> float:
        """The largest beta of the window."""
        return self.members[-1]

    @property
    def width(self) -> float:
        """Width in decades: ``log10(hi / lo)`` (0 for a single grid value)."""
        return math.log10(self.hi / self.lo)

    @property
    def n_points(self) -> int:
        """How many grid values the window holds."""
        return len(self.members)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def select_by_validation(epochs: Sequence[Mapping[str, Any]]) -> Selected | None:
    """The first epoch with the highest finite validation accuracy, and its test accuracy (points).

    None when no epoch has a finite validation accuracy. A missing/NaN test accuracy counts as 0."""
    best: tuple[int, Mapping[str, Any]] | None = None
    for i, row in enumerate(epochs):
        val = row.get("val_acc")
        if not _finite(val):
            continue
        if best is None or val > best[1]["val_acc"]:
            best = (i, row)
    if best is None:
        return None
    i, row = best
    test = row.get("test_acc")
    return Selected(epoch=int(row.get("epoch", i + 1)), val=100.0 * float(row["val_acc"]),
                    test=100.0 * float(test) if _finite(test) else 0.0)


def cell_key(record: Mapping[str, Any]) -> CellKey:
    """``(workload, method, rule, eta0, beta)`` of a run record."""
    beta = record.get("beta")
    return (record["workload"], record["method"], record.get("rule"), float(record["eta0"]),
            None if beta is None else float(beta))


def cells(records: Iterable[Mapping[str, Any]]) -> dict[CellKey, Cell]:
    """Group run records by grid point and average over seeds (one record per seed: a later record of
    the same seed replaces an earlier one). Records without a selectable epoch are skipped."""
    by_seed: dict[CellKey, dict[int, tuple[Selected, bool]]] = {}
    for r in records:
        sel = select_by_validation(r.get("epochs") or [])
        if sel is None:
            continue
        by_seed.setdefault(cell_key(r), {})[int(r["seed"])] = (sel, bool(r.get("diverged")))
    out: dict[CellKey, Cell] = {}
    for key, seeds in by_seed.items():
        sels = [seeds[s] for s in sorted(seeds)]
        tests = tuple(s.test for s, _ in sels)
        out[key] = Cell(test=sum(tests) / len(tests), val=sum(s.val for s, _ in sels) / len(sels),
                        n=len(sels),
                        diverged=sum(1 for _, d in sels if d), tests=tests)
    return out


def reference_bar(table: Mapping[CellKey, Cell], workload: str, method: str = REFERENCE_METHOD) -> Bar | None:
    """The bar of ``workload``: the ``method`` cell with the best seed-mean validation accuracy (ties: the
    smaller eta-bar); None if the workload has no such cell."""
    candidates = sorted((k[3], c) for k, c in table.items() if k[0] == workload and k[1] == method)
    if not candidates:
        return None
    eta0, cell = max(candidates, key=lambda ec: (ec[1].val, -ec[0]))
    return Bar(workload=workload, eta0=eta0, val=cell.val, test=cell.test, test_std=cell.test_std, n=cell.n)


def is_good(cell: Cell | None, bar: float, tol: float = TOL_POINTS) -> bool:
    """True when the cell exists and its seed-mean accuracy is at least ``bar - tol`` (points)."""
    return cell is not None and cell.test >= bar - tol - 1e-9


def per_eta_flags(table: Mapping[CellKey, Cell], workload: str, method: str, rule: str | None,
                  etas: Sequence[float], betas: Sequence[float], bar: float,
                  tol: float = TOL_POINTS) -> dict[float, dict[float, bool]]:
    """``{eta0: {beta: good?}}`` for one rule on one workload."""
    return {eta: {beta: is_good(table.get((workload, method, rule, eta, beta)), bar, tol) for beta in betas}
            for eta in etas}


def strict_flags(table: Mapping[CellKey, Cell], workload: str, method: str, rule: str | None,
                 etas: Sequence[float], betas: Sequence[float], bar: float,
                 tol: float = TOL_POINTS) -> dict[float, bool]:
    """``{beta: good for every eta-bar?}`` (the strict window's membership)."""
    flags = per_eta_flags(table, workload, method, rule, etas, betas, bar, tol)
    return {beta: bool(etas) and all(flags[eta][beta] for eta in etas) for beta in betas}


def widest_window(betas: Sequence[float], flags: Mapping[float, bool]) -> Window | None:
    """The longest run of consecutive grid values (in the order of ``betas``, sorted ascending) whose flag
    is True; on a tie, the lower one. None when no value is flagged."""
    ordered = sorted(betas)
    best: list[float] = []
    current: list[float] = []
    for beta in ordered:
        if flags.get(beta, False):
            current.append(beta)
            if len(current) > len(best):
                best = list(current)
        else:
            current = []
    return Window(tuple(best)) if best else None


def common_flags(flags_by_workload: Mapping[str, Mapping[float, bool]],
                 betas: Sequence[float]) -> dict[float, bool]:
    """``{beta: in the window of every workload?}`` (False when there is no workload)."""
    return {beta: bool(flags_by_workload) and all(f.get(beta, False) for f in flags_by_workload.values())
            for beta in betas}


class Coverage(NamedTuple):
    """How one beta does over every (workload, eta-bar) cell: good cells, cells, the worst and the mean
    shortfall (``max(0, bar - accuracy)`` in points; a missing cell: inf)."""

    good: int
    total: int
    worst: float
    mean_shortfall: float


def coverage(table: Mapping[CellKey, Cell], workloads: Sequence[str], method: str, rule: str | None,
             etas: Sequence[float], beta: float, bars: Mapping[str, float],
             tol: float = TOL_POINTS) -> Coverage:
    """:class:`Coverage` of one beta over every (workload, eta-bar); missing cells are not good."""
    good, total, worst, short = 0, 0, -math.inf, 0.0
    for w in workloads:
        for eta in etas:
            total += 1
            cell = table.get((w, method, rule, eta, beta))
            if cell is None:
                worst, short = math.inf, math.inf
                continue
            good += is_good(cell, bars[w], tol)
            worst = max(worst, bars[w] - cell.test)
            short += max(0.0, bars[w] - cell.test)
    return Coverage(good, total, worst, short / total if total else math.inf)


@dataclass(frozen=True)
class RuleSummary:
    """One (method, rule) over the workloads: the strict windows, the common window, the best beta, its
    coverage over every eta-bar and over the fallback eta-bars (what the choice without a window uses)."""

    method: str
    rule: str | None
    windows: dict[str, Window | None]
    flags: dict[str, dict[float, bool]]
    common: Window | None
    best_beta: float
    best_coverage: Coverage
    fallback_coverage: Coverage


def summarize_rule(table: Mapping[CellKey, Cell], workloads: Sequence[str], method: str, rule: str | None,
                   etas: Sequence[float], betas: Sequence[float], bars: Mapping[str, float],
                   tol: float = TOL_POINTS, fallback_etas: Sequence[float] | None = None) -> RuleSummary:
    """Windows of one rule on each workload, the common window, and its best beta: the middle of the
    common window (of two middle values, the one with more good cells, then the lower), or, when the
    common window is empty, the beta whose worst shortfall over every (workload, eta-bar in
    ``fallback_etas``, default ``etas``) is smallest (the tolerance a one-value common window would need
    over those eta-bars), then the most good cells, then the smallest mean shortfall."""
    flags = {w: strict_flags(table, w, method, rule, etas, betas, bars[w], tol) for w in workloads}
    windows = {w: widest_window(betas, f) for w, f in flags.items()}
    common = widest_window(betas, common_flags(flags, betas))
    cov = {b: coverage(table, workloads, method, rule, etas, b, bars, tol) for b in betas}
    fb_etas = list(fallback_etas) if fallback_etas is not None else list(etas)
    fb = {b: coverage(table, workloads, method, rule, fb_etas, b, bars, tol) for b in betas}

    def rank(b: float) -> tuple[int, float, float]:
        return (cov[b].good, -cov[b].mean_shortfall, -b)

    if common is not None:
        m = common.n_points
        middle = [common.members[m // 2]] if m % 2 else [common.members[m // 2 - 1], common.members[m // 2]]
        best = max(middle, key=rank)
    else:
        best = min(sorted(betas), key=lambda b: (fb[b].worst, -fb[b].good, fb[b].mean_shortfall))
    return RuleSummary(method=method, rule=rule, windows=windows, flags=flags, common=common, best_beta=best,
                       best_coverage=cov[best], fallback_coverage=fb[best])


def rank_rules(summaries: Iterable[RuleSummary]) -> list[RuleSummary]:
    """Best first: the widest common window (empty last), then more grid values in it, then (windows tied,
    e.g. all empty) the smaller worst shortfall over the fallback eta-bars at the best beta, then more good
    cells there, then the smaller mean shortfall."""
    def key(s: RuleSummary) -> tuple[float, int, float, int, float]:
        width = s.common.width if s.common is not None else -1.0
        n = s.common.n_points if s.common is not None else 0
        fb = s.fallback_coverage
        return (width, n, -fb.worst, fb.good, -fb.mean_shortfall)

    return sorted(summaries, key=key, reverse=True)


def heatmap(table: Mapping[CellKey, Cell], workload: str, method: str, rule: str | None,
            etas: Sequence[float], betas: Sequence[float],
            ) -> tuple[list[list[float]], list[list[int]], list[list[int]]]:
    """``(accuracy, diverged seeds, seeds)``, each a ``len(etas) x len(betas)`` list of lists; a missing cell
    has accuracy NaN and 0 seeds."""
    acc, div, n = [], [], []
    for eta in etas:
        row_a, row_d, row_n = [], [], []
        for beta in betas:
            cell = table.get((workload, method, rule, eta, beta))
            row_a.append(math.nan if cell is None else cell.test)
            row_d.append(0 if cell is None else cell.diverged)
            row_n.append(0 if cell is None else cell.n)
        acc.append(row_a)
        div.append(row_d)
        n.append(row_n)
    return acc, div, n


def eta_movement(eta0: float, eta_min: float, eta_max: float) -> float:
    """How far eta went from eta-bar: ``max(eta_max / eta0, eta0 / eta_min)`` (inf if eta reached 0)."""
    up = eta_max / eta0
    down = math.inf if eta_min <= 0 else eta0 / eta_min
    return max(up, down)


def log_distance(a: float, b: float) -> float:
    """``|log10(a / b)|`` (inf when either is 0)."""
    if a <= 0 or b <= 0:
        return math.inf
    return abs(math.log10(a / b))


__all__ = ["TOL_POINTS", "REFERENCE_METHOD", "Selected", "Cell", "Bar", "Window", "Coverage", "RuleSummary",
           "select_by_validation", "cell_key", "cells", "reference_bar", "is_good", "per_eta_flags",
           "strict_flags", "widest_window", "common_flags", "coverage", "summarize_rule", "rank_rules",
           "heatmap", "eta_movement", "log_distance"]
