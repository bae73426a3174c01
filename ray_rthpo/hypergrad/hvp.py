"""Gradients and Hessian-vector products of a model's loss, without ever forming the Hessian.

Two routes give the training gradient ``g`` and ``H z`` at the same point in one call (Pearlmutter 1994):

* ``double_backward`` (reverse-over-reverse): one forward, a ``create_graph=True`` backward, and a
  second backward of ``<g, z>``. Works with every module; BatchNorm's running statistics are updated
  exactly once, by the single forward.
* ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad``. Often cheaper for
  convolutions; it cannot run BatchNorm's in-place running-stat update under the transform, so it
  is refused for models with BatchNorm (use ``double_backward`` there).

The validation term ``grad E(w) . z`` is taken with the model in eval mode (BatchNorm uses and never
moves its running statistics): either as a full validation gradient (``backward``) or as a
forward-mode directional derivative of the validation loss along ``z`` (``forward``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from ray_rthpo.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HVP_ROUTES = ("double_backward", "forward_over_reverse")


class GradHVP(NamedTuple):
    """Result of one training-batch pass: loss (0-d, detached), logits (detached), ``g`` and ``H z``."""

    loss: torch.Tensor
    logits: torch.Tensor
    grads: list[torch.Tensor]
    hz: list[torch.Tensor] | None


def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` contains a BatchNorm layer (which has running statistics to protect)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Inside the block, train-mode BatchNorm uses batch statistics but does not update running ones.

    Used for extra passes in a step (a sub-batch HVP) so that running statistics move once per step.
    """
    changed = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.track_running_stats = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _zeros_for_none(values: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if v is None else v for v, p in zip(values, like, strict=True)]


def grad_and_hvp_double_backward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor],
    z: Sequence[torch.Tensor] | None, loss_fn: LossFn = F.cross_entropy,
) -> GradHVP:
    """``g = grad l(w; b)`` and ``H z`` by reverse-over-reverse; ``z=None`` computes only ``g``."""
    logits = model(x)
    loss = loss_fn(logits, y)
    if z is None:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return GradHVP(loss.detach(), logits.detach(), _zeros_for_none(grads, params), None)
    grads = _zeros_for_none(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True), params)
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    hz: list[torch.Tensor] = [torch.zeros_like(p) for p in params]
    if live:
        second = torch.autograd.grad(
            [grads[i] for i in live], list(params), grad_outputs=[z[i] for i in live], allow_unused=True
        )
        hz = _zeros_for_none(second, params)
    return GradHVP(loss.detach(), logits.detach(), [g.detach() for g in grads], hz)


def grad_and_hvp_forward_over_reverse(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, named_params: Sequence[tuple[str, torch.Tensor]],
    z: Sequence[torch.Tensor], loss_fn: LossFn = F.cross_entropy,
) -> GradHVP:
    """``g`` and ``H z`` in one ``torch.func.jvp`` of ``torch.func.grad`` (forward-over-reverse)."""
    if model.training and has_batchnorm(model):
        raise ConfigError(
            "lr.hvp: forward_over_reverse cannot update BatchNorm running statistics under torch.func, "
            "but the model has BatchNorm; set lr.hvp to double_backward (or auto)."
        )
    names = [n for n, _ in named_params]
    primals = {n: p.detach() for n, p in named_params}
    tangents = {n: t for n, t in zip(names, z, strict=True)}
    buffers = dict(model.named_buffers())

    def loss_and_logits(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        logits = functional_call(model, (p, buffers), (x,))
        loss = loss_fn(logits, y)
        return loss, (loss, logits)  # grad's has_aux: (value to differentiate, aux)

    def grad_with_aux(p: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple]:
        return grad(loss_and_logits, has_aux=True)(p)

    grads, hz, (loss, logits) = jvp(grad_with_aux, (primals,), (tangents,), has_aux=True)
    return GradHVP(loss.detach(), logits.detach(), [grads[n] for n in names], [hz[n] for n in names])


def validation_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor],
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(E, grad E(w))`` on a validation batch, with the model in eval mode (BatchNorm frozen)."""
    with eval_mode(model):
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), _zeros_for_none(grads, params)


def validation_directional_derivative(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, named_params: Sequence[tuple[str, torch.Tensor]],
    z: Sequence[torch.Tensor], loss_fn: LossFn = F.cross_entropy,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, grad E(w) . z)`` as one forward-mode JVP of the validation loss along ``z`` (eval mode)."""
    primals = {n: p.detach() for n, p in named_params}
    tangents = {n: t for (n, _), t in zip(named_params, z, strict=True)}
    buffers = dict(model.named_buffers())

    def val_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x,)), y)

    with eval_mode(model), torch.no_grad():
        loss, directional = jvp(val_loss, (primals,), (tangents,))
    return loss.detach(), directional.detach()


def default_hvp_route(model: nn.Module, model_name: str, device: torch.device) -> str:
    """The HVP route ``lr.hvp: auto`` picks: a deterministic rule from measured step costs.

    BatchNorm models need ``double_backward``. Convolutional nets without BatchNorm (LeNet) are
    cheaper forward-over-reverse on CPU (field notes: 2.7x vs 3.5x an SGD step); MLPs are cheaper
    by double backward (1.9x vs 2.8x). ``experiments/bench_step_cost.py`` re-measures both.
    """
    if has_batchnorm(model):
        return "double_backward"
    if model_name == "lenet":
        return "forward_over_reverse"
    return "double_backward"
