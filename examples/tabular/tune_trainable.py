"""(b) The same model in a plain Ray Tune function trainable, with RTHPO inside and BO around it.

    python examples/tabular/tune_trainable.py --storage /tmp/ray_results     # ~1 min on 2 CPUs

A Tune user's own trainable (no ray_rthpo trainer): it builds the model and ``RTHPO``, reports every epoch
with ``ray.tune.report`` and a checkpoint holding the model and ``opt.state_dict()`` (eta, tangents and
AdamW moments), and continues from ``ray.tune.get_checkpoint()`` when Tune restores the trial. Around it,
``SkOptSearch`` (scikit-optimize's GP) chooses (eta-bar, beta) and ``ComputeBudgetStopper`` ends the
experiment when the trials' compute seconds, summed, reach the budget.

Workers import this file and ``tabular_demo`` from this folder: Ray puts the driver script's folder on
every worker's path when this script starts Ray (``python examples/tabular/tune_trainable.py``). On a
cluster, start Ray with ``runtime_env={"working_dir": <this folder>}`` or install the package on every node.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from ray import tune
from tabular_demo.data import load
from tabular_demo.model import build
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ray_rthpo.optim import RTHPO
from ray_rthpo.tune.budget import ComputeBudgetStopper
from ray_rthpo.tune.skopt_search import SkOptSearch

CHECKPOINT = "state.pt"


@torch.no_grad()
def evaluate(model: nn.Module, split: TensorDataset) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on a whole split."""
    model.eval()
    x, y = split.tensors
    logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train_tabular(config: dict[str, Any]) -> None:
    """One trial: AdamW + RT-HPO from ``config["lr"]`` and ``config["beta"]``, ``config["epochs"]`` epochs."""
    seed = int(config["seed"])
    torch.manual_seed(seed)
    splits = load(seed=seed)
    model = build(splits["train"].tensors[0].shape[1:], num_classes=2, hidden=int(config["hidden"]))
    opt = RTHPO(model.parameters(), lr=config["lr"], beta=config["beta"], base="adamw", weight_decay=0.01)
    start, compute_s = 0, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restored trial continues where its last report left it
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT), weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, compute_s = state["epoch"], state["compute_s"]
    for epoch in range(start, int(config["epochs"])):
        began = time.perf_counter()
        # the minibatch order depends on (seed, epoch) only, so a restored trial sees the same batches
        order = torch.Generator().manual_seed(seed * 10_000 + epoch)
        train_loader = DataLoader(splits["train"], batch_size=32, shuffle=True, generator=order)
        val_batches = itertools.cycle(DataLoader(splits["val"], batch_size=64, shuffle=True, generator=order))
        for x, y in train_loader:
            xv, yv = next(val_batches)
            opt.step(lambda: F.cross_entropy(model(x), y),  # noqa: B023 (called at once, inside step)
                     val_closure=lambda: F.cross_entropy(model(xv), yv))  # noqa: B023
            # a non-finite loss or hypergradient: the weights stay as they were; end the trial
            if opt.diverged:
                break
        val_loss, val_acc = evaluate(model, splits["val"])
        _, test_acc = evaluate(model, splits["test"])  # reported, never used to choose
        epoch_s = time.perf_counter() - began
        compute_s += epoch_s
        metrics = {"epoch": epoch + 1, "val/loss": val_loss, "val/acc": val_acc, "test/acc": test_acc,
                   "lr": opt.eta,
                   # what ComputeBudgetStopper counts: this epoch's seconds and the trial's running total
                   "time/epoch_s": epoch_s, "time/total_s": compute_s, "diverged": opt.diverged}
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                        "compute_s": compute_s}, os.path.join(folder, CHECKPOINT))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if opt.diverged:
            return


def run(storage_path: str, *, budget_s: float = 20.0, epochs: int = 8, num_samples: int = 20,
        name: str = "tabular_rthpo") -> tune.ResultGrid:
    """Tune (eta-bar, beta) of AdamW + RT-HPO by BO under a compute budget; returns Tune's ResultGrid."""
    space = {
        "lr": tune.loguniform(1e-4, 3e-2),
        "beta": tune.loguniform(1e-2, 1.0),  # the default rule's beta: relative change of eta per step
        "epochs": epochs, "seed": 0, "hidden": 64,  # constants, passed to every trial
    }
    tuner = tune.Tuner(
        tune.with_resources(train_tabular, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val/acc", mode="max", num_samples=num_samples,
                                    max_concurrent_trials=2,
                                    search_alg=SkOptSearch(seed=0, n_initial_points=3)),
        run_config=tune.RunConfig(storage_path=os.path.abspath(storage_path), name=name,
                                  stop=ComputeBudgetStopper(budget_s=budget_s),  # compute-s over all trials
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    return tuner.fit()


def main() -> None:
    """Command line: ``--storage``, ``--budget-s``, ``--epochs``, ``--num-samples``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="runs/ray", help="Ray Tune storage folder")
    parser.add_argument("--budget-s", type=float, default=20.0,
                        help="compute seconds, summed over all trials")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=20,
                        help="trials the searcher may start (the budget usually ends the experiment first)")
    args = parser.parse_args()
    best = run(args.storage, budget_s=args.budget_s, epochs=args.epochs,
               num_samples=args.num_samples).get_best_result()
    print(f"best by validation: lr {best.config['lr']:.3g}, beta {best.config['beta']:.3g}: "
          f"val/acc {best.metrics['val/acc']:.4f}, test/acc {best.metrics['test/acc']:.4f}")


if __name__ == "__main__":
    main()
