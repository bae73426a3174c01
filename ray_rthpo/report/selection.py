"""The one rule that decides a result, over the table of per-epoch reports.

The table has one row per reported epoch of every trial, with at least ``strategy``, ``trial_id``,
``epoch``, ``val/acc``, ``val/loss``, ``time/epoch_s`` and ``time/received_at`` (the driver's clock
when the report arrived). Nothing here starts Ray or touches files.

* **De-duplication** (:func:`latest_reports`): a (trial, epoch) reported more than once (a trial
  restarted from its checkpoint redoes epochs) counts once, by its last report.
* **Selection** (:func:`rank`, :func:`best_by_validation`, :func:`best_so_far`): the best (trial, epoch)
  has the highest validation accuracy; ties go to the lower validation loss, then to the one reported
  first, then to the earlier row. The test accuracy never takes part in choosing anything.
* **Compute spent** (:func:`compute_spent`): the sum of ``time/epoch_s`` over the de-duplicated reports,
  so every (trial, epoch) counts once, whichever searcher or scheduler produced it (population-based
  training's clones inherit a donor's cumulative ``time/total_s`` but report their own epoch seconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ray_rthpo import metrics as M

STRATEGY = "strategy"
TRIAL_ID = "trial_id"
#: When the driver received the report (one clock for every node): the order of events.
RECEIVED_AT = "time/received_at"
#: Compute seconds a strategy had spent, over all its trials, when a row was reported.
CUMULATIVE_COMPUTE = "compute/cumulative_s"


def _numbers(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def latest_reports(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` in report order (``time/received_at``, else row order), keeping only the last report of each
    (strategy, trial, epoch)."""
    if df.empty:
        return df.reset_index(drop=True)
    order = df.sort_values(RECEIVED_AT, kind="stable") if RECEIVED_AT in df else df
    keys = [c for c in (STRATEGY, TRIAL_ID, M.EPOCH) if c in order]
    return order.drop_duplicates(keys, keep="last").reset_index(drop=True)


def rank(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` sorted best first by the selection rule: higher ``val/acc``, lower ``val/loss``, reported
    first (``time/received_at``), earlier row. A missing accuracy ranks last, a missing loss after any
    loss."""
    if rows.empty:
        return rows
    key = pd.DataFrame({
        "acc": -_numbers(rows[M.VAL_ACC]).fillna(-math.inf),
        "loss": _numbers(rows[M.VAL_LOSS]).fillna(math.inf) if M.VAL_LOSS in rows else 0.0,
        "received": _numbers(rows[RECEIVED_AT]).fillna(math.inf) if RECEIVED_AT in rows else 0.0,
        "pos": np.arange(len(rows)),
    }, index=rows.index)
    return rows.loc[key.sort_values(["acc", "loss", "received", "pos"], kind="stable").index]


def better(row: Any, best: Any | None) -> bool:
    """True when report ``row`` beats ``best`` (reported earlier) under :func:`rank`'s rule."""
    if best is None:
        return True
    acc, best_acc = _or(row[M.VAL_ACC], -math.inf), _or(best[M.VAL_ACC], -math.inf)
    if acc != best_acc:
        return acc > best_acc
    return _or(row.get(M.VAL_LOSS), math.inf) < _or(best.get(M.VAL_LOSS), math.inf)


def _or(value: Any, missing: float) -> float:
    """``value`` as a float, or ``missing`` when it is absent or NaN (so that it ranks last)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return missing
    return missing if math.isnan(number) else number


def best_by_validation(df: pd.DataFrame) -> pd.Series:
    """The best (trial, epoch) of ``df`` under the selection rule, after de-duplication."""
    if df.empty:
        raise ValueError("best_by_validation needs at least one reported epoch, but the table is empty.")
    return rank(latest_reports(df)).iloc[0]


def in_report_order(df: pd.DataFrame, by: Sequence[str] = (STRATEGY,)) -> pd.DataFrame:
    """The de-duplicated rows grouped by ``by`` (groups in order of first appearance), each group sorted
    by report time, with ``compute/cumulative_s``: the compute seconds (sum of ``time/epoch_s``) the
    group had spent over all its trials when the row was reported."""
    if df.empty:
        return df.assign(**{CUMULATIVE_COMPUTE: pd.Series(dtype=float)})
    by = list(by)
    first = df.drop_duplicates(by)[by].reset_index(drop=True)
    ranks = {tuple(r): i for i, r in enumerate(first.itertuples(index=False, name=None))}
    reports = latest_reports(df)
    group_rank = [ranks[tuple(r)] for r in reports[by].itertuples(index=False, name=None)]
    order = (reports.assign(_rank=group_rank).sort_values(["_rank", RECEIVED_AT] if RECEIVED_AT in reports
                                                          else ["_rank"], kind="stable")
             .drop(columns="_rank").reset_index(drop=True))
    cumulative = order.groupby(by, sort=False)[M.EPOCH_SECONDS].cumsum()
    return order.assign(**{CUMULATIVE_COMPUTE: cumulative})


def best_so_far(df: pd.DataFrame, by: Sequence[str] = (STRATEGY,)) -> pd.DataFrame:
    """One row per report, in report order within each group of ``by``: the group's best (trial, epoch)
    by validation so far. Columns: ``by``, ``compute/cumulative_s``, the chosen row's ``trial_id``,
    ``epoch``, ``val/acc``, ``test/acc``."""
    by = list(by)
    rows: list[dict[str, Any]] = []
    for keys, group in in_report_order(df, by).groupby(by, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        best: dict[str, Any] | None = None
        for record in group.to_dict("records"):
            if best is None or better(record, best):
                best = record
            rows.append({**dict(zip(by, keys, strict=True)), CUMULATIVE_COMPUTE: record[CUMULATIVE_COMPUTE],
                         TRIAL_ID: best[TRIAL_ID], M.EPOCH: best[M.EPOCH],
                         M.VAL_ACC: best[M.VAL_ACC], M.TEST_ACC: best.get(M.TEST_ACC)})
    return pd.DataFrame(rows, columns=[*by, CUMULATIVE_COMPUTE, TRIAL_ID, M.EPOCH, M.VAL_ACC, M.TEST_ACC])


def compute_spent(df: pd.DataFrame) -> float:
    """Compute seconds spent by the trials of ``df``: ``time/epoch_s`` summed over the de-duplicated
    reports (each (trial, epoch) once). 0.0 for an empty table."""
    if df.empty or M.EPOCH_SECONDS not in df:
        return 0.0
    return float(_numbers(latest_reports(df)[M.EPOCH_SECONDS]).sum())


__all__ = ["STRATEGY", "TRIAL_ID", "RECEIVED_AT", "CUMULATIVE_COMPUTE", "latest_reports", "rank", "better",
           "best_by_validation", "in_report_order", "best_so_far", "compute_spent"]
