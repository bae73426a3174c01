"""Tiny float64 models, batches and an unrolled-SGD oracle shared by the hypergradient tests."""

from __future__ import annotations

import torch
from torch import nn

from ray_rthpo.config import LRConfig, OptimConfig
from ray_rthpo.hypergrad.reference import flat_loss_fn, flat_params
from ray_rthpo.training.steppers import HypergradientStepper, hypergradient_stepper


def tiny_model(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    """A smooth 4-5-3 tanh MLP in float64 (optionally with a BatchNorm layer)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 5)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(5))
    layers += [nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).double()


def batches(n: int, size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random float64 minibatches of 4 features and 3 classes."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (size,), generator=gen))
        for _ in range(n)
    ]


#: The exact setting of the hypergradient methods (the run configs' defaults are the cheap ones).
EXACT: dict[str, object] = {"preset": "exact", "beta_horizon": "step", "backoff": None, "tune_fraction": 1.0}


def controller(
    model: nn.Module, *, method: str = "rthpo", eta0: float = 0.3, beta: float = 0.0, mu: float = 1.0,
    momentum: float = 0.0, weight_decay: float = 0.0, hvp: str = "double_backward", base: str = "sgd",
    hyper_update: str = "additive", **lr_kwargs: object,
) -> HypergradientStepper:
    """The trainer's hypergradient stepper over ``model``: a fresh :class:`ray_rthpo.optim.RTHPO`, with the
    paper's additive rule unless told otherwise (the literal references implement eq. 2), in the exact
    setting (every step, whole batches, beta per step, no backoff) unless ``lr_kwargs`` say otherwise."""
    lr_kwargs = {**EXACT, **lr_kwargs}
    lr_cfg = LRConfig(method=method, eta0=eta0, beta=beta, mu=mu, hvp=hvp, hyper_update=hyper_update,
                      **lr_kwargs)  # type: ignore[arg-type]
    optim_cfg = OptimConfig(momentum=momentum, weight_decay=weight_decay, base=base)
    return hypergradient_stepper(model, lr_cfg, optim_cfg)


def unrolled_weights(
    model: nn.Module, w0: torch.Tensor, eta: torch.Tensor, data: list, *, momentum: float, weight_decay: float
) -> torch.Tensor:
    """``w_T`` as a differentiable function of a constant ``eta``: SGD unrolled over ``data``."""
    w, v = w0, torch.zeros_like(w0)
    for x, y in data:
        g = torch.func.grad(flat_loss_fn(model, x, y))(w)
        v = momentum * v + g + weight_decay * w
        w = w - eta * v
    return w


def controller_flat_z(ctrl: HypergradientStepper) -> torch.Tensor:
    """The controller's tangent ``z`` as one flat vector."""
    return torch.cat([t.reshape(-1) for t in ctrl.z])


__all__ = ["tiny_model", "batches", "controller", "unrolled_weights", "controller_flat_z", "flat_params"]
