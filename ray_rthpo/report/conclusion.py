"""What a comparison found, in a few lines: the best strategy, who is within its noise, where the untuned
RT-HPO run stands (no Ray, no files).

The numbers are :mod:`ray_rthpo.report.stats`'s: each repetition's outcome is the test accuracy of its
(trial, epoch) chosen by validation; the best strategy is ``stats.best_strategy``'s (lowest mean rank,
then higher IQM, then higher mean).

* **Several seeds**: a strategy is *within noise* of the best when the paired bootstrap CI of its mean
  difference to the best (``stats.paired_comparison``) contains 0, *behind* when the CI is below 0,
  *ahead* (on the mean, though ranked lower) when it is above 0; with fewer than two paired seeds there
  is no CI.
* **One seed**: there is no estimate of the noise between runs; every difference is given in test
  images (``round(difference x test-set size)``) with the test set's size, so that a one-image lead
  reads as what it is.
* **Ties** are kept: strategies with the same test accuracy (one seed), or the same mean rank, IQM and
  mean (several seeds), share a place; a tie for the best is reported as such, never broken silently.
  When the mean ranks tie and the IQM or the mean decides, the lines say so.
* **The test set's size**: the ``test/n`` column when the trials table has it, else the least common
  denominator of every reported test accuracy (each is correct / n, a Python float, so each denominator
  divides n; over a comparison's hundreds of reports it is n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pandas as pd

from ray_rthpo import metrics as M
from ray_rthpo.report import stats
from ray_rthpo.report.console import WIDTH, bullet, paragraph

#: Optional column of the trials table: the number of test examples each accuracy is over.
TEST_SIZE = M.TEST_N
#: The strategy of the compare configs that runs RT-HPO's defaults once, without a search.
UNTUNED = "rthpo_default"
_LARGEST_TEST_SET = 10**7
_DIGITS = 12  # keys equal to this many decimals tie


def test_set_size(trials: pd.DataFrame) -> int | None:
    """The number of test examples behind the test accuracies of ``trials``: its ``test/n`` column when
    present (one value), else the least common denominator of every finite ``test/acc`` (each is
    correct / n). None without a test accuracy, or when the accuracies are not fractions of one n."""
    if TEST_SIZE in trials:
        sizes = pd.to_numeric(trials[TEST_SIZE], errors="coerce").dropna().unique()
        if len(sizes) == 1 and sizes[0] >= 1 and float(sizes[0]).is_integer():
            return int(sizes[0])
        return None
    if M.TEST_ACC not in trials:
        return None
    values = pd.to_numeric(trials[M.TEST_ACC], errors="coerce").dropna().unique()
    size = 1
    for value in values:
        if not 0.0 <= value <= 1.0:
            return None
        fraction = Fraction(float(value)).limit_denominator(_LARGEST_TEST_SET)
        if float(fraction) != float(value):  # correct / n is the float nearest the fraction: exactly it
            return None
        size = size * fraction.denominator // math.gcd(size, fraction.denominator)
        if size > _LARGEST_TEST_SET:
            return None
    return size if len(values) else None


@dataclass(frozen=True)
class Standing:
    """Where one strategy ended against the best.

    ``value``: its test accuracy (one seed) or mean test accuracy over its seeds. ``place``: 1 for the
    best; strategies that tie share a place. ``diff``: its paired mean difference to the best (one seed:
    the plain difference), with ``ci`` (NaN with one seed or fewer than two paired seeds) and ``images``
    (one seed, test-set size known: the difference in test images). ``verdict``: "best", "tied best",
    "within noise", "behind", "ahead", "no paired CI" or "no test accuracy". ``mean_rank`` and
    ``compute_s`` (compute seconds spent, mean per seed) are ``stats.strategy_summary``'s."""

    strategy: str
    place: int
    tied: bool
    value: float
    diff: float
    ci: tuple[float, float]
    images: int | None
    verdict: str
    mean_rank: float
    compute_s: float = math.nan


@dataclass(frozen=True)
class Conclusion:
    """The result of a comparison (:func:`conclude`): ``standings`` best first, ``best`` the strategies
    that share first place, ``untuned`` the standing of the untuned RT-HPO run (None without one)."""

    seeds: int
    best: tuple[str, ...]
    standings: tuple[Standing, ...]
    untuned: Standing | None
    test_size: int | None
    confidence_level: float
    tie_break: str
    budget_s: float | None

    def standing(self, strategy: str) -> Standing:
        """The standing of ``strategy``; KeyError naming the strategies when it is not one of them."""
        for s in self.standings:
            if s.strategy == strategy:
                return s
        raise KeyError(f"{strategy!r} is not a strategy of this comparison; use one of "
                       f"{[s.strategy for s in self.standings]}.")

    def with_verdict(self, *verdicts: str) -> tuple[str, ...]:
        """The strategies whose verdict is one of ``verdicts``, best first."""
        return tuple(s.strategy for s in self.standings if s.verdict in verdicts)

    def lines(self, width: int = WIDTH) -> list[str]:
        """The result as Markdown: a heading and a few bullets, each line at most ``width`` columns."""
        return conclusion_lines(self, width)


def conclude(outcomes: pd.DataFrame, per_strategy: pd.DataFrame | None = None, *,
             test_size: int | None = None, budget_s: float | None = None,
             untuned: str | None = UNTUNED) -> Conclusion:
    """The :class:`Conclusion` of a comparison from ``stats.seed_outcomes`` (``outcomes``) and
    ``stats.strategy_summary`` of them (``per_strategy``; computed when None). ``test_size``: the number of
    test examples (:func:`test_set_size`), for differences in images with one seed. ``untuned``: the name
    of the untuned RT-HPO strategy (its standing is ``Conclusion.untuned``; None when absent)."""
    if per_strategy is None:
        per_strategy = stats.strategy_summary(outcomes)
    need = ["strategy", "test acc mean", "test acc IQM", "mean rank", "reference", "paired seeds",
            "diff vs reference", "diff CI low", "diff CI high"]
    missing = [c for c in need if c not in per_strategy]
    if missing:
        raise ValueError(f"conclude needs the column(s) {missing} of per_strategy, but got "
                         f"{list(per_strategy.columns)}; pass stats.strategy_summary(outcomes).")
    if test_size is not None and (isinstance(test_size, bool) or int(test_size) != test_size
                                  or test_size < 1):
        raise ValueError(f"test_size={test_size!r} must be the number of test examples (an integer >= 1), or "
                         "None when it is not known.")
    seeds = int(pd.Series(outcomes[stats.SEED]).nunique())
    rows = per_strategy.to_dict("records")
    reference = str(rows[0]["reference"]) if rows else ""
    values = {str(r["strategy"]): float(r["test acc mean"]) for r in rows}

    def key(r: dict[str, Any]) -> tuple[float, ...]:
        mean, iqm, rank_ = (float(r[k]) for k in ("test acc mean", "test acc IQM", "mean rank"))
        if not math.isfinite(mean):
            return (math.inf, math.inf, math.inf)
        if seeds <= 1:
            return (round(-mean, _DIGITS),)
        return (round(rank_, _DIGITS) if math.isfinite(rank_) else math.inf, round(-iqm, _DIGITS),
                round(-mean, _DIGITS))

    keys = {str(r["strategy"]): key(r) for r in rows}
    order = sorted(keys, key=lambda s: (keys[s], s != reference))  # the reference first among its ties
    best_key = keys.get(reference, (math.inf,))
    best_value = values.get(reference, math.nan)
    standings = []
    for r in sorted(rows, key=lambda r: order.index(str(r["strategy"]))):
        name = str(r["strategy"])
        place = 1 + sum(k < keys[name] for k in keys.values())
        tied = sum(k == keys[name] for k in keys.values()) > 1
        value = values[name]
        if seeds <= 1:
            diff, ci = value - best_value, (math.nan, math.nan)
        else:
            diff, ci = float(r["diff vs reference"]), (float(r["diff CI low"]), float(r["diff CI high"]))
        images = (int(round(diff * test_size)) if seeds <= 1 and test_size is not None and math.isfinite(diff)
                  else None)
        if not math.isfinite(value):
            verdict = "no test accuracy"
        elif keys[name] == best_key:
            verdict = "best" if name == reference and not tied else "tied best"
        elif seeds <= 1:
            verdict = "behind"
        elif int(r["paired seeds"]) < 2 or not all(map(math.isfinite, ci)):
            verdict = "no paired CI"
        elif ci[0] > 0:
            verdict = "ahead"
        elif ci[1] < 0:
            verdict = "behind"
        else:
            verdict = "within noise"
        standings.append(Standing(name, place, tied, value, diff, ci, images, verdict, float(r["mean rank"]),
                                  float(r.get("compute s mean", math.nan))))
    best = tuple(s.strategy for s in standings if s.verdict in ("best", "tied best"))
    tie_break = ""
    if seeds > 1 and reference in keys and math.isfinite(best_key[0]):
        same_rank = [s for s in order if s != reference and keys[s][0] == best_key[0] and keys[s] != best_key]
        if same_rank:
            decided = "IQM" if all(keys[s][1] != best_key[1] for s in same_rank) else "IQM, then the mean,"
            tie_break = (f"mean rank {best_key[0]:.2f} tied with {_names(same_rank)}; the higher {decided} "
                         "decides")
    level = float(per_strategy.attrs.get("confidence_level", 0.95))
    mine = next((s for s in standings if s.strategy == untuned), None) if untuned else None
    return Conclusion(seeds, best, tuple(standings), mine, test_size, level, tie_break, budget_s)


def _names(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _acc(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4f}"


def _signed(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.4f}"


def _difference(c: Conclusion, s: Standing) -> str:
    """One seed: "-3" (test images) or "-0.0083"; several: "-0.0046 [-0.0120, +0.0028]"."""
    if c.seeds <= 1:
        return f"{s.images:+d}" if s.images is not None else _signed(s.diff)
    if all(map(math.isfinite, s.ci)):
        return f"{_signed(s.diff)} [{_signed(s.ci[0])}, {_signed(s.ci[1])}]"
    return _signed(s.diff)


def _images(c: Conclusion, value: float) -> str:
    if c.seeds > 1 or c.test_size is None or not math.isfinite(value):
        return ""
    return f" ({int(round(value * c.test_size))} of {c.test_size} test images)"


def conclusion_lines(c: Conclusion, width: int = WIDTH) -> list[str]:
    """:class:`Conclusion` ``c`` as Markdown lines of at most ``width`` columns: a ``## Result`` heading,
    what was measured (seeds, budget, test-set size) and bullets (the best; the others against it, within
    noise or behind; how to read one seed; the untuned RT-HPO run)."""
    per = " per strategy and seed" if c.seeds > 1 else " per strategy"
    budget = f", {c.budget_s:g} compute-s{per}" if c.budget_s else ""
    size = f"; {c.test_size} test images, 1 image = {100 / c.test_size:.2g} points" if c.test_size else ""
    seeds = f"{c.seeds} seed{'s' if c.seeds != 1 else ''}"
    scored = ("Each strategy is scored by the test accuracy of the (trial, epoch) its validation accuracy "
              "chose.")
    lines = ["## Result", "", *paragraph(f"{seeds}{budget}{size}. {scored}", width), ""]
    measured = [s for s in c.standings if s.verdict != "no test accuracy"]
    if not measured:
        return [*lines, *bullet("No strategy reported a test accuracy (train.eval_test is off?): there is "
                                "nothing to conclude; the tables below rank them by validation.",
                                width=width)]
    top = c.standing(c.best[0]) if c.best else measured[0]
    what = "test accuracy" if c.seeds <= 1 else f"mean test accuracy over {c.seeds} seeds"
    rank = f", mean rank {top.mean_rank:.2f}" if c.seeds > 1 and math.isfinite(top.mean_rank) else ""
    if len(c.standings) == 1:  # rthpo run: nothing to compare
        return [*lines, *bullet(f"One strategy, {top.strategy}: {what} {_acc(top.value)}"
                                f"{_images(c, top.value)}; nothing to compare it with.", width=width)]
    if len(c.best) > 1:
        each = "each" if c.seeds <= 1 else "each, the same on every seed"
        lines += bullet(f"Best, tied: {_names(c.best)}, {what} {_acc(top.value)}{_images(c, top.value)} "
                        f"{each}{rank}; the tie is not broken.", width=width)
    else:
        note = f" ({c.tie_break})" if c.tie_break else ""
        lines += bullet(f"Best: {top.strategy}, {what} {_acc(top.value)}{_images(c, top.value)}{rank}{note}.",
                        width=width)
    others = [s for s in measured if s.strategy not in c.best]
    items = lambda group: [f"{s.strategy} {_difference(c, s)}" for s in group]  # noqa: E731
    if c.seeds <= 1:
        unit = f"test images (of {c.test_size})" if c.test_size else "test accuracy"
        if others:
            lines += bullet(f"The others, in {unit} against it:", items(others), width=width)
        lines += bullet("One seed measures no noise between runs: a difference of a few images may be "
                        "chance; --seeds 3 (or more) gives paired confidence intervals.", width=width)
    else:
        level = f"{round(100 * c.confidence_level)}%"
        groups = [("within noise", f"Within noise of it ({level} paired bootstrap CI of the mean difference "
                                   "contains 0):"),
                  ("ahead", "Ahead of it on the mean, though ranked lower (CI above 0):"),
                  ("behind", "Behind it (CI below 0):"),
                  ("no paired CI", "No paired CI (fewer than 2 seeds shared with it):")]
        if not c.with_verdict("within noise") and others:
            lines += bullet(f"Within noise of it: none ({level} paired bootstrap CIs of the mean "
                            "difference).", width=width)
        for verdict, lead in groups:
            group = [s for s in others if s.verdict == verdict]
            if group:
                lines += bullet(lead, items(group), width=width)
    missing = [s.strategy for s in c.standings if s.verdict == "no test accuracy"]
    if missing:
        lines += bullet("Without a test accuracy:", missing, width=width)
    if c.untuned is not None:
        lines += bullet(_untuned_text(c, c.untuned, len(measured)), width=width)
    return lines


def _untuned_text(c: Conclusion, s: Standing, n: int) -> str:
    lead = f"Untuned RT-HPO ({s.strategy}, one run of the defaults, no search):"
    if s.verdict == "no test accuracy":
        return f"{lead} no test accuracy."
    value = f"{'mean ' if c.seeds > 1 else ''}{_acc(s.value)}"
    per = " per seed" if c.seeds > 1 else ""
    spent = (f" (it spent {s.compute_s:.1f} of the {c.budget_s:g} compute-s{per})"
             if c.budget_s and math.isfinite(s.compute_s) and s.compute_s < 0.9 * c.budget_s else "")
    place = f"{'tied ' if s.tied else ''}{_ordinal(s.place)} of {n}"
    if s.verdict in ("best", "tied best"):
        best = "the best" if s.verdict == "best" else "tied for the best"
        return f"{lead} {value}, {place}: {best}{spent}."
    best = c.best[0] if c.best else ""
    if c.seeds <= 1:
        against = (f"{s.images:+d} of {c.test_size} test images" if s.images is not None
                   else f"{_signed(s.diff)} in test accuracy")
        return f"{lead} {value}, {against} against {best}, {place}{spent}."
    verdict = {"within noise": "within noise of it", "behind": "behind it",
               "ahead": "ahead of it on the mean", "no paired CI": "no paired CI"}[s.verdict]
    return f"{lead} {value}, {_difference(c, s)} against {best}: {verdict}; {place}{spent}."


def standings_frame(c: Conclusion) -> pd.DataFrame:
    """The standings as a table (one row per strategy, best first), for tests and scripts."""
    return pd.DataFrame([{**s.__dict__, "ci low": s.ci[0], "ci high": s.ci[1]} for s in c.standings]
                        ).drop(columns="ci") if c.standings else pd.DataFrame()


__all__ = ["TEST_SIZE", "UNTUNED", "test_set_size", "Standing", "Conclusion", "conclude", "conclusion_lines",
           "standings_frame"]
