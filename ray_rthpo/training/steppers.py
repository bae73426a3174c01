"""Learning-rate methods as steppers: one object per run that performs a training step.

* :class:`HypergradientController` (``rthpo``, ``marthe``, ``hd_train``, ``hd_val``) sits beside a
  ``torch.optim.SGD`` and, every step, computes the training gradient (with ``H z`` when the
  tangent needs it), the hypergradient, the new learning rate (paper eq. 2), the SGD step, and the
  tangent update. The learning rate lives only in ``param_group["lr"]`` as a Python float, read
  every step and written back; it is saved by the optimizer's own ``state_dict()``.
* :class:`ScheduleStepper` (``fixed``, ``exp_decay``, ``cosine``) and the optimizer methods
  (``adadelta``, ``prodigy``, ``schedule_free``) are plain optimizer steps, with the learning rate set
  from a schedule (or left to the optimizer, which adapts its own step size).
* ``schedule_free`` (``schedulefree.SGDScheduleFree``) trains at one point ``y`` and evaluates at
  the average ``x``: the trainer calls ``stepper.train_mode()`` before the steps of an epoch and
  ``stepper.eval_mode()`` before evaluating, so checkpoints (written after an epoch) hold ``x``.
  For the other methods both are no-ops.

Call order, for every minibatch::

    stepper = build_stepper(model, config, steps_per_epoch)
    out = stepper.train_step(x, y, epoch=epoch, val_batch=sample_validation_batch)
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.config import SCHEDULE_METHODS, Config, LRConfig, OptimConfig
from ray_rthpo.errors import ConfigError
from ray_rthpo.hypergrad import functional as fn
from ray_rthpo.hypergrad.hvp import (
    HVP_ROUTES,
    GradHVP,
    default_hvp_route,
    frozen_batchnorm_stats,
    grad_and_hvp_double_backward,
    grad_and_hvp_forward_over_reverse,
    has_batchnorm,
    validation_directional_derivative,
    validation_gradient,
)

ValBatchFn = Callable[[], tuple[torch.Tensor, torch.Tensor]]


class StepOutput(NamedTuple):
    """What one training step reports: minibatch loss and logits (detached), eta used, hypergradient."""

    loss: torch.Tensor
    logits: torch.Tensor
    eta: float
    hypergrad: float | None
    hyper_seconds: float
    diverged: bool


def read_lr(optimizer: torch.optim.Optimizer) -> float:
    """The one learning rate of ``optimizer`` (all param groups share it), as a Python float.

    For Prodigy, which keeps its adapted distance estimate ``d`` in the param group, this is the
    effective step size ``d * lr`` (``lr`` is only a multiplier there, 1.0 by default).
    """
    group = optimizer.param_groups[0]
    if "d" in group and "d0" in group:  # prodigyopt.Prodigy's group: lr, d, d0, d_max, d_coef, ...
        return float(group["d"]) * float(group["lr"])
    return float(group["lr"])


def write_lr(optimizer: torch.optim.Optimizer, eta: float) -> None:
    """Set the learning rate of every param group to the Python float ``eta``."""
    for group in optimizer.param_groups:
        group["lr"] = float(eta)


class HypergradientController:
    """RT-HPO (paper eq. 2 and 5), MARTHE's discounted tangent, and the first-order rules (eq. 6).

    ``method``: ``rthpo`` (mu = 1), ``marthe`` (mu from the config), ``hd_val`` (mu = 0, validation
    gradient), ``hd_train`` (mu = 0, the regularised training gradient ``d_t`` in place of grad E).
    The step at time t, with weights ``w_t`` and tangent ``z_t = dw_t/d eta``:

    1. ``g_t`` and (if mu != 0) ``H_t z_t`` at ``w_t`` on the training minibatch, in one pass
       (``hvp_route``: ``double_backward``, ``forward_over_reverse`` or ``forward_over_reverse_bn``);
    2. ``h_t = grad E(w_t) . z_t`` and ``eta_t = clip(eta_{t-1} - beta h_t, 0, eta_max)``;
    3. the SGD step with ``eta_t`` (momentum and weight decay as in ``torch.optim.SGD``);
    4. ``z_{t+1} = mu z_t - eta_t u_{t+1} - v_{t+1}`` with the *current* ``eta_t``.

    Sub-sampling (``lr_cfg.subsampling``, the paper's proposal): the HVP only every ``hvp_every``
    steps (``H z`` dropped in between) on the first ``hvp_batch_fraction`` of the minibatch (the
    gradient of the step stays the full-batch one), and step 2 only every ``val_every`` steps on
    the first ``val_batch_fraction`` of the validation minibatch: eta is unchanged in between and
    moves by ``val_every * beta * h_t`` on a due step, ``h_t`` standing for the ``val_every``
    hypergradients since the last update, so that beta means the same per step as in exact RT-HPO. One
    host sync per step: the loss's finiteness, read together with ``h_t`` when there is one.
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.SGD, lr_cfg: LRConfig, optim_cfg: OptimConfig,
        *, hvp_route: str,
    ) -> None:
        if lr_cfg.method not in ("rthpo", "marthe", "hd_train", "hd_val"):
            raise ConfigError(f"lr.method {lr_cfg.method!r} is not a hypergradient method.")
        if hvp_route not in HVP_ROUTES:
            raise ConfigError(f"hvp_route must be one of {', '.join(HVP_ROUTES)}, but got {hvp_route!r}; "
                              "resolve lr.hvp: auto with default_hvp_route first.")
        self.model = model
        self.optimizer = optimizer
        self.cfg = lr_cfg
        self.sub = lr_cfg.subsampling
        self.val_mode = lr_cfg.val_mode
        self.momentum = optim_cfg.momentum
        self.weight_decay = optim_cfg.weight_decay
        self.method = lr_cfg.method
        self.mu = {"rthpo": 1.0, "hd_train": 0.0, "hd_val": 0.0}.get(lr_cfg.method, lr_cfg.mu)
        self.hvp_route = hvp_route
        if hvp_route == "forward_over_reverse" and has_batchnorm(model):
            raise ConfigError(
                "lr.hvp is forward_over_reverse, but the model has BatchNorm, whose running statistics "
                "torch.func cannot update; set lr.hvp to forward_over_reverse_bn, double_backward or auto."
            )
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.z = [torch.zeros_like(p) for p in self.params]
        self.u = [torch.zeros_like(p) for p in self.params] if self.momentum != 0.0 else None
        self.step_count = 0
        self.last_hypergrad = 0.0

    # -- the step -------------------------------------------------------------------------------
    def _grad_and_hvp(self, x: torch.Tensor, y: torch.Tensor, want_hvp: bool) -> tuple[GradHVP, list | None]:
        """``g`` on the whole minibatch and, when ``want_hvp``, ``H z`` on its first examples."""
        if not want_hvp:
            return grad_and_hvp_double_backward(self.model, x, y, self.params, None), None
        k = _head_size(x.shape[0], self.sub.hvp_batch_fraction)
        if k >= x.shape[0]:
            out = self._route(x, y)  # g and H z in one pass: the gradient is never computed twice
            return out, out.hz
        out = grad_and_hvp_double_backward(self.model, x, y, self.params, None)
        with frozen_batchnorm_stats(self.model):  # the full-batch forward already moved the statistics
            sub = self._route(x[:k], y[:k])
        return out, sub.hz

    def _route(self, x: torch.Tensor, y: torch.Tensor) -> GradHVP:
        if self.hvp_route == "double_backward":
            return grad_and_hvp_double_backward(self.model, x, y, self.params, self.z)
        return grad_and_hvp_forward_over_reverse(
            self.model, x, y, self.named_params, self.z, replay_batchnorm=self.hvp_route == "forward_over_reverse_bn"
        )

    def _hypergradient(self, grads: list[torch.Tensor], val_batch: ValBatchFn | None) -> torch.Tensor:
        """``h_t`` as a 0-d tensor (no host sync): eq. (5), or eq. (6) for ``hd_train``."""
        if self.method == "hd_train":
            return fn.dot(self._regularised(grads), self.z)
        if val_batch is None:
            raise ValueError(f"lr.method {self.method!r} needs a validation batch every step; pass val_batch.")
        xv, yv = val_batch()
        k = _head_size(xv.shape[0], self.sub.val_batch_fraction)
        xv, yv = xv[:k], yv[:k]
        if self.val_mode == "forward":
            _, h = validation_directional_derivative(self.model, xv, yv, self.named_params, self.z)
            return h
        _, grad_e = validation_gradient(self.model, xv, yv, self.params)
        return fn.dot(grad_e, self.z)

    def _regularised(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.weight_decay == 0.0:
            return grads
        return torch._foreach_add(grads, [p.detach() for p in self.params], alpha=self.weight_decay)

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int = 0, val_batch: ValBatchFn | None = None
    ) -> StepOutput:
        """One RT-HPO/MARTHE/first-order step on minibatch ``(x, y)``; see the class docstring."""
        t = self.step_count
        want_hvp = self.mu != 0.0 and t % self.sub.hvp_every == 0
        out, hz = self._grad_and_hvp(x, y, want_hvp)
        start = time.perf_counter()
        eta = read_lr(self.optimizer)
        h: float | None = None
        if t > 0 and t % self.sub.val_every == 0:  # z_0 = 0, so h_0 = 0: skip the work
            h_tensor = self._hypergradient(out.grads, val_batch)
            loss_value, h = torch.stack([out.loss.double(), h_tensor.double()]).tolist()  # the one sync
            if not math.isfinite(loss_value):
                return StepOutput(out.loss, out.logits, eta, None, 0.0, True)
            if not math.isfinite(h):
                return StepOutput(out.loss, out.logits, eta, h, time.perf_counter() - start, True)
            # h_t stands for the val_every steps since the last update, so beta keeps its per-step scale.
            eta = fn.lr_step(eta, h, beta=self.cfg.beta * self.sub.val_every, eta_max=self.cfg.eta_max,
                             clip=self.cfg.hypergrad_clip)
            write_lr(self.optimizer, eta)
            self.last_hypergrad = h
        elif not bool(torch.isfinite(out.loss)):  # the one sync of a step without a hypergradient
            return StepOutput(out.loss, out.logits, eta, None, 0.0, True)
        hyper_s = time.perf_counter() - start

        direction = self._regularised(out.grads) if self.momentum == 0.0 else None
        for p, g in zip(self.params, out.grads, strict=True):
            p.grad = g
        self.optimizer.step()
        if direction is None:
            direction = [self.optimizer.state[p]["momentum_buffer"] for p in self.params]

        start = time.perf_counter()
        fn.tangent_step_(self.z, self.u, hz, direction, eta=eta, mu=self.mu, momentum=self.momentum,
                         weight_decay=self.weight_decay)
        self.step_count += 1
        hyper_s += time.perf_counter() - start
        return StepOutput(out.loss, out.logits, eta, h, hyper_s, False)

    def train_mode(self) -> None:
        """Nothing to do (see :meth:`ScheduleStepper.train_mode`)."""

    def eval_mode(self, bn_batches: Iterable[torch.Tensor] = ()) -> bool:
        """Nothing to do: the weights are evaluated where they are trained (returns False)."""
        return False

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tangents, mu, step count and last hypergradient (eta is in the optimizer's state_dict)."""
        return {
            "z": [t.detach().clone() for t in self.z],
            "u": None if self.u is None else [t.detach().clone() for t in self.u],
            "mu": self.mu,
            "step": self.step_count,
            "last_hypergrad": self.last_hypergrad,
            "hvp_route": self.hvp_route,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (tensors are copied onto the parameters' devices)."""
        # Copies: the tangents are updated in place, and must never alias the caller's state dict.
        self.z = [t.to(p.device, p.dtype, copy=True) for t, p in zip(state["z"], self.params, strict=True)]
        self.u = None if state["u"] is None else [
            t.to(p.device, p.dtype, copy=True) for t, p in zip(state["u"], self.params, strict=True)
        ]
        self.mu = float(state["mu"])
        self.step_count = int(state["step"])
        self.last_hypergrad = float(state["last_hypergrad"])
        self.hvp_route = str(state.get("hvp_route", self.hvp_route))


def _head_size(n: int, fraction: float) -> int:
    """How many leading examples of a batch of ``n`` a sub-sampling ``fraction`` keeps (at least 1)."""
    return n if fraction >= 1.0 else max(1, min(n, int(round(fraction * n))))


def scheduled_lr(lr_cfg: LRConfig, *, epoch: int, step: int, total_steps: int) -> float:
    """The learning rate of the fixed schedules: ``fixed``, ``exp_decay`` (eta0 gamma^epoch), ``cosine``."""
    if lr_cfg.method == "exp_decay":
        return lr_cfg.eta0 * lr_cfg.gamma**epoch
    if lr_cfg.method == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return lr_cfg.eta_min + 0.5 * (lr_cfg.eta0 - lr_cfg.eta_min) * (1.0 + math.cos(math.pi * progress))
    return lr_cfg.eta0


class ScheduleStepper:
    """A plain optimizer step: SGD with the learning rate from :func:`scheduled_lr`, or an optimizer
    that sets its own step size (AdaDelta, Prodigy, Schedule-Free SGD), whose ``lr`` is left alone."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, lr_cfg: LRConfig, total_steps: int):
        self.model = model
        self.optimizer = optimizer
        self.cfg = lr_cfg
        self.total_steps = total_steps
        self.step_count = 0
        self.last_hypergrad = 0.0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.schedule_free = lr_cfg.method == "schedule_free"

    def train_mode(self) -> None:
        """Schedule-Free: move the weights to the training point ``y`` (call before the steps of an epoch)."""
        if self.schedule_free:
            self.optimizer.train()  # type: ignore[attr-defined]

    def eval_mode(self, bn_batches: Iterable[torch.Tensor] = ()) -> bool:
        """Schedule-Free: move the weights to the averaged point ``x`` (call before evaluating or saving).

        When the weights move, BatchNorm running statistics (gathered at ``y``) are re-estimated at
        ``x`` from ``bn_batches`` (model inputs; consumed only then). Returns True when the weights
        moved; False when they were already at ``x``, and always for the other methods.
        """
        if not self.schedule_free or not self.optimizer.param_groups[0]["train_mode"]:
            return False
        self.optimizer.eval()  # type: ignore[attr-defined]
        if has_batchnorm(self.model):
            refresh_batchnorm_stats(self.model, bn_batches)
        return True

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int = 0, val_batch: ValBatchFn | None = None
    ) -> StepOutput:
        """Set the scheduled learning rate, then one forward, backward and optimizer step."""
        if self.cfg.method in SCHEDULE_METHODS:
            write_lr(self.optimizer, scheduled_lr(self.cfg, epoch=epoch, step=self.step_count,
                                                  total_steps=self.total_steps))
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return StepOutput(loss.detach(), logits.detach(), read_lr(self.optimizer), None, 0.0, False)

    def state_dict(self) -> dict[str, Any]:
        """The step count (the learning rate and optimizer state are in the optimizer's state_dict)."""
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step count saved by :meth:`state_dict`."""
        self.step_count = int(state["step"])


Stepper = HypergradientController | ScheduleStepper


def build_stepper(
    model: nn.Module, config: Config, steps_per_epoch: int, device: torch.device
) -> tuple[torch.optim.Optimizer, Stepper]:
    """Create the inner optimizer and the stepper for ``config.lr.method``."""
    lr_cfg, optim_cfg = config.lr, config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = steps_per_epoch * config.train.epochs
    if lr_cfg.method == "adadelta":
        optimizer: torch.optim.Optimizer = torch.optim.Adadelta(
            params, lr=lr_cfg.eta0, weight_decay=optim_cfg.weight_decay
        )
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps)
    if lr_cfg.method == "prodigy":
        prodigyopt = _import_lrfree("prodigy", "prodigyopt")
        optimizer = prodigyopt.Prodigy(params, lr=lr_cfg.eta0, weight_decay=optim_cfg.weight_decay)
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps)
    if lr_cfg.method == "schedule_free":
        schedulefree = _import_lrfree("schedule_free", "schedulefree")
        # The library's momentum (0.9) unless optim.momentum sets one; it must lie in (0, 1).
        momentum = optim_cfg.momentum if optim_cfg.momentum > 0.0 else 0.9
        optimizer = schedulefree.SGDScheduleFree(params, lr=lr_cfg.eta0, momentum=momentum,
                                                 weight_decay=optim_cfg.weight_decay)
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps)
    sgd = torch.optim.SGD(params, lr=lr_cfg.eta0, momentum=optim_cfg.momentum,
                          weight_decay=optim_cfg.weight_decay)
    if lr_cfg.is_hypergradient:
        route = lr_cfg.hvp
        if route == "auto":
            route = default_hvp_route(model)
        return sgd, HypergradientController(model, sgd, lr_cfg, optim_cfg, hvp_route=route)
    return sgd, ScheduleStepper(model, sgd, lr_cfg, total_steps)


def _import_lrfree(method: str, package: str) -> Any:
    """Import the optional package behind a learning-rate-free method, or say how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ConfigError(f"lr.method {method} needs the package {package}; install it with "
                          f"pip install -e '.[lrfree]' (or pip install {package}).") from exc


@torch.no_grad()
def refresh_batchnorm_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Recompute BatchNorm running statistics at the current weights from ``batches`` (inputs only).

    Schedule-Free evaluates at the average ``x`` while the running statistics were gathered at the
    training point ``y`` (schedulefree's README, "Caveats"): the statistics are reset and re-estimated
    as a plain average over ``batches`` with the model in train mode; ``num_batches_tracked`` and the
    BatchNorm momentum are kept. Deterministic for fixed batches, so runs resume exactly.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
