"""Training a PyTorch Lightning ``LightningModule`` with :class:`ray_rthpo.optim.RTHPO`.

RTHPO differentiates its closure itself and needs a validation batch on each hypergradient step, so it
runs in Lightning's *manual* optimisation, where ``training_step`` calls the optimizer::

    from ray_rthpo.lightning import RTHPOMixin

    class Net(RTHPOMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False          # RTHPO steps inside training_step
            self.net = nn.Sequential(...)

        def forward(self, x):
            return self.net(x)

        def configure_optimizers(self):
            return RTHPO(self.parameters(), lr=1e-3, base="adamw")

        def training_step(self, batch, batch_idx):
            return self.rthpo_step(batch)                # loss_fn defaults to cross-entropy

:func:`rthpo_step` (``self.rthpo_step`` through the mixin) builds a :class:`ModelClosure` for the training
batch and a lazy one for a validation batch, which it draws from a loader it cycles (``val_loader=``, else
the module's ``rthpo_val_loader``, else the trainer's validation loader, else the datamodule's or the
module's ``val_dataloader()``), moved to the device and converted to the trainer's precision as Lightning
does for its own batches. It steps through Lightning's optimizer wrapper, so the strategy, the precision
plugin, the profiler and the step count (``trainer.global_step``, ``max_steps``) see the step, and logs
``lr`` (``opt.eta``), ``hypergrad`` (on the steps that computed one) and ``train_loss`` with ``self.log``.

Through the wrapper, the precision plugin hands RTHPO its own closure around ours
(``Precision.optimizer_step`` wraps it in ``functools.partial(self._wrap_closure, ...)``, which runs the
``on_before_optimizer_step`` hooks after the forward); ``val_closure=`` reaches RTHPO untouched as a keyword
of ``optimizer.step``. RTHPO then no longer sees the *training* :class:`ModelClosure`, which the settings that
look inside the training batch need: ``hvp_batch_fraction < 1``, ``hvp="forward_over_reverse"`` /
``"forward_over_reverse_bn"``, and ``hvp="auto"`` on a model with BatchNorm (which picks
``forward_over_reverse_bn`` for a ModelClosure). For those settings :func:`rthpo_step` calls the raw optimizer
with the ModelClosure and keeps Lightning's step count and profiler section by calling the hooks the
manual loop installs on the wrapper; what is lost there is the precision plugin's ``optimizer_step`` (for
``32-true``, ``64-true`` and ``bf16-mixed`` only the ``on_before_optimizer_step`` hooks, which would see
no ``p.grad`` anyway: RTHPO does not write it). The forward still runs in the precision's context, which
Lightning opens around the whole ``training_step``.

Not supported, each refused with the fix: automatic optimisation; ``precision="16-mixed"`` (its GradScaler
calls ``optimizer.step()`` without the closure, and RTHPO's own ``autograd.grad`` is not scaled); more than
one device or process (RTHPO does not yet average its gradients and hypergradient across ranks: issue #19).

This module imports Lightning; ``import ray_rthpo`` and ``ray_rthpo.optim`` never do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.plugins.precision import MixedPrecision
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ray_rthpo.lightning needs PyTorch Lightning (import lightning failed: "
        f"{exc}); install it with: pip install 'ray_rthpo[lightning]' (or pip install 'lightning>=2.2')."
    ) from exc

import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.hypergrad.hvp import has_batchnorm
from ray_rthpo.optim import RTHPO, ModelClosure

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
Unpack = Callable[[Any], tuple[torch.Tensor, Any]]

#: The hvp routes that run the model through torch.func, so that RTHPO needs the training ModelClosure.
_FUNC_ROUTES = ("forward_over_reverse", "forward_over_reverse_bn")


class ValidationBatches:
    """An endless supply of validation batches: iterates ``loader`` and starts it again when it ends
    (a shuffling loader reshuffles), so a run may take more hypergradient steps than the loader has batches.
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"rthpo_step: the validation loader must be iterable (a DataLoader), but got "
                            f"{type(loader).__name__}; pass val_loader=DataLoader(val_set, batch_size=...).")
        self.loader = loader
        self._it: Iterator[Any] | None = None

    def next(self) -> Any:
        """The next batch; the loader is started again when it is exhausted."""
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise ValueError("rthpo_step: the validation loader yields no batch (is it empty, or does "
                         "drop_last=True drop its only batch?); give it at least one full batch.")


def default_unpack(batch: Any) -> tuple[torch.Tensor, Any]:
    """``(inputs, targets)`` of a batch that is a pair (what ``TensorDataset`` and most datasets yield)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"rthpo_step: a batch must be a pair (inputs, targets), but got {type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                    + "; pass unpack=lambda batch: (inputs, targets), or override rthpo_unpack(batch).")


def rthpo_step(module: pl.LightningModule, batch: Any, loss_fn: LossFn = F.cross_entropy, *,
               val_loader: Iterable[Any] | None = None, model: nn.Module | None = None,
               optimizer: Any = None, unpack: Unpack | None = None, log: bool = True) -> torch.Tensor:
    """One RTHPO step inside ``module.training_step``: returns the training loss (detached).

    Args:
        module: the LightningModule, in manual optimisation (``self.automatic_optimization = False``).
        batch: the training batch Lightning passed to ``training_step``.
        loss_fn: ``loss_fn(model(x), y) -> scalar`` (default cross-entropy).
        val_loader: where the validation batches come from; None: ``module.rthpo_val_loader``, else the
            trainer's validation loader (``trainer.val_dataloaders``; the first, if several), else
            ``val_dataloader()`` of the datamodule or the module. Not needed with ``method="hd_train"``.
            A batch is drawn only on steps that compute a hypergradient.
        model: the module whose output the loss is computed on (default: ``module`` itself, i.e. its
            ``forward``); it must own the parameters given to RTHPO.
        optimizer: the optimizer to step (default ``module.optimizers()``, which must be a single RTHPO).
        unpack: ``batch -> (inputs, targets)`` for both batches (default: ``module.rthpo_unpack`` if it has
            one, else the batch as a pair).
        log: log ``lr`` (the learning rate the next step uses), ``hypergrad`` and ``train_loss``.
    """
    trainer = _check_trainer(module)
    wrapper, opt = _optimizer(module, optimizer)
    net = module if model is None else model
    if not isinstance(net, nn.Module):
        raise TypeError(f"rthpo_step: model must be a torch.nn.Module, but got {type(net).__name__}.")
    if unpack is None:
        unpack = getattr(module, "rthpo_unpack", default_unpack)
    x, y = unpack(batch)
    closure = ModelClosure(net, loss_fn, x, y)
    val_closure = ModelClosure(net, loss_fn,
                               batch=lambda: unpack(_validation_batch(module, trainer, val_loader)))
    if wrapper is not None and not _needs_training_closure(opt, net):
        loss = wrapper.step(closure=closure, val_closure=val_closure)
    else:
        # RTHPO must see the training ModelClosure itself (see the module doc): the raw optimizer, with the
        # manual loop's hooks around it (they count the step for trainer.global_step and max_steps, and
        # time it in the profiler); they are no-ops outside a training loop.
        before = getattr(wrapper, "_on_before_step", None)
        after = getattr(wrapper, "_on_after_step", None)
        if callable(before):
            before()
        loss = opt.step(closure, val_closure=val_closure)
        if callable(after):
            after()
    if log:
        module.log("lr", opt.eta, on_step=True, prog_bar=True, batch_size=_batch_size(x))
        if opt.last_step is not None and opt.last_step.hypergrad is not None:
            module.log("hypergrad", opt.last_step.hypergrad, on_step=True, batch_size=_batch_size(x))
        module.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=_batch_size(x))
    return loss


class RTHPOMixin:
    """Gives a LightningModule ``self.rthpo_step(batch)`` (:func:`rthpo_step`); put it before
    ``L.LightningModule`` in the bases and set ``self.automatic_optimization = False`` in ``__init__``.

    Attributes:
        rthpo_val_loader: the loader the validation batches are drawn from (None: the trainer's validation
            loader, or ``val_dataloader()`` of the datamodule or the module).
    """

    rthpo_val_loader: Iterable[Any] | None = None

    def rthpo_step(self, batch: Any, loss_fn: LossFn = F.cross_entropy, **kwargs: Any) -> torch.Tensor:
        """One RTHPO step on ``batch``; returns the training loss. Keywords as :func:`rthpo_step`."""
        if not isinstance(self, pl.LightningModule):
            raise TypeError(f"RTHPOMixin must be mixed into a LightningModule, but {type(self).__name__} is "
                            "not one; write class Net(RTHPOMixin, L.LightningModule).")
        return rthpo_step(self, batch, loss_fn, **kwargs)

    def rthpo_unpack(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """``(inputs, targets)`` of a training or validation batch; override for other batch layouts."""
        return default_unpack(batch)


class RTHPOCheck(pl.Callback):
    """Refuses, at the start of ``fit``, a module that is given an RTHPO optimizer under automatic
    optimisation (Lightning's automatic loop calls ``backward()`` itself and hands RTHPO a closure whose loss
    is no longer differentiable), or a run on more than one device."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the optimizers once the trainer has set them up."""
        if any(isinstance(_raw(o), RTHPO) for o in trainer.optimizers):
            _check_trainer(pl_module)


# ------------------------------------------------------------------------------------------ helpers
def _check_trainer(module: Any) -> pl.Trainer:
    if not isinstance(module, pl.LightningModule):
        raise TypeError(f"rthpo_step needs the LightningModule as its first argument, but got "
                        f"{type(module).__name__}; call rthpo_step(self, batch) inside training_step.")
    if module.automatic_optimization:
        raise RuntimeError(
            f"RTHPO runs in Lightning's manual optimisation, but {type(module).__name__}."
            "automatic_optimization is True; set self.automatic_optimization = False in __init__ and call "
            "self.rthpo_step(batch) (or ray_rthpo.lightning.rthpo_step(self, batch)) in training_step.")
    trainer = module.trainer  # raises Lightning's own error when the module is not attached to a Trainer
    if trainer.world_size > 1:
        raise RuntimeError(
            f"RTHPO under Lightning supports one device and one process, but this Trainer runs "
            f"{trainer.world_size} (strategy {type(trainer.strategy).__name__}); RTHPO does not yet average "
            "its gradients and hypergradient across ranks (issue #19): use devices=1, num_nodes=1.")
    precision = trainer.precision_plugin
    if isinstance(precision, MixedPrecision) and precision.scaler is not None:
        raise RuntimeError(
            f"RTHPO cannot run with precision={trainer.precision!r}: its GradScaler calls optimizer.step() "
            "without the closure, and RTHPO's own autograd.grad is not loss-scaled; use "
            "precision='bf16-mixed', '32-true' or '64-true'.")
    return trainer


def _raw(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer) if isinstance(optimizer, LightningOptimizer) \
        else optimizer


def _optimizer(module: pl.LightningModule, optimizer: Any) -> tuple[Any, RTHPO]:
    """``(Lightning's wrapper or None, the RTHPO inside)``."""
    if optimizer is None:
        optimizer = module.optimizers()
        if isinstance(optimizer, list):
            raise ValueError(f"rthpo_step: configure_optimizers returned {len(optimizer)} optimizers; pass "
                             "the RTHPO one as optimizer= (e.g. optimizer=self.optimizers()[0]).")
    raw = _raw(optimizer)
    if not isinstance(raw, RTHPO):
        raise TypeError(f"rthpo_step needs an RTHPO optimizer, but got {type(raw).__name__}; return "
                        "ray_rthpo.optim.RTHPO(self.parameters(), ...) from configure_optimizers.")
    wrapper = optimizer if isinstance(optimizer, LightningOptimizer) else None
    if wrapper is None:  # a raw RTHPO was passed: step through its wrapper when the trainer has one
        wrapper = next((w for w in module.trainer.strategy._lightning_optimizers if w.optimizer is raw), None)
    return wrapper, raw


def _needs_training_closure(opt: RTHPO, model: nn.Module) -> bool:
    """True when RTHPO would treat the training ModelClosure differently from a bare closure."""
    first = opt.param_groups[0]
    if opt.mu == 0.0:  # first-order methods compute no H z, so they never look inside the training closure
        return False
    return (float(first["hvp_batch_fraction"]) < 1.0 or first["hvp"] in _FUNC_ROUTES
            or (first["hvp"] == "auto" and has_batchnorm(model)))


def _validation_batch(module: pl.LightningModule, trainer: pl.Trainer,
                      val_loader: Iterable[Any] | None) -> Any:
    """The next validation batch from the chosen loader, converted and moved as Lightning does its own."""
    loader = _validation_loader(module, trainer, val_loader)
    batches = getattr(module, "_rthpo_val_batches", None)
    if batches is None or batches.loader is not loader:
        batches = ValidationBatches(loader)
        module._rthpo_val_batches = batches  # type: ignore[attr-defined]
    batch = batches.next()
    # what Lightning's loops do to a batch before *_step (training_epoch_loop.advance, evaluation_loop)
    batch = trainer.precision_plugin.convert_input(batch)
    before = getattr(module, "_on_before_batch_transfer", None)  # the module's or the datamodule's hook
    batch = before(batch, dataloader_idx=0) if callable(before) else module.on_before_batch_transfer(batch, 0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def _validation_loader(module: pl.LightningModule, trainer: pl.Trainer,
                       val_loader: Iterable[Any] | None) -> Any:
    if val_loader is not None:
        return val_loader
    own = getattr(module, "rthpo_val_loader", None)
    if own is not None:
        return own
    loaders = trainer.val_dataloaders  # set when the module has a validation_step and limit_val_batches > 0
    if isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is not None:
        return loaders
    from lightning.pytorch.utilities.model_helpers import is_overridden

    for source in (trainer.datamodule, module):
        if source is not None and is_overridden("val_dataloader", source):
            return source.val_dataloader()
    raise ValueError(
        "rthpo_step: RTHPO's hypergradient needs validation batches, and none was found; pass "
        "val_loader=DataLoader(val_set, ...) (or set self.rthpo_val_loader), give trainer.fit "
        "val_dataloaders=..., or define val_dataloader() in the datamodule; method='hd_train' needs none.")


def _batch_size(x: Any) -> int | None:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else None


__all__ = ["RTHPOMixin", "RTHPOCheck", "ValidationBatches", "default_unpack", "rthpo_step"]
