"""The exact forward-mode tangent ``z = dw/d eta`` carried through torch's AdamW, as pure functions.

No ``nn.Module``, no optimizer, no Ray: lists of tensors (one per parameter) and keyword-only scalars.
torch's AdamW step ``t`` (1-based) with learning rate ``eta``, decoupled weight decay ``lam`` and bias
corrections ``c1 = 1 - b1^t``, ``c2 = 1 - b2^t``::

    g       = grad l(w_t)                                  # training minibatch gradient at w_t
    m_{t+1} = b1 m_t + (1 - b1) g
    v_{t+1} = b2 v_t + (1 - b2) g * g
    D       = sqrt(v_{t+1}) / sqrt(c2) + eps               # torch's denominator, computed as torch does
    u_t     = (m_{t+1} / c1) / D                           # adamw_direction
    w_{t+1} = (1 - eta lam) w_t - eta u_t

Differentiate with respect to ``eta`` (held constant over the run). The tangents ``a = dm/d eta``,
``b = dv/d eta``, ``z = dw/d eta`` start at 0; ``Hz = H_t z_t`` is the Hessian of the training minibatch
loss at ``w_t`` times ``z_t`` (so ``dg/d eta = Hz``). With MARTHE's discount ``mu`` in [0, 1] applied to
the linear (Jacobian) part of the recursion only, ``zeta_{t+1} = mu A_t zeta_t + B_t`` reads::

    a_{t+1} = mu (b1 a_t + (1 - b1) Hz)
    b_{t+1} = mu (b2 b_t + 2 (1 - b2) g * Hz)
    du      = (a_{t+1} / c1) / D - (m_{t+1} / c1) * b_{t+1} / (2 sqrt(v_{t+1}) sqrt(c2) D^2)
    z_{t+1} = mu (1 - eta lam) z_t - eta du - lam w_t - u_t

(``du = du/dm . a_{t+1} + du/dv . b_{t+1}``, using ``du/dm = 1/(c1 D)`` and
``du/dv = -(m/c1) / (2 sqrt(v) sqrt(c2) D^2)``; the second term of ``du`` is taken as 0 where
``v_{t+1} == 0``, where ``sqrt`` has no derivative.) ``mu = 1`` is exact RT-HPO: ``z_T = dw_T/d eta``
through the unrolled AdamW run. ``mu = 0`` is the first-order rule ``z_{t+1} = -(u_t + lam w_t)`` with
``a = b = 0``. adatune's MuAdam and Baydin's AdamHD drop ``a`` and ``b`` (the dependence of the moments
on ``eta``), which is not the derivative of the run.

The hypergradient is then ``h_t = grad E(w_t) . z_t`` as for SGD (:mod:`ray_rthpo.hypergrad.functional`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

Tensors = Sequence[torch.Tensor]

#: On CPU, :func:`adamw_tangent_step_` runs its ~20 elementwise passes block by block: the same slices
#: (of at most this many elements, cut at multiples of it) of every list at a time. Each block is then
#: still in the cache for the next pass, and the temporaries are block-sized (four parameter-sized
#: temporaries are fresh pages from the OS at every step: thousands of page faults per step on an MLP).
#: Every operation is elementwise, so the result is bit for bit that of whole-tensor passes (the block
#: boundaries fall on multiples of the vector width). Other devices take all tensors in one pass
#: (torch's multi-tensor kernels).
CPU_BLOCK_ELEMENTS = 1 << 16

__all__ = ["adamw_direction", "adamw_tangent_decay_", "adamw_tangent_step_"]


def _step_number(step: int | torch.Tensor) -> int:
    """The 1-based AdamW step count as an int (accepts torch's 0-d ``state["step"]`` tensor)."""
    value = step.item() if isinstance(step, torch.Tensor) else step
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"step must be a whole number (AdamW's 1-based step count), but got {step!r}.")
    if value < 1:
        raise ValueError(
            f"step must be >= 1 (the count after this step's increment, as torch.optim.AdamW's "
            f"state['step']), but got {step!r}."
        )
    return int(value)


def _check_hyper(*, beta1: float, beta2: float, eps: float) -> None:
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must be in [0, 1) as for torch.optim.AdamW, but got {beta!r}.")
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be finite and >= 0, but got {eps!r}.")


def _check_lengths(n: int, **lists: Tensors | None) -> None:
    for name, values in lists.items():
        if values is not None and len(values) != n:
            raise ValueError(
                f"{name} has {len(values)} tensors but z has {n}: pass one tensor per parameter, "
                f"in the same order, in every list."
            )


def _bias_corrections(step: int, beta1: float, beta2: float) -> tuple[float, float]:
    """``(c1, sqrt(c2))`` exactly as torch's single-tensor AdamW computes them (Python floats)."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    return bias_correction1, bias_correction2**0.5


def _denominator(exp_avg_sq: list[torch.Tensor], c2_sqrt: float, eps: float) -> list[torch.Tensor]:
    """``D = sqrt(v) / sqrt(c2) + eps``, with torch's operation order (sqrt, divide, add)."""
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, c2_sqrt)
    torch._foreach_add_(denom, eps)
    return denom


@torch.no_grad()
def adamw_direction(
    exp_avg: Tensors, exp_avg_sq: Tensors, *, step: int | torch.Tensor, beta1: float, beta2: float, eps: float
) -> list[torch.Tensor]:
    """AdamW's direction ``u_t = (m_{t+1} / c1) / (sqrt(v_{t+1}) / sqrt(c2) + eps)`` as new tensors.

    ``exp_avg``, ``exp_avg_sq`` are the moments after this step's update (torch's ``state["exp_avg"]``,
    ``state["exp_avg_sq"]`` once ``optimizer.step()`` has run) and ``step`` the 1-based count after its
    increment (``state["step"]``). The denominator is formed as torch forms it, so
    ``(1 - eta lam) w_t - eta u_t`` equals ``torch.optim.AdamW``'s ``w_{t+1}`` to rounding.
    """
    m, v = list(exp_avg), list(exp_avg_sq)
    if len(m) != len(v):
        raise ValueError(
            f"exp_avg has {len(m)} tensors but exp_avg_sq has {len(v)}: pass one of each per parameter."
        )
    if not m:
        raise ValueError("adamw_direction needs at least one tensor in exp_avg and exp_avg_sq.")
    t = _step_number(step)
    _check_hyper(beta1=beta1, beta2=beta2, eps=eps)
    c1, c2_sqrt = _bias_corrections(t, beta1, beta2)
    u = torch._foreach_div(m, _denominator(v, c2_sqrt, eps))
    torch._foreach_div_(u, c1)
    return u


@torch.no_grad()
def adamw_tangent_step_(
    z: Tensors,
    a: Tensors,
    b: Tensors,
    hz: Tensors | None,
    w: Tensors | None,
    grads: Tensors,
    exp_avg: Tensors,
    exp_avg_sq: Tensors,
    *,
    step: int | torch.Tensor,
    eta: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mu: float,
    decayed: bool = False,
    phi: float = 1.0,
) -> None:
    """One step of the AdamW tangent recursion, in place: ``z, a, b`` become ``z_{t+1}, a_{t+1}, b_{t+1}``.

    ``z``, ``a``, ``b``: the tangents ``dw_t/d eta``, ``dm_t/d eta``, ``dv_t/d eta`` (zeros at the start).
    ``hz``: ``H_t z_t`` at ``w_t`` on this step's minibatch; ``None`` drops the Hessian term (the
    sub-sampled steps of ``hvp_every > 1``, as :func:`ray_rthpo.hypergrad.functional.tangent_step_` does;
    with ``mu == 0`` it is not needed at all).
    ``w``: the weights ``w_t`` BEFORE this step (clone them before ``optimizer.step()``); only read when
    ``weight_decay != 0``, so ``None`` is allowed when ``weight_decay == 0``.
    ``grads``: ``g = grad l(w_t)``. ``exp_avg``, ``exp_avg_sq``, ``step``: the moments and the 1-based
    count AFTER this step's update (torch's optimizer state once ``step()`` has run).
    ``eta``: the learning rate this very step used. ``mu``: MARTHE's discount (1 = exact RT-HPO).
    ``decayed``: :func:`adamw_tangent_decay_` already applied the ``w_t`` terms to ``z`` before the base
    step (then ``w`` is not read and may be None); the same result bit for bit, without a clone of ``w_t``.
    ``phi``: the schedule's factor at this step when the tuned quantity is a schedule's scale ``s``
    (``eta_t = s phi_t``): ``z, a, b`` are then ``d/ds`` and
    ``zeta_{t+1} = mu (1 - eta_t lam) zeta_t - phi_t (lam w_t + u_t) - eta_t du`` (``a``, ``b`` and ``du``
    as above, with ``H zeta`` for ``Hz``). ``phi = 1`` is the recursion above, bit for bit. Pass the same
    ``phi`` to :func:`adamw_tangent_decay_` when ``decayed``.

    With ``r = a_{t+1} - m b_{t+1} / (2 sqrt(v) sqrt(c2) D)`` the update is
    ``z_{t+1} = mu (1 - eta lam) z_t - lam w_t - (m + eta r) / (c1 D)``, i.e. the module equation with
    ``u + eta du`` gathered over the common factor ``1 / (c1 D)``. Every term is one ``torch._foreach_*``
    call over all tensors (on CPU: over one block of slices at a time, :data:`CPU_BLOCK_ELEMENTS`); the
    temporaries are four lists the size of the tensors (on CPU: of a block).
    """
    z, a, b = list(z), list(a), list(b)
    m, v, g = list(exp_avg), list(exp_avg_sq), list(grads)
    n = len(z)
    if n == 0:
        raise ValueError("adamw_tangent_step_ needs at least one tensor in z.")
    _check_lengths(n, a=a, b=b, hz=hz, w=w, grads=g, exp_avg=m, exp_avg_sq=v)
    t = _step_number(step)
    _check_hyper(beta1=beta1, beta2=beta2, eps=eps)
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be finite and >= 0 (the learning rate this step used), but got {eta!r}.")
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"weight_decay must be finite and >= 0, but got {weight_decay!r}.")
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1] (1 = RT-HPO, 0 = first order), but got {mu!r}.")
    if not (math.isfinite(phi) and phi >= 0.0):
        raise ValueError("phi must be finite and >= 0 (the schedule's factor at this step), but "
                         f"got {phi!r}.")
    if w is None and weight_decay != 0.0 and not decayed:
        raise ValueError(
            f"w (the weights w_t before this step) is None but weight_decay = {weight_decay!r}; "
            f"clone the parameters before optimizer.step() and pass them, or set weight_decay = 0."
        )
    c1, c2_sqrt = _bias_corrections(t, beta1, beta2)
    lists = [z, a, b, None if hz is None else list(hz), None if w is None else list(w), g, m, v]
    for zk, ak, bk, hzk, wk, gk, mk, vk in _blocks(lists):
        _tangent_update_(zk, ak, bk, hzk, wk, gk, mk, vk, c1=c1, c2_sqrt=c2_sqrt, eta=eta, beta1=beta1,
                         beta2=beta2, eps=eps, weight_decay=weight_decay, mu=mu, decayed=decayed, phi=phi)


@torch.no_grad()
def adamw_tangent_decay_(z: Tensors, w: Tensors, *, eta: float, weight_decay: float, mu: float,
                         phi: float = 1.0) -> None:
    """The part of :func:`adamw_tangent_step_` that reads the weights ``w_t``, applied to ``z`` in place
    BEFORE ``optimizer.step()`` moves the weights, so that they need not be cloned every step: ``z``
    becomes ``mu (1 - eta lam) z_t - lam w_t`` (``lam w_t`` when ``mu == 0``, where ``z_t`` is unused).
    Then call :func:`adamw_tangent_step_` with ``decayed=True`` (and ``w=None``) and the same ``eta``,
    ``weight_decay`` and ``mu``: ``z_{t+1}`` is bit for bit the one a clone of ``w_t`` gives. With a
    schedule's factor ``phi`` the ``w_t`` term is ``phi lam w_t`` (``mu == 0``: ``lam w_t``, the factor is
    applied to the whole first-order tangent by :func:`adamw_tangent_step_`)."""
    z, w = list(z), list(w)
    _check_lengths(len(z), w=w)
    if mu == 0.0:
        torch._foreach_copy_(z, w)
        torch._foreach_mul_(z, weight_decay)  # the rounded lam w_t that adamw_tangent_step_ would form
    else:
        _decay_(z, w, eta=eta, weight_decay=weight_decay, mu=mu, phi=phi)


def _decay_(z: list[torch.Tensor], w: list[torch.Tensor] | None, *, eta: float, weight_decay: float,
            mu: float, phi: float = 1.0) -> None:
    """``z <- mu (1 - eta lam) z - phi lam w`` in place (``w`` read only when ``lam != 0``)."""
    scale = mu * (1.0 - eta * weight_decay)
    if scale != 1.0:
        torch._foreach_mul_(z, scale)
    if weight_decay != 0.0:
        torch._foreach_add_(z, w, alpha=-weight_decay * phi)  # type: ignore[arg-type]


def _blocks(lists: list[list[torch.Tensor] | None]) -> Iterator[list[list[torch.Tensor] | None]]:
    """``lists`` itself, or on CPU (contiguous tensors of matching shapes) the same flat slices of every
    list, one block of about :data:`CPU_BLOCK_ELEMENTS` elements at a time (None lists stay None)."""
    z = lists[0]
    assert z is not None
    present = [lst for lst in lists if lst is not None]
    if (z[0].device.type != "cpu" or sum(t.numel() for t in z) <= CPU_BLOCK_ELEMENTS
            or not all(t.is_contiguous() and t.shape == zi.shape
                       for lst in present for t, zi in zip(lst, z, strict=True))):
        yield lists
        return
    flat = [None if lst is None else [t.view(-1) for t in lst] for lst in lists]
    block: list[list[torch.Tensor] | None] = [None if lst is None else [] for lst in lists]
    size = 0
    for i, zi in enumerate(z):
        numel = zi.numel()
        for start in range(0, numel, CPU_BLOCK_ELEMENTS):  # cut at multiples of the block: whole vector lanes
            stop = min(numel, start + CPU_BLOCK_ELEMENTS)
            for part, lst in zip(block, flat, strict=True):
                if part is not None:
                    part.append(lst[i][start:stop])  # type: ignore[index]
            size += stop - start
            if size >= CPU_BLOCK_ELEMENTS:
                yield block
                block, size = [None if lst is None else [] for lst in lists], 0
    if size:
        yield block


def _tangent_update_(z: list[torch.Tensor], a: list[torch.Tensor], b: list[torch.Tensor],
                     hz: list[torch.Tensor] | None, w: list[torch.Tensor] | None, g: list[torch.Tensor],
                     m: list[torch.Tensor], v: list[torch.Tensor], *, c1: float, c2_sqrt: float, eta: float,
                     beta1: float, beta2: float, eps: float, weight_decay: float, mu: float,
                     decayed: bool, phi: float = 1.0) -> None:
    """The body of :func:`adamw_tangent_step_` (checked arguments) on one block of tensors."""
    # sqrt(v) once: D = sqrt(v) / sqrt(c2) + eps as _denominator forms it, and s below (the same values).
    sqrt_v = torch._foreach_sqrt(v)
    denom = torch._foreach_div(sqrt_v, c2_sqrt)
    torch._foreach_add_(denom, eps)

    if mu == 0.0:  # first order: z_{t+1} = -phi (u_t + lam w_t), a = b = 0
        u = torch._foreach_div(m, denom)
        torch._foreach_div_(u, c1)
        if weight_decay != 0.0:
            # lam w_t: in z already when decayed (adamw_tangent_decay_), the same rounded product
            torch._foreach_add_(u, z if decayed else torch._foreach_mul(w, weight_decay))  # type: ignore[arg-type]
        if phi == 1.0:
            torch._foreach_neg_(u)
        else:
            torch._foreach_mul_(u, -phi)
        torch._foreach_copy_(z, u)
        torch._foreach_zero_(a)
        torch._foreach_zero_(b)
        return

    # a_{t+1} = mu b1 a_t + mu (1 - b1) Hz;   b_{t+1} = mu b2 b_t + 2 mu (1 - b2) g * Hz
    torch._foreach_mul_(a, mu * beta1)
    torch._foreach_mul_(b, mu * beta2)
    if hz is not None:
        torch._foreach_add_(a, hz, alpha=mu * (1.0 - beta1))
        torch._foreach_addcmul_(b, g, hz, value=2.0 * mu * (1.0 - beta2))

    # r = a_{t+1} - m b_{t+1} / (2 sqrt(v) sqrt(c2) D), the v-term set to 0 where v == 0.
    mask = torch._foreach_sign(v)                # 1 where v > 0, 0 where v == 0
    r = torch._foreach_mul(m, b)
    torch._foreach_mul_(r, mask)                 # numerator 0 where v == 0
    s = sqrt_v                                   # sqrt(v), computed once above
    torch._foreach_sub_(mask, 1.0)               # 0 where v > 0, -1 where v == 0
    torch._foreach_sub_(s, mask)                 # sqrt(v) unchanged where v > 0, 1 where v == 0: no 0/0
    del mask
    torch._foreach_mul_(s, denom)
    torch._foreach_div_(r, s)
    # phi m + eta r = phi m + eta a_{t+1} - eta m b_{t+1} / (2 sqrt(v) sqrt(c2) D)   (phi = 1: no schedule)
    torch._foreach_mul_(r, -eta / (2.0 * c2_sqrt))
    torch._foreach_add_(r, a, alpha=eta)
    if phi == 1.0:
        torch._foreach_add_(r, m)
    else:
        torch._foreach_add_(r, m, alpha=phi)
    del s, sqrt_v

    # z_{t+1} = mu (1 - eta lam) z_t - phi lam w_t - (phi m + eta r) / (c1 D)   ( = ... - phi u_t - eta du )
    if not decayed:  # else adamw_tangent_decay_ did these two terms before the base step
        _decay_(z, w, eta=eta, weight_decay=weight_decay, mu=mu, phi=phi)
    torch._foreach_addcdiv_(z, r, denom, value=-1.0 / c1)
