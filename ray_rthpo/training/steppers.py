"""Learning-rate methods as steppers: one object per run that performs a training step.

* :class:`HypergradientStepper` (``rthpo``, ``marthe``, ``hd_train``, ``hd_val``) drives the public
  optimizer :class:`ray_rthpo.optim.RTHPO` (over SGD or AdamW, ``optim.base``): the project's trainer is
  one user of that class, so there is one engine. The learning rate lives only in
  ``param_group["lr"]`` as a Python float; everything is saved by the optimizer's ``state_dict()``.
* :class:`ScheduleStepper` (``fixed``, ``exp_decay``, ``cosine`` over SGD or AdamW) and the optimizer
  methods (``adadelta``, ``prodigy``, ``schedule_free``) are plain optimizer steps, with the learning
  rate set from a schedule (or left to the optimizer, which adapts its own step size).
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
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.config import PEAK_SCHEDULED_METHODS, SCHEDULE_METHODS, Config, LRConfig, OptimConfig
from ray_rthpo.errors import ConfigError
from ray_rthpo.hypergrad.hvp import default_hvp_route, has_batchnorm
from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.optim.schedules import make_schedule

ValBatchFn = Callable[[], tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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

    For Prodigy and D-Adaptation, which keep their adapted distance estimate ``d`` in the param group,
    this is the effective step size ``d * lr`` (``lr`` is only a multiplier there, 1.0 by default); for
    DoG, its step size ``eta`` (the same for every tensor of a group; ``lr`` times ``reps_rel`` before the
    first step).
    """
    group = optimizer.param_groups[0]
    if "d" in group and ("d0" in group or "numerator_weighted" in group):  # Prodigy, D-Adaptation
        return float(group["d"]) * float(group["lr"])
    if "reps_rel" in group:  # dog.DoG
        etas = group.get("eta")
        return float(etas[0]) if etas else float(group["lr"]) * float(group["reps_rel"])
    return float(group["lr"])


def write_lr(optimizer: torch.optim.Optimizer, eta: float) -> None:
    """Set the learning rate of every param group to the Python float ``eta``."""
    for group in optimizer.param_groups:
        group["lr"] = float(eta)


class HypergradientStepper:
    """The trainer's door to :class:`ray_rthpo.optim.RTHPO` (``rthpo``, ``marthe``, ``hd_val``, ``hd_train``):
    every minibatch becomes a :class:`ray_rthpo.optim.ModelClosure` with the run's loss (cross-entropy, or
    ``train.loss``), and the validation batch one whose batch is drawn only when the step computes a
    hypergradient. All the state (eta, tangents, base-optimizer moments, the hyper-update's state) is the
    optimizer's."""

    def __init__(self, model: nn.Module, optimizer: RTHPO, hvp_route: str, loss_fn: LossFn = F.cross_entropy) -> None:
        self.model = model
        self.optimizer = optimizer
        self.hvp_route = hvp_route
        self.loss_fn = loss_fn

    @property
    def mu(self) -> float:
        """MARTHE's discount in effect."""
        return self.optimizer.mu

    @property
    def step_count(self) -> int:
        """Steps taken so far."""
        return self.optimizer.step_count

    @property
    def last_hypergrad(self) -> float:
        """The last hypergradient (0.0 before the first)."""
        return self.optimizer.last_hypergrad

    @property
    def z(self) -> list[torch.Tensor]:
        """The tangent ``dw/d eta``, one tensor per trained parameter (zeros before the first step)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        return [self.optimizer.state[p]["z"] if "z" in self.optimizer.state[p] else torch.zeros_like(p)
                for p in params]

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int = 0, val_batch: ValBatchFn | None = None
    ) -> StepOutput:
        """One RTHPO step on minibatch ``(x, y)``, the validation batch from ``val_batch`` when due."""
        closure = ModelClosure(self.model, self.loss_fn, x, y)
        val = ModelClosure(self.model, self.loss_fn, batch=val_batch) if val_batch is not None else None
        self.optimizer.step(closure, val_closure=val)
        info = self.optimizer.last_step
        assert info is not None and closure.output is not None
        return StepOutput(info.loss, closure.output, info.eta, info.hypergrad, info.hyper_seconds, info.diverged)

    def train_mode(self) -> None:
        """Nothing to do (see :meth:`ScheduleStepper.train_mode`)."""

    def eval_mode(self, bn_batches: Iterable[torch.Tensor] = ()) -> bool:
        """Nothing to do: the weights are evaluated where they are trained (returns False)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the optimizer's ``state_dict()`` (which holds eta, tangents and moments)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore here (see :meth:`state_dict`)."""


def peak_shape(lr_cfg: LRConfig, total_steps: int) -> Callable[[int], float] | None:
    """``lr.schedule``'s shape for the methods whose lr follows it (:data:`PEAK_SCHEDULED_METHODS`), else None."""
    if lr_cfg.method in PEAK_SCHEDULED_METHODS and lr_cfg.schedule != "constant":
        return make_schedule(lr_cfg.schedule, max(1, total_steps), warmup=lr_cfg.warmup)
    return None


def scheduled_lr(lr_cfg: LRConfig, *, epoch: int, step: int, total_steps: int,
                 shape: Callable[[int], float] | None = None) -> float:
    """The learning rate of the fixed schedules: ``fixed`` (eta0, times the factor at ``step`` of
    ``lr.schedule``'s shape, :func:`peak_shape`, which a caller stepping often passes as ``shape``: the peak
    of a warmup + decay shape), ``exp_decay`` (eta0 gamma^epoch), ``cosine``."""
    if shape is None:
        shape = peak_shape(lr_cfg, total_steps)
    if shape is not None:
        return lr_cfg.eta0 * shape(step)
    if lr_cfg.method == "exp_decay":
        return lr_cfg.eta0 * lr_cfg.gamma**epoch
    if lr_cfg.method == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return lr_cfg.eta_min + 0.5 * (lr_cfg.eta0 - lr_cfg.eta_min) * (1.0 + math.cos(math.pi * progress))
    return lr_cfg.eta0


class ScheduleStepper:
    """A plain optimizer step: SGD with the learning rate from :func:`scheduled_lr`, or an optimizer
    that sets its own step size (AdaDelta, Prodigy, Schedule-Free SGD), whose ``lr`` is left alone."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, lr_cfg: LRConfig, total_steps: int,
                 loss_fn: LossFn = F.cross_entropy):
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.cfg = lr_cfg
        self.total_steps = total_steps
        self.step_count = 0
        self.last_hypergrad = 0.0
        self.mu = 0.0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.schedule_free = lr_cfg.method == "schedule_free"
        self.shape = peak_shape(lr_cfg, total_steps)  # built once: it is read every step
        self.scheduled = lr_cfg.method in SCHEDULE_METHODS or self.shape is not None
        #: DoG's weight averager (dog.PolynomialDecayAverager), stepped after every optimizer step; the
        #: model holds the average between eval_mode() and train_mode(), the training weights are kept here.
        self.averager: Any = None
        self._train_weights: dict[str, torch.Tensor] | None = None

    def train_mode(self) -> None:
        """Schedule-Free: move the weights to the training point ``y``; DoG: put the training weights back
        in place of the average (call before the steps of an epoch)."""
        if self.schedule_free:
            self.optimizer.train()  # type: ignore[attr-defined]
        if self._train_weights is not None:
            self.model.load_state_dict(self._train_weights)
            self._train_weights = None

    def eval_mode(self, bn_batches: Iterable[torch.Tensor] = ()) -> bool:
        """Schedule-Free: move the weights to the averaged point ``x`` (call before evaluating or saving).

        When the weights move, BatchNorm running statistics (gathered at ``y``) are re-estimated at
        ``x`` from ``bn_batches`` (model inputs; consumed only then). Returns True when the weights
        moved; False when they were already at ``x``, and always for the other methods.
        """
        if self.averager is not None:
            if self._train_weights is not None:
                return False
            self._train_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.averager.averaged_model.state_dict())
            return True
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
        if self.scheduled:
            write_lr(self.optimizer, scheduled_lr(self.cfg, epoch=epoch, step=self.step_count,
                                                  total_steps=self.total_steps, shape=self.shape))
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        self.optimizer.step()
        if self.averager is not None:
            self.averager.step()
        self.step_count += 1
        return StepOutput(loss.detach(), logits.detach(), read_lr(self.optimizer), None, 0.0, False)

    def state_dict(self) -> dict[str, Any]:
        """The step count (the learning rate and optimizer state are in the optimizer's state_dict); for
        DoG also its averager and, while the model holds the average, the training weights."""
        out: dict[str, Any] = {"step": self.step_count}
        if self.averager is not None:
            out["averager"] = self.averager.state_dict()
            out["train_weights"] = self._train_weights
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.step_count = int(state["step"])
        if self.averager is not None:
            self.averager.load_state_dict(state["averager"])
            self._train_weights = state["train_weights"]




def hypergradient_stepper(model: nn.Module, lr_cfg: LRConfig, optim_cfg: OptimConfig,
                          loss_fn: LossFn = F.cross_entropy, total_steps: int | None = None) -> HypergradientStepper:
    """An :class:`ray_rthpo.optim.RTHPO` over ``model``'s trainable parameters, configured by the run
    config's ``lr`` and ``optim`` sections (``lr.hvp: auto`` resolved by the fixed rule
    :func:`ray_rthpo.hypergrad.hvp.default_hvp_route`), behind the trainer's stepper interface.
    ``total_steps`` (the run's length) sets ``lr.schedule``'s horizon and ``lr.beta_horizon``'s T."""
    route = default_hvp_route(model) if lr_cfg.hvp == "auto" else lr_cfg.hvp
    if route == "forward_over_reverse" and has_batchnorm(model):
        raise ConfigError(
            "lr.hvp is forward_over_reverse, but the model has BatchNorm, whose running statistics "
            "torch.func cannot update; set lr.hvp to forward_over_reverse_bn, double_backward or auto."
        )
    total = max(1, total_steps) if total_steps is not None else None
    sub = lr_cfg.subsampling_for(total)
    params = [p for p in model.parameters() if p.requires_grad]
    rthpo = RTHPO(params, lr=lr_cfg.eta0, beta=lr_cfg.beta, base=optim_cfg.base, method=lr_cfg.method,
                  mu=lr_cfg.mu if lr_cfg.method == "marthe" else None, momentum=optim_cfg.momentum,
                  weight_decay=optim_cfg.weight_decay, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                  eta_max=lr_cfg.eta_max, hypergrad_clip=lr_cfg.hypergrad_clip, hyper_update=lr_cfg.hyper_update,
                  hvp=route, val_mode=lr_cfg.val_mode, hvp_every=sub.hvp_every,
                  hvp_batch_fraction=sub.hvp_batch_fraction, val_every=sub.val_every,
                  val_batch_fraction=sub.val_batch_fraction, model=model, timing=True,
                  schedule=None if lr_cfg.schedule == "constant" else lr_cfg.schedule,
                  total_steps=total, warmup=lr_cfg.warmup,
                  beta_horizon=lr_cfg.beta_horizon, tune_fraction=lr_cfg.tune_fraction,
                  backoff=lr_cfg.backoff)
    return HypergradientStepper(model, rthpo, route, loss_fn)


class Stepper(Protocol):
    """What the trainer needs of a learning-rate method: a training step, the state it keeps beyond the
    optimizer's, and what it reports (``mu``, ``last_hypergrad``, ``step_count``)."""

    optimizer: torch.optim.Optimizer

    @property
    def mu(self) -> float: ...

    @property
    def last_hypergrad(self) -> float: ...

    @property
    def step_count(self) -> int: ...

    def train_step(self, x: torch.Tensor, y: torch.Tensor, *, epoch: int = 0,
                   val_batch: ValBatchFn | None = None) -> StepOutput: ...

    def train_mode(self) -> None: ...

    def eval_mode(self, bn_batches: Iterable[torch.Tensor] = ()) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_stepper(
    model: nn.Module, config: Config, steps_per_epoch: int, device: torch.device,
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[torch.optim.Optimizer, Stepper]:
    """Create the optimizer and the stepper for ``config.lr.method`` over ``config.optim.base``; every step
    minimises ``loss_fn(model(x), y)`` (cross-entropy unless the run names ``train.loss``)."""
    lr_cfg, optim_cfg = config.lr, config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = steps_per_epoch * config.train.epochs
    adamw = optim_cfg.base == "adamw"
    if adamw and lr_cfg.method in ("adadelta", "prodigy", "dog"):
        raise ConfigError(f"lr.method {lr_cfg.method} is its own optimizer, so optim.base adamw does not apply; "
                          "set optim.base: sgd.")
    if lr_cfg.method == "adadelta":
        optimizer: torch.optim.Optimizer = torch.optim.Adadelta(
            params, lr=lr_cfg.eta0, weight_decay=optim_cfg.weight_decay
        )
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps, loss_fn)
    if lr_cfg.method == "prodigy":
        prodigyopt = _import_lrfree("prodigy", "prodigyopt")
        optimizer = prodigyopt.Prodigy(params, lr=lr_cfg.eta0, weight_decay=optim_cfg.weight_decay)
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps, loss_fn)
    if lr_cfg.method == "dog":
        dog = _import_lrfree("dog", "dog")
        optimizer = dog.DoG(params, weight_decay=optim_cfg.weight_decay)
        stepper = ScheduleStepper(model, optimizer, lr_cfg, total_steps, loss_fn)
        stepper.averager = dog.PolynomialDecayAverager(model)
        return optimizer, stepper
    if lr_cfg.method == "dadapt":
        dadaptation = _import_lrfree("dadapt", "dadaptation")
        if adamw:
            optimizer = dadaptation.DAdaptAdam(params, lr=lr_cfg.eta0, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                                               weight_decay=optim_cfg.weight_decay, decouple=True)
        else:
            optimizer = dadaptation.DAdaptSGD(params, lr=lr_cfg.eta0, momentum=optim_cfg.momentum,
                                              weight_decay=optim_cfg.weight_decay)
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps, loss_fn)
    if lr_cfg.method == "schedule_free":
        schedulefree = _import_lrfree("schedule_free", "schedulefree")
        if adamw:
            optimizer = schedulefree.AdamWScheduleFree(params, lr=lr_cfg.eta0, betas=tuple(optim_cfg.betas),
                                                       eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
        else:  # the library's momentum (0.9) unless optim.momentum sets one; it must lie in (0, 1)
            momentum = optim_cfg.momentum if optim_cfg.momentum > 0.0 else 0.9
            optimizer = schedulefree.SGDScheduleFree(params, lr=lr_cfg.eta0, momentum=momentum,
                                                     weight_decay=optim_cfg.weight_decay)
        return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps, loss_fn)
    if lr_cfg.is_hypergradient:
        stepper = hypergradient_stepper(model, lr_cfg, optim_cfg, loss_fn, total_steps)
        return stepper.optimizer, stepper
    if adamw:
        optimizer = torch.optim.AdamW(params, lr=lr_cfg.eta0, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                                      weight_decay=optim_cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=lr_cfg.eta0, momentum=optim_cfg.momentum,
                                    weight_decay=optim_cfg.weight_decay)
    return optimizer, ScheduleStepper(model, optimizer, lr_cfg, total_steps, loss_fn)


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
