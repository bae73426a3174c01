"""Final test accuracy of ``lr.preset: fast`` against exact RT-HPO, same eta-bar and beta, several seeds.

Usage (from the repository root; MNIST IDX files under ``../shared/data/MNIST/raw``)::

    python experiments/fast_vs_exact.py --json results/fast_vs_exact.json

Each (model, seed) trains once with ``lr.preset: exact`` and once with ``lr.preset: fast`` from
``configs/mnist_<model>.yaml``: the same data split, initial weights, batch order, eta-bar and beta
(``--beta`` per model: RT-HPO's beta scale differs by decades between networks; at the config's
1.0e-4 exact RT-HPO on LeNet-5 drives eta to 0 within the first epoch, so LeNet uses 3.0e-6).
It prints a table (mean and standard deviation over seeds of the final test accuracy, the final
eta, and the training seconds per epoch) and, with ``--json``, writes every run's final metrics.

``--threads`` (default 1) sets ``torch.set_num_threads``: the results do not depend on it, and one
thread keeps a shared machine's OpenMP oversubscription from slowing the runs by an order of
magnitude. Training seconds are reported for orientation only; ``bench_step_cost.py`` measures cost.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

# The package next to this script, not whichever copy is installed: the benchmark measures this code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_rthpo.config import load_config
from ray_rthpo.data import load_data
from ray_rthpo.training.trainer import run_training

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BETA = {"mlp": 1.0e-4, "lenet": 3.0e-6}
TARGET_POINTS = 0.3


def parse_betas(items: list[str]) -> dict[str, float]:
    """``["mlp=1.0e-4", "lenet=3.0e-6"]`` -> ``{"mlp": 1e-4, "lenet": 3e-6}`` over the defaults."""
    betas = dict(DEFAULT_BETA)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            betas[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or name not in DEFAULT_BETA:
            raise SystemExit(f"error: --beta expects MODEL=VALUE with MODEL in {sorted(DEFAULT_BETA)}, "
                             f"e.g. lenet=3.0e-6, but got {item!r}.")
    return betas


def run_one(model: str, seed: int, preset: str, *, epochs: int, eta0: float, beta: float, data_dir: str,
            data: Any) -> dict[str, Any]:
    """Train one configuration to the end; the final epoch's metrics plus what identifies the run."""
    config = load_config(REPO / "configs" / f"mnist_{model}.yaml", [
        f"lr.preset={preset}", f"lr.eta0={eta0!r}", f"lr.beta={beta:.6e}", f"train.epochs={epochs}",
        f"train.seed={seed}", "train.device=cpu", f"data.data_dir={data_dir}",
    ])
    start = time.perf_counter()
    history = run_training(config, data=data)
    last = history[-1]
    return {
        "model": model, "seed": seed, "preset": preset, "epochs": epochs, "eta0": eta0, "beta": beta,
        "subsampling": config.lr.subsampling._asdict(), "status": last["status"],
        "test_acc": last["test/acc"], "val_acc": last["val/acc"], "final_lr": last["lr"],
        "lr_per_epoch": [h["lr"] for h in history], "test_acc_per_epoch": [h["test/acc"] for h in history],
        "train_s_per_epoch": statistics.mean(h["time/train_s"] for h in history),
        "wall_s": time.perf_counter() - start,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, preset): mean and standard deviation of the final test accuracy (points) over seeds."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        means = {}
        for preset in dict.fromkeys(r["preset"] for r in runs if r["model"] == model):
            sel = [r for r in runs if r["model"] == model and r["preset"] == preset]
            accs = [100.0 * r["test_acc"] for r in sel]
            means[preset] = statistics.mean(accs)
            rows.append({
                "model": model, "preset": preset, "seeds": len(sel), "test_acc_mean": means[preset],
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "test_acc": accs,
                "final_lr_mean": statistics.mean(r["final_lr"] for r in sel),
                "train_s_per_epoch": statistics.mean(r["train_s_per_epoch"] for r in sel),
                "diverged": sum(r["status"] != "finished" for r in sel),
            })
        if "exact" in means and "fast" in means:
            gap = means["fast"] - means["exact"]
            acc = {(r["preset"], r["seed"]): 100.0 * r["test_acc"] for r in runs if r["model"] == model}
            paired = [acc[("fast", s)] - acc[("exact", s)] for p, s in acc if p == "exact"
                      and ("fast", s) in acc]
            rows[-1].update({"gap_to_exact_points": gap, "within_target": abs(gap) <= TARGET_POINTS,
                             "paired_gaps_points": paired,
                             "paired_gap_std_points": statistics.stdev(paired) if len(paired) > 1 else 0.0})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The summary as a Markdown table."""
    print("\n| model | preset | final test acc % (mean ± std) | per seed | final eta (mean) | train "
          "s/epoch | fast - exact |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gap = ""
        if "gap_to_exact_points" in r:
            seeds_gap = ", ".join(f"{g:+.2f}" for g in r["paired_gaps_points"])
            gap = (f"{r['gap_to_exact_points']:+.2f} ({'within' if r['within_target'] else 'OUTSIDE'} "
                   f"±{TARGET_POINTS}; per seed {seeds_gap})")
        seeds = ", ".join(f"{a:.2f}" for a in r["test_acc"])
        print(f"| {r['model']} | {r['preset']} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} | "
              f"{seeds} | {r['final_lr_mean']:.4f} | {r['train_s_per_epoch']:.1f} | {gap} |")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(DEFAULT_BETA), default=list(DEFAULT_BETA))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eta0", type=float, default=0.1)
    parser.add_argument("--beta", nargs="*", default=[], metavar="MODEL=VALUE",
                        help=f"hyper-learning rate per model (default {DEFAULT_BETA})")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or not args.seeds:
        print("error: --epochs and --threads must be >= 1 and --seeds must name at least one seed.",
              file=sys.stderr)
        return 2
    betas = parse_betas(args.beta)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, epochs {args.epochs}, "
          f"eta0 {args.eta0}, beta {betas}, seeds {args.seeds}")
    runs = []
    for model in args.models:
        for seed in args.seeds:
            base = load_config(REPO / "configs" / f"mnist_{model}.yaml",
                               [f"data.data_dir={args.data_dir}", f"train.seed={seed}"])
            data = load_data(base.data, seed)  # the same split for both presets
            for preset in ("exact", "fast"):
                run = run_one(model, seed, preset, epochs=args.epochs, eta0=args.eta0, beta=betas[model],
                              data_dir=args.data_dir, data=data)
                runs.append(run)
                print(f"{model} seed {seed} {preset:5s}: test acc {100 * run['test_acc']:.2f}%  "
                      f"final eta {run['final_lr']:.4f}  {run['status']}  "
                      f"({run['wall_s']:.0f} s)", flush=True)
    rows = summarize(runs)
    print_table(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(["python", "experiments/fast_vs_exact.py"]
                                                             + (argv if argv is not None else sys.argv[1:])),
                                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "summary": rows, "runs": runs}, indent=2,
                                        default=_json_default) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


if __name__ == "__main__":
    raise SystemExit(main())
