"""Data parallelism for :class:`ray_rthpo.optim.RTHPO`: every rank steps as one process on the whole batch.

Under ``torch.distributed`` each rank holds a shard of the step's batch (and of the validation batch).
Everything RTHPO computes from a batch is a mean over its examples and linear in them: the loss, the training
gradient ``g``, the Hessian-vector product ``H z`` and the validation gradient ``grad E`` (or the
hypergradient ``grad E . z``, ``z`` being the same on every rank). Their whole-batch values are therefore
the means of the ranks' values weighted by the ranks' example counts,

    g = sum_r n_r g_r / sum_r n_r,

and one ``all_reduce`` (SUM) of the concatenation ``[n_r g_r, n'_r H_r z, n''_r grad E_r, n_r loss_r,
n_r, n'_r, n''_r]`` gives all of them at once (:func:`weighted_means`): one collective per step. Every rank
then holds the same bits (an all-reduce hands each rank the same result) and takes the same step, so the
weights, the tangents, the learning rate and the divergence and backoff decisions stay identical.

Why RTHPO reduces itself: ``DistributedDataParallel`` all-reduces in hooks that fire during ``backward()``;
``torch.autograd.grad`` does not fire them (pytorch/pytorch#47562) and a double backward through DDP raises
(pytorch/pytorch#63812). A DDP-wrapped module is refused (:func:`refuse_wrapped`), and so is train-mode
BatchNorm, whose batch statistics are per rank (:func:`refuse_train_batchnorm`; SyncBatchNorm's backward
all-reduces statistics with non-differentiable kernels, so the HVP cannot go through it either).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

#: How :class:`ray_rthpo.optim.RTHPO` documents and refuses its ``process_group`` argument.
PROCESS_GROUP_FIX = ("pass None (the default group, when torch.distributed is initialised), False (each "
                     "process steps on its own batch, no averaging) or a torch.distributed.ProcessGroup "
                     "(e.g. torch.distributed.new_group(ranks))")


def check_process_group(value: Any) -> Any:
    """``value`` if it is allowed as RTHPO's ``process_group`` (None, False or a ProcessGroup), else a
    TypeError naming it and the fix."""
    if value is None or value is False:
        return value
    if dist.is_available() and isinstance(value, dist.ProcessGroup):
        return value
    raise TypeError(f"RTHPO: process_group must be None, False or a torch.distributed.ProcessGroup, but got "
                    f"{value!r}; {PROCESS_GROUP_FIX}.")


@dataclass(frozen=True)
class Replicas:
    """The process group RTHPO averages over: ``group`` as the ``torch.distributed`` calls take it (None:
    the default group), its size (> 1) and this process's rank in it."""

    group: Any
    size: int
    rank: int


def replicas(process_group: Any) -> Replicas | None:
    """The group to average over, or None when there is nothing to average (``process_group=False``,
    ``torch.distributed`` not initialised, or a group of one process: then RTHPO steps exactly as one
    process does)."""
    if process_group is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is None:
            return None
        raise RuntimeError("RTHPO: process_group was given but torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group(...) first, or pass process_group=False.")
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise RuntimeError("RTHPO: this process is not a member of process_group; pass a group that contains "
                           "every rank that steps this optimizer (or None for the default group).")
    size = dist.get_world_size(process_group)
    return Replicas(process_group, size, rank) if size > 1 else None


def refuse_wrapped(module: Any, where: str) -> None:
    """Refuse a ``DistributedDataParallel`` (or ``DataParallel``) module, saying how to pass the plain one."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        kind = type(module).__name__
        raise TypeError(
            f"RTHPO: {where} is a {kind}; pass the plain module it wraps instead "
            f"(ModelClosure(ddp.module, loss_fn, x, y), model=ddp.module) and have bare closures call "
            f"ddp.module, not ddp. RTHPO averages the gradient, the Hessian-vector product and the "
            f"validation term over the process group itself: {kind}'s all-reduce hooks do not fire "
            f"under torch.autograd.grad (pytorch/pytorch#47562) and a double backward through it raises "
            f"(pytorch/pytorch#63812).")


def refuse_train_batchnorm(module: nn.Module, where: str) -> None:
    """Refuse a train-mode BatchNorm layer (SyncBatchNorm included) in ``module`` under data parallelism."""
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            kind = type(m).__name__
            why = ("its backward all-reduces the statistics with kernels that have no derivative, so the "
                   "Hessian-vector product cannot go through it (and torch.func cannot run it)"
                   if isinstance(m, nn.SyncBatchNorm) else
                   "it normalises with each rank's own batch statistics, so no rank computes what one "
                   "process computes on the whole batch")
            raise ValueError(
                f"RTHPO: {where} has a {kind} layer in training mode ({name or 'the module itself'}), "
                f"which data-parallel RTHPO does not support: {why}. Put the model in eval mode "
                f"(model.eval(): BatchNorm then normalises with its running statistics, frozen), replace "
                f"BatchNorm with GroupNorm or LayerNorm, or run one process (process_group=False steps "
                f"each rank on its own batch, unaveraged).")


def batch_size(closure: Any, fraction: float = 1.0) -> int:
    """The number of examples a :class:`ray_rthpo.optim.ModelClosure` averages over (of its head for a
    ``fraction`` below 1); 1 for a bare closure, whose batch RTHPO cannot see (every rank then counts
    alike)."""
    from ray_rthpo.optim.closures import ModelClosure

    if not isinstance(closure, ModelClosure):
        return 1
    sub = closure.head(fraction) if fraction < 1.0 else closure
    x = sub.batch[0]
    n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
    if n < 1:
        raise ValueError("RTHPO: a ModelClosure's batch has no examples on this rank; give every rank at "
                         "least one example of each batch.")
    return n


def weighted_means(reps: Replicas, items: Sequence[tuple[int, Sequence[torch.Tensor]]]
                   ) -> list[list[torch.Tensor]]:
    """For each ``(n_r, tensors_r)`` of ``items``, ``sum_r n_r tensors_r / sum_r n_r`` over the group's
    ranks, all items in ONE ``all_reduce``. The result has the tensors' shapes and dtypes (views of one
    buffer when the dtype is the buffer's); every rank receives the same values."""
    tensors = [t for _, ts in items for t in ts]
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    device = tensors[0].device
    sizes = [sum(t.numel() for t in ts) for _, ts in items]
    total = sum(sizes)
    buffer = torch.empty(total + len(items), dtype=dtype, device=device)
    offset = 0
    for (n, ts), size in zip(items, sizes, strict=True):
        segment = buffer[offset:offset + size]
        o = 0
        for t in ts:
            segment[o:o + t.numel()].copy_(t.detach().reshape(-1))
            o += t.numel()
        segment.mul_(float(n))
        offset += size
    buffer[total:] = torch.tensor([float(n) for n, _ in items], dtype=dtype)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=reps.group)
    out, offset = [], 0
    for k, ((_, ts), size) in enumerate(zip(items, sizes, strict=True)):
        segment = buffer[offset:offset + size]
        segment.div_(buffer[total + k])
        parts, o = [], 0
        for t in ts:
            part = segment[o:o + t.numel()].view(t.shape)
            parts.append(part if part.dtype == t.dtype else part.to(t.dtype))
            o += t.numel()
        out.append(parts)
        offset += size
    return out


def check_same(reps: Replicas, fingerprint: torch.Tensor, what: str) -> None:
    """Raise on every rank if ``fingerprint`` (a 1-d float tensor) differs between the ranks: one
    ``all_reduce`` (MAX of ``[f, -f]``; equal everywhere iff max == min)."""
    both = torch.cat([fingerprint, -fingerprint]).to(torch.float64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=reps.group)
    n = fingerprint.numel()
    if not torch.equal(both[:n], -both[n:]):
        raise RuntimeError(
            f"RTHPO: the {reps.size} ranks of the process group hold different {what}; data-parallel RTHPO "
            "needs every rank to start from the same weights and optimizer state: seed the model's "
            "initialisation alike on every rank or broadcast rank 0's weights before the first step "
            "(for p in model.parameters(): torch.distributed.broadcast(p.data, 0)), and load the same "
            "state_dict on every rank when resuming.")


__all__ = ["Replicas", "replicas", "check_process_group", "refuse_wrapped", "refuse_train_batchnorm",
           "batch_size", "weighted_means", "check_same", "PROCESS_GROUP_FIX"]
