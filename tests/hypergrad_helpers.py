"""Tiny float64 models, batches and an unrolled-SGD oracle shared by the hypergradient tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.config import LRConfig, OptimConfig
from ray_rthpo.hypergrad.reference import flat_loss_fn, flat_params
from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.training.methods import rthpo_from_config


class StepOutput(NamedTuple):
    """One step as the tests read it: the loss and logits (detached), the eta used, the hypergradient (None
    when none was computed), the seconds of hypergradient work, and whether it diverged."""

    loss: torch.Tensor
    logits: torch.Tensor
    eta: float
    hypergrad: float | None
    hyper_seconds: float
    diverged: bool


class ConfigRTHPO:
    """The RTHPO a run config builds (ray_rthpo/training/methods.py: rthpo_from_config), stepped as the
    Trainer steps it: every minibatch a ModelClosure, the validation batch one drawn only when due."""

    def __init__(self, model: nn.Module, optimizer: RTHPO) -> None:
        self.model = model
        self.optimizer = optimizer

    @property
    def mu(self) -> float:
        return self.optimizer.mu

    @property
    def step_count(self) -> int:
        return self.optimizer.step_count

    @property
    def last_hypergrad(self) -> float:
        return self.optimizer.last_hypergrad

    @property
    def z(self) -> list[torch.Tensor]:
        """The tangent, one tensor per trained parameter (zeros before the first step)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        return [self.optimizer.state[p]["z"] if "z" in self.optimizer.state[p] else torch.zeros_like(p)
                for p in params]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, *,
                   val_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None) -> StepOutput:
        closure = ModelClosure(self.model, F.cross_entropy, x, y)
        val = ModelClosure(self.model, F.cross_entropy, batch=val_batch) if val_batch is not None else None
        self.optimizer.step(closure, val_closure=val)
        info = self.optimizer.last_step
        assert info is not None and closure.output is not None
        return StepOutput(info.loss, closure.output, info.eta, info.hypergrad, info.hyper_seconds,
                          info.diverged)


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
        (torch.randn(size, 4, generator=gen, dtype=torch.float64),
         torch.randint(0, 3, (size,), generator=gen))
        for _ in range(n)
    ]


#: The exact setting of the hypergradient methods (the run configs' defaults are the cheap ones).
EXACT: dict[str, object] = {"preset": "exact", "beta_horizon": "step", "backoff": None, "tune_fraction": 1.0}


def controller(
    model: nn.Module, *, method: str = "rthpo", eta0: float = 0.3, beta: float = 0.0, mu: float = 1.0,
    momentum: float = 0.0, weight_decay: float = 0.0, hvp: str = "double_backward", base: str = "sgd",
    hyper_update: str = "additive", **lr_kwargs: object,
) -> ConfigRTHPO:
    """The Trainer's RTHPO over ``model`` from a run config (:class:`ConfigRTHPO`), with the
    paper's additive rule unless told otherwise (the literal references implement eq. 2), in the exact
    setting (every step, whole batches, beta per step, no backoff) unless ``lr_kwargs`` say otherwise."""
    lr_kwargs = {**EXACT, **lr_kwargs}
    lr_cfg = LRConfig(method=method, eta0=eta0, beta=beta, mu=mu, hvp=hvp, hyper_update=hyper_update,
                      **lr_kwargs)  # type: ignore[arg-type]
    optim_cfg = OptimConfig(momentum=momentum, weight_decay=weight_decay, base=base)
    return ConfigRTHPO(model, rthpo_from_config(model, lr_cfg, optim_cfg))


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


def tangents(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """RTHPO's tangent, one tensor per parameter that has one (empty for any other optimizer)."""
    return [optimizer.state[p]["z"] for g in optimizer.param_groups for p in g["params"]
            if "z" in optimizer.state.get(p, {})]


def controller_flat_z(ctrl: ConfigRTHPO) -> torch.Tensor:
    """The controller's tangent ``z`` as one flat vector."""
    return torch.cat([t.reshape(-1) for t in ctrl.z])


__all__ = ["ConfigRTHPO", "StepOutput", "tangents", "tiny_model", "batches", "controller", "unrolled_weights",
           "controller_flat_z", "flat_params"]
