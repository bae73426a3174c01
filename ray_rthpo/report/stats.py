"""Statistics over repeated runs ("seeds") of every strategy, compared at equal compute.

Input: the per-epoch trials table of ``rthpo compare`` (one row per reported epoch, with ``strategy``,
``seed``, ``trial_id`` unique across seeds, ``epoch``, ``val/acc``, ``val/loss``, ``test/acc``,
``time/epoch_s``, ``time/received_at``, ``diverged``, ``method``, ``searcher``). Selection,
de-duplication and compute spent are those of :mod:`ray_rthpo.report.selection`, applied to each
(strategy, seed) repetition on its own. Nothing here starts Ray or touches files.

Decisions (documented once, here):

* **Outcome of a repetition**: the test accuracy of its (trial, epoch) chosen by validation over all of
  its reports (``selection.best_by_validation``). Test accuracy never chooses anything.
* **Confidence intervals**: percentile bootstrap (``scipy.stats.bootstrap``, ``method="percentile"``,
  9999 resamples, 95%, ``rng=numpy.random.default_rng(random_state)`` for every call, so a result does
  not depend on call order). BCa is not used: its jackknife degenerates for the 2-5 seeds typical here
  (NaN and warnings). A constant sample's CI is that exact point, without resampling. Fewer than two
  finite values have no spread to resample: the CI is NaN (Markdown prints ``n/a``). Non-finite values
  (a repetition without a test accuracy) are left out of every accuracy statistic.
* **IQM**: ``scipy.stats.trim_mean(x, 0.25)`` (with n < 4 nothing is trimmed: the plain mean).
* **Ranks**: within each seed, by the chosen test accuracy, best = 1, ties get the average rank; only
  over the seeds every strategy has a finite outcome for ("ranked seeds"), so a run cut short does not
  rank on seeds others lack. ``n seeds`` counts each strategy's own repetitions.
* **Reference ("best") strategy**: lowest mean rank; ties go to the higher IQM, then the higher mean,
  then the strategy seen first. With no seed shared by all strategies, mean ranks are NaN and the IQM
  decides. Strategies that only the last rule (first seen) separates from it tie with it
  (:func:`tied_with_best`), and the tables and the result say so.
* **Paired comparison**: on the seeds both the strategy and the reference have (pairwise, not only the
  seeds all strategies share). Win fraction: seeds where the strategy's test accuracy is higher, ties
  count 1/2. Difference: mean over paired seeds of (strategy - reference), with its bootstrap CI.
  The reference against itself: wins 0.5, difference 0.
* **Anytime curves**: the best-so-far by validation of each repetition (``selection.best_so_far`` by
  (strategy, seed)) as a right-continuous step function of its cumulative compute, read on a grid of
  ``n_points`` points ending at ``budget_s`` (or the largest compute seen). Before a repetition's first
  report its value is NaN and it is left out of that grid point's median and quartiles (``n seeds``
  says how many contributed). In the rank-over-budget curve, a repetition with no report yet ranks
  below those with one (NaNs tie among themselves), over the seeds every strategy has.
* **Time to target**: the cumulative compute at the first report where a repetition's best-so-far
  validation accuracy reaches the target; the median is over the seeds that reach it only (so read it
  with ``seeds reached`` of ``n seeds``).
* **Seconds**: ``compute s`` per repetition is ``selection.compute_spent``; per strategy both the mean
  per seed and the total over seeds are given. ``wall s mean`` is over the seeds with a wall time,
  ``wall s total`` is NaN unless every seed has one.
"""

from __future__ import annotations

import math
import numbers
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ray_rthpo import metrics as M
from ray_rthpo.report import selection as S

STRATEGY = S.STRATEGY
SEED = "seed"
COMPUTE = "compute s"
WALL = "wall s"
FRACTION = "budget fraction"
_KEYS = [STRATEGY, SEED]

_STATISTICS: dict[str, Callable[..., Any]] = {
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "iqm": lambda x, axis=-1: sps.trim_mean(x, 0.25, axis=axis),
}


def _check_table(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where} needs the column(s) {missing}, but the table has "
                         f"{list(df.columns)}; pass the per-epoch trials table of `rthpo compare` "
                         "(trials.csv), one row per reported epoch.")
    if df.empty:
        raise ValueError(f"{where} needs at least one reported epoch, but the trials table is empty.")
    if df[SEED].isna().any():
        raise ValueError(f"{where}: {int(df[SEED].isna().sum())} row(s) have no `seed`; every row must carry "
                         "the seed of its repetition (fill it or drop those rows).")
    owners = df.groupby(S.TRIAL_ID)[_KEYS].nunique()
    shared = owners[(owners > 1).any(axis=1)]
    if not shared.empty:
        raise ValueError(f"{where}: trial_id {shared.index[0]!r} appears under more than one "
                         "(strategy, seed); trial ids must be unique across strategies and seeds "
                         "(prefix them with both).")
    if M.EPOCH_SECONDS in columns:
        seconds = pd.to_numeric(df[M.EPOCH_SECONDS], errors="coerce")
        bad = df.loc[~(seconds >= 0), S.TRIAL_ID]
        if not bad.empty:
            raise ValueError(f"{where}: `{M.EPOCH_SECONDS}` must be a number >= 0 on every row, but trial "
                             f"{bad.iloc[0]!r} has {df.loc[bad.index[0], M.EPOCH_SECONDS]!r}; fix or "
                             "drop that row.")


def _check_frame(frame: pd.DataFrame, columns: Sequence[str], where: str, made_by: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where} needs the column(s) {missing}, but got {list(frame.columns)}; pass "
                         f"the output of {made_by}.")


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "1.0", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def _label(group: pd.DataFrame, column: str) -> str:
    if column not in group or group[column].isna().all():
        return ""
    label = str(group[column].dropna().iloc[0])
    if column == "searcher" and "scheduler" in group:
        scheduler = str(group["scheduler"].iloc[0])
        if scheduler not in ("fifo", "nan", "None", ""):
            label += f" + {scheduler}"
    return label


def _finite(values: Iterable[Any]) -> np.ndarray:
    x = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=float)
    return x[np.isfinite(x)]


def iqm(values: Iterable[float]) -> float:
    """Interquartile mean of the finite ``values``: ``scipy.stats.trim_mean(x, 0.25)``; NaN if none."""
    x = _finite(values)
    return float(sps.trim_mean(x, 0.25)) if x.size else math.nan


def bootstrap_ci(values: Iterable[float], statistic: str = "mean", *, confidence_level: float = 0.95,
                 n_resamples: int = 9999, random_state: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI (low, high) of ``statistic`` ("mean" or "iqm") of the finite ``values``.

    A constant sample gives exactly (value, value); fewer than two finite values give (NaN, NaN)."""
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not known; use one of {sorted(_STATISTICS)}.")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level={confidence_level!r} must be a fraction in (0, 1), e.g. 0.95.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} must be a positive integer, e.g. 9999.")
    x = _finite(values)
    if x.size < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    result = sps.bootstrap((x,), _STATISTICS[statistic], vectorized=True, method="percentile",
                           n_resamples=n_resamples, confidence_level=confidence_level,
                           rng=np.random.default_rng(random_state))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def seed_outcomes(df: pd.DataFrame,
                  wall_seconds: Mapping[tuple[Any, Any], float] | None = None) -> pd.DataFrame:
    """One row per (strategy, seed) at the full budget: the (trial, epoch) chosen by validation, its val and
    test accuracy, trials run, diverged trials, compute seconds (``selection.compute_spent``) and wall seconds
    (``wall_seconds[(strategy, seed)]``, NaN if absent). Strategies in order of first appearance, seeds
    sorted.

    Columns: strategy, seed, method, searcher, trial_id, epoch, val/acc, test/acc, trials, diverged trials,
    compute s, wall s."""
    _check_table(df, [STRATEGY, SEED, S.TRIAL_ID, M.EPOCH, M.VAL_ACC, M.VAL_LOSS, M.TEST_ACC,
                      M.EPOCH_SECONDS, M.DIVERGED], "seed_outcomes")
    walls = dict(wall_seconds or {})
    rows = []
    for (strategy, seed), group in df.groupby(_KEYS, sort=False):
        best = S.best_by_validation(group)
        reports = S.latest_reports(group)
        diverged = reports[M.DIVERGED].map(_flag).groupby(reports[S.TRIAL_ID]).any()
        rows.append({
            STRATEGY: strategy, SEED: seed, "method": _label(group, "method"),
            "searcher": _label(group, "searcher"), S.TRIAL_ID: best[S.TRIAL_ID], M.EPOCH: best[M.EPOCH],
            M.VAL_ACC: float(best[M.VAL_ACC]),
            M.TEST_ACC: float(pd.to_numeric(best[M.TEST_ACC], errors="coerce")), "trials": int(len(diverged)),
            "diverged trials": int(diverged.sum()), COMPUTE: S.compute_spent(group),
            WALL: float(walls.get((strategy, seed), math.nan)), })
    return _ordered(pd.DataFrame(rows), list(pd.unique(df[STRATEGY])))


def _ordered(frame: pd.DataFrame, strategies: list[Any]) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(strategies)}
    keyed = frame.assign(_order=frame[STRATEGY].map(order))
    return keyed.sort_values(["_order", SEED], kind="stable").drop(columns="_order").reset_index(drop=True)


def _accuracy_table(outcomes: pd.DataFrame, where: str) -> pd.DataFrame:
    """Seeds x strategies of the finite chosen test accuracies (NaN where a strategy lacks that seed)."""
    _check_frame(outcomes, [STRATEGY, SEED, M.TEST_ACC], where, "seed_outcomes()")
    doubled = outcomes[outcomes.duplicated(_KEYS)]
    if not doubled.empty:
        raise ValueError(f"{where}: (strategy, seed) {tuple(doubled[_KEYS].iloc[0])!r} has more than "
                         "one outcome row; pass seed_outcomes() output, which has one row per repetition.")
    acc = outcomes.assign(**{M.TEST_ACC: pd.to_numeric(outcomes[M.TEST_ACC], errors="coerce")})
    table = acc.pivot(index=SEED, columns=STRATEGY, values=M.TEST_ACC)
    return table[list(pd.unique(outcomes[STRATEGY]))]


def seed_ranks(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Rank of each strategy within each seed by chosen test accuracy (best = 1, ties averaged), over the
    seeds every strategy has a finite outcome for. Columns: strategy, seed, test/acc, rank."""
    table = _accuracy_table(outcomes, "seed_ranks").dropna(axis=0, how="any")
    ranks = table.rank(axis=1, ascending=False, method="average")
    long = table.stack().rename(M.TEST_ACC).to_frame().join(ranks.stack().rename("rank")).reset_index()
    return _ordered(long[[STRATEGY, SEED, M.TEST_ACC, "rank"]], list(table.columns))


def best_strategy(outcomes: pd.DataFrame) -> Any:
    """The reference strategy: lowest mean rank (:func:`seed_ranks`); ties by higher IQM, then higher mean
    of the chosen test accuracy, then first seen."""
    table = _accuracy_table(outcomes, "best_strategy")
    mean_rank = seed_ranks(outcomes).groupby(STRATEGY)["rank"].mean()

    def key(item: tuple[int, Any]) -> tuple[float, float, float, int]:
        position, strategy = item
        x = _finite(table[strategy])
        rank_ = float(mean_rank.get(strategy, math.nan))
        return (rank_ if math.isfinite(rank_) else math.inf, -iqm(x) if x.size else math.inf,
                -float(x.mean()) if x.size else math.inf, position)

    return min(enumerate(table.columns), key=key)[1]


def paired_comparison(outcomes: pd.DataFrame, reference: Any | None = None, *, confidence_level: float = 0.95,
                      n_resamples: int = 9999, random_state: int = 0) -> pd.DataFrame:
    """Every strategy against ``reference`` (default :func:`best_strategy`) on the seeds both have: the
    fraction of them it wins (ties 1/2) and the mean paired difference (strategy - reference) of chosen test
    accuracy with its bootstrap CI. Columns: strategy, reference, paired seeds, wins vs reference,
    diff vs reference, diff CI low, diff CI high."""
    table = _accuracy_table(outcomes, "paired_comparison")
    reference = best_strategy(outcomes) if reference is None else reference
    if reference not in table.columns:
        raise ValueError(f"reference={reference!r} is not a strategy of the outcomes; use one of "
                         f"{list(table.columns)} or None for the best by mean rank.")
    rows = []
    for strategy in table.columns:
        both = table[strategy].notna() & table[reference].notna()
        diff = (table.loc[both, strategy] - table.loc[both, reference]).to_numpy(dtype=float)
        low, high = bootstrap_ci(diff, "mean", confidence_level=confidence_level, n_resamples=n_resamples,
                                 random_state=random_state)
        rows.append({STRATEGY: strategy, "reference": reference, "paired seeds": int(both.sum()),
                     "wins vs reference": float(np.mean((diff > 0) + 0.5 * (diff == 0))) if diff.size
                     else math.nan, "diff vs reference": float(diff.mean()) if diff.size else math.nan,
                     "diff CI low": low, "diff CI high": high})
    return pd.DataFrame(rows)


def strategy_summary(outcomes: pd.DataFrame, *, confidence_level: float = 0.95, n_resamples: int = 9999,
                     random_state: int = 0) -> pd.DataFrame:
    """One row per strategy over its seeds (from :func:`seed_outcomes`): mean and IQM of the chosen test
    accuracy with bootstrap CIs, mean rank, the paired comparison against the best strategy, trials and
    diverged trials (totals over seeds), compute and wall seconds (mean per seed and total over seeds).

    Columns: strategy, method, searcher, n seeds, test acc mean, mean CI low, mean CI high, test acc IQM,
    IQM CI low, IQM CI high, mean rank, ranked seeds, then :func:`paired_comparison`'s columns, trials,
    diverged trials, compute s mean, compute s total, wall s mean, wall s total.
    ``attrs["confidence_level"]`` holds the CI level."""
    _check_frame(outcomes, [STRATEGY, SEED, M.TEST_ACC, "trials", "diverged trials", COMPUTE, WALL],
                 "strategy_summary", "seed_outcomes()")
    ci = {"confidence_level": confidence_level, "n_resamples": n_resamples, "random_state": random_state}
    ranks = seed_ranks(outcomes)
    paired = paired_comparison(outcomes, **ci).set_index(STRATEGY)
    rows = []
    for strategy, group in outcomes.groupby(STRATEGY, sort=False):
        acc = _finite(group[M.TEST_ACC])
        mine = ranks[ranks[STRATEGY] == strategy]
        walls = pd.to_numeric(group[WALL], errors="coerce")
        mean_ci, iqm_ci = bootstrap_ci(acc, "mean", **ci), bootstrap_ci(acc, "iqm", **ci)
        rows.append({
            STRATEGY: strategy, "method": _label(group, "method"), "searcher": _label(group, "searcher"),
            "n seeds": int(len(group)), "test acc mean": float(acc.mean()) if acc.size else math.nan,
            "mean CI low": mean_ci[0], "mean CI high": mean_ci[1],
            "test acc IQM": iqm(acc), "IQM CI low": iqm_ci[0], "IQM CI high": iqm_ci[1],
            "mean rank": float(mine["rank"].mean()) if len(mine) else math.nan,
            "ranked seeds": int(len(mine)), **paired.loc[strategy].to_dict(),
            "trials": int(group["trials"].sum()), "diverged trials": int(group["diverged trials"].sum()),
            "compute s mean": float(group[COMPUTE].mean()), "compute s total": float(group[COMPUTE].sum()),
            "wall s mean": float(walls.mean()) if walls.notna().any() else math.nan,
            "wall s total": float(walls.sum()) if walls.notna().all() else math.nan,
        })
    summary = pd.DataFrame(rows)
    summary.attrs["confidence_level"] = confidence_level
    return summary


def seed_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Best-so-far by validation of every (strategy, seed), one row per report in report order
    (``selection.best_so_far`` with ``by=("strategy", "seed")``). Columns: strategy, seed,
    compute/cumulative_s, trial_id, epoch, val/acc, test/acc."""
    _check_table(df, [STRATEGY, SEED, S.TRIAL_ID, M.EPOCH, M.VAL_ACC, M.VAL_LOSS, M.EPOCH_SECONDS],
                 "seed_curves")
    return S.best_so_far(df, by=(STRATEGY, SEED))


def compute_grid(curves: pd.DataFrame, n_points: int = 100, budget_s: float | None = None) -> np.ndarray:
    """``n_points`` evenly spaced compute seconds ending at ``budget_s`` (default: the largest cumulative
    compute in ``curves``), starting at one step (``horizon / n_points``), not at 0."""
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"n_points={n_points!r} must be a positive integer, e.g. 100.")
    if budget_s is not None:
        if not (math.isfinite(budget_s) and budget_s > 0):
            raise ValueError(f"budget_s={budget_s!r} must be a positive number of compute seconds, "
                             "or None to end the grid at the largest compute seen.")
        horizon = float(budget_s)
    else:
        _check_frame(curves, [S.CUMULATIVE_COMPUTE], "compute_grid", "seed_curves()")
        horizon = float(pd.to_numeric(curves[S.CUMULATIVE_COMPUTE], errors="coerce").max())
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"compute_grid: the largest cumulative compute is {horizon!r}, so there is "
                             "no grid to build; pass budget_s, or curves with positive time/epoch_s.")
    return np.linspace(horizon / n_points, horizon, int(n_points))


def curves_on_grid(curves: pd.DataFrame, grid: Sequence[float] | np.ndarray) -> pd.DataFrame:
    """Each (strategy, seed) best-so-far curve read as a right-continuous step function at the compute
    seconds ``grid`` (the last report at or before each point; NaN before the first report).
    Columns: strategy, seed, compute s, budget fraction (of the last grid point), val/acc, test/acc."""
    _check_frame(curves, [STRATEGY, SEED, S.CUMULATIVE_COMPUTE, M.VAL_ACC], "curves_on_grid", "seed_curves()")
    x_grid = np.asarray(grid, dtype=float)
    if x_grid.ndim != 1 or x_grid.size == 0 or not np.all(np.isfinite(x_grid)) or np.any(np.diff(x_grid) < 0):
        raise ValueError(f"grid must be a non-empty increasing sequence of compute seconds, got {grid!r}; "
                         "build it with compute_grid().")
    parts = []
    for (strategy, seed), group in curves.groupby(_KEYS, sort=False):
        x = pd.to_numeric(group[S.CUMULATIVE_COMPUTE], errors="coerce").to_numpy(dtype=float)
        index = np.searchsorted(x, x_grid, side="right") - 1
        part = {STRATEGY: strategy, SEED: seed, COMPUTE: x_grid, FRACTION: x_grid / x_grid[-1]}
        for column in (M.VAL_ACC, M.TEST_ACC):
            values = (pd.to_numeric(group[column], errors="coerce").to_numpy(dtype=float) if column in group
                      else np.full(len(group), math.nan))
            part[column] = np.where(index >= 0, values[np.maximum(index, 0)], math.nan)
        parts.append(pd.DataFrame(part))
    columns = [STRATEGY, SEED, COMPUTE, FRACTION, M.VAL_ACC, M.TEST_ACC]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def aggregate_curves(on_grid: pd.DataFrame, value: str = M.TEST_ACC) -> pd.DataFrame:
    """Per strategy and grid point, over the seeds that have a value there: median and 25%/75% quantiles
    (linear interpolation) of ``value``. Columns: strategy, compute s, budget fraction, n seeds, median,
    q25, q75."""
    _check_frame(on_grid, [STRATEGY, SEED, COMPUTE, FRACTION, value], "aggregate_curves", "curves_on_grid()")
    values = on_grid.assign(**{value: pd.to_numeric(on_grid[value], errors="coerce")})
    grouped = values.groupby([STRATEGY, COMPUTE, FRACTION], sort=False)[value]
    out = pd.DataFrame({"n seeds": grouped.count(), "median": grouped.median(),
                        "q25": grouped.quantile(0.25), "q75": grouped.quantile(0.75)})
    return out.reset_index()


def rank_curves(on_grid: pd.DataFrame, value: str = M.TEST_ACC) -> pd.DataFrame:
    """Mean rank of each strategy at each grid point: rank by ``value`` within each seed (best = 1, ties
    averaged, no value yet = below all values), mean over the seeds every strategy has.
    Columns: strategy, compute s, budget fraction, mean rank, ranked seeds."""
    _check_frame(on_grid, [STRATEGY, SEED, COMPUTE, FRACTION, value], "rank_curves", "curves_on_grid()")
    strategies = list(pd.unique(on_grid[STRATEGY]))
    seeds = on_grid.groupby(STRATEGY, sort=False)[SEED].agg(set)
    shared = set.intersection(*seeds) if len(seeds) else set()
    rows = on_grid[on_grid[SEED].isin(shared)]
    rows = rows.assign(**{value: pd.to_numeric(rows[value], errors="coerce")})
    rows = rows.assign(rank=rows.groupby([SEED, COMPUTE])[value].rank(ascending=False, method="average",
                                                                       na_option="bottom"))
    grouped = rows.groupby([STRATEGY, COMPUTE, FRACTION], sort=False)
    out = pd.DataFrame({"mean rank": grouped["rank"].mean(), "ranked seeds": grouped[SEED].nunique()})
    out = out.reset_index()
    return _ordered_curve(out, strategies)


def _ordered_curve(frame: pd.DataFrame, strategies: list[Any]) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(strategies)}
    keyed = frame.assign(_order=frame[STRATEGY].map(order))
    return keyed.sort_values(["_order", COMPUTE], kind="stable").drop(columns="_order").reset_index(drop=True)


def seed_time_to_target(df: pd.DataFrame, target_val_acc: float) -> pd.DataFrame:
    """Per (strategy, seed): whether its best-so-far validation accuracy (in report order) reached
    ``target_val_acc``, and the cumulative compute seconds at the first report where it did (NaN if never).
    Columns: strategy, seed, target val acc, reached, compute s, trial_id, epoch."""
    if isinstance(target_val_acc, bool) or not (isinstance(target_val_acc, numbers.Real)
                                                and 0.0 < float(target_val_acc) <= 1.0):
        raise ValueError(f"target_val_acc={target_val_acc!r} must be a validation accuracy fraction "
                         "in (0, 1], e.g. 0.85 (not 85).")
    rows = []
    for (strategy, seed), group in seed_curves(df).groupby(_KEYS, sort=False):
        hit = group[pd.to_numeric(group[M.VAL_ACC], errors="coerce") >= target_val_acc]
        first = hit.iloc[0] if len(hit) else None
        rows.append({STRATEGY: strategy, SEED: seed, "target val acc": float(target_val_acc),
                     "reached": first is not None,
                     COMPUTE: float(first[S.CUMULATIVE_COMPUTE]) if first is not None else math.nan,
                     S.TRIAL_ID: first[S.TRIAL_ID] if first is not None else None,
                     M.EPOCH: first[M.EPOCH] if first is not None else None})
    return _ordered(pd.DataFrame(rows), list(pd.unique(df[STRATEGY])))


def time_to_target(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per strategy, from :func:`seed_time_to_target`: how many seeds reached the target (of how many) and
    the median compute seconds over those that did (NaN if none). Columns: strategy, target val acc,
    seeds reached, n seeds, median compute s."""
    _check_frame(per_seed, [STRATEGY, SEED, "target val acc", "reached", COMPUTE], "time_to_target",
                 "seed_time_to_target()")
    rows = []
    for strategy, group in per_seed.groupby(STRATEGY, sort=False):
        reached = group[group["reached"].astype(bool)]
        rows.append({STRATEGY: strategy, "target val acc": float(group["target val acc"].iloc[0]),
                     "seeds reached": int(len(reached)), "n seeds": int(len(group)),
                     "median compute s": float(reached[COMPUTE].median()) if len(reached) else math.nan})
    return pd.DataFrame(rows, columns=[STRATEGY, "target val acc", "seeds reached", "n seeds",
                                       "median compute s"])


def _acc(x: Any, sign: bool = False) -> str:
    x = float(x)
    return "n/a" if not math.isfinite(x) else (f"{x:+.4f}" if sign else f"{x:.4f}")


def _ci(low: Any, high: Any, sign: bool = False) -> str:
    return "[n/a]" if not (math.isfinite(float(low)) and math.isfinite(float(high))) else \
        f"[{_acc(low, sign)}, {_acc(high, sign)}]"


def _seconds(x: Any) -> str:
    return "n/a" if not math.isfinite(float(x)) else f"{float(x):.1f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def tied_with_best(summary: pd.DataFrame) -> list[Any]:
    """The strategies of a :func:`strategy_summary` that tie with its reference (the best), reference first:
    the same mean rank, IQM and mean of the chosen test accuracy (to 12 decimals); with one seed, the same
    test accuracy. A tie that the rule of :func:`best_strategy` broke by its last resort (first seen)."""
    _check_frame(summary, [STRATEGY, "reference", "test acc mean", "test acc IQM", "mean rank"],
                 "tied_with_best", "strategy_summary()")
    if summary.empty:
        return []
    columns = ["test acc mean"] if _one_seed(summary) else ["mean rank", "test acc IQM", "test acc mean"]
    keyed = summary.set_index(STRATEGY)[columns].apply(pd.to_numeric, errors="coerce").round(12)
    reference = summary["reference"].iloc[0]
    if reference not in keyed.index or keyed.loc[reference].isna().any():
        return [reference] if reference in keyed.index else []
    same = (keyed == keyed.loc[reference]).all(axis=1)
    return [reference, *[s for s in keyed.index[same] if s != reference]]


def _one_seed(summary: pd.DataFrame) -> bool:
    return "n seeds" in summary and not summary.empty and int(summary["n seeds"].max()) <= 1


def markdown_summary(summary: pd.DataFrame, *, test_size: int | None = None) -> str:
    """The :func:`strategy_summary` as a Markdown table (accuracies to 4 decimals, seconds to 1), followed by
    a legend of its columns. With one seed the columns that need several (intervals, IQM, wins) are left out
    and the difference to the best is in test images when ``test_size`` (the number of test examples) is
    given. Strategies tied with the best are marked "tied best" (:func:`tied_with_best`)."""
    level = round(100 * float(summary.attrs.get("confidence_level", 0.95)))
    tied = set(tied_with_best(summary)) if len(summary) else set()
    tied = tied if len(tied) > 1 else set()
    if _one_seed(summary):
        return _markdown_one_seed(summary, tied, test_size)
    headers = ["strategy", "method", "searcher", "n seeds", f"test acc mean [{level}% CI]",
               f"test acc IQM [{level}% CI]", "mean rank", "wins vs best", f"diff vs best [{level}% CI]",
               "diverged trials", "compute s / seed", "wall s / seed"]
    rows = []
    for r in summary.to_dict("records"):
        is_reference = r[STRATEGY] == r["reference"]
        rows.append([
            str(r[STRATEGY]), str(r["method"]), str(r["searcher"]), str(r["n seeds"]),
            f"{_acc(r['test acc mean'])} {_ci(r['mean CI low'], r['mean CI high'])}",
            f"{_acc(r['test acc IQM'])} {_ci(r['IQM CI low'], r['IQM CI high'])}",
            "n/a" if not math.isfinite(r["mean rank"]) else f"{r['mean rank']:.2f} "
                                                            f"({r['ranked seeds']} seeds)",
            ("tied best (reference)" if tied else "best (reference)") if is_reference
            else "tied best" if r[STRATEGY] in tied else "n/a (no shared seed)" if not r["paired seeds"] else
            f"{r['wins vs reference']:.2f} of {r['paired seeds']}",
            "—" if is_reference else "n/a" if not r["paired seeds"] else
            f"{_acc(r['diff vs reference'], True)} {_ci(r['diff CI low'], r['diff CI high'], True)}",
            f"{r['diverged trials']} of {r['trials']}", _seconds(r["compute s mean"]),
            _seconds(r["wall s mean"]), ])
    legend = (
        "*Legend.* Each seed is one repetition of a strategy under the same compute budget; its outcome is "
        "the test accuracy of the (trial, epoch) chosen by validation accuracy. **n seeds**: repetitions "
        "run. "
        f"**test acc mean / IQM**: mean and interquartile mean (25% trimmed) over seeds, with a {level}% "
        "percentile-bootstrap CI (n/a with one seed). **mean rank**: rank within each seed (1 = best, ties "
        "averaged) averaged over the seeds all strategies share. **wins vs best**: fraction of the seeds "
        "shared with the best strategy (lowest mean rank, ties by IQM, then mean) on which this one is more "
        "accurate, ties count 1/2; *tied best*: the same mean rank, IQM and mean as the best. **diff vs "
        "best**: mean paired difference (this − best) of test accuracy with its bootstrap CI. **diverged "
        "trials**: trials flagged diverged, of trials run, summed over seeds. **compute s / seed**: summed "
        "epoch seconds of all trials, mean per seed. **wall s / seed**: elapsed seconds, mean per seed.")
    return _table(headers, rows) + "\n" + _wrapped(legend)


def _markdown_one_seed(summary: pd.DataFrame, tied: set[Any], test_size: int | None) -> str:
    """One seed: strategy, method, searcher, test acc, vs best (test images), rank, diverged, compute,
    wall."""
    headers = ["strategy", "method", "searcher", "test acc", "vs best", "rank", "diverged trials",
               "compute s", "wall s"]
    best = float(summary.loc[summary[STRATEGY] == summary["reference"].iloc[0], "test acc mean"].iloc[0])
    rows = []
    for r in summary.to_dict("records"):
        value = float(r["test acc mean"])
        if r[STRATEGY] in tied or (r[STRATEGY] == r["reference"]):
            versus = "tied best" if tied else "best"
        elif not (math.isfinite(value) and math.isfinite(best)):
            versus = "n/a"
        elif test_size:
            versus = f"{int(round((value - best) * test_size)):+d} of {test_size} images"
        else:
            versus = _acc(value - best, True)
        rows.append([str(r[STRATEGY]), str(r["method"]), str(r["searcher"]), _acc(value), versus,
                     "n/a" if not math.isfinite(r["mean rank"]) else f"{r['mean rank']:g}",
                     f"{r['diverged trials']} of {r['trials']}", _seconds(r["compute s mean"]),
                     _seconds(r["wall s mean"])])
    legend = (
        "*Legend.* One seed: each strategy ran once under the same compute budget; its outcome is the test "
        "accuracy of the (trial, epoch) chosen by validation accuracy. **vs best**: "
        + (f"test images it classified correctly more (+) or fewer (−) than the best strategy, of the test "
           f"set's {test_size}" if test_size else "its test accuracy minus the best strategy's") + "; *tied "
        "best*: the same test accuracy as the best. **rank**: 1 = best, ties averaged. **diverged trials**: "
        "trials flagged diverged, of trials run. **compute s**: summed epoch seconds of all trials. **wall "
        "s**: elapsed seconds. Intervals, IQMs and paired comparisons need several seeds (--seeds N).")
    return _table(headers, rows) + "\n" + _wrapped(legend)


def _wrapped(text: str, width: int = 110) -> str:
    return "\n".join(textwrap.wrap(text, width=width, break_on_hyphens=False)) + "\n"


def markdown_time_to_target(table: pd.DataFrame) -> str:
    """The :func:`time_to_target` table as Markdown, followed by a legend."""
    _check_frame(table, [STRATEGY, "target val acc", "seeds reached", "n seeds", "median compute s"],
                 "markdown_time_to_target", "time_to_target()")
    rows = [[str(r[STRATEGY]), _acc(r["target val acc"]), f"{r['seeds reached']} of {r['n seeds']}",
             _seconds(r["median compute s"])] for r in table.to_dict("records")]
    legend = ("*Legend.* **seeds reached**: repetitions whose best validation accuracy so far reached the "
              "target. **median compute s**: median, over those seeds only, of the summed epoch seconds at "
              "which it was first reached (n/a if none did).")
    headers = ["strategy", "target val acc", "seeds reached", "median compute s"]
    return _table(headers, rows) + "\n" + _wrapped(legend)


__all__ = ["SEED", "COMPUTE", "WALL", "FRACTION", "iqm", "bootstrap_ci", "seed_outcomes", "seed_ranks",
           "best_strategy", "paired_comparison", "strategy_summary", "seed_curves", "compute_grid",
           "curves_on_grid", "aggregate_curves", "rank_curves", "seed_time_to_target", "time_to_target",
           "tied_with_best", "markdown_summary", "markdown_time_to_target"]
