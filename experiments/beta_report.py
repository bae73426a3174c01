"""docs/beta.md and its figures (docs/beta/*.png) from the run records of the beta study.

The records are experiments/beta_robustness.py's (``read_records``: one per training run of the cells'
``trials.csv``); the analysis is experiments/beta_analysis.py's (pure functions), the design
experiments/beta_design.py's. Every number of the document comes from the records: none is typed here.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import beta_analysis as ba  # noqa: E402  (experiments/ is not a package)
import beta_design as bd  # noqa: E402
from beta_design import FULL_GRID, HD_METHODS, PROBE, REFERENCE, RULES, WORKLOADS, Design  # noqa: E402

#: The commands that produce the document (docs/beta.md shows them; tests/test_documented_commands.py
#: runs them).
COMMANDS = (
    "nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness",
    "nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness --resume",
    "nice -n 10 python experiments/beta_robustness.py run --out runs/beta_robustness --resume --workers 1 "
    "--workloads digits mnist_mlp cifar10_resnet18",
    "python experiments/beta_robustness.py report --out runs/beta_robustness",
)


def fmt_beta(b: float | None) -> str:
    """A grid value as the document writes it: 1e-3, 3.16e-4 (None: '-')."""
    if b is None:
        return "-"
    mant, exp = f"{b:.2e}".split("e")
    m = float(mant)
    return f"1e{int(exp)}" if m == 1.0 else f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def fmt_window(win: ba.Window | None) -> str:
    """A window as the document shows it: its width in decades and its ends ('empty' when there is none)."""
    if win is None:
        return "empty"
    if win.n_points == 1:
        return f"0 (only {fmt_beta(win.lo)})"
    return f"{win.width:.1f} ({fmt_beta(win.lo)} to {fmt_beta(win.hi)})"


METHOD_LABEL = {"rthpo": "RT-HPO", "hd_val": "First-order (Val)", "hd_train": "First-order (Train)"}
WORKLOAD_SHORT = {"digits": "digits MLP", "mnist_mlp": "MNIST MLP", "mnist_lenet": "MNIST LeNet",
                  "cifar10_resnet18": "CIFAR-10 ResNet-18"}
ETA_CAP = 10.0  # lr.eta_max of every run (the config default)


def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1f}"


def _signed(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.1f}"


def _factor(x: float) -> str:
    if not math.isfinite(x):
        return "inf (eta reached 0)"
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


@dataclass
class Study:
    """Everything the report needs, computed once from the records."""

    design: Design
    records: list[dict[str, Any]]
    table: dict[Any, ba.Cell]
    bars: dict[str, ba.Bar | None]
    full: list[str]
    probe: list[str]
    combos: list[tuple[str, str]]
    summaries: dict[tuple[str, str], ba.RuleSummary]
    ranked: list[ba.RuleSummary]
    rec: ba.RuleSummary | None
    additive: ba.RuleSummary | None


def load_study(design: Design, records: Sequence[dict[str, Any]]) -> Study:
    """Cells, bars, windows and the ranking of the rules, computed once from the run records."""
    records = list(records)
    if not records:
        raise SystemExit("the study holds no finished runs; run it first (beta_robustness.py run).")
    table = ba.cells(records)
    present = {r["workload"] for r in records}
    bars = {w: ba.reference_bar(table, w) for w in WORKLOADS if w in present}
    full = [w for w in FULL_GRID if bars.get(w) is not None]
    probe = [w for w in PROBE if w in present]
    bar_test = {w: bars[w].test for w in full}  # type: ignore[union-attr]
    combos = [(m, r) for m in ("rthpo", *HD_METHODS) for r in RULES
              if any(k[1] == m and k[2] == r and k[0] in full for k in table)]
    summaries = {(m, r): ba.summarize_rule(table, full, m, r, design.etas, design.betas(r), bar_test,
                                           fallback_etas=bd.fallback_etas(design))
                 for m, r in combos}
    ranked = ba.rank_rules(s for (m, _), s in summaries.items() if m == "rthpo")
    rec = ranked[0] if ranked else None
    additive = summaries.get(("rthpo", "additive"))
    return Study(design, records, table, bars, full, probe, combos, summaries, ranked, rec, additive)


def _runs(study: Study, workload: str, method: str, rule: str | None, beta: float | None,
          eta0: float | None = None) -> list[dict[str, Any]]:
    out = [r for r in study.records if r["workload"] == workload and r["method"] == method
           and r.get("rule") == rule and (beta is None or r.get("beta") == beta)
           and (eta0 is None or r["eta0"] == eta0)]
    return sorted(out, key=lambda r: (r["eta0"], r["seed"]))


# ------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _draw_heatmap(ax: Any, study: Study, workload: str, method: str, rule: str) -> Any:
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    etas, betas = study.design.etas, study.design.betas(rule)
    bar = study.bars[workload].test  # type: ignore[union-attr]
    acc, div, n = ba.heatmap(study.table, workload, method, rule, etas, betas)
    a = np.array(acc, dtype=float)
    norm = TwoSlopeNorm(vmin=-40.0, vcenter=-ba.TOL_POINTS, vmax=4.0)
    im = ax.imshow(np.ma.masked_invalid(np.clip(a - bar, -40.0, 4.0)), cmap="RdYlGn", norm=norm,
                   aspect="auto",
                   origin="lower")
    for i in range(len(etas)):
        for j in range(len(betas)):
            if n[i][j] == 0:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=5.5, color="0.4")
                continue
            good = a[i, j] >= bar - ba.TOL_POINTS - 1e-9
            label = f"{a[i, j]:.1f}" + ("†" if div[i][j] else "")
            ax.text(j, i, label, ha="center", va="center", fontsize=5.5,
                    fontweight="bold" if good else "normal", color="black")
            if div[i][j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////",
                                       edgecolor=(0.15, 0.15, 0.15, 0.5), linewidth=0.0))
            if good:
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="black",
                                       linewidth=1.1))
    flags = study.summaries[(method, rule)].flags.get(workload, {})
    ax.set_xticks(range(len(betas)))
    ax.set_xticklabels([fmt_beta(b) for b in betas], rotation=90, fontsize=6)
    for tick, beta in zip(ax.get_xticklabels(), betas, strict=True):
        if flags.get(beta):
            tick.set_color("darkgreen")
            tick.set_fontweight("bold")
    ax.set_yticks(range(len(etas)))
    ax.set_yticklabels([fmt_beta(e) for e in etas], fontsize=6)
    return im


def figure_heatmaps(study: Study, methods: Sequence[str], path: Path) -> Path | None:
    """Seed-mean test accuracy over eta-bar x beta, one panel per (method, rule) of ``methods`` and workload,
    saved to ``path``; None when there is nothing to draw."""
    rows = [(m, r) for m, r in study.combos if m in methods]
    if not rows or not study.full:
        return None
    cols = study.full
    fig = _figure(4.3 * len(cols) + 0.9, 1.9 * len(rows) + 0.9)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    im = None
    for i, (m, r) in enumerate(rows):
        for j, w in enumerate(cols):
            ax = axes[i][j]
            im = _draw_heatmap(ax, study, w, m, r)
            if i == 0:
                bar = study.bars[w]
                ax.set_title(f"{WORKLOAD_SHORT[w]}\n(bar {bar.test:.1f}% at η̄ {fmt_beta(bar.eta0)})",
                             fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{METHOD_LABEL[m]}\n{r}\nη̄", fontsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel("β", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.5, label="seed-mean test accuracy − bar (points)")
    fig.suptitle("Test accuracy (%, mean over seeds, at the best-validation epoch) over η̄ × β.\nBoxed, "
                 "bold: within "
                 f"{ba.TOL_POINTS:g} point of the bar; † hatched: a seed diverged; green β: in the strict "
                 "window",
                 fontsize=8)
    from ray_rthpo.report.files import atomic_save_figure

    return atomic_save_figure(fig, path)


def figure_windows(study: Study, path: Path) -> Path | None:
    """The strict window of every (method, rule) on every full-grid workload and the common window, saved
    to ``path``; None without runs."""
    if not study.combos:
        return None
    colors = {"digits": "tab:blue", "mnist_mlp": "tab:orange", "mnist_lenet": "tab:green"}
    groups = [("additive", [c for c in study.combos if c[1] == "additive"]),
              ("scale-free rules", [c for c in study.combos if c[1] != "additive"])]
    groups = [(g, cs) for g, cs in groups if cs]
    fig = _figure(11.0, 0.55 * max(len(cs) for _, cs in groups) + 1.6)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (title, cs) in zip(axes, groups, strict=True):
        betas = study.design.betas(cs[0][1])
        xs = [math.log10(b) for b in betas]
        for row, combo in enumerate(cs):
            summ = study.summaries[combo]
            y0 = len(cs) - 1 - row
            for k, w in enumerate(study.full):
                y = y0 + 0.22 - 0.14 * k
                on = [math.log10(b) for b in betas if summ.flags[w].get(b)]
                ax.plot(xs, [y] * len(xs), color="0.85", lw=0.8, zorder=1)
                ax.scatter(on, [y] * len(on), color=colors.get(w, "tab:gray"), s=10, zorder=3,
                           label=WORKLOAD_SHORT[w] if row == 0 else None)
                win = summ.windows[w]
                if win is not None:
                    ax.plot([math.log10(win.lo), math.log10(win.hi)], [y, y], color=colors.get(w, "tab:gray"),
                            lw=3,
                            zorder=2, solid_capstyle="round")
            y = y0 + 0.22 - 0.14 * len(study.full)
            if summ.common is not None:
                ax.plot([math.log10(summ.common.lo), math.log10(summ.common.hi)], [y, y], color="black", lw=4,
                        solid_capstyle="round", label="common window" if row == 0 else None)
                ax.scatter([math.log10(summ.best_beta)], [y], marker="v", color="red", s=25, zorder=4)
            else:
                ax.text(xs[0], y, "common window: empty", fontsize=6, va="center", color="0.3")
        ax.set_yticks([len(cs) - 1 - i for i in range(len(cs))])
        ax.set_yticklabels([f"{METHOD_LABEL[m]} / {r}" for m, r in cs], fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([fmt_beta(b) for b in betas], rotation=90, fontsize=7)
        ax.set_xlabel("β")
        ax.set_title(f"{title}: strict windows (β good at every η̄)", fontsize=8)
        ax.set_ylim(-0.7, len(cs) - 0.3)
    axes[0].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=4, frameon=False)
    from ray_rthpo.report.files import atomic_save_figure

    return atomic_save_figure(fig, path)


def figure_eta(study: Study, path: Path) -> Path | None:
    """eta along the runs of the recommended rule and beta (and the additive rule at its best beta), one
    panel per workload, saved to ``path``; None without a recommendation."""
    if study.rec is None:
        return None
    import numpy as np

    panels = study.full + study.probe
    fig = _figure(4.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    cmap = {e: c for e, c in zip(study.design.etas, palette, strict=False)}
    shown = [(study.rec.rule, study.rec.best_beta, "-")]
    if study.additive is not None and study.rec.rule != "additive":
        shown.append(("additive", study.additive.best_beta, "--"))
    for ax, w in zip(axes, panels, strict=True):
        for rule, beta, style in shown:
            for r in _runs(study, w, "rthpo", rule, beta):
                tr = r["eta_trace"]
                eta = np.maximum(np.array(tr["eta"], dtype=float), 1e-12)
                ax.plot(tr["step"], eta, style, color=cmap.get(r["eta0"], "0.5"), lw=1.0, alpha=0.8)
        bar = study.bars.get(w)
        if bar is not None:
            ax.axhline(bar.eta0, color="black", ls=":", lw=1.0)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(WORKLOAD_SHORT[w] + (" (probe, 1 seed)" if w in study.probe else ""), fontsize=8)
    axes[0].set_ylabel("η (η̄, then at each epoch's end)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, label=f"η̄ = {fmt_beta(e)}") for e, c in cmap.items()]
    handles += [Line2D([], [], color="0.3", ls=s, label=f"{rule}, β = {fmt_beta(b)}") for rule, b, s in shown]
    handles.append(Line2D([], [], color="black", ls=":", label="bar's η̄ (best exp_decay)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle("η along the run of RT-HPO with the recommended rule and β (solid) and the additive rule "
                 "at its best β (dashed); one line per seed (η = 0 drawn at 1e-12)", fontsize=8)
    from ray_rthpo.report.files import atomic_save_figure

    return atomic_save_figure(fig, path)


def figure_robustness(study: Study, path: Path) -> Path | None:
    """Test accuracy against eta-bar: the grid-searched schedule and the recommended rule at its beta, one
    panel per workload, saved to ``path``; None without a recommendation."""
    if study.rec is None:
        return None
    panels = study.full + study.probe
    fig = _figure(4.0 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    shown = [("rthpo", study.rec.rule, study.rec.best_beta, "o-", "tab:red")]
    if study.additive is not None and study.rec.rule != "additive":
        shown.append(("rthpo", "additive", study.additive.best_beta, "s--", "tab:purple"))
    for ax, w in zip(axes, panels, strict=True):
        ref = sorted((k[3], c) for k, c in study.table.items() if k[0] == w and k[1] == REFERENCE)
        if ref:
            xs = [e for e, _ in ref]
            ys = [c.test for _, c in ref]
            sd = [c.test_std for _, c in ref]
            ax.errorbar(xs, ys, yerr=sd, color="black", marker=".", lw=1, capsize=2, label="exp_decay (grid)")
        bar = study.bars.get(w)
        if bar is not None:
            ax.axhline(bar.test - ba.TOL_POINTS, color="black", ls=":", lw=1,
                       label=f"bar − {ba.TOL_POINTS:g}")
        for method, rule, beta, style, color in shown:
            pts = sorted((k[3], c) for k, c in study.table.items()
                         if k[0] == w and k[1] == method and k[2] == rule and k[4] == beta)
            if pts:
                ax.errorbar([e for e, _ in pts], [c.test for _, c in pts], yerr=[c.test_std for _, c in pts],
                            fmt=style, color=color, ms=4, lw=1, capsize=2, label=f"RT-HPO {rule}, β "
                                                                                 f"{fmt_beta(beta)}")
        ax.set_xscale("log")
        ax.set_xlabel("η̄ (initial learning rate)")
        ax.set_title(WORKLOAD_SHORT[w] + (" (probe, 1 seed)" if w in study.probe else ""), fontsize=8)
        ys_all = [c.test for k, c in study.table.items() if k[0] == w]
        top = min(100.0, max(ys_all) + 3.0) if ys_all else 100.0
        lo = max(0.0, bar.test - 30.0) if bar is not None and w in study.full else 0.0
        ax.set_ylim(lo, top)
    axes[0].set_ylabel("test accuracy (%) at the best-validation epoch")
    axes[0].legend(fontsize=6, loc="lower center")
    fig.suptitle("One run per η̄, no search: the recommended rule and β against the grid-searched schedule "
                 "(mean ± std over seeds; points below the axis are cut)", fontsize=8)
    from ray_rthpo.report.files import atomic_save_figure

    return atomic_save_figure(fig, path)


# ------------------------------------------------------------------------------------------ document
def _movement_rows(study: Study, summ: ba.RuleSummary, workloads: Sequence[str]) -> list[dict[str, Any]]:
    """Per (workload, far eta-bar) of the recommended rule: movement factors over seeds, and whether the
    final eta is closer (in decades) to the bar's eta-bar than eta-bar was."""
    rows = []
    for w in workloads:
        bar = study.bars.get(w)
        if bar is None:
            continue
        for eta0 in study.design.etas:
            if ba.log_distance(eta0, bar.eta0) < 1.0 - 1e-9:
                continue
            runs = _runs(study, w, "rthpo", summ.rule, summ.best_beta, eta0)
            if not runs:
                continue
            factors = [ba.eta_movement(r["eta0"], r["eta_min"], r["eta_max"]) for r in runs]
            toward = [ba.log_distance(r["eta_final"], bar.eta0) < ba.log_distance(eta0, bar.eta0)
                      for r in runs]
            finals = [r["eta_final"] for r in runs]
            rows.append({"workload": w, "eta0": eta0, "bar_eta": bar.eta0, "factors": factors,
                         "toward": toward,
                         "finals": finals, "diverged": sum(bool(r.get("diverged")) for r in runs)})
    return rows


def _misbehaviour(study: Study) -> list[tuple[str, str, int, int, int, int, int]]:
    out = []
    for m, r in study.combos:
        runs = [x for x in study.records
                if x["method"] == m and x.get("rule") == r and x["workload"] in study.full]
        n = len(runs)
        div = sum(bool(x.get("diverged")) for x in runs)
        zero = sum(x["eta_min"] <= 0.0 for x in runs)
        cap = sum(x["eta_max"] >= ETA_CAP * (1 - 1e-9) for x in runs)
        collapsed = sum(0.0 < x["eta_final"] < x["eta0"] * 1e-3 for x in runs)
        out.append((m, r, n, div, zero, cap, collapsed))
    return out


def _steps(study: Study, workload: str) -> int:
    s = next(r["sizes"] for r in study.records if r["workload"] == workload)
    return int(s["steps_per_epoch"] * s["epochs"])


def _ms_per_step(recs: Sequence[dict[str, Any]], method: str) -> str:
    """Median over the finished runs of ``method`` of compute seconds per step (evaluation included), in
    ms."""
    xs = sorted(1000.0 * r["compute_s"] / r["steps"] for r in recs
                if r["method"] == method and r.get("steps") and r["status"] == "finished")
    if not xs:
        return "-"
    m = xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])
    return f"{m:,.0f}"


def _sizes_rows(study: Study) -> list[str]:
    rows = []
    for w in study.full + study.probe:
        recs = [r for r in study.records if r["workload"] == w]
        s = recs[0]["sizes"]
        steps = s["steps_per_epoch"] * s["epochs"]
        compute = sum(r["compute_s"] for r in recs)
        spec = WORKLOADS[w]
        rows.append(f"| {spec.label} | `{spec.config}` | {s['train']:,} / {s['val']:,} / {s['test']:,} | "
                    f"{s['batch']} / {s['val_batch']} | {s['epochs']} | {steps} | {len(recs)} | "
                    f"{compute / 60:.0f} | {_ms_per_step(recs, 'rthpo')} | {_ms_per_step(recs, REFERENCE)} |")
    return rows


def sign_log_lock_in(beta: float = 0.1, down: int = 20, up: int = 200) -> tuple[float, float]:
    """``sign_log`` on the pure update: eta after ``down`` steps with h = +1 (decrease), then after ``up``
    steps with h = -1 (increase), from eta = 1."""
    from ray_rthpo.hypergrad.hyper_updates import initial_state, update

    eta, state = 1.0, initial_state()
    for _ in range(down):
        eta, state = update("sign_log", eta, 1.0, state, beta=beta, eta_max=ETA_CAP)
    after_down = eta
    for _ in range(up):
        eta, state = update("sign_log", eta, -1.0, state, beta=beta, eta_max=ETA_CAP)
    return after_down, eta


def _findings(study: Study) -> list[str]:
    """Bullet points computed from the records (no number in them is typed by hand)."""
    d = study.design
    out: list[str] = []
    stds = [study.bars[w].test_std for w in study.full]
    if stds:
        out.append(f"- **Noise.** The bar's own seed-to-seed standard deviation is {min(stds):.1f} to "
                   f"{max(stds):.1f} "
                   f"points on the full-grid workloads, against a tolerance of {ba.TOL_POINTS:g} point: "
                   "cells at the "
                   "edge of a window are in or out by chance, so widths are uncertain by about one grid "
                   "step.")
    for w in study.full:
        bar = study.bars[w]
        for eta in d.etas:
            cands = [(c.test, k) for k, c in study.table.items()
                     if k[0] == w and k[1] == "rthpo" and k[3] == eta]
            if not cands:
                continue
            best, key = max(cands, key=lambda x: x[0])
            if best < bar.test - ba.TOL_POINTS - 1e-9:
                runs = [r for r in study.records
                        if r["workload"] == w and r["method"] == "rthpo" and r["eta0"] == eta]
                div = sum(bool(r.get("diverged")) for r in runs)
                out.append(f"- **{WORKLOAD_SHORT[w]}, η̄ = {fmt_beta(eta)}: no rule and no β rescues it.** "
                           "The best "
                           f"RT-HPO cell from there is {best:.1f}% (`{key[2]}`, β = {fmt_beta(key[4])}), "
                           f"{bar.test - best:.1f} points below the bar; {div} of its {len(runs)} runs "
                           "diverged. "
                           "So every strict window on this workload is empty, whatever the rule.")
    for rule in ("adam_log", "sign_log"):
        runs = [r for r in study.records if r["workload"] in study.full and r["method"] == "rthpo"
                and r.get("rule") == rule and not r.get("diverged")]
        fallen = [r for r in runs if r["eta_final"] < r["eta0"] * 1e-3]
        if fallen:
            why = ""
            if rule == "sign_log":
                e20, e_end = sign_log_lock_in()
                why = (" (The `sign_log` of the library that wrote this report recovers on the lock-in "
                       "check: 20 "
                       f"'decrease' then 200 'increase' steps at β = 0.1 end at η = {e_end:.2g}; the runs "
                       "used the "
                       "library named under 'How this was produced'.)"
                       if e_end >= e20 else
                       " The rule's momentum is taken over η·h, whose size shrinks with η: after η has "
                       "fallen for a "
                       "while, the momentum stored at larger η outweighs every new hypergradient, the sign "
                       "stays "
                       "'decrease' and η runs to 0 even when h says 'increase' (computed here on the pure "
                       "function "
                       "`hyper_updates.update`, η̄ = 1, β = 0.1: 20 steps with h = +1 take η to "
                       f"{e20:.3g}, then 200 steps with h = −1 take it to {e_end:.2g}). A flaw of the rule, "
                       "not of "
                       "the workloads.")
            out.append(f"- **`{rule}` can collapse η.** {len(fallen)} of its {len(runs)} RT-HPO runs that "
                       "did not "
                       "diverge ended with η below η̄ / 1000 (all at β ≥ "
                       f"{fmt_beta(min(r['beta'] for r in fallen))}).{why}")
    for w in study.full:
        bar = study.bars[w]
        steps = _steps(study, w)
        lo = min(d.etas)
        need = math.log(bar.eta0 / lo) / steps if bar.eta0 > lo else None
        if need is not None and w == study.full[0]:
            out.append(f"- **Horizon.** A run of {steps} steps from η̄ = {fmt_beta(lo)} must climb "
                       f"{math.log10(bar.eta0 / lo):.1f} decades to reach the bar's η̄ "
                       f"({fmt_beta(bar.eta0)}, "
                       f"{WORKLOAD_SHORT[w]}): `sign_log` needs β ≥ {need:.3f} even with a perfectly "
                       "consistent sign "
                       "(it moves log η by exactly β a step), and more to leave steps for training at the "
                       "good η. "
                       "Scale-free β values below that cannot work from far below in runs this short; in "
                       "longer runs "
                       "the useful β is smaller.")
    return out


def render_doc(study: Study, out: Path, figs: dict[str, Path | None], doc: Path) -> str:
    """The text of docs/beta.md: how it was produced, sizes, grids, definitions, the bars, the windows, the
    heatmaps, the findings, the recommendation, the issue's targets, the eta traces and the probe."""
    d = study.design
    compute = sum(r["compute_s"] for r in study.records)
    walls: dict[str, float] = {}
    for r in study.records:  # each (strategy, seed) run's wall time, summed over a cell's runs
        walls[r["cell"]] = walls.get(r["cell"], 0.0) + float(r.get("wall_s") or 0.0)
    last_time = max(float(r.get("finished_at") or 0.0) for r in study.records)
    finished = _dt.datetime.fromtimestamp(last_time, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    devices = sorted({str(r.get("device")) for r in study.records if r.get("device")})
    docdir = doc.parent

    def img(key: str, alt: str) -> str:
        p = figs.get(key)
        return f"![{alt}]({os.path.relpath(p, docdir)})" if p is not None else f"({alt}: no data)"

    L: list[str] = []
    L += ["<!-- Generated by `python experiments/beta_robustness.py report`: every number below comes from "
          "the "
          "run files of the study's cells (OUT/CELL/trials.csv). Do not edit by hand; rerun the report. "
          "-->", ""]
    L += ["# A hyper-learning rate that needs no search? (issue #11)", ""]
    L += ["The paper's additive rule `η ← η − β h` (eq. 2) needs β searched over decades, model by model "
          "(`docs/results.md`). This study measures, on every workload the project can run offline, how wide "
          "the range of β is in which RT-HPO ends within one point of a grid-searched schedule *whatever the "
          "initial learning rate η̄*, for the additive rule and the three scale-free rules of "
          "`ray_rthpo/hypergrad/hyper_updates.py` (`multiplicative`, `adam_log`, `sign_log`), and for the "
          "first-order methods. From it: one rule and one default β, and whether they meet the issue's "
          "targets.", ""]
    L += ["## How this was produced", "", "```bash", *COMMANDS, "```", ""]
    L += [f"- {len(study.records):,} runs (design `{d.name}`) in {len(walls)} `rthpo compare` cells "
          f"(`{out.name}/CELL`, each with its resolved `config.yaml`); wall time "
          f"{sum(walls.values()) / 60:.0f} "
          f"min summed over the runs; {compute / 3600:.1f} h of compute (the sum of the runs' own seconds: "
          f"training, hypergradient and evaluation). Last run finished {finished}.",
          f"- Trials on {', '.join(devices) or 'an unrecorded device'}, one CPU each (Ray resources), "
          "`--workers` of them side by side: wall time is noisy, accuracies are deterministic given the "
          "seed.",
          "- η is read where `rthpo compare` records it: η̄ at the start and the learning rate of every "
          "epoch's "
          "last step (`trials.csv`'s `lr`); the η range of a run is over those values.", ""]
    L += ["### Workloads and sizes", ""]
    L += ["| workload | config | train / val / test images | batch / val batch | epochs | steps per run | "
          "runs | "
          "compute (min) | ms per RT-HPO step | ms per SGD step |",
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    L += _sizes_rows(study)
    full_steps = sorted({_steps(study, w) for w in study.full})
    probe_steps = sorted({_steps(study, w) for w in study.probe})
    L += ["", "Why these sizes. The whole study had to fit in about one hour of this 2-core CPU, about 7,200 "
          f"worker-seconds for {bd.planned_runs(d):,} runs. Single runs were timed before choosing: an "
          "exact RT-HPO step "
          "costs a few ms for the MLPs, tens of ms for LeNet and seconds for ResNet-18 even at batch 8 (the "
          "last "
          "two columns give what this study's runs measured, evaluation included, inflated by the other jobs "
          "that shared the machine). So the three small workloads get the full grid on slices, at one common "
          f"horizon of {' to '.join(str(x) for x in full_steps)} SGD steps of batch 32, with a few epochs "
          "so that "
          "the best-validation epoch means something. The common horizon matters: a scale-free β is a "
          "change of "
          "log η *per step*, so its useful value scales like 1 / (number of steps); at one horizon the "
          "windows "
          "differ only by the model and data. ResNet-18 cannot get a grid here: it gets a probe of "
          f"{' to '.join(str(x) for x in probe_steps)} steps (below) with the rules and β chosen on the "
          "small "
          "workloads, one seed, and is left out of the common window.", ""]
    L += ["### Grids", ""]
    L += [f"- η̄ ∈ {{{', '.join(fmt_beta(e) for e in d.etas)}}} for every hypergradient run; seeds "
          f"{', '.join(str(s) for s in d.seeds)} (ResNet probe: seed "
          f"{', '.join(str(s) for s in d.probe_seeds)}).",
          f"- β, additive rule: {', '.join(fmt_beta(b) for b in d.additive_betas)} (one point per decade).",
          f"- β, scale-free rules: {', '.join(fmt_beta(b) for b in d.scale_free_betas)} (half decades).",
          "- RT-HPO (`lr.method: rthpo`) with all four rules; the first-order methods `hd_val` and "
          "`hd_train` with "
          "the additive rule and the scale-free rule that ranked best for RT-HPO (chosen automatically after "
          "phase 1).",
          f"- The bar: `exp_decay` (SGD, η̄ · 0.9^epoch, the same epochs) over η̄ ∈ "
          f"{{{', '.join(fmt_beta(e) for e in d.ref_etas)}}} (ResNet: "
          f"{{{', '.join(fmt_beta(e) for e in d.etas)}}}), "
          "same seeds.",
          "- Everything else is the workload's config: vanilla SGD (no momentum, no weight decay), η kept in "
          f"[0, {ETA_CAP:g}], the exact hypergradient (`lr.preset: exact`), no hypergradient clipping.", ""]
    L += ["### Definitions", "",
          "- **Accuracy of a run**: its test accuracy at its best-validation epoch. **Cell**: a grid point "
          "(workload, method, rule, η̄, β); its accuracy is the mean over seeds.",
          "- **Bar** of a workload: the `exp_decay` η̄ whose seed-mean *validation* accuracy is best; the "
          "bar is "
          "its seed-mean *test* accuracy.",
          f"- **Good cell**: accuracy ≥ bar − {ba.TOL_POINTS:g} point (within one point of the bar, or "
          "above).",
          "- **Window** of a rule on a workload (strict): the β of the grid at which the cell of *every* η̄ "
          "of the "
          "grid is good. Its **width** is log10(β_hi / β_lo) over the longest run of consecutive in-window "
          "grid "
          "values: one value alone has width 0, none is *empty*. The grid steps (half a decade, one decade "
          "for "
          "the additive rule) bound the resolution.",
          "- **Per-η̄ window** (looser): the same for one η̄ only.",
          "- **Common window** of a rule: the β in the window of every full-grid workload (digits, MNIST "
          "MLP, "
          "MNIST LeNet).", ""]

    # ---- bars
    L += ["## The bar: grid-searched `exp_decay`", "",
          "| workload | best η̄ (by validation) | validation (%) | test (%) = bar | test std over seeds | "
          "bar − 1 |",
          "|---|---:|---:|---:|---:|---:|"]
    for w in study.full + study.probe:
        b = study.bars[w]
        L.append(f"| {WORKLOADS[w].label} | {fmt_beta(b.eta0)} | {b.val:.1f} | {b.test:.1f} | "
                 f"{b.test_std:.1f} "
                 f"(n={b.n}) | {b.test - ba.TOL_POINTS:.1f} |")
    L += [""]

    # ---- windows
    L += ["## Windows of β", "",
          "Width in decades of the strict window (β good from every η̄) per workload, and of the common "
          "window. "
          "`empty`: no β of the grid is good from every η̄.", ""]
    L += ["| method | rule | " + " | ".join(WORKLOAD_SHORT[w] for w in study.full) + " | common window |",
          "|---|---|" + "---|" * len(study.full) + "---|"]
    for (m, r) in study.combos:
        s = study.summaries[(m, r)]
        L.append(f"| {METHOD_LABEL[m]} | {r} | " + " | ".join(fmt_window(s.windows[w]) for w in study.full)
                 + f" | **{fmt_window(s.common)}** |")
    if len(d.etas) > 2:
        sub = d.etas[:-1]
        L += ["", f"The same without the largest η̄ ({fmt_beta(d.etas[-1])}): windows over η̄ ∈ "
              f"{{{', '.join(fmt_beta(e) for e in sub)}}} only (a sensitivity check, not the definition).",
              "",
              "| method | rule | " + " | ".join(WORKLOAD_SHORT[w] for w in study.full) + " | common window |",
              "|---|---|" + "---|" * len(study.full) + "---|"]
        bar_t = {w: study.bars[w].test for w in study.full}
        for (m, r) in study.combos:
            s2 = ba.summarize_rule(study.table, study.full, m, r, sub, d.betas(r), bar_t)
            L.append(f"| {METHOD_LABEL[m]} | {r} | "
                     + " | ".join(fmt_window(s2.windows[w]) for w in study.full)
                     + f" | **{fmt_window(s2.common)}** (best β {fmt_beta(s2.best_beta)}) |")
    subsets = [("all η̄", d.etas)]
    if len(d.etas) > 2:
        subsets.append((f"η̄ ≤ {fmt_beta(d.etas[-2])}", d.etas[:-1]))
    L += ["", "How far from the targets: the tolerance a common window would need. For each β, the worst "
          "shortfall over every (workload, η̄) cell; its minimum over β is the smallest tolerance (points "
          "below the "
          "bar) at which that rule has a one-value common window.", "",
          "| method | rule | " + " | ".join(f"needed tolerance, {name} (at β)" for name, _ in subsets) + " |",
          "|---|---|" + "---:|" * len(subsets)]
    bar_t = {w: study.bars[w].test for w in study.full}
    for (m, r) in study.combos:
        row = []
        for _, etas in subsets:
            worst = {b: ba.coverage(study.table, study.full, m, r, etas, b, bar_t).worst for b in d.betas(r)}
            b_best = min(sorted(worst), key=lambda b: worst[b])
            row.append(f"{_pct(worst[b_best])} ({fmt_beta(b_best)})")
        L.append(f"| {METHOD_LABEL[m]} | {r} | " + " | ".join(row) + " |")
    L += ["", "Looser: the per-η̄ windows (width in decades; `–` empty), each η̄ on its own.", ""]
    L += ["| method | rule | η̄ | " + " | ".join(WORKLOAD_SHORT[w] for w in study.full) + " |",
          "|---|---|---:|" + "---|" * len(study.full)]
    bar_test = {w: study.bars[w].test for w in study.full}
    for (m, r) in study.combos:
        for eta in d.etas:
            cells_txt = []
            for w in study.full:
                flags = ba.per_eta_flags(study.table, w, m, r, [eta], d.betas(r), bar_test[w])[eta]
                win = ba.widest_window(d.betas(r), flags)
                cells_txt.append("–" if win is None else fmt_window(win))
            L.append(f"| {METHOD_LABEL[m]} | {r} | {fmt_beta(eta)} | " + " | ".join(cells_txt) + " |")
    L += ["", img("windows", "strict windows per rule and workload"), ""]
    L += ["How each rule does over all (workload, η̄) cells of the full-grid workloads at its best β (the "
          "middle "
          "of its common window, or, if that is empty, the β with the smallest worst shortfall over η̄ ≤ "
          f"{fmt_beta(bd.fallback_etas(d)[-1])}, then the most good cells). Shortfall of a cell: max(0, bar "
          "− accuracy) in points.", "",
          "| method | rule | best β | good cells | mean shortfall | worst shortfall |",
          "|---|---|---:|---:|---:|---:|"]
    for (m, r) in study.combos:
        cov = study.summaries[(m, r)].best_coverage
        L.append(f"| {METHOD_LABEL[m]} | {r} | {fmt_beta(study.summaries[(m, r)].best_beta)} | {cov.good} / "
                 f"{cov.total} | {_pct(cov.mean_shortfall)} | {_pct(cov.worst)} |")
    L += [""]

    # ---- heatmaps
    L += ["## Heatmaps", "",
          "Seed-mean test accuracy over η̄ × β, coloured by the distance to the workload's bar. Boxed bold "
          "cells are "
          "good; † and hatching mark cells where a seed diverged (a NaN/inf loss or a loss above 1e4 ended "
          "it; it "
          "counts with the accuracy it had reached); β labels in green are in the strict window.", "",
          img("heatmaps_rthpo", "RT-HPO heatmaps"), "", img("heatmaps_hd", "first-order heatmaps"), ""]

    # ---- findings
    L += ["## What the grid says", ""] + _findings(study) + [""]
    # ---- recommendation and targets
    rec = study.rec
    L += ["## Recommendation", ""]
    if rec is None:
        L += ["No RT-HPO runs yet.", ""]
    else:
        L += ["Ranking of the RT-HPO rules (widest common window first, then more grid values in it, then, "
              "windows "
              f"tied, the smaller worst shortfall over η̄ ≤ {fmt_beta(bd.fallback_etas(d)[-1])} at the best "
              "β, then more "
              "good cells there):", "",
              "| rank | rule | common window (decades) | best β | good cells at best β |",
              "|---:|---|---|---:|---:|"]
        for i, s in enumerate(study.ranked, 1):
            L.append(f"| {i} | {s.rule} | {fmt_window(s.common)} | {fmt_beta(s.best_beta)} | "
                     f"{s.best_coverage[0]} / {s.best_coverage[1]} |")
        overall = ba.rank_rules(study.summaries.values())[0]
        cov = rec.best_coverage
        if rec.common is not None:
            L += ["", f"**Recommended default: `lr.hyper_update: {rec.rule}` with `lr.beta: "
                      f"{fmt_beta(rec.best_beta)}`** "
                  f"(common window {fmt_window(rec.common)} decades; at this β {cov.good} of {cov.total} "
                  "(workload, η̄) cells are within one point of the bar, mean shortfall "
                  f"{cov.mean_shortfall:.1f} "
                  "points)."]
        else:
            L += ["", "**No rule has a common window: no β of any rule is within one point of the bar from "
                      "every η̄ "
                  "on every workload, so no rule and β here removes the search.** The best available "
                  "default by "
                  f"the fallback criterion (the smallest worst shortfall over every workload and η̄ ≤ "
                  f"{fmt_beta(bd.fallback_etas(d)[-1])}: η̄ = {fmt_beta(d.etas[-1])} diverges on MNIST "
                  "before any rule "
                  "acts; then the most good cells) is **`lr.hyper_update: "
                  f"{rec.rule}` with `lr.beta: {fmt_beta(rec.best_beta)}`**: {cov.good} of {cov.total} "
                  "(workload, η̄) cells within one point of the bar, mean shortfall "
                  f"{cov.mean_shortfall:.1f} points, "
                  f"worst {cov.worst:.1f}."]
        rec_width = rec.common.width if rec.common is not None else -1.0
        if overall.common is not None and overall.common.width > rec_width:
            L += ["", f"Over all methods the widest common window is {METHOD_LABEL[overall.method]} with "
                  f"`{overall.rule}`: {fmt_window(overall.common)}."]
        L += [""]
        # target 1
        L += ["## The targets", "", "### (1) No search: one run from any η̄ within one point of "
                                    "grid-searched "
              "`exp_decay` (MNIST MLP and LeNet, mean over seeds)", "",
              "| workload | bar | " + " | ".join(f"η̄ = {fmt_beta(e)}" for e in d.etas) + " |",
              "|---|---:|" + "---:|" * len(d.etas)]
        t1_ok = True
        t1_workloads = [w for w in ("mnist_mlp", "mnist_lenet") if w in study.full]
        for w in t1_workloads:
            bar = study.bars[w].test
            cells_txt = []
            for eta in d.etas:
                c = study.table.get((w, "rthpo", rec.rule, eta, rec.best_beta))
                if c is None:
                    cells_txt.append("n/a")
                    t1_ok = False
                    continue
                ok = ba.is_good(c, bar)
                t1_ok &= ok
                cells_txt.append(f"{c.test:.1f} ({_signed(c.test - bar)}){'' if ok else ' ✗'}"
                                 + (f" †{c.diverged}" if c.diverged else ""))
            L.append(f"| {WORKLOAD_SHORT[w]} | {bar:.1f} | " + " | ".join(cells_txt) + " |")
        t1_ok &= bool(t1_workloads)
        L += ["", f"Target (1): **{'met' if t1_ok else 'not met'}** with `{rec.rule}`, β = "
                  f"{fmt_beta(rec.best_beta)} "
              f"(✗: more than one point below the bar; the grid tests η̄ at {len(d.etas)} points of [1e-3, "
              "1]).", ""]
        other = [s for s in study.ranked if s.rule != rec.rule]
        for s in other:
            vals = []
            for w in t1_workloads:
                bar = study.bars[w].test
                for eta in d.etas:
                    c = study.table.get((w, "rthpo", s.rule, eta, s.best_beta))
                    vals.append(ba.is_good(c, bar))
            L.append(f"- For comparison, `{s.rule}` at its best β {fmt_beta(s.best_beta)}: {sum(vals)} of "
                     f"these {len(vals)} cells good.")
        L += [""]
        # target 2
        mv = _movement_rows(study, rec, study.full)
        L += ["### (2) η moves: at least 3x away from η̄ in runs that start far from the best η̄", "",
              "Far: η̄ at least one decade from the bar's η̄. Movement of a run: max(η_max / η̄, η̄ / "
              "η_min) over "
              "η̄ and its epoch-end η. Toward: the final η is fewer decades from the bar's η̄ than η̄ was.", "",
              "| workload | bar's η̄ | η̄ | movement per seed | final η per seed | toward the bar's η̄ |",
              "|---|---:|---:|---|---|---:|"]
        t2_ok = bool(mv)
        for row in mv:
            t2_ok &= all(f >= 3.0 for f in row["factors"])
            L.append(f"| {WORKLOAD_SHORT[row['workload']]} | {fmt_beta(row['bar_eta'])} | "
                     f"{fmt_beta(row['eta0'])} | "
                     + ", ".join(_factor(f) for f in row["factors"]) + " | "
                     + ", ".join(f"{x:.2g}" for x in row["finals"]) + f" | {sum(row['toward'])} / "
                                                                      f"{len(row['toward'])} |")
        short = [(row, f) for row in mv for f in row["factors"] if f < 3.0]
        why = ("every far run of the full-grid workloads moved η by at least 3x" if t2_ok else
               f"{len(short)} of {sum(len(row['factors']) for row in mv)} far runs moved η by less than 3x: "
               + "; ".join(sorted({f"{WORKLOAD_SHORT[r['workload']]} from η̄ = {fmt_beta(r['eta0'])}"
                                    for r, _ in short})))
        L += ["", f"Target (2): **{'met' if t2_ok else 'not met'}** ({why})." if mv else "Target (2): no "
                                                                                         "far runs.", ""]
        # target 3
        width = rec.common.width if rec.common is not None else None
        t3_ok = width is not None and width >= 2.0 - 1e-9
        L += ["### (3) The common window is at least 2 decades wide", "",
              f"Target (3): **{'met' if t3_ok else 'not met'}**: the widest common window, `{rec.rule}`'s, "
              "is "
              f"{fmt_window(rec.common)}" + (" decades." if width is not None else "."), ""]
        L += ["| target | result |", "|---|---|",
              "| (1) any η̄ within 1 point of the bar, MNIST MLP and LeNet | "
              f"{'met' if t1_ok else 'not met'} |",
              f"| (2) η moves ≥ 3x from a far η̄ | {'met' if t2_ok else 'not met'} |",
              f"| (3) common window ≥ 2 decades | {'met' if t3_ok else 'not met'} "
              f"({fmt_window(rec.common)}) |", ""]

    # ---- eta
    L += ["## Does η move?", "", img("eta_trajectories", "eta trajectories"), "",
          img("robustness", "accuracy against the initial learning rate"), ""]
    # ---- probe
    if study.probe:
        L += ["## ResNet-18 on CIFAR-10: a probe, not a window", ""]
        for w in study.probe:
            bar = study.bars[w]
            sz = next(x["sizes"] for x in study.records if x["workload"] == w)
            L += [f"{WORKLOADS[w].label}: each run is {sz['steps_per_epoch'] * sz['epochs']} steps of batch "
                  f"{sz['batch']} ({sz['epochs']} epoch(s) of {sz['train']} training images), evaluated on "
                  f"{sz['val']} validation and {sz['test']} test images. Bar (exp_decay over η̄ "
                  f"{{{', '.join(fmt_beta(e) for e in d.etas)}}}, seed 0): {bar.test:.1f}% at η̄ "
                  f"{fmt_beta(bar.eta0)}. "
                  "With so few test images and one seed, differences of several points are noise: the probe "
                  "shows "
                  "what η does and whether runs diverge with the (rule, β) chosen on the small workloads.",
                  "",
                  "| rule | β | η̄ | test (%) | final η | η range over the run | status |",
                  "|---|---:|---:|---:|---:|---|---|"]
            for r in sorted((x for x in study.records if x["workload"] == w and x["method"] != REFERENCE),
                            key=lambda x: (x["rule"] != (rec.rule if rec else ""), x["rule"], x["eta0"])):
                sel = r.get("selected") or {}
                L.append(f"| {r['rule']} | {fmt_beta(r['beta'])} | {fmt_beta(r['eta0'])} | "
                         f"{_pct(sel.get('test'))} | "
                         f"{r['eta_final']:.2g} | {r['eta_min']:.2g} to {r['eta_max']:.2g} | {r['status']} |")
            refs = sorted((x for x in study.records if x["workload"] == w and x["method"] == REFERENCE),
                          key=lambda x: x["eta0"])
            L += ["", "exp_decay on the same slice: " + ", ".join(
                f"η̄ {fmt_beta(x['eta0'])}: {_pct((x.get('selected') or {}).get('test'))}%"
                for x in refs) + ".", ""]
    # ---- misbehaviour
    L += ["## How the rules misbehave", "",
          "Over all runs of the full-grid workloads (every η̄ and β of the grid, every seed).", "",
          "| method | rule | runs | diverged | η reached 0 | η reached the cap "
          f"{ETA_CAP:g} | final η < η̄ / 1000 (not 0) |", "|---|---|---:|---:|---:|---:|---:|"]
    for m, r, n, div, zero, cap, collapsed in _misbehaviour(study):
        L.append(f"| {METHOD_LABEL[m]} | {r} | {n} | {div} | {zero} | {cap} | {collapsed} |")
    L += [""]
    return "\n".join(L) + "\n"


def write_report(design: Design, records: Sequence[dict[str, Any]], out: Path, doc: Path,
                 figures: Path) -> int:
    """Write ``doc`` (docs/beta.md) and its figures into ``figures`` from the run records of the cells in
    ``out``; returns 0."""
    study = load_study(design, records)
    figs = {
        "heatmaps_rthpo": figure_heatmaps(study, ("rthpo",), figures / "heatmaps_rthpo.png"),
        "heatmaps_hd": figure_heatmaps(study, HD_METHODS, figures / "heatmaps_hd.png"),
        "windows": figure_windows(study, figures / "windows.png"),
        "eta_trajectories": figure_eta(study, figures / "eta_trajectories.png"),
        "robustness": figure_robustness(study, figures / "robustness.png"),
    }
    text = render_doc(study, out, figs, doc)
    from ray_rthpo.report.files import atomic_write_text

    atomic_write_text(doc, text)
    print(f"wrote {doc} and {sum(p is not None for p in figs.values())} figures in {figures}")
    return 0


__all__ = ["COMMANDS", "fmt_beta", "fmt_window", "Study", "load_study", "render_doc", "write_report",
           "sign_log_lock_in", "figure_heatmaps", "figure_windows", "figure_eta", "figure_robustness"]
