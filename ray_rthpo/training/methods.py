"""The learning-rate methods of a run config (``lr.method`` over ``optim.base``), as what the Trainer steps.

:func:`build_optimizer` returns a :class:`RunOptimizer`: a ``torch.optim`` optimizer, and where the method's
learning rate follows a schedule a ``torch.optim.lr_scheduler.LambdaLR`` stepped after every optimizer step
(and DoG's weight averager). The Trainer (ray_rthpo/training/trainer.py) calls ``optimizer.step(...)``
itself: RTHPO's ``step(closure, val_closure=)``, or ``backward()`` and ``step()`` for the others.

* ``rthpo``, ``marthe``, ``hd_val``, ``hd_train``: :class:`ray_rthpo.optim.RTHPO`, its keywords read from
  the config by :func:`ray_rthpo.optim.settings.from_config` (each setting is declared once there);
* ``fixed`` (``lr.eta0``, times ``lr.schedule``'s shape when one is set), ``exp_decay`` (eta0 gamma^epoch),
  ``cosine`` (eta0 to eta_min over the run): ``torch.optim.SGD`` / ``AdamW`` with a LambdaLR;
* ``adadelta``, ``prodigy``, ``dadapt`` (their lr multiplier follows ``lr.schedule``), ``schedule_free``,
  ``dog``: the optimizers that set their own step size.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ray_rthpo.config import PEAK_SCHEDULED_METHODS, Config, LRConfig, OptimConfig
from ray_rthpo.errors import ConfigError
from ray_rthpo.optim import RTHPO
from ray_rthpo.optim import settings as rthpo_settings
from ray_rthpo.optim.schedules import make_schedule

Factor = Callable[[int], float]


@dataclass
class RunOptimizer:
    """What a run steps: the optimizer, the scheduler of its lr (None when it has none) and DoG's averager
    (``dog.PolynomialDecayAverager``, stepped after every optimizer step; None for the other methods)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    averager: Any = None

    @property
    def hypergradient(self) -> bool:
        """True for the methods whose learning rate RTHPO tunes (its ``step`` takes the closures)."""
        return isinstance(self.optimizer, RTHPO)

    @property
    def schedule_free(self) -> bool:
        """True for Schedule-Free, which trains at ``y`` and is evaluated at the average ``x``."""
        return "train_mode" in self.optimizer.param_groups[0] and hasattr(self.optimizer, "eval")


def read_lr(optimizer: torch.optim.Optimizer) -> float:
    """The one learning rate of ``optimizer`` (all param groups share it), as a Python float.

    For Prodigy and D-Adaptation, which keep their adapted distance estimate ``d`` in the param group,
    this is the effective step size ``d * lr`` (``lr`` is only a multiplier there, 1.0 by default); for
    DoG, its step size ``eta`` (the same for every tensor of a group; ``lr`` times ``reps_rel`` before the
    first step). For RTHPO it is the tuned value (the scale, on a schedule; ``opt.eta`` is the rate).
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


def peak_shape(lr_cfg: LRConfig, total_steps: int) -> Factor | None:
    """``lr.schedule``'s shape for the methods whose lr follows it (:data:`PEAK_SCHEDULED_METHODS`), else
    None."""
    if lr_cfg.method in PEAK_SCHEDULED_METHODS and lr_cfg.schedule != "constant":
        return make_schedule(lr_cfg.schedule, max(1, total_steps), warmup=lr_cfg.warmup)
    return None


def lr_factor(lr_cfg: LRConfig, total_steps: int, steps_per_epoch: int) -> Factor | None:
    """The factor on ``lr.eta0`` at each step of the run (the LambdaLR of the method), None when it is 1:
    ``lr.schedule``'s shape (:func:`peak_shape`), ``exp_decay``'s ``gamma ** epoch``, ``cosine``'s decay from
    1 to ``eta_min / eta0`` over ``total_steps``."""
    shape = peak_shape(lr_cfg, total_steps)
    if shape is not None:
        return shape
    if lr_cfg.method == "exp_decay":
        gamma, per_epoch = lr_cfg.gamma, max(1, steps_per_epoch)
        return lambda step: gamma ** (step // per_epoch)
    if lr_cfg.method == "cosine":
        eta0, eta_min, total = lr_cfg.eta0, lr_cfg.eta_min, max(1, total_steps)

        def cosine(step: int) -> float:
            progress = min(1.0, step / total)
            return (eta_min + 0.5 * (eta0 - eta_min) * (1.0 + math.cos(math.pi * progress))) / eta0

        return cosine
    return None


def scheduled_lr(lr_cfg: LRConfig, *, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` of the methods with a schedule (``lr.eta0`` times
    :func:`lr_factor`)."""
    factor = lr_factor(lr_cfg, total_steps, steps_per_epoch)
    return lr_cfg.eta0 if factor is None else lr_cfg.eta0 * factor(step)


def rthpo_from_config(model: nn.Module, lr_cfg: LRConfig, optim_cfg: OptimConfig,
                      total_steps: int | None = None) -> RTHPO:
    """An :class:`ray_rthpo.optim.RTHPO` over ``model``'s trainable parameters, configured by the run config's
    ``lr`` and ``optim`` sections: every key that is an RTHPO setting (ray_rthpo/optim/settings.py), with
    the preset's sub-sampling for a run of ``total_steps`` (:meth:`LRConfig.subsampling_for`), the shape
    ``lr.schedule`` over the run, ``lr.mu`` for ``marthe`` only, and ``lr.hvp: auto`` resolved by RTHPO from
    the model. A setting the model rules out is a ConfigError naming the config's key."""
    sections = {"lr": lr_cfg, "optim": optim_cfg}

    def read(key: str) -> Any:
        section, name = key.split(".", 1)
        return getattr(sections[section], "eta0" if key == "lr.eta0" else name)

    total = max(1, total_steps) if total_steps is not None else None
    kwargs = rthpo_settings.from_config(read)
    kwargs.update(lr_cfg.subsampling_for(total)._asdict())
    kwargs.update(method=lr_cfg.method, betas=tuple(optim_cfg.betas), total_steps=total,
                  schedule=None if lr_cfg.schedule == "constant" else lr_cfg.schedule)
    if lr_cfg.method != "marthe":
        kwargs.pop("mu")
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return RTHPO(params, model=model, timing=True, **kwargs)
    except rthpo_settings.SettingError as exc:
        keys = {name: key for key, name in rthpo_settings.CONFIG_KEYS.items()}
        raise ConfigError(f"{keys.get(exc.label, exc.label)} {exc.detail}") from None


def build_optimizer(model: nn.Module, config: Config, steps_per_epoch: int) -> RunOptimizer:
    """The optimizer (and lr scheduler) of ``config.lr.method`` over ``config.optim.base`` for ``model``'s
    trainable parameters, for a run of ``steps_per_epoch * train.epochs`` steps."""
    lr_cfg, optim_cfg = config.lr, config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = steps_per_epoch * config.train.epochs
    adamw = optim_cfg.base == "adamw"
    if adamw and lr_cfg.method in ("adadelta", "prodigy", "dog"):
        raise ConfigError(f"lr.method {lr_cfg.method} is its own optimizer, so optim.base adamw does "
                          "not apply; set optim.base: sgd.")
    if lr_cfg.is_hypergradient:
        return RunOptimizer(rthpo_from_config(model, lr_cfg, optim_cfg, total_steps))
    averager = None
    optimizer: torch.optim.Optimizer
    if lr_cfg.method == "adadelta":
        optimizer = torch.optim.Adadelta(params, lr=lr_cfg.eta0, weight_decay=optim_cfg.weight_decay)
    elif lr_cfg.method == "prodigy":
        prodigyopt = _import_lrfree("prodigy", "prodigyopt")
        optimizer = prodigyopt.Prodigy(params, lr=lr_cfg.eta0, weight_decay=optim_cfg.weight_decay)
    elif lr_cfg.method == "dog":
        dog = _import_lrfree("dog", "dog")
        optimizer = dog.DoG(params, weight_decay=optim_cfg.weight_decay)
        averager = dog.PolynomialDecayAverager(model)
    elif lr_cfg.method == "dadapt":
        dadaptation = _import_lrfree("dadapt", "dadaptation")
        if adamw:
            optimizer = dadaptation.DAdaptAdam(params, lr=lr_cfg.eta0, betas=tuple(optim_cfg.betas),
                                               eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
                                               decouple=True)
        else:
            optimizer = dadaptation.DAdaptSGD(params, lr=lr_cfg.eta0, momentum=optim_cfg.momentum,
                                              weight_decay=optim_cfg.weight_decay)
    elif lr_cfg.method == "schedule_free":
        schedulefree = _import_lrfree("schedule_free", "schedulefree")
        if adamw:
            optimizer = schedulefree.AdamWScheduleFree(params, lr=lr_cfg.eta0, betas=tuple(optim_cfg.betas),
                                                       eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
        else:  # the library's momentum (0.9) unless optim.momentum sets one; it must lie in (0, 1)
            momentum = optim_cfg.momentum if optim_cfg.momentum > 0.0 else 0.9
            optimizer = schedulefree.SGDScheduleFree(params, lr=lr_cfg.eta0, momentum=momentum,
                                                     weight_decay=optim_cfg.weight_decay)
    elif adamw:
        optimizer = torch.optim.AdamW(params, lr=lr_cfg.eta0, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                                      weight_decay=optim_cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=lr_cfg.eta0, momentum=optim_cfg.momentum,
                                    weight_decay=optim_cfg.weight_decay)
    factor = lr_factor(lr_cfg, total_steps, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor) if factor is not None else None
    return RunOptimizer(optimizer, scheduler, averager)


def move_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put ``scheduler`` at ``step`` (a resumed run): its count, and every group's lr
    ``base_lr * factor(step)`` from its base lrs (this config's ``lr.eta0``, so that a population-based
    exploit's new eta0 applies)."""
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler.last_epoch = step
    scheduler._last_lr = lrs  # what get_last_lr() returns


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
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
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


__all__ = ["RunOptimizer", "build_optimizer", "rthpo_from_config", "read_lr", "write_lr", "peak_shape",
           "lr_factor", "scheduled_lr", "move_scheduler", "refresh_batchnorm_stats"]
