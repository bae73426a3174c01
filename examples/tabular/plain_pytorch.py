"""(a) RTHPO in a plain PyTorch loop: AdamW whose learning rate tunes itself on a validation minibatch.

    python examples/tabular/plain_pytorch.py            # 20 epochs, a few seconds on a CPU

The model, data and loss are the user's own (``tabular_demo``); the optimizer is the README's three lines:
``RTHPO(..., base="adamw")`` in place of ``torch.optim.AdamW``, and ``opt.step(closure, val_closure=...)``
in place of ``loss.backward(); opt.step()``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tabular_demo.data import load
from tabular_demo.model import build
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ray_rthpo.optim import RTHPO


@torch.no_grad()
def accuracy(model: nn.Module, split: TensorDataset) -> float:
    """Accuracy of ``model`` (eval mode) on a whole split."""
    model.eval()
    x, y = split.tensors
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def train(epochs: int = 20, seed: int = 0) -> dict[str, float]:
    """Train the user's model with AdamW + RT-HPO; returns the final validation and test accuracy and eta."""
    torch.manual_seed(seed)
    splits = load(seed=seed)
    model = build(splits["train"].tensors[0].shape[1:], num_classes=2)
    loss_fn = F.cross_entropy
    shuffle = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(splits["train"], batch_size=32, shuffle=True, generator=shuffle)
    val_batches: Iterator = itertools.cycle(DataLoader(splits["val"], batch_size=64, shuffle=True,
                                                       generator=shuffle))

    opt = RTHPO(model.parameters(), lr=1e-3, base="adamw", weight_decay=0.01)  # instead of torch.optim.AdamW
    for epoch in range(1, epochs + 1):
        for x, y in train_loader:
            xv, yv = next(val_batches)  # a validation minibatch: never the test set
            loss = opt.step(lambda: loss_fn(model(x), y), val_closure=lambda: loss_fn(model(xv), yv))  # noqa: B023
        print(f"epoch {epoch:>2}  train/loss {loss.item():.4f}  val/acc "
              f"{accuracy(model, splits['val']):.4f}  lr {opt.eta:.3g}", flush=True)
    return {"val_acc": accuracy(model, splits["val"]), "test_acc": accuracy(model, splits["test"]),
            "lr": opt.eta}


def main() -> None:
    """Command line: ``--epochs``, ``--seed``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = train(args.epochs, args.seed)
    print(f"validation accuracy {result['val_acc']:.4f}, test accuracy {result['test_acc']:.4f}, "
          f"final lr {result['lr']:.3g}")


if __name__ == "__main__":
    main()
