"""A closure that also says which module and which batch it evaluates.

:class:`ray_rthpo.optim.RTHPO` takes any closure that returns a scalar loss. A :class:`ModelClosure`
is such a closure (calling it returns ``loss_fn(model(x), y)``), and through it the optimizer can do
what a bare closure does not allow:

* put the module in eval mode for the validation term, so that BatchNorm uses and never moves its
  running statistics (with a bare ``val_closure`` that is the caller's job, or pass ``model=``);
* compute the gradient and the Hessian-vector product in one forward-over-reverse pass through
  ``torch.func`` (``hvp="forward_over_reverse"``), faster on convolutions;
* sub-sample the batch (``hvp_batch_fraction``, ``val_batch_fraction``: the first examples);
* take the validation term as one forward-mode JVP (``val_mode="forward"``).

The batch may be given lazily (``batch=callable``): it is fetched the first time it is needed, so a
validation batch that a step does not use (``val_every > 1``) is never drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchFn = Callable[[], tuple[torch.Tensor, Any]]


class ModelClosure:
    """``loss_fn(model(x), y)`` as a closure that RTHPO can also look inside.

    Args:
        model: the module whose parameters the optimizer updates (all of them, or a subset).
        loss_fn: ``loss_fn(output, target) -> scalar``; default cross-entropy.
        x, y: the batch (inputs and targets); or ``batch``, a function returning ``(x, y)`` the first
            time the batch is needed (each ModelClosure fetches it at most once).

    After a call, :attr:`output` holds the model's output on the batch (detached), for accuracy.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn = F.cross_entropy, x: torch.Tensor | None = None,
                 y: Any = None, *, batch: BatchFn | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError("ModelClosure needs model to be a torch.nn.Module, but got "
                            f"{type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(f"ModelClosure needs a callable loss_fn(output, target), but got {loss_fn!r}.")
        if (batch is None) == (x is None):
            raise ValueError("ModelClosure needs either x and y (the batch) or batch= (a function returning "
                             "(x, y)), not both and not neither.")
        self.model, self.loss_fn = model, loss_fn
        self._batch_fn = batch
        self._x, self._y = x, y
        self.output: torch.Tensor | None = None

    @property
    def batch(self) -> tuple[torch.Tensor, Any]:
        """``(x, y)``, fetched from ``batch=`` on first use."""
        if self._x is None:
            assert self._batch_fn is not None
            self._x, self._y = self._batch_fn()
            self._batch_fn = None
        return self._x, self._y

    def __call__(self) -> torch.Tensor:
        """The loss on the batch (the model in whatever mode it is in); keeps the output."""
        x, y = self.batch
        output = self.model(x)
        self.output = output.detach()
        return self.loss_fn(output, y)

    def head(self, fraction: float) -> ModelClosure:
        """The same closure on the first ``round(fraction * n)`` examples of the batch (at least 2, as
        train-mode BatchNorm needs more than one value per channel)."""
        x, y = self.batch
        n = x.shape[0]
        k = n if fraction >= 1.0 else max(min(n, 2), min(n, int(round(fraction * n))))
        if k == n:
            return self
        return ModelClosure(self.model, self.loss_fn, x[:k], y[:k])


__all__ = ["ModelClosure", "LossFn"]
