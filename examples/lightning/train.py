"""A LightningModule trained by RTHPO: AdamW whose learning rate tunes itself on validation batches.

    python examples/lightning/train.py --max-epochs 2     # scikit-learn's digits, a few seconds on a CPU

What differs from a LightningModule trained by ``torch.optim.AdamW`` is four lines: ``RTHPOMixin`` in the
bases, ``self.automatic_optimization = False``, ``RTHPO(...)`` in ``configure_optimizers`` and
``return self.rthpo_step(batch)`` as ``training_step``. The validation batches of the hypergradient come from
the datamodule's ``val_dataloader()`` (through the trainer), the same loader Lightning validates on; the
test split is never seen by the tuning.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ray_rthpo.lightning import RTHPOCheck, RTHPOMixin
from ray_rthpo.optim import RTHPO


class Digits(L.LightningDataModule):
    """scikit-learn's 8x8 digits (1,797 images, offline), split 60/20/20 into train/validation/test."""

    def __init__(self, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        """Load, scale to [0, 1] and split (the same split for every stage)."""
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
        parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[i], y[i]) for i in parts)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        """Validation batches: Lightning's validation and RTHPO's hypergradient both draw from it."""
        return DataLoader(self.val_set, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        """The held-out test split."""
        return DataLoader(self.test_set, batch_size=256)


class DigitsNet(RTHPOMixin, L.LightningModule):
    """A small MLP over the 64 pixels; RTHPO over AdamW tunes its learning rate."""

    def __init__(self, lr: float = 1e-3, beta: float | None = None, hidden: int = 128) -> None:
        super().__init__()
        self.automatic_optimization = False  # RTHPO steps inside training_step
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.history: list[tuple[float, float]] = []  # (training loss, learning rate) per step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.net(x)

    def configure_optimizers(self) -> RTHPO:
        """RTHPO over AdamW, in place of torch.optim.AdamW."""
        return RTHPO(self.parameters(), lr=self.hparams.lr, beta=self.hparams.beta, base="adamw",
                     weight_decay=0.01)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One RTHPO step; it logs lr, hypergrad and train_loss."""
        loss = self.rthpo_step(batch)
        self.history.append((float(loss), self.optimizers().optimizer.eta))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation loss and accuracy."""
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Test accuracy."""
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())


def train(max_epochs: int = 2, lr: float = 1e-3, beta: float | None = None, seed: int = 0,
          quiet: bool = False) -> dict[str, Any]:
    """Fit on CPU; returns the learning rate at start and end, the first and last epochs' mean training
    losses, the validation and test accuracy, and the steps taken."""
    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    data, model = Digits(seed=seed), DigitsNet(lr=lr, beta=beta)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[RTHPOCheck()])
    print(f"lr at start: {lr:.6g}", flush=True)
    trainer.fit(model, datamodule=data)
    val_acc = float(trainer.callback_metrics["val_acc"])
    test_acc = trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"]
    per_epoch = len(model.history) // max_epochs
    losses = [loss for loss, _ in model.history]
    result = {"lr_start": lr, "lr_end": model.history[-1][1], "steps": trainer.global_step,
              "loss_first_epoch": sum(losses[:per_epoch]) / per_epoch,
              "loss_last_epoch": sum(losses[-per_epoch:]) / per_epoch,
              "val_acc": val_acc, "test_acc": float(test_acc)}
    print(f"lr at end:   {result['lr_end']:.6g}  ({result['steps']} steps)", flush=True)
    if not quiet:
        print(f"train loss: first epoch {result['loss_first_epoch']:.4f} -> last epoch "
              f"{result['loss_last_epoch']:.4f};  val acc {result['val_acc']:.4f}  test acc {test_acc:.4f}  "
              f"({time.perf_counter() - start:.1f} s)")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: ``--max-epochs``, ``--lr``, ``--beta``, ``--seed``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="the initial learning rate")
    parser.add_argument("--beta", type=float, default=None, help="the hyper-learning rate (default: RTHPO's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner about GPUs and tips
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own, about torch's pytree API
    return train(args.max_epochs, args.lr, args.beta, args.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
