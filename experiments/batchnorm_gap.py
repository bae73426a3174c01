"""How far the hypergradient of a BatchNorm model is from the full derivative of the validation loss.

    python experiments/batchnorm_gap.py

RT-HPO evaluates the validation loss with BatchNorm in eval mode and treats the running statistics as
constants: ``h = grad E(w_T) . z_T`` is the derivative of ``E(w_T(eta))`` with the statistics held at
their values (``tests/test_optim.py`` proves that equality by central differences). The running
statistics also depend on eta (they are averages of the batch statistics along the trajectory), so
the full derivative differs. This prints both, in float64, on a 4-5-3 MLP with BatchNorm trained by
SGD for 6 steps (the tests' tiny setup), for three learning rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_rthpo.optim import RTHPO, ModelClosure  # noqa: E402


def tiny_bn_mlp() -> nn.Module:
    """The tests' 4-5-3 tanh MLP with BatchNorm1d, float64, seed 0."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()


def batches(n: int, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random float64 batches of 4 features, 3 classes."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def run(eta: float, train: list, val: tuple) -> tuple[nn.Module, RTHPO]:
    """SGD at a fixed eta (beta = 0) over ``train``, carrying the RT-HPO tangent."""
    model = tiny_bn_mlp()
    opt = RTHPO(model.parameters(), lr=eta, beta=0.0)
    for x, y in train:
        opt.step(ModelClosure(model, F.cross_entropy, x, y),
                 val_closure=ModelClosure(model, F.cross_entropy, *val))
    return model, opt


def main() -> None:
    """Print h and the full central-difference derivative for eta in (0.03, 0.1, 0.3)."""
    torch.set_num_threads(1)
    train, val = batches(6, 8, 1), batches(1, 16, 7)[0]
    print("eta    h (statistics fixed)   full dE/d eta   relative gap")
    for eta in (0.03, 0.1, 0.3):
        model, opt = run(eta, train, val)
        params = list(model.parameters())
        model.eval()
        grad_e = torch.autograd.grad(F.cross_entropy(model(val[0]), val[1]), params)
        h = float(sum((g * opt.state[p]["z"]).sum() for g, p in zip(grad_e, params, strict=True)))

        def loss_at(e: float) -> float:
            trained, _ = run(e, train, val)
            trained.eval()
            with torch.no_grad():
                return float(F.cross_entropy(trained(val[0]), val[1]))

        d = 1e-6
        full = (loss_at(eta + d) - loss_at(eta - d)) / (2 * d)
        print(f"{eta:<6} {h:>20.6f} {full:>15.6f} {abs(h - full) / abs(full):>13.1%}")


if __name__ == "__main__":
    main()
