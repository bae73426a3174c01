"""The paper's Table 1 (Fixed η̄ / Fixed β / Top / Time) and its companion figures, from per-epoch results.

Pure functions: nothing here starts Ray, reads or writes files. The input is the table of per-epoch
results of :mod:`ray_rthpo.tune.runner` (one row per reported epoch of every trial) with the columns
``strategy``, ``trial_id``, ``epoch``, ``val/acc``, ``val/loss``, ``test/acc``, ``time/total_s``,
``time/epoch_s``, ``lr``, ``diverged``, ``config/lr.eta0``, ``config/lr.beta`` and ``time/received_at``.
``diverged``, ``config/lr.beta``, ``time/total_s`` and ``time/received_at`` may be absent.

Definitions (what every number below is):

* Reports and selection are :mod:`ray_rthpo.report.selection`'s, the project's only definitions: when
  a (trial, epoch) was reported more than once (a restarted trial), only its last report counts; the
  best report has the highest validation accuracy, ties going to the lower validation loss, then to
  the one reported first. The test accuracy never takes part in choosing anything.
* A run is one trial (one ``trial_id`` of one strategy). A run's *result* is its best report; the run's
  test accuracy is the test accuracy there. The best run of a row is the run with the best result
  (the same rule over the runs' results). The best η̄ and best β are ``config/lr.eta0`` and
  ``config/lr.beta`` at the best run's result epoch.
* A run diverged when any of its (kept) reports has ``diverged`` True. Diverged runs count in every
  mean with the accuracy their result reached; a cell that includes any diverged run is marked
  ``†k`` (k diverged runs), and Top is marked ``†`` when the best run diverged.
* Row kinds (:class:`RowSpec`):

  - ``grid2d`` (an η̄ × β grid: First-order (Train), First-order (Val), RT-HPO).
    Fixed η̄ = mean ± std of the run test accuracies over the runs whose η̄ equals the best η̄
    (i.e. over the β grid); Fixed β = the same over the runs whose β equals the best β (over the η̄
    grid); Top = test accuracy of the best run; Time = mean over runs of the run's compute minutes.
  - ``grid1d`` (a grid over η̄ only: Grid Search). Fixed η̄ = not applicable; Fixed β = mean ± std over
    all runs (the η̄ grid); Top; Time = total compute minutes of all runs.
  - ``search`` (BO: skopt, optuna). Top; Time = total compute minutes of all runs.
  - ``single`` (one run: AdaDelta, Prodigy, Schedule-Free). Top; Time = that run's compute minutes
    (if several runs are present, the best run is shown and the row's note says so).
  - ``population`` (PBT). Top = test accuracy at the best (trial, epoch) by validation over the whole
    population; Time = total compute minutes of all trials.

* A run's compute seconds = the sum of its kept ``time/epoch_s`` (each epoch once:
  :func:`ray_rthpo.report.selection.compute_spent`); for a PBT member that cloned another one's
  checkpoint this counts its own epochs only, never the donor's.
* std is the sample standard deviation (ddof=1) over the runs of the cell, 0 for a single run.
  Accuracies are reported in percent. Means and std skip runs without a test accuracy; ``n`` is the
  number of runs a cell averages (the runs present: a grid with an errored run averages fewer).
* A spec whose strategy is not in the results gives a row of NaN / "n/a" with a note, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ray_rthpo import metrics as M
from ray_rthpo.report.selection import (
    CUMULATIVE_COMPUTE,
    RECEIVED_AT,
    STRATEGY,
    TRIAL_ID,
    best_so_far,
    compute_spent,
    latest_reports,
    rank,
)

ETA0 = "config/lr.eta0"
BETA = "config/lr.beta"
KINDS = ("grid2d", "grid1d", "search", "single", "population")

#: Columns of :func:`table1`'s output, in order.
TABLE1_COLUMNS = (
    "label", "strategy", "kind",
    "fixed_eta_mean", "fixed_eta_std", "fixed_eta_n", "fixed_eta_diverged",
    "fixed_beta_mean", "fixed_beta_std", "fixed_beta_n", "fixed_beta_diverged",
    "top", "top_diverged", "best_trial", "best_epoch", "best_eta0", "best_beta",
    "time_min", "runs", "diverged_runs", "note",
)

#: Columns of :func:`run_results`'s output, in order (best run first).
RUN_COLUMNS = ("trial_id", "epoch", "val/acc", "val/loss", "test/acc", "eta0", "beta", "diverged",
               "compute_s", "received_at")


@dataclass(frozen=True)
class RowSpec:
    """One row of Table 1: its ``label`` as printed, the ``strategy`` name in the results, and its
    ``kind``: one of ``grid2d``, ``grid1d``, ``search``, ``single``, ``population`` (see the module doc)."""

    label: str
    strategy: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RowSpec {self.label!r}: kind must be one of {', '.join(KINDS)}, "
                             f"but got {self.kind!r}.")


# --------------------------------------------------------------------------------------- selection


def _column(df: pd.DataFrame, name: str, default: Any = math.nan) -> pd.Series:
    if name in df:
        return df[name]
    return pd.Series([default] * len(df), index=df.index, dtype=object if default is None else None)


def _as_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def _as_bool(series: pd.Series) -> pd.Series:
    return series.map(lambda v: False if v is None or pd.isna(v) else bool(v)).astype(bool)


def _ranked(rows: pd.DataFrame, received: str) -> pd.DataFrame:
    """``rows`` best first by the selection rule, ``received`` naming the column of report times."""
    renamed = rows.drop(columns=[RECEIVED_AT], errors="ignore").rename(columns={received: RECEIVED_AT})
    return rows.loc[rank(renamed).index]


def run_results(df: pd.DataFrame, strategy: str | None = None) -> pd.DataFrame:
    """One row per run (trial) of ``strategy`` (or of all of ``df`` when None), best run first.

    Columns (:data:`RUN_COLUMNS`): the run's result epoch (its best report by the selection rule) with
    its ``val/acc``, ``val/loss`` and ``test/acc`` (fractions), ``eta0`` and ``beta`` at that epoch,
    ``diverged`` (any kept report diverged), ``compute_s`` (the run's compute: its kept ``time/epoch_s``
    summed) and ``received_at`` of the result report. Runs are ordered by the same rule.
    """
    if strategy is not None:
        df = df[df[STRATEGY] == strategy] if STRATEGY in df else df.iloc[0:0]
    reports = latest_reports(df)
    if reports.empty:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    reports = reports.assign(
        _eta0=_as_float(_column(reports, ETA0)), _beta=_as_float(_column(reports, BETA)),
        _diverged=_as_bool(_column(reports, M.DIVERGED, False)),
        _received=_as_float(_column(reports, RECEIVED_AT)).fillna(0.0),
    )
    rows = []
    for trial, group in reports.groupby(TRIAL_ID, sort=False):
        best = _ranked(group, "_received").iloc[0]
        rows.append({
            "trial_id": trial, "epoch": int(best[M.EPOCH]), "val/acc": float(best[M.VAL_ACC]),
            "val/loss": float(best[M.VAL_LOSS]), "test/acc": _float(best.get(M.TEST_ACC)),
            "eta0": float(best["_eta0"]), "beta": float(best["_beta"]),
            "diverged": bool(group["_diverged"].any()),
            "compute_s": compute_spent(group), "received_at": float(best["_received"]),
        })
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    return _ranked(runs, "received_at").reset_index(drop=True)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _same(values: pd.Series, target: float) -> pd.Series:
    """values == target for floats, with NaN equal to NaN and a relative tolerance of 1e-9."""
    if math.isnan(target):
        return values.isna()
    close = np.isclose(values.to_numpy(dtype=float), target, rtol=1e-9, atol=0.0)
    return pd.Series(close, index=values.index)


def _cell(runs: pd.DataFrame) -> tuple[float, float, int, int]:
    """mean and std (percent; ddof=1, 0 for one run) of the runs' test accuracies, n, diverged count."""
    present = runs[_as_float(runs["test/acc"]).notna()]
    values = 100.0 * present["test/acc"].to_numpy(dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0, 0
    std = float(np.std(values, ddof=1)) if n >= 2 else 0.0
    return float(np.mean(values)), std, n, int(present["diverged"].sum())


# ------------------------------------------------------------------------------------------ Table 1


def _row(df: pd.DataFrame, spec: RowSpec) -> dict[str, Any]:
    row: dict[str, Any] = {
        "label": spec.label, "strategy": spec.strategy, "kind": spec.kind,
        "fixed_eta_mean": math.nan, "fixed_eta_std": math.nan, "fixed_eta_n": 0, "fixed_eta_diverged": 0,
        "fixed_beta_mean": math.nan, "fixed_beta_std": math.nan, "fixed_beta_n": 0, "fixed_beta_diverged": 0,
        "top": math.nan, "top_diverged": False, "best_trial": "", "best_epoch": None,
        "best_eta0": math.nan, "best_beta": math.nan, "time_min": math.nan, "runs": 0, "diverged_runs": 0,
        "note": "",
    }
    runs = run_results(df, spec.strategy)
    if runs.empty:
        row["note"] = f"strategy {spec.strategy!r} is not in the results"
        return row
    best = runs.iloc[0]
    row.update({"top": 100.0 * float(best["test/acc"]), "top_diverged": bool(best["diverged"]),
                "best_trial": str(best["trial_id"]), "best_epoch": int(best["epoch"]),
                "best_eta0": float(best["eta0"]), "best_beta": float(best["beta"]),
                "runs": len(runs), "diverged_runs": int(runs["diverged"].sum())})
    minutes = runs["compute_s"].astype(float) / 60.0
    if spec.kind == "grid2d":
        fixed_eta = runs[_same(runs["eta0"], float(best["eta0"]))]
        fixed_beta = runs[_same(runs["beta"], float(best["beta"]))]
        row.update(dict(zip(("fixed_eta_mean", "fixed_eta_std", "fixed_eta_n", "fixed_eta_diverged"),
                            _cell(fixed_eta), strict=True)))
        row.update(dict(zip(("fixed_beta_mean", "fixed_beta_std", "fixed_beta_n", "fixed_beta_diverged"),
                            _cell(fixed_beta), strict=True)))
        row["time_min"] = float(minutes.mean())
    elif spec.kind == "grid1d":
        row.update(dict(zip(("fixed_beta_mean", "fixed_beta_std", "fixed_beta_n", "fixed_beta_diverged"),
                            _cell(runs), strict=True)))
        row["time_min"] = float(minutes.sum())
    elif spec.kind == "search":
        row["time_min"] = float(minutes.sum())
    elif spec.kind == "single":
        row["time_min"] = float(minutes.iloc[0])
        if len(runs) > 1:
            row["note"] = f"{len(runs)} runs found for a single-run row; the best one is shown"
    else:  # population
        row["time_min"] = float(minutes.sum())
    return row


def table1(df: pd.DataFrame, specs: Sequence[RowSpec]) -> pd.DataFrame:
    """Table 1 as data: one row per spec, in the order of ``specs`` (columns: :data:`TABLE1_COLUMNS`).

    ``fixed_eta_*`` / ``fixed_beta_*``: mean and std (percent) of the run test accuracies at the best
    η̄ (over β) / at the best β (over η̄), the number of runs ``n`` in the cell and how many of them
    diverged; ``top``: the best run's test accuracy (percent) and ``top_diverged``; ``best_trial``,
    ``best_epoch``, ``best_eta0``, ``best_beta``: the best run and its result ("", <NA>, NaN when none);
    ``time_min``: compute minutes (per run for grid2d, total otherwise; see the module doc); ``runs``,
    ``diverged_runs``; ``note``: why a row is empty or unusual. Accuracies not applicable to a kind are NaN
    with n = 0.
    """
    rows = [_row(df, spec) for spec in specs]
    table = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS))
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table


# ----------------------------------------------------------------------------------------- Markdown

HEADER = "| | Fixed η̄ (%) | Fixed β (%) | Top (%) | Time (min) |"


def format_minutes(minutes: float) -> str:
    """Minutes with 1 decimal from 1 minute up, 2 significant digits below (``14.0``, ``0.42``)."""
    if minutes is None or not math.isfinite(minutes):
        return "n/a"
    if minutes >= 1.0 or minutes == 0.0:
        return f"{minutes:.1f}"
    return f"{minutes:.2g}"


def _mean_std(mean: float, std: float, diverged: int) -> str:
    text = f"{mean:.2f} ± {std:.2f}"
    return text + (f" †{diverged}" if diverged else "")


def _our_cells(row: Mapping[str, Any], bold_top: bool) -> list[str]:
    if row["runs"] == 0:
        return [str(row["label"]), "n/a", "n/a", "n/a", "n/a"]
    cells = [str(row["label"])]
    for prefix in ("fixed_eta", "fixed_beta"):
        mean = row[f"{prefix}_mean"]
        cells.append("-" if not math.isfinite(mean) else
                     _mean_std(mean, row[f"{prefix}_std"], int(row[f"{prefix}_diverged"])))
    top = row["top"]
    if math.isfinite(top):
        text = f"**{top:.2f}**" if bold_top else f"{top:.2f}"
        cells.append(text + (" †" if row["top_diverged"] else ""))
    else:
        cells.append("n/a")
    cells.append(format_minutes(row["time_min"]))
    return cells


def _markdown_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    lines = [HEADER, "|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def table1_markdown(table: pd.DataFrame, caption: str,
                    paper: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """Markdown of :func:`table1`'s output in the paper's layout (``| | Fixed η̄ (%) | Fixed β (%) |
    Top (%) | Time (min) |``), then, when ``paper`` maps label -> {"fixed_eta", "fixed_beta", "top",
    "time"} (strings, shown verbatim; a missing key shows ``-``), a second table "Paper" right below with
    the same layout (labels in our order, then any others), then the caption, then notes († and per-row
    notes).

    Cells: ``98.42 ± 0.08`` (mean ± std, percent), ``†k`` when k runs of the cell diverged; Top as
    ``98.49`` (``†`` when the best run diverged), the highest Top of the table in bold (every tie,
    compared as printed); ``-`` where a cell does not apply to the row's kind; ``n/a`` for a strategy
    missing from the results.
    """
    records = table.to_dict("records")
    tops = [round(float(r["top"]), 2) for r in records if r["runs"] and math.isfinite(float(r["top"]))]
    best_top = max(tops) if tops else None
    ours = [_our_cells(r, best_top is not None and r["runs"] > 0 and math.isfinite(float(r["top"]))
                       and round(float(r["top"]), 2) == best_top) for r in records]
    parts: list[str] = []
    if paper is not None:
        parts += ["**Ours**", ""]
    parts += _markdown_rows(ours)
    if paper is not None:
        labels = [str(r["label"]) for r in records if str(r["label"]) in paper]
        labels += [label for label in paper if label not in labels]
        rows = [[label, *(str(paper[label].get(k, "-")) for k in ("fixed_eta", "fixed_beta", "top", "time"))]
                for label in labels]
        parts += ["", "**Paper**", "", *_markdown_rows(rows)]
    parts += ["", caption]
    notes = []
    if any(r["fixed_eta_diverged"] or r["fixed_beta_diverged"] or r["top_diverged"] for r in records):
        notes.append("†k: k runs of the cell diverged (they count with the accuracy they reached); "
                     "† on Top: the best run diverged.")
    notes += [f"{r['label']}: {r['note']}." for r in records if r["note"]]
    if notes:
        parts += ["", *(f"- {note}" for note in notes)]
    return "\n".join(parts) + "\n"


# -------------------------------------------------------------------------------------------- plots


def sensitivity_grid(df: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """η̄ (rows, ascending) × β (columns, ascending; a NaN β column last) of run test accuracies (%).

    A cell is the mean over the runs at that (η̄, β) (usually one); NaN where no run. ``attrs``:
    ``strategy`` and ``diverged``, a tuple of row tuples of bools in the grid's order (True where a run
    of the cell diverged), read by :func:`plot_sensitivity`.
    """
    runs = run_results(df, strategy)
    etas = sorted(set(runs["eta0"].dropna().astype(float)))
    betas: list[float] = sorted(set(runs["beta"].dropna().astype(float)))
    if runs["beta"].isna().any():
        betas.append(math.nan)
    values = np.full((len(etas), len(betas)), math.nan)
    diverged = np.zeros((len(etas), len(betas)), dtype=bool)
    for i, eta in enumerate(etas):
        at_eta = runs[_same(runs["eta0"], eta)]
        for j, beta in enumerate(betas):
            cell = at_eta[_same(at_eta["beta"], beta)]
            if not cell.empty:
                values[i, j] = 100.0 * float(cell["test/acc"].astype(float).mean())
                diverged[i, j] = bool(cell["diverged"].any())
    grid = pd.DataFrame(values, index=pd.Index(etas, name="eta0", dtype=float),
                        columns=pd.Index(betas, name="beta", dtype=float))
    grid.attrs["strategy"] = strategy
    grid.attrs["diverged"] = tuple(tuple(bool(v) for v in r) for r in diverged)
    return grid


def format_power(value: float) -> str:
    """A tick label such as ``1e-4``, ``3e-3`` or ``2.5e-2`` (``-`` for NaN)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = round(value / 10.0**exponent, 2)
    if abs(mantissa) >= 10:
        mantissa, exponent = mantissa / 10.0, exponent + 1
    return f"{mantissa:g}e{exponent}"


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure manager, no GUI backend

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)[0]


def plot_sensitivity(grids: Mapping[str, pd.DataFrame]) -> Any:
    """Figure: one heatmap panel per method (label -> :func:`sensitivity_grid`), η̄ down, β across,
    every cell annotated with its test accuracy (%), diverged cells hatched and marked ``×``; one
    shared colour scale (a colorbar axis after the panels). Returns the matplotlib Figure (Agg canvas).
    """
    if not grids:
        raise ValueError("plot_sensitivity needs at least one grid (label -> sensitivity_grid(...)).")
    from matplotlib.patches import Rectangle

    fig, axes = _figure(1, len(grids), 4.2 * len(grids) + 1.2, 4.2)
    finite = [v for g in grids.values() for v in g.to_numpy(dtype=float).ravel() if math.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 100.0)
    image = None
    for ax, (label, grid) in zip(axes, grids.items(), strict=True):
        values = grid.to_numpy(dtype=float)
        ax.set_title(label)
        ax.set_xlabel("β (hyper-learning rate)")
        ax.set_ylabel("η̄ (initial learning rate)")
        if values.size == 0:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto",
                          origin="lower")
        ax.set_facecolor("0.85")
        ax.set_xticks(range(values.shape[1]), [format_power(float(b)) for b in grid.columns])
        ax.set_yticks(range(values.shape[0]), [format_power(float(e)) for e in grid.index])
        diverged = grid.attrs.get("diverged")
        if diverged is None or np.shape(diverged) != values.shape:
            diverged = np.zeros(values.shape, dtype=bool)
        middle = (vmin + vmax) / 2.0
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                value = values[i, j]
                if not math.isfinite(value):
                    continue
                text = f"{value:.1f}" + ("\n×" if diverged[i][j] else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="black" if value >= middle or diverged[i][j] else "white",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0}
                        if diverged[i][j] else None)
                if diverged[i][j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1.0, 1.0, fill=False, hatch="///",
                                           edgecolor="red", linewidth=0.0))
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="test accuracy (%)")
    return fig


def plot_accuracy_vs_compute(df: pd.DataFrame, specs: Sequence[RowSpec]) -> Any:
    """Figure: for each row (spec) present in ``df``, the test accuracy (%) of the best-by-validation
    (trial, epoch) so far against the strategy's cumulative compute minutes (sum of the kept reports'
    ``time/epoch_s`` in report order, :func:`ray_rthpo.report.selection.best_so_far`); log x, one line
    per row label, drawn as steps."""
    from matplotlib.ticker import FuncFormatter

    fig, (ax,) = _figure(1, 1, 9.5, 4.8)
    styles = ["-", "--", "-.", ":"]
    reports = latest_reports(df)
    for i, spec in enumerate(specs):
        subset = reports[reports[STRATEGY] == spec.strategy] if not reports.empty else reports
        if subset.empty:
            continue
        curve = best_so_far(subset)
        minutes = curve[CUMULATIVE_COMPUTE].astype(float).to_numpy() / 60.0
        ax.step(minutes, 100.0 * curve[M.TEST_ACC].astype(float).to_numpy(), where="post", label=spec.label,
                linestyle=styles[(i // 10) % len(styles)], linewidth=1.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: _minor_label(ax, value)))
    ax.set_xlabel("cumulative compute of the strategy (min, summed over its runs)")
    ax.set_ylabel("test accuracy of the best-by-validation run (%)")
    ax.set_title("Accuracy against compute (chosen by validation)")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _minor_label(ax: Any, value: float) -> str:
    """Plain labels at 2, 3 and 5 x 10^k on a log axis spanning at most two decades, none otherwise."""
    low, high = ax.get_xlim()
    if value <= 0 or low <= 0 or math.log10(high / low) > 2.0:
        return ""
    leading = round(value / 10.0 ** math.floor(math.log10(value) + 1e-9), 6)
    return f"{value:g}" if leading in (2.0, 3.0, 5.0) else ""


def plot_eta_schedules(df: pd.DataFrame, specs: Sequence[RowSpec]) -> Any:
    """Figure: learning rate (log scale) per epoch of the best run of every ``grid2d`` and
    ``population`` row (starting at its η̄ at epoch 0; for PBT the best trial's own reports), plus a
    flat dotted line at the η̄ of the best run of each ``grid1d`` row (Grid Search) as the reference."""
    fig, (ax,) = _figure(1, 1, 9.5, 4.8)
    reports = latest_reports(df)
    for spec in specs:
        if spec.kind not in ("grid2d", "population", "grid1d"):
            continue
        runs = run_results(reports, spec.strategy)
        if runs.empty:
            continue
        best = runs.iloc[0]
        if spec.kind == "grid1d":
            if math.isfinite(float(best["eta0"])) and float(best["eta0"]) > 0:
                ax.axhline(float(best["eta0"]), color="grey", linestyle=":", linewidth=1.5,
                           label=f"{spec.label} (best η̄ = {format_power(float(best['eta0']))})")
            continue
        trial = reports[(reports[STRATEGY] == spec.strategy) & (reports[TRIAL_ID] == best["trial_id"])]
        trial = trial.sort_values(M.EPOCH, kind="stable")
        epochs = [int(e) for e in trial[M.EPOCH]]
        lrs = [float(v) for v in _as_float(trial[M.LR])]
        eta0 = _float(trial[ETA0].iloc[0]) if ETA0 in trial else math.nan
        if math.isfinite(eta0) and (not epochs or epochs[0] == 1):
            epochs, lrs = [0, *epochs], [eta0, *lrs]
        mark = " †" if bool(best["diverged"]) else ""
        ax.plot(epochs, [max(v, 1e-12) if math.isfinite(v) else math.nan for v in lrs], marker="o",
                markersize=3, label=f"{spec.label}{mark} (best η̄ = {format_power(eta0)})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate η (end of epoch)")
    ax.set_title("η of each method's best run")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


__all__ = ["RowSpec", "KINDS", "TABLE1_COLUMNS", "RUN_COLUMNS", "run_results", "table1",
           "table1_markdown", "format_minutes", "format_power", "sensitivity_grid", "plot_sensitivity",
           "plot_accuracy_vs_compute", "plot_eta_schedules"]
