"""Gradients and Hessian-vector products of a model's loss, without ever forming the Hessian.

Two ways give the training gradient ``g`` and ``H z`` at the same point in one call (Pearlmutter 1994):

* ``double_backward`` (reverse-over-reverse): one forward, a ``create_graph=True`` backward, and a
  second backward of ``<g, z>``. Works with every module; BatchNorm's running statistics are updated
  exactly once, by the single forward.
* ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad``. Much cheaper for
  convolutions and BatchNorm on CPU (``experiments/bench_step_cost.py``). ``torch.func`` cannot run
  BatchNorm's in-place running-stat update, so this route refuses a model with BatchNorm in
  training mode; ``forward_over_reverse_bn`` is the same transform with the statistics frozen
  inside it and updated once afterwards by replaying each BatchNorm layer on its captured input
  (identical to ``forward_over_reverse`` for models without BatchNorm).

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

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HVP_ROUTES = ("double_backward", "forward_over_reverse", "forward_over_reverse_bn")


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
    """Put ``model`` in eval mode for the block and restore every submodule's previous mode afterwards (a
    model in training mode with some layers frozen in eval mode, e.g. BatchNorm, keeps them frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _zeros_for_none(values: Sequence[torch.Tensor | None],
                    like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if v is None else v for v, p in zip(values, like, strict=True)]


def loss_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor], *, create_graph: bool = False
                  ) -> list[torch.Tensor]:
    """``grad loss`` with respect to ``params`` (zeros for parameters the loss does not use); with
    ``create_graph`` the gradient keeps its graph, for :func:`hvp_of_gradient`."""
    return _zeros_for_none(torch.autograd.grad(loss, list(params), create_graph=create_graph,
                                               allow_unused=True),
                           params)


def hvp_of_gradient(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                    z: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``H z`` as the gradient of ``<g, z>``, from a gradient ``g`` taken with ``create_graph=True``
    (reverse-over-reverse, Pearlmutter 1994); zeros where the loss is linear in a parameter."""
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if not live:  # the loss is linear in every parameter: H = 0
        return [torch.zeros_like(p) for p in params]
    second = torch.autograd.grad([grads[i] for i in live], list(params), grad_outputs=[z[i] for i in live],
                                 allow_unused=True)
    return _zeros_for_none(second, params)


def grad_and_hvp_double_backward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor],
    z: Sequence[torch.Tensor] | None, loss_fn: LossFn = F.cross_entropy,
) -> GradHVP:
    """``g = grad l(w; b)`` and ``H z`` by reverse-over-reverse; ``z=None`` computes only ``g``."""
    logits = model(x)
    loss = loss_fn(logits, y)
    if z is None:
        return GradHVP(loss.detach(), logits.detach(), loss_gradient(loss, params), None)
    grads = loss_gradient(loss, params, create_graph=True)
    hz = hvp_of_gradient(grads, params, z)
    return GradHVP(loss.detach(), logits.detach(), [g.detach() for g in grads], hz)


def _tracked_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose running statistics a train-mode forward of ``model`` would update."""
    if not model.training:
        return []
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def grad_and_hvp_forward_over_reverse(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, named_params: Sequence[tuple[str, torch.Tensor]],
    z: Sequence[torch.Tensor], loss_fn: LossFn = F.cross_entropy, *, replay_batchnorm: bool = False,
) -> GradHVP:
    """``g`` and ``H z`` in one ``torch.func.jvp`` of ``torch.func.grad`` (forward-over-reverse).

    BatchNorm in training mode updates its running statistics in place, which ``torch.func`` cannot
    do. With ``replay_batchnorm=False`` such a model is refused. With ``replay_batchnorm=True`` the
    transform runs with the statistics frozen (train-mode BatchNorm still normalises by the batch
    statistics, so ``g`` and ``H z`` are unchanged), each BatchNorm layer's input is captured by a
    forward pre-hook and returned as auxiliary output, and afterwards every layer is called once on
    its captured input under ``no_grad``: the running statistics and ``num_batches_tracked`` move
    exactly as in one ordinary train-mode forward (the same module code on the same values).
    Costs one extra BatchNorm forward per layer and keeps the captured inputs until the replay.
    """
    bns = _tracked_batchnorms(model)
    if bns and not replay_batchnorm:
        raise ValueError(
            "forward_over_reverse cannot update BatchNorm running statistics under torch.func, but the model "
            "has BatchNorm in training mode; pass replay_batchnorm=True, or use grad_and_hvp_double_backward."
        )
    names = [n for n, _ in named_params]
    primals = {n: p.detach() for n, p in named_params}
    tangents = {n: t for n, t in zip(names, z, strict=True)}
    captured: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured.append((mod, args[0]))) for m in bns]
    buffers = dict(model.named_buffers())

    def loss_and_logits(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        captured.clear()
        logits = functional_call(model, (p, buffers), (x,))
        loss = loss_fn(logits, y)
        inputs = [inp for _, inp in captured]
        return loss, (loss, logits, inputs)  # grad's has_aux: (value to differentiate, aux)

    def grad_with_aux(p: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple]:
        return grad(loss_and_logits, has_aux=True)(p)

    try:
        with frozen_batchnorm_stats(model):
            grads, hz, (loss, logits, inputs) = jvp(grad_with_aux, (primals,), (tangents,), has_aux=True)
    finally:
        for hook in hooks:
            hook.remove()
    if bns:
        modules = [mod for mod, _ in captured]
        with torch.no_grad():
            for mod, inp in zip(modules, inputs, strict=True):
                mod(inp)  # train mode, statistics tracked again: the one update of this step
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


def default_hvp_route(model: nn.Module) -> str:
    """The HVP route ``lr.hvp: auto`` picks: a fixed rule (never a timing race at start-up, so runs
    reproduce): ``forward_over_reverse_bn`` for models with BatchNorm, else ``double_backward``.

    CPU, measured by ``experiments/bench_step_cost.py`` (docs/performance.md): for the MLP double
    backward is far cheaper (grad + HVP about 2x an SGD step against 3.5-4x); for LeNet-5 the two
    tie within the noise at batch 128 and double backward is cheaper on the small sub-batches of
    ``lr.preset: fast``; for ResNet-18 forward-over-reverse is a few per cent cheaper (3.7x against
    3.9x), replay of the BatchNorm statistics included.
    CUDA, not measured (no GPU was available): the same rule, reasoned. Small models are bound by
    per-kernel launch and dispatch overhead, which plain autograd keeps lower than torch.func's two
    transform layers; BatchNorm nets do about the same arithmetic either way, and forward-over-reverse
    does not keep the graph of a ``create_graph=True`` backward alive, so it needs less memory.
    ``bench_step_cost.py --device cuda`` reports both routes and their peak memory to check this.
    """
    return "forward_over_reverse_bn" if has_batchnorm(model) else "double_backward"
