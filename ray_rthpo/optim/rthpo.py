"""RT-HPO as a ``torch.optim.Optimizer``: the learning rate adapted online by a hypergradient.

    opt = RTHPO(model.parameters(), lr=0.1, base="adamw", weight_decay=0.01)
    for x, y in train_loader:
        xv, yv = next(val_batches)
        loss = opt.step(lambda: loss_fn(model(x), y), val_closure=lambda: loss_fn(model(xv), yv))

One step at ``w_t`` with the tangent ``z_t = dw_t/d eta`` (paper: Majumder, Donini, Chaudhari 2019):

1. the training gradient ``g_t`` and, when the tangent needs it, ``H_t z_t`` (a Hessian-vector product)
   from ``closure``;
2. the hypergradient ``h_t = grad E(w_t) . z_t`` (paper eq. 5) from ``val_closure`` (``hd_train``: the
   training gradient in its place), and the new learning rate ``eta_t`` by ``hyper_update``
   (:mod:`ray_rthpo.hypergrad.hyper_updates`; ``additive`` is the paper's eq. 2);
3. the base optimizer's step with ``eta_t``: SGD (momentum, L2 weight decay) or AdamW (decoupled
   weight decay), computed by torch's own functional ``sgd`` / ``adam``, so the weights follow
   ``torch.optim.SGD`` / ``torch.optim.AdamW`` exactly;
4. the tangent's step with the same ``eta_t`` (:func:`ray_rthpo.hypergrad.functional.tangent_step_`,
   :func:`ray_rthpo.hypergrad.adamw.adamw_tangent_step_`), discounted by MARTHE's ``mu``.

With ``schedule=`` the tuned quantity is the scale ``s`` of a schedule shape ``phi``
(:mod:`ray_rthpo.optim.schedules`): step ``t`` uses ``eta_t = s phi(t)``, the tangent is ``zeta = dw/ds``
(the same recursions with ``phi_t`` on their direction term) and the hypergradient ``dE/ds``; the
update rules move ``s`` as they move eta without one (``phi = 1``, bit for bit).

The learning rate lives in ``param_group["lr"]`` as a Python float, read and written every step; the
tangents, the base optimizer's moments and the hyper-update's state live in ``self.state``, so
``state_dict()`` / ``load_state_dict()`` continue a run exactly.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.optim.adam import adam as _torch_adam
from torch.optim.sgd import sgd as _torch_sgd

from ray_rthpo.hypergrad import functional as fn
from ray_rthpo.hypergrad import hyper_updates
from ray_rthpo.hypergrad.adamw import adamw_tangent_decay_, adamw_tangent_step_
from ray_rthpo.hypergrad.hvp import (
    default_hvp_route,
    eval_mode,
    frozen_batchnorm_stats,
    grad_and_hvp_forward_over_reverse,
    has_batchnorm,
    hvp_of_gradient,
    loss_gradient,
    validation_directional_derivative,
)
from ray_rthpo.optim import schedules, settings
from ray_rthpo.optim.closures import ModelClosure

Closure = Callable[[], torch.Tensor]

if "decoupled_weight_decay" not in inspect.signature(_torch_adam).parameters:  # pyproject.toml: torch >= 2.7
    raise ImportError(f"ray_rthpo's RTHPO needs torch >= 2.7 (its AdamW step is torch's functional adam with "
                      f"decoupled_weight_decay), but this is torch {torch.__version__}; pip install "
                      "'torch>=2.7'.")

#: The names each setting allows, and the settings every param group shares: declared once, in
#: ray_rthpo/optim/settings.py, with every setting's range, default and fix.
METHOD_MU = settings.METHOD_MU
METHODS = settings.METHODS
BASES = settings.BASES
HVP_ROUTES = settings.HVP_ROUTES
VAL_MODES = settings.VAL_MODES
SHARED = settings.SHARED
#: Settings added after the first checkpoints were written, with the value that reproduces them: a state
#: saved without them loads as a run with no horizon scaling and no known length.
LATER_SETTINGS = {"beta_horizon": "step", "total_steps": None, "tune_fraction": 1.0, "backoff": None,
                  "backoff_rollback": False, "hypergrad_at": "weights", "average_window": 0.1,
                  "agreement_gain": 1.0}
#: ``hypergrad_at="average"``: the per-parameter state keys of the running average of the weights and of
#: its tangent (kept while tuning, freed after it).
AVERAGE = ("avg_w", "avg_z")
#: ``backoff_rollback``: the per-parameter state keys of the copy kept before each tuning step are
#: ``UNDO + key`` (``UNDO + "param"`` for the weights), its loss is the global state's ``"undo_loss"``; the
#: momentum (and its tangent) restart from zero when a step is undone.
UNDO = "undo_"
RESTARTED = ("momentum_buffer", "u")
#: ``backoff``: the tuned value is multiplied by this on a loss spike, and no other spike counts for the
#: next BACKOFF_COOLDOWN steps; LOSS_EMA is the weight of a step's loss in the running mean it is compared
#: with.
BACKOFF_FACTOR = 0.5
BACKOFF_COOLDOWN = 10
LOSS_EMA = 0.1
#: ... and a spike must also rise above that mean by this fraction of the run's first loss, so that the
#: noise of small minibatch losses late in a run is no spike.
SPIKE_FLOOR = 0.25
#: Key of the optimizer-wide state in ``self.state`` (saved by ``state_dict()`` as is).
GLOBAL = "rthpo"


class StepInfo(NamedTuple):
    """What the last step did: its loss (0-d, detached), the learning rate it used, the hypergradient
    (None when none was computed), the seconds spent on hypergradient work, and whether it diverged."""

    loss: torch.Tensor
    eta: float
    hypergrad: float | None
    hyper_seconds: float
    diverged: bool


class RTHPO(torch.optim.Optimizer):
    """Real-time hyper-parameter optimisation of the learning rate, over SGD or AdamW.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer. Groups may differ in
            ``weight_decay``, ``momentum`` (SGD), ``betas`` and ``eps`` (AdamW); they share one learning
            rate, which is the one being tuned (and every setting in :data:`SHARED`).
        lr: the initial learning rate eta-bar (> 0, at most ``eta_max``); with a ``schedule``, the initial
            scale ``s`` (the peak of the built-in shapes). None: the base optimizer's default, as in torch
            (``torch.optim.SGD`` and ``torch.optim.AdamW``: 1e-3). ``param_group["lr"]`` holds the tuned
            value (eta, or ``s`` with a schedule); :attr:`eta` and ``last_step.eta`` are the learning rate
            itself.
        beta: the hyper-learning rate; its meaning follows ``hyper_update`` (``additive``: eta^2 per unit
            of loss, decades apart between models; the scale-free rules: relative change of eta per
            step, or per ``sqrt(T)`` steps with ``beta_horizon="sqrt"``). None: the rule's default
            (:func:`ray_rthpo.hypergrad.hyper_updates.default_beta`).
        base: ``"sgd"`` (``momentum``, L2 ``weight_decay`` as ``torch.optim.SGD``) or ``"adamw"``
            (``betas``, ``eps``, decoupled ``weight_decay`` as ``torch.optim.AdamW``).
        weight_decay: None: the base optimizer's default, as in torch (SGD 0, AdamW 0.01); so
            ``RTHPO(params, base="adamw")`` starts where ``torch.optim.AdamW(params)`` does.
        method: ``"rthpo"`` (exact tangent, mu = 1), ``"marthe"`` (discounted tangent, ``mu`` in [0, 1]),
            ``"hd_val"`` (first order: mu = 0, validation gradient), ``"hd_train"`` (first order with the
            training gradient in place of the validation one: Baydin et al. 2018; no ``val_closure``).
        mu: MARTHE's discount; only for ``method="marthe"``.
        eta_max: eta is kept in ``[0, eta_max]``.
        hypergrad_clip: clip the hypergradient to ``[-c, c]`` (the training gradient is never touched).
        hyper_update: ``"multiplicative"`` (the default, chosen in docs/beta.md), ``"additive"`` (the
            paper's eq. 2), ``"adam_log"`` or ``"sign_log"`` (:mod:`ray_rthpo.hypergrad.hyper_updates`
            gives each equation).
        hvp: how ``H z`` is computed: ``"double_backward"`` (any closure), ``"forward_over_reverse"``
            (one ``torch.func`` pass; needs a :class:`ModelClosure`, refuses train-mode BatchNorm),
            ``"forward_over_reverse_bn"`` (the same with BatchNorm statistics replayed once), or
            ``"auto"``: ``forward_over_reverse_bn`` for a ModelClosure of a model with BatchNorm, else
            ``double_backward``.
        val_mode: ``"backward"`` (a validation gradient) or ``"forward"`` (a JVP of the validation loss
            along z; needs a :class:`ModelClosure`).
        hvp_every, hvp_batch_fraction: the HVP only every k-th step (``H z`` dropped in between) and on
            the first fraction of the batch (a fraction below 1 needs a :class:`ModelClosure`).
        val_every, val_batch_fraction: the hypergradient only every k-th step (eta moves by k steps'
            worth on a due step) on the first fraction of the validation batch (below 1: ModelClosure).
        model: the module, if the closures are bare functions: the validation term then runs with it in
            eval mode. With a :class:`ModelClosure` the closure names its module itself.
        timing: measure the seconds of hypergradient work (``last_step.hyper_seconds``; on CUDA this
            synchronises the device around each part).
        schedule: None (a flat learning rate), a shape name of
            :data:`ray_rthpo.optim.schedules.SCHEDULES` (``"warmup_cosine"``, ``"warmup_linear"``: they need
            ``total_steps``) or a callable ``step -> factor``: the learning rate of step ``t`` is then
            ``s * schedule(t)`` and ``s`` is what the hypergradient tunes.
        total_steps: the run's number of steps ``T`` (needed by the named shapes; used by
            ``beta_horizon="sqrt"``, which assumes
            :data:`ray_rthpo.hypergrad.hyper_updates.ASSUMED_HORIZON` when it is None).
        warmup: the named shapes' warmup, a fraction of ``total_steps`` or a number of steps.
        beta_horizon: ``"step"`` (beta per step) or ``"sqrt"`` (``beta / sqrt(T)`` per step, so that the
            drift of a noisy hypergradient over the run does not grow with its length;
            :mod:`ray_rthpo.hypergrad.hyper_updates`).
        tune_fraction: the hypergradient work (HVP, validation term, tangent) runs over the first
            ``ceil(tune_fraction * total_steps)`` steps only; after that the tuned value stays and each step
            is the base optimizer's alone (on the schedule, at plain cost). 1.0 (or no ``total_steps``):
            every step.
        backoff: None, or a factor ``k > 1``: while tuning, a step whose training loss exceeds ``k`` times the
            running mean of the losses before it (weight :data:`LOSS_EMA`), and that mean by
            :data:`SPIKE_FLOOR` times the first step's loss, halves the tuned value
            (:data:`BACKOFF_FACTOR`), at most once every :data:`BACKOFF_COOLDOWN` steps: a guard against a
            learning rate above the stable range, which the hypergradient sees only once the loss has risen.
        backoff_rollback: with ``backoff``, a spike also undoes the step that led to it: the weights and
            every state tensor go back to a copy kept before that step (SGD's momentum and its tangent
            restart from zero), this step's update is not taken, the value halves whatever the cooldown,
            and later losses are compared with the loss of the point returned to. Costs a copy of the
            weights and state per tuning step (freed when tuning ends; saved by ``state_dict()``, so a
            resume is exact). Measured in docs/method.md: it rescues SGD runs started far above the stable
            range and costs accuracy over AdamW. None: the base's default
            (ray_rthpo/optim/settings.py, ``BASE_DEFAULTS``).
        hypergrad_at: ``"weights"`` (the paper's ``h_t = grad E(w_t) . z_t``) or ``"average"``: the
            validation loss at a running average ``w-bar_t`` of the weights, differentiated along the same
            average of the tangents, ``h_t = grad E(w-bar_t) . z-bar_t = dE(w-bar_t)/ds`` exactly (the
            average is linear in the weights). The loss of a noisy iterate rises with the learning rate in
            the short run even where a larger one ends lower once the schedule anneals, which biases the
            hypergradient toward small rates; the average is nearer the point the run heads for. The weights
            hold ``w-bar`` for the validation pass only; ``w-bar`` and ``z-bar`` are two more tensors per
            parameter while tuning (saved by ``state_dict()``, freed when tuning ends). Not with
            ``method="hd_train"``. Measured in docs/method.md.
        average_window: with ``hypergrad_at="average"``, the average's time constant as a fraction of
            ``total_steps`` (1000 steps assumed without it): after step ``n`` the new weights count
            ``max(1/n, 1/(average_window T))``, the plain mean of the weights so far, then an exponential one.
        agreement_gain: with ``hyper_update="multiplicative"``, how much further a hypergradient that
            agrees in sign with the ones before it moves the scale: ``min(r, agreement_gain)`` times, ``r``
            the count of agreeing signs in a row (in log space; ray_rthpo/hypergrad/hyper_updates.py). 1
            (the default): off. Measured in docs/method.md.
        process_group: data parallelism (docs/distributed.md). None: when ``torch.distributed`` is
            initialised, average over the default group; a ``torch.distributed.ProcessGroup``: over that
            group; False: never (each process steps on its own batch, as without ``torch.distributed``).
            Not a param-group setting and not saved by ``state_dict()``.

    BatchNorm. The validation term must not move running statistics and must use them as a model in
    eval mode does: RTHPO guarantees it when ``val_closure`` is a :class:`ModelClosure` or ``model`` is
    given (the module is put in eval mode for that pass and restored). With a bare ``val_closure`` and
    no ``model``, the closure must do it itself (``model.eval()`` inside, ``model.train()`` after). The
    training closure runs once per step (one BatchNorm update); a sub-batch HVP runs with the running
    statistics frozen. The hypergradient treats the running statistics as constants.

    Data parallelism. Under ``torch.distributed`` (a group of more than one process) each rank passes its
    shard of the batch and of the validation batch; RTHPO averages the loss, the training gradient, ``H z``
    and the validation term (the hypergradient alone when the rule needs no norm) over the group in ONE
    ``all_reduce`` per step, weighting each rank by its :class:`ModelClosure`'s batch size (a bare closure
    counts 1: every rank must then average over as many examples), so that every rank takes the step one
    process takes on the whole batch and holds the same weights, tangents and learning rate, bit for bit;
    the returned loss is the whole batch's. Losses must be means over their examples. Every rank must start
    from the same weights and state (checked once, at the first step after construction or loading). A
    ``DistributedDataParallel`` module is refused (pass its ``.module``), and so is train-mode BatchNorm
    (SyncBatchNorm included) under data parallelism; ``hvp_batch_fraction`` and ``val_batch_fraction`` take
    the first examples of every rank's shard.

    ``step`` computes the gradients itself from ``closure`` (``p.grad`` is neither read nor written) and
    returns the training loss. A non-finite loss or hypergradient leaves the weights untouched and sets
    :attr:`diverged`; later steps then raise, until ``load_state_dict`` restores an earlier state.
    """

    def __init__(self, params: Iterable[Any], lr: float | None = None, beta: float | None = None, *,
                 base: str = "sgd", method: str = "rthpo", mu: float | None = None, momentum: float = 0.0,
                 weight_decay: float | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, eta_max: float = 10.0,
                 hypergrad_clip: float | None = None, hyper_update: str = hyper_updates.DEFAULT_HYPER_UPDATE,
                 hvp: str = "auto", val_mode: str = "backward", hvp_every: int = 1,
                 hvp_batch_fraction: float = 1.0, val_every: int = 1, val_batch_fraction: float = 1.0,
                 model: nn.Module | None = None, timing: bool = False,
                 schedule: str | schedules.Schedule | None = None, total_steps: int | None = None,
                 warmup: float = schedules.DEFAULT_WARMUP, beta_horizon: str = "step",
                 tune_fraction: float = 1.0, backoff: float | None = None,
                 backoff_rollback: bool | None = None,
                 hypergrad_at: str = "weights", average_window: float = 0.1,
                 agreement_gain: float = hyper_updates.DEFAULT_AGREEMENT_GAIN,
                 process_group: Any = None) -> None:
        # The settings that decide others' defaults first (their range check names them); the rest are
        # checked with the groups (_check_group), against ray_rthpo/optim/settings.py.
        settings.check({"base": base, "hyper_update": hyper_update, "method": method, "schedule": schedule,
                        "warmup": warmup})
        lr = settings.default("lr", base) if lr is None else lr
        weight_decay = settings.default("weight_decay", base) if weight_decay is None else weight_decay
        if backoff_rollback is None:
            backoff_rollback = settings.default("backoff_rollback", base)
        if beta is None:  # an unknown beta_horizon is refused with the other settings, by _check_group
            beta = hyper_updates.default_beta(hyper_update, beta_horizon)
        if mu is None:
            if method == "marthe":
                raise settings.SettingError("mu", "must be a number in [0, 1] for method='marthe', but "
                                            "got None; pass e.g. mu=0.9.")
            mu = METHOD_MU[method]
        elif method != "marthe" and mu != METHOD_MU[method]:
            raise settings.SettingError("mu",
                                        f"must be {METHOD_MU[method]} for method={method!r} (or left out), "
                                        f"but got {mu!r}; use method='marthe' for another discount.")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError("RTHPO: model must be a torch.nn.Module or None, but got "
                            f"{type(model).__name__}.")
        if hvp == "forward_over_reverse" and model is not None and has_batchnorm(model):
            raise settings.SettingError("hvp",
                                        "must not be forward_over_reverse for a model with BatchNorm, whose "
                                        "running statistics torch.func cannot update; set hvp to "
                                        "forward_over_reverse_bn, double_backward or auto.")
        defaults = dict(lr=lr, beta=beta, mu=mu, method=method, base=base, eta_max=eta_max,
                        hypergrad_clip=hypergrad_clip, hyper_update=hyper_update, hvp=hvp, val_mode=val_mode,
                        hvp_every=hvp_every, hvp_batch_fraction=hvp_batch_fraction, val_every=val_every,
                        val_batch_fraction=val_batch_fraction, momentum=momentum, weight_decay=weight_decay,
                        betas=tuple(betas), eps=eps, beta_horizon=beta_horizon, total_steps=total_steps,
                        tune_fraction=tune_fraction, backoff=backoff, backoff_rollback=backoff_rollback,
                        hypergrad_at=hypergrad_at, average_window=average_window,
                        agreement_gain=agreement_gain)
        self.model = model
        self.timing = bool(timing)
        self.last_step: StepInfo | None = None
        from ray_rthpo.optim.distributed import check_process_group  # not a group setting: never saved
        self.process_group = check_process_group(process_group)
        super().__init__(params, defaults)
        try:  # after the groups' checks (total_steps among them), so that only the shape's own errors remain
            self.schedule: schedules.Schedule = schedules.make_schedule(schedule, total_steps, warmup=warmup)
        except ValueError as exc:
            raise ValueError(f"RTHPO: {exc}") from None
        self.state[GLOBAL] = {"step": 0, "last_hypergrad": 0.0, "diverged": False,
                              "hyper": hyper_updates.initial_state()}

    # ------------------------------------------------------------------------------ validation
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's contract); its settings are checked, the shared ones against group 0, and a
        key that is no setting (a misspelt ``momentun``) is refused rather than stored and ignored."""
        if isinstance(param_group, dict):
            unknown = sorted(set(param_group) - set(self.defaults) - {"params", "name"})
            if unknown:
                close = difflib.get_close_matches(unknown[0], list(self.defaults), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"RTHPO: param group {len(self.param_groups)} has the key "
                                 f"{unknown[0]!r}, which is no setting of RTHPO; {hint}a group may set "
                                 f"{', '.join(sorted(self.defaults))}.")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group, len(self.param_groups) - 1)
        if len(self.param_groups) > 1:
            first = self.param_groups[0]
            for key in SHARED:
                if group[key] != first[key]:
                    raise ValueError(
                        f"RTHPO: param group {len(self.param_groups) - 1} has {key}={group[key]!r}, "
                        f"but group 0 has {first[key]!r}; RTHPO tunes one learning rate shared by all "
                        f"groups, so {key} must be the same in every group (groups may differ in "
                        "weight_decay, momentum, betas, eps).")

    @property
    def scale(self) -> float:
        """The tuned value: the learning rate, or with a ``schedule`` its scale ``s``
        (``param_group["lr"]``)."""
        return float(self.param_groups[0]["lr"])

    @property
    def eta(self) -> float:
        """The learning rate at the current scale and step count, ``s * phi(step)`` (shared by every
        group; without a schedule, the learning rate itself)."""
        return self.scale * schedules.factor(self.schedule, self.step_count)

    @property
    def diverged(self) -> bool:
        """True once a step saw a non-finite loss or hypergradient (its weights were left untouched)."""
        return bool(self.state[GLOBAL]["diverged"])

    @property
    def step_count(self) -> int:
        """Steps taken so far."""
        return int(self.state[GLOBAL]["step"])

    @property
    def tuning(self) -> bool:
        """True while steps still do hypergradient work (see ``tune_fraction``)."""
        first = self.param_groups[0]
        total, fraction = first["total_steps"], float(first["tune_fraction"])
        return fraction >= 1.0 or total is None or self.step_count < math.ceil(fraction * total)

    @property
    def mu(self) -> float:
        """MARTHE's discount in effect (1 for rthpo, 0 for the first-order methods)."""
        return float(self.param_groups[0]["mu"])

    @property
    def last_hypergrad(self) -> float:
        """The last hypergradient computed (0.0 before the first one)."""
        return float(self.state[GLOBAL]["last_hypergrad"])

    # ------------------------------------------------------------------------------------ step
    def step(self, closure: Closure | None = None, val_closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """One RT-HPO step (see the module doc); returns the training loss (0-d, detached).

        ``closure``: recomputes the training loss on this step's batch (no ``backward()``, no
        ``zero_grad()``: RTHPO differentiates it). ``val_closure``: the validation loss on a validation
        batch (not needed by ``method="hd_train"``); it is called only on the steps that compute a
        hypergradient.
        """
        if closure is None or not callable(closure):
            raise TypeError("RTHPO.step needs closure=, a function returning the training loss on the batch "
                            f"(got {closure!r}); e.g. opt.step(lambda: loss_fn(model(x), y), "
                            "val_closure=...).")
        state = self.state[GLOBAL]
        if state["diverged"]:
            raise RuntimeError(f"RTHPO: the run diverged at step {state['step']} (non-finite loss or "
                               "hypergradient); lower lr or beta, or set hypergrad_clip, and restart from a "
                               "state_dict saved before it.")
        first = self.param_groups[0]
        if "initial_lr" in first and not getattr(self, "_warned_scheduler", False):
            self._warned_scheduler = True
            warnings.warn("RTHPO: a torch.optim.lr_scheduler is attached to this optimizer "
                          "(its param groups have 'initial_lr'): each scheduler.step() overwrites "
                          "param_group['lr'], the value RTHPO tunes, so the scheduler's values replace the "
                          "hypergradient's. Drop the scheduler and pass its shape to RTHPO: "
                          "RTHPO(..., schedule='warmup_cosine', total_steps=T), or schedule=a callable step "
                          "-> factor; the hypergradient then tunes the shape's scale.",
                          UserWarning, stacklevel=2)
        groups = [(g, [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        params = [p for _, ps in groups for p in ps]
        if not params:
            raise ValueError("RTHPO: no parameter requires a gradient; pass the parameters being trained.")
        self._init_state(groups)
        z = [self.state[p]["z"] for p in params]
        t, mu, scale = int(state["step"]), float(first["mu"]), float(first["lr"])
        phi = schedules.factor(self.schedule, t)
        device = params[0].device
        clock = _Clock(self.timing and device.type == "cuda", device)

        tuning = self.tuning
        want_hvp = tuning and mu != 0.0 and t % int(first["hvp_every"]) == 0
        reps = self._replicas(closure, val_closure, params)
        with torch.enable_grad():
            loss, grads, hz = self._gradients(closure, params, z, want_hvp, first, clock)
        h: float | None = None
        undo = False  # backoff_rollback: this step's loss spiked and the step before it is undone
        rollback = tuning and first["backoff"] is not None and bool(first["backoff_rollback"])
        can_undo = rollback and state.get("undo_loss") is not None
        # z_0 = 0, so h_0 = 0: skip the work
        hyper_due = tuning and t > 0 and t % int(first["val_every"]) == 0
        grad_e: list[torch.Tensor] | torch.Tensor | None = None
        if reps is not None:  # data parallel: the whole batch's values, all from one all_reduce
            loss, grads, hz, grad_e = self._all_reduce(reps, closure, val_closure, loss, grads, hz, hyper_due,
                                                       params, z, first, clock)
        if hyper_due:
            clock.start()
            with torch.enable_grad(), self._at_point(params, z, first, grad_e is None) as z_at:
                h_tensor, norms = self._hypergradient(grads, params, z_at, val_closure, first, groups, grad_e)
            values = torch.stack([loss.detach().double(), h_tensor.double(),
                                  *(n.double() for n in norms)]).tolist()
            clock.stop()
            if not math.isfinite(values[0]) or not math.isfinite(values[1]):
                return self._diverge(loss, scale * phi, None if not math.isfinite(values[0])
                                     else values[1], clock)
            h = values[1]
            beta = hyper_updates.per_step_beta(float(first["beta"]), first["beta_horizon"],
                                               first["total_steps"])
            scale, state["hyper"] = hyper_updates.update(
                first["hyper_update"], scale, h, state["hyper"], beta=beta,
                eta_max=float(first["eta_max"]), k=int(first["val_every"]), clip=first["hypergrad_clip"],
                grad_norm=values[2] if len(values) > 2 else None,
                z_norm=values[3] if len(values) > 3 else None,
                agreement_gain=float(first["agreement_gain"]))
            for group in self.param_groups:
                group["lr"] = scale
            state["last_hypergrad"] = h
            value = values[0]
            if first["backoff"] is not None:
                scale, undo = self._backoff(value, scale, float(first["backoff"]), can_undo)
        elif tuning and first["backoff"] is not None:
            value = float(loss.detach())  # the one host sync of a step without a hypergradient
            if not math.isfinite(value):
                return self._diverge(loss, scale * phi, None, clock)
            scale, undo = self._backoff(value, scale, float(first["backoff"]), can_undo)
        elif not bool(torch.isfinite(loss)):  # the one host sync of a step without a hypergradient
            return self._diverge(loss, scale * phi, None, clock)
        eta = scale * phi  # phi = 1 (no schedule): eta is the scale itself, bit for bit
        if undo:  # back to the copy from before the last step; this step's update is not taken
            self._roll_back(params)
            state["step"] = t + 1
            self.last_step = StepInfo(loss.detach(), eta, h, clock.seconds, False)
            return loss.detach()
        if rollback:
            self._keep_copy(params, value)
        elif state.get("undo_kept"):  # tuning is over (or the setting is off): the copy goes
            self._drop_copy(params)

        start = 0
        for group, ps in groups:
            n = len(ps)
            if n:
                step = self._sgd_step if group["base"] == "sgd" else self._adamw_step
                step(group, ps, grads[start:start + n], None if hz is None else hz[start:start + n], eta, mu,
                     phi, clock, tuning)
            start += n
        if tuning and first["hypergrad_at"] == "average":
            self._update_average(params, t + 1, first)
        elif "avg_w" in self.state[params[0]]:  # tuning is over: the average goes
            for p in params:
                for key in AVERAGE:
                    self.state[p].pop(key, None)
        state["step"] = t + 1
        self.last_step = StepInfo(loss.detach(), eta, h, clock.seconds, False)
        return loss.detach()

    # ------------------------------------------------------------------------- data parallelism
    def _replicas(self, closure: Closure, val_closure: Closure | None, params: list[torch.Tensor]) -> Any:
        """The process group this step averages over (:mod:`ray_rthpo.optim.distributed`), or None; refuses a
        DDP-wrapped module and, under data parallelism, train-mode BatchNorm; checks once that the ranks
        start alike."""
        from ray_rthpo.optim import distributed

        modules = [("model", self.model), ("closure.model", getattr(closure, "model", None)),
                   ("val_closure.model", getattr(val_closure, "model", None))]
        for where, module in modules:
            if isinstance(module, nn.Module):
                distributed.refuse_wrapped(module, where)
        reps = distributed.replicas(getattr(self, "process_group", None))
        if reps is None:
            return None
        for where, module in modules[:2]:  # the validation term runs in eval mode
            if isinstance(module, nn.Module):
                distributed.refuse_train_batchnorm(module, where)
        state = self.state[GLOBAL]
        if getattr(self, "_replicas_checked", None) is not state:  # once per construction or load_state_dict
            distributed.check_same(reps, self._fingerprint(params),
                                   "weights, optimizer states or learning rates")
            self._replicas_checked = state
        return reps

    def _fingerprint(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Eight numbers that differ between two optimizers whose weights, states or learning rates differ."""
        with torch.no_grad():
            zero = torch.zeros((), dtype=torch.float64, device=params[0].device)
            weights = [p.detach().double() for p in params]
            states = [v.detach().double() for p in params for _, v in sorted(self.state[p].items())
                      if isinstance(v, torch.Tensor)]
            index = torch.arange(1, len(weights) + 1, dtype=torch.float64, device=zero.device)
            sums = torch.stack([w.sum() for w in weights])
            stats = [sums.sum(), (sums * index).sum(), sum((w * w).sum() for w in weights),
                     sum((s.sum() for s in states), zero), sum(((s * s).sum() for s in states), zero)]
        state = self.state[GLOBAL]
        numbers = [float(state["step"]), self.scale, float(len(params))]
        return torch.cat([torch.tensor(numbers, dtype=torch.float64, device=zero.device), torch.stack(stats)])

    def _all_reduce(self, reps: Any, closure: Closure, val_closure: Closure | None, loss: torch.Tensor,
                    grads: list[torch.Tensor], hz: list[torch.Tensor] | None, hyper_due: bool,
                    params: list[torch.Tensor], z: list[torch.Tensor], first: dict[str, Any], clock: _Clock
                    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None, Any]:
        """Data parallel: the whole batch's loss, ``g``, ``H z`` and (on a hypergradient step) validation
        term, as the ranks' means weighted by their batch sizes, from ONE all_reduce. The validation term
        is the validation gradient when the rule needs its norm, else the hypergradient ``grad E . z``
        alone (``z`` is the same on every rank); None for ``hd_train``, whose term is the averaged
        training gradient."""
        from ray_rthpo.optim import distributed

        items: list[tuple[int, list[torch.Tensor]]] = [(distributed.batch_size(closure),
                                                        [loss.detach(), *grads])]
        if hz is not None:
            items.append((distributed.batch_size(closure, float(first["hvp_batch_fraction"])), hz))
        local: list[torch.Tensor] | torch.Tensor | None = None
        if hyper_due and first["method"] != "hd_train":
            clock.start()
            with torch.enable_grad(), self._at_point(params, z, first, True) as z_at:
                local = self._validation_gradient(val_closure, params, z_at, first)
            if isinstance(local, list) and first["hyper_update"] not in hyper_updates.NEEDS_NORMS:
                local = fn.dot(local, z_at)  # one number instead of the vector
            clock.stop()
            items.append((distributed.batch_size(val_closure, float(first["val_batch_fraction"])),
                          [local] if isinstance(local, torch.Tensor) else local))
        out = distributed.weighted_means(reps, items)
        loss, grads = out[0][0].clone(), out[0][1:]  # the loss outlives the step (last_step): not a view
        hz = out[1] if hz is not None else None
        grad_e = None if local is None else (out[-1][0] if isinstance(local, torch.Tensor) else out[-1])
        return loss, grads, hz, grad_e

    def _backoff(self, loss: float, scale: float, factor: float, can_undo: bool) -> tuple[float, bool]:
        """The tuned value after ``backoff``'s check of this step's training loss (see the class doc), and
        whether the step before is to be undone (``backoff_rollback``, where a copy is kept: ``can_undo``).
        An undone spike halves the value whatever the cooldown, and the running mean restarts from the loss
        of the copy returned to; without ``can_undo`` this is the plain backoff."""
        state = self.state[GLOBAL]
        mean, cooldown = state.get("loss_mean"), int(state.get("backoff_cooldown", 0))
        first = float(state.setdefault("loss_first", loss))
        spike = mean is not None and loss > factor * mean and loss - mean > SPIKE_FLOOR * first
        undo = spike and can_undo
        if spike and (cooldown == 0 or undo):
            scale *= BACKOFF_FACTOR
            for group in self.param_groups:
                group["lr"] = scale
            state["backoffs"] = int(state.get("backoffs", 0)) + 1
            cooldown = BACKOFF_COOLDOWN
        else:
            cooldown = max(0, cooldown - 1)
        state["backoff_cooldown"] = cooldown
        if undo:
            state["loss_mean"] = float(state["undo_loss"])
            state["rollbacks"] = int(state.get("rollbacks", 0)) + 1
        else:
            state["loss_mean"] = loss if mean is None else (1.0 - LOSS_EMA) * mean + LOSS_EMA * loss
        return scale, undo

    def _keep_copy(self, params: list[torch.Tensor], loss: float) -> None:
        """``backoff_rollback``: keep a copy of the weights and of every state tensor, and this step's loss
        (the loss of these weights), before the step changes them."""
        with torch.no_grad():
            for p in params:
                s = self.state[p]
                tensors = [(k, v) for k, v in s.items()
                           if isinstance(v, torch.Tensor) and not k.startswith(UNDO)]
                for key, value in [("param", p), *tensors]:
                    kept = s.get(UNDO + key)
                    if kept is None or kept.shape != value.shape:
                        s[UNDO + key] = value.detach().clone()
                    else:
                        kept.copy_(value)
        self.state[GLOBAL].update(undo_loss=float(loss), undo_kept=True)

    def _roll_back(self, params: list[torch.Tensor]) -> None:
        """Weights and state back to the copy :meth:`_keep_copy` kept; the momentum (and its tangent) restart
        from zero. The copy is used up: a spike at the next step undoes the step from it, which starts from
        the same point (the copy is kept again before it)."""
        with torch.no_grad():
            for p in params:
                s = self.state[p]
                p.copy_(s[UNDO + "param"])
                for key in [k for k in s if not k.startswith(UNDO)]:
                    if key in RESTARTED and isinstance(s[key], torch.Tensor):
                        s[key].zero_()
                    elif UNDO + key in s:
                        s[key].copy_(s[UNDO + key])
        self.state[GLOBAL]["undo_loss"] = None

    def _drop_copy(self, params: list[torch.Tensor]) -> None:
        """Free the copy (tuning is over): the weights and state are held once again."""
        for p in params:
            s = self.state[p]
            for key in [k for k in s if k.startswith(UNDO)]:
                del s[key]
        self.state[GLOBAL].update(undo_loss=None, undo_kept=False)

    @contextlib.contextmanager
    def _at_point(self, params: list[torch.Tensor], z: list[torch.Tensor], first: dict[str, Any], swap: bool
                  ) -> Iterator[list[torch.Tensor]]:
        """The tangent the validation term is to be dotted with: ``hypergrad_at="weights"`` yields ``z`` and
        changes nothing; ``"average"`` yields z̄, and with ``swap`` the weights hold their running average w̄
        inside the block (restored after it, also on an error), so that a validation gradient computed there
        is ∇E(w̄) (``swap=False``: it was computed already, by the ranks)."""
        if first["hypergrad_at"] != "average":
            yield z
            return
        states = [self.state[p] for p in params]
        avg_z = [s["avg_z"] for s in states]
        if not swap:
            yield avg_z
            return
        with torch.no_grad():
            held = [p.detach().clone() for p in params]
            torch._foreach_copy_(params, [s["avg_w"] for s in states])
        try:
            yield avg_z
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, held)

    def _update_average(self, params: list[torch.Tensor], n: int, first: dict[str, Any]) -> None:
        """w̄ <- w̄ + a (w - w̄) and z̄ <- z̄ + a (z - z̄) after step ``n`` (1-based), a = max(1/n, 1/(window T)):
        the mean of the weights so far, then an exponential average; z̄ is exactly dw̄/ds."""
        total = first["total_steps"] if first["total_steps"] is not None else hyper_updates.ASSUMED_HORIZON
        weight = max(1.0 / n, 1.0 / max(1.0, float(first["average_window"]) * total))
        states = [self.state[p] for p in params]
        with torch.no_grad():
            torch._foreach_lerp_([s["avg_w"] for s in states], [p.detach() for p in params], weight)
            torch._foreach_lerp_([s["avg_z"] for s in states], [s["z"] for s in states], weight)

    def _diverge(self, loss: torch.Tensor, eta: float, h: float | None, clock: _Clock) -> torch.Tensor:
        self.state[GLOBAL]["diverged"] = True
        self.last_step = StepInfo(loss.detach(), eta, h, clock.seconds, True)
        return loss.detach()

    def _init_state(self, groups: list[tuple[dict[str, Any], list[torch.Tensor]]]) -> None:
        tuning = self.tuning
        for group, ps in groups:
            for p in ps:
                s = self.state[p]
                if tuning and group["hypergrad_at"] == "average" and "avg_w" not in s:
                    # w-bar starts at the weights and z-bar at the tangent (z_0 = 0 on a fresh run)
                    s["avg_w"] = p.detach().clone(memory_format=torch.preserve_format)
                    s["avg_z"] = (s["z"].clone() if "z" in s
                                  else torch.zeros_like(p, memory_format=torch.preserve_format))
                if "z" in s:
                    continue
                s["z"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["base"] == "sgd":
                    if group["momentum"] != 0.0:
                        s["u"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                else:
                    s["step"] = torch.tensor(0.0, dtype=torch.float32)
                    for key in ("exp_avg", "exp_avg_sq", "a", "b"):
                        s[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # ---------------------------------------------------------------------- gradients and H z
    def _gradients(self, closure: Closure, params: list[torch.Tensor], z: list[torch.Tensor], want_hvp: bool,
                   first: dict[str, Any], clock: _Clock,
                   ) -> tuple[torch.Tensor, list[torch.Tensor], list | None]:
        """``(loss, g, H z or None)``: ``g`` on the whole batch, ``H z`` on its first examples."""
        if not want_hvp:
            loss = _scalar(_call(closure), "closure")
            return loss, loss_gradient(loss, params), None
        fraction = float(first["hvp_batch_fraction"])
        if fraction < 1.0 and not isinstance(closure, ModelClosure):
            raise TypeError(f"RTHPO: hvp_batch_fraction={fraction} needs the batch, so closure must be a "
                            "ray_rthpo.optim.ModelClosure(model, loss_fn, x, y); or set "
                            "hvp_batch_fraction=1.0.")
        sub = closure.head(fraction) if isinstance(closure, ModelClosure) else closure
        route = self._route(closure)
        if sub is closure:  # g and H z in one pass: the gradient is never computed twice
            return self._grad_and_hvp(closure, params, z, route, clock)
        loss = _scalar(_call(closure), "closure")
        grads = loss_gradient(loss, params)
        with frozen_batchnorm_stats(closure.model):  # the full-batch forward already moved the statistics
            _, _, hz = self._grad_and_hvp(sub, params, z, route, clock)
        return loss, grads, hz

    def _route(self, closure: Closure) -> str:
        route = str(self.param_groups[0]["hvp"])
        model = closure.model if isinstance(closure, ModelClosure) else None
        if route == "auto":  # the one rule (also the run configs' lr.hvp: auto)
            return default_hvp_route(model) if model is not None else "double_backward"
        if route != "double_backward" and model is None:
            raise TypeError(f"RTHPO: hvp={route!r} runs the model through torch.func, so closure must be a "
                            "ray_rthpo.optim.ModelClosure(model, loss_fn, x, y); or use "
                            "hvp='double_backward'.")
        return route

    def _grad_and_hvp(self, closure: Closure, params: list[torch.Tensor], z: list[torch.Tensor], route: str,
                      clock: _Clock) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        if route == "double_backward":
            loss = _scalar(_call(closure), "closure")
            grads = loss_gradient(loss, params, create_graph=True)
            clock.start()
            hz = hvp_of_gradient(grads, params, z)
            clock.stop()
            return loss.detach(), [g.detach() for g in grads], hz
        assert isinstance(closure, ModelClosure)
        x, y = closure.batch
        clock.start()  # one pass gives g and H z: all of it counts as hypergradient work
        with torch.enable_grad():
            out = grad_and_hvp_forward_over_reverse(closure.model, x, y, _named(closure.model, params), z,
                                                    closure.loss_fn,
                                                    replay_batchnorm=route == "forward_over_reverse_bn")
        clock.stop()
        closure.output = out.logits
        return out.loss, out.grads, out.hz  # type: ignore[return-value]

    # -------------------------------------------------------------------------- hypergradient
    def _hypergradient(self, grads: list[torch.Tensor], params: list[torch.Tensor], z: list[torch.Tensor],
                       val_closure: Closure | None, first: dict[str, Any],
                       groups: list[tuple[dict[str, Any], list[torch.Tensor]]],
                       grad_e: list[torch.Tensor] | torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """``h_t`` as a 0-d tensor (no host sync), and ``[|grad E|, |z|]`` when the rule needs them.
        ``grad_e``: the validation term already computed (data parallel: averaged over the ranks)."""
        norms_needed = first["hyper_update"] in hyper_updates.NEEDS_NORMS
        if first["method"] == "hd_train":
            grad_e = self._training_direction(grads, groups)
        else:
            if grad_e is None:
                grad_e = self._validation_gradient(val_closure, params, z, first)
            if isinstance(grad_e, torch.Tensor):  # val_mode forward (or data parallel, no norms): h itself
                return grad_e, []
        h = fn.dot(grad_e, z)
        if not norms_needed:
            return h, []
        return h, [fn.dot(grad_e, grad_e).sqrt(), fn.dot(z, z).sqrt()]

    def _training_direction(self, grads: list[torch.Tensor], groups: list) -> list[torch.Tensor]:
        """First-order (Train)'s ``grad E``: the gradient of the regularised training loss (SGD's L2 term
        included; AdamW's decoupled decay is not part of the loss)."""
        out, start = [], 0
        for group, ps in groups:
            g = grads[start:start + len(ps)]
            start += len(ps)
            if group["base"] == "sgd" and group["weight_decay"] != 0.0:
                g = torch._foreach_add(g, [p.detach() for p in ps], alpha=group["weight_decay"])
            out.extend(g)
        return out

    def _validation_gradient(self, val_closure: Closure | None, params: list[torch.Tensor],
                             z: list[torch.Tensor], first: dict[str, Any],
                             ) -> list[torch.Tensor] | torch.Tensor:
        if val_closure is None or not callable(val_closure):
            raise TypeError(f"RTHPO: method={first['method']!r} needs val_closure=, a function returning the "
                            "validation loss on a validation batch (never the test set), every step "
                            f"that computes a hypergradient; got {val_closure!r}.")
        fraction = float(first["val_batch_fraction"])
        is_model = isinstance(val_closure, ModelClosure)
        if (fraction < 1.0 or first["val_mode"] == "forward") and not is_model:
            raise TypeError("RTHPO: val_batch_fraction < 1 and val_mode='forward' need the validation "
                            "batch, so val_closure must be a ray_rthpo.optim.ModelClosure(model, "
                            "loss_fn, xv, yv).")
        if is_model:
            val_closure = val_closure.head(fraction)  # type: ignore[union-attr]
        module = val_closure.model if is_model else self.model  # type: ignore[union-attr]
        if first["val_mode"] == "forward":
            x, y = val_closure.batch  # type: ignore[union-attr]
            _, directional = validation_directional_derivative(
                module, x, y, _named(module, params), z, val_closure.loss_fn)  # type: ignore[union-attr,arg-type]
            return directional
        with eval_mode(module) if module is not None else contextlib.nullcontext():
            loss = _scalar(_call(val_closure), "val_closure")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError("RTHPO: val_closure's loss does not depend on any parameter this optimizer "
                             "trains (does it evaluate another module, or a copy of the model?), so the "
                             "hypergradient would be 0 at every step and the learning rate would never move; "
                             "evaluate the model being trained, e.g. val_closure=lambda: "
                             "loss_fn(model(xv), yv).")
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]

    # ------------------------------------------------------------------------ base steps + tangents
    def _sgd_step(self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor],
                  hz: list[torch.Tensor] | None, eta: float, mu: float, phi: float, clock: _Clock,
                  tangent: bool = True) -> None:
        momentum, wd = float(group["momentum"]), float(group["weight_decay"])
        # v_{t+1} without momentum is d_t = g_t + lam w_t: taken before the step moves w
        direction = (torch._foreach_add(grads, [p.detach() for p in ps], alpha=wd) if wd != 0.0 else grads) \
            if momentum == 0.0 and tangent else None
        buffers = [self.state[p].get("momentum_buffer") for p in ps]
        with torch.no_grad():
            _torch_sgd(ps, grads, buffers, weight_decay=wd, momentum=momentum, lr=eta, dampening=0.0,
                       nesterov=False, maximize=False, foreach=None, fused=None)
        if momentum != 0.0:
            for p, buffer in zip(ps, buffers, strict=True):
                self.state[p]["momentum_buffer"] = buffer
            direction = buffers  # type: ignore[assignment]
        if not tangent:
            return
        clock.start()
        fn.tangent_step_([self.state[p]["z"] for p in ps],
                         [self.state[p]["u"] for p in ps] if momentum else None,
                         hz, direction, eta=eta, mu=mu, momentum=momentum, weight_decay=wd,  # type: ignore[arg-type]
                         phi=phi)
        clock.stop()

    def _adamw_step(self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor],
                    hz: list[torch.Tensor] | None, eta: float, mu: float, phi: float, clock: _Clock,
                    tangent: bool = True) -> None:
        beta1, beta2 = (float(b) for b in group["betas"])
        eps, wd = float(group["eps"]), float(group["weight_decay"])
        states = [self.state[p] for p in ps]
        z = [s["z"] for s in states]
        m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        if wd != 0.0 and tangent:  # the tangent's w_t terms, applied to z before the base step moves w
            clock.start()
            adamw_tangent_decay_(z, ps, eta=eta, weight_decay=wd, mu=mu, phi=phi)
            clock.stop()
        with torch.no_grad():
            _torch_adam(ps, grads, m, v, [], steps, foreach=None, capturable=False, differentiable=False,
                        fused=None, grad_scale=None, found_inf=None, has_complex=False,
                        decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=eta,
                        weight_decay=wd, eps=eps, maximize=False)
        if not tangent:
            return
        clock.start()
        adamw_tangent_step_(z, [s["a"] for s in states], [s["b"] for s in states], hz, None, grads, m, v,
                            step=steps[0], eta=eta, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, mu=mu,
                            decayed=wd != 0.0, phi=phi)
        clock.stop()

    # ------------------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` on a deep copy (the tangents are updated in place and must never
        alias the caller's dict); the groups' settings are checked again. A state saved before a setting of
        :data:`LATER_SETTINGS` existed loads with the value that reproduces it."""
        state_dict = copy.deepcopy(state_dict)
        for group in state_dict.get("param_groups", []):
            for key, value in LATER_SETTINGS.items():
                group.setdefault(key, value)
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        if GLOBAL not in self.state:
            raise ValueError("RTHPO.load_state_dict: the state has no 'rthpo' entry, so it was not saved by "
                             "RTHPO.state_dict(); load a state saved by this optimizer class.")
        for i, group in enumerate(self.param_groups):
            _check_group(group, i)


    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        """Refuse, before anything is loaded, a state whose base or method differs from this optimizer's
        (torch would switch them silently: SGD moments read as AdamW's), or whose tensors do not have the
        shapes of these parameters (a state saved for another model: torch accepts it, the next step
        fails)."""
        saved_groups = state_dict.get("param_groups", [])
        for key in ("base", "method"):
            saved = {g.get(key) for g in saved_groups} - {None}
            own = self.param_groups[0][key]
            if saved and saved != {own}:
                raise ValueError("RTHPO.load_state_dict: the state was saved by "
                                 f"RTHPO({key}={sorted(saved)[0]!r}), but this optimizer has {key}={own!r}; "
                                 f"build it with {key}={sorted(saved)[0]!r} to continue that run.")
        params = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in saved_groups for i in g.get("params", [])]
        if len(ids) != len(params):
            raise ValueError(f"RTHPO.load_state_dict: the state holds {len(ids)} parameters, but this "
                             f"optimizer has {len(params)}; load a state saved for the same model and "
                             "param groups.")
        for index, p in zip(ids, params, strict=True):
            for key, value in state_dict.get("state", {}).get(index, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(f"RTHPO.load_state_dict: the state's {key!r} of parameter {index} "
                                     f"has shape {tuple(value.shape)}, but the parameter has shape "
                                     f"{tuple(p.shape)}; the state was saved for another model: load one "
                                     "saved for this model.")


class _Clock:
    """Adds up the seconds between ``start()`` and ``stop()`` (synchronising CUDA when asked)."""

    def __init__(self, sync: bool, device: torch.device) -> None:
        self.sync, self.device, self.seconds, self._t = sync, device, 0.0, 0.0

    def start(self) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)
        self._t = time.perf_counter()

    def stop(self) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._t


def _call(closure: Closure) -> Any:
    with torch.enable_grad():
        return closure()


def _scalar(loss: Any, name: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"RTHPO: {name} must return the loss as a torch.Tensor, but returned "
                        f"{type(loss).__name__}; return loss_fn(model(x), y) itself, not loss.item().")
    if loss.numel() != 1:
        raise ValueError(f"RTHPO: {name} must return a scalar loss, but returned a tensor of shape "
                         f"{tuple(loss.shape)}; reduce it (e.g. loss.mean()).")
    if not loss.requires_grad:
        raise ValueError(f"RTHPO: {name} returned a loss that does not depend on the parameters "
                         "(requires_grad is False); do not compute it under torch.no_grad() or detach it.")
    return loss.reshape(())


def _named(model: nn.Module, params: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"RTHPO: parameters {missing[:5]} of the optimizer are not parameters of the "
                         "closure's model; build the ModelClosure with the model whose parameters the "
                         "optimizer updates.")
    return [(names[id(p)], p) for p in params]


def _check_group(group: dict[str, Any], index: int) -> None:
    """Raise :class:`ray_rthpo.optim.settings.SettingError` (a ValueError) naming the setting, its value and
    the fix for anything out of range (ray_rthpo/optim/settings.py declares each setting once)."""
    def label(name: str) -> str:
        return f"{name} of param group {index}" if index and name == "lr" else name

    settings.check({name: group[name] for name in settings.SETTINGS if name in group}, label)


__all__ = ["RTHPO", "StepInfo", "METHODS", "BASES", "SHARED"]
