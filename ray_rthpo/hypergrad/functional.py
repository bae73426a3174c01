"""The hypergradient maths as pure functions over lists of tensors (one tensor per parameter).

No ``nn.Module``, no optimizer, no Ray. Notation (paper: Majumder, Donini, Chaudhari 2019; MARTHE:
Donini et al. 2020), for SGD with momentum ``m`` and weight decay ``lam``::

    d_t     = g_t + lam * w_t                    # gradient of the regularised minibatch loss
    v_{t+1} = m * v_t + d_t                      # velocity (v_{t+1} = d_t when m = 0)
    w_{t+1} = w_t - eta_t * v_{t+1}

The tangents ``z_t = dw_t/d eta`` and ``u_t = dv_t/d eta`` follow the linear recursion
``(z, u)_{t+1} = mu * A_t (z, u)_t + B_t`` (paper section 3.1 with MARTHE's discount ``mu``)::

    u_{t+1} = mu * (m * u_t + H_t z_t + lam * z_t)
    z_{t+1} = mu * z_t - eta_t * u_{t+1} - v_{t+1}

With ``m = 0`` this is ``z_{t+1} = mu (I - eta_t (H_t + lam I)) z_t - d_t``: the paper's recursion
for ``mu = 1`` (RT-HPO) and the one-step truncation ``z_{t+1} = -d_t`` for ``mu = 0`` (first order).
``H_t z_t`` is a Hessian-vector product of the training loss at ``w_t`` on minibatch ``b_t``.

The hypergradient (paper eq. 5) is ``h_t = grad E(w_t) . z_t`` and the learning rate follows
eq. (2): ``eta_{t+1} = clip(eta_t - beta * h_t, 0, eta_max)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensors = Sequence[torch.Tensor]


def dot(a: Tensors, b: Tensors) -> torch.Tensor:
    """Inner product ``sum_i <a_i, b_i>`` of two parameter-shaped lists, as a 0-d tensor (no host sync)."""
    if len(a) != len(b):
        raise ValueError(f"dot needs lists of equal length, but got {len(a)} and {len(b)} tensors.")
    if not a:
        raise ValueError("dot needs at least one tensor.")
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)]).sum()


def hypergradient(grad_e: Tensors, z: Tensors) -> float:
    """Paper eq. (5): ``h_t = grad E(w_t) . z_t`` (a Python float).

    ``grad_e`` is the gradient of the performance metric (validation loss for RT-HPO, MARTHE and
    First-order (Val); the regularised training minibatch gradient ``d_t`` for First-order (Train))
    and ``z`` the tangent ``dw_t/d eta``.
    """
    return float(dot(grad_e, z))


def first_order_hypergradient(grad_e: Tensors, prev_direction: Tensors) -> float:
    """Paper eq. (6) as a hypergradient: ``h_t = -<v_t, grad E(w_t)>``.

    ``prev_direction`` is the previous update direction ``v_t`` (``d_{t-1}`` for plain SGD). With
    ``grad_e = d_t`` this is Baydin et al.'s First-order (Train); with the validation gradient it is
    First-order (Val). Equal to :func:`hypergradient` with the ``mu = 0`` tangent ``z_t = -v_t``.
    """
    return -float(dot(grad_e, prev_direction))


def lr_step(eta: float, h: float, *, beta: float, eta_max: float, clip: float | None = None) -> float:
    """Paper eq. (2), kept in range: ``clip(eta - beta * clip(h, -c, c), 0, eta_max)``.

    ``h`` must be finite (callers treat a non-finite hypergradient as divergence). Returns a float.
    """
    if not math.isfinite(h):
        raise ValueError(f"hypergradient must be finite, but got {h!r}.")
    if clip is not None:
        h = max(-clip, min(clip, h))
    return float(min(eta_max, max(0.0, eta - beta * h)))


@torch.no_grad()
def tangent_step_(
    z: Tensors, u: Tensors | None, hz: Tensors | None, v_next: Tensors, *, eta: float, mu: float,
    momentum: float, weight_decay: float, phi: float = 1.0,
) -> None:
    """One step of the tangent recursion, in place: ``z`` (and ``u``) become ``z_{t+1}`` (and ``u_{t+1}``).

    ``u_{t+1} = mu (m u_t + H_t z_t + lam z_t)``, ``z_{t+1} = mu z_t - eta_t u_{t+1} - v_{t+1}``, where
    ``hz`` is ``H_t z_t``, ``v_next`` the direction the optimizer stepped along (``v_{t+1}``, weight decay
    included) and ``eta`` the learning rate of this very step (never a stale copy). ``u`` is ``None``
    when ``momentum == 0`` (not needed). ``hz=None`` drops the Hessian term (the sub-sampled steps of
    ``hvp_every > 1``, or ``mu == 0``; ``ray_rthpo.hypergrad.reference`` is the literal check).
    Without momentum ``z_{t+1} = mu (1 - eta lam) z_t - eta mu H z_t - v_{t+1}``: two passes over the
    parameters for RT-HPO, no allocation. With momentum ``u`` is updated first, then ``z`` from it.

    ``phi``: the schedule's factor at this step when the tuned quantity is a schedule's scale ``s`` with
    ``eta_t = s phi_t`` (:mod:`ray_rthpo.optim.schedules`). ``z`` is then ``zeta = dw/ds`` and ``u = dv/ds``:
    ``u_{t+1} = mu (m u_t + H_t zeta_t + lam zeta_t)``,
    ``zeta_{t+1} = mu zeta_t - eta_t u_{t+1} - phi_t v_{t+1}`` (only the last term carries ``phi``).
    ``phi = 1`` is the recursion above, bit for bit.
    """
    if momentum != 0.0 and u is None:
        raise ValueError("tangent_step_ needs the velocity tangent u when momentum != 0.")
    z, v_next = list(z), list(v_next)
    if mu == 0.0:  # z_{t+1} = -phi v_{t+1}, u_{t+1} = 0
        torch._foreach_copy_(z, v_next)
        if phi == 1.0:
            torch._foreach_neg_(z)
        else:
            torch._foreach_mul_(z, -phi)
        if u is not None:
            torch._foreach_zero_(list(u))
        return
    if momentum != 0.0:
        u = list(u)  # type: ignore[arg-type]
        torch._foreach_mul_(u, mu * momentum)
        if hz is not None:
            torch._foreach_add_(u, list(hz), alpha=mu)
        if weight_decay != 0.0:
            torch._foreach_add_(u, z, alpha=mu * weight_decay)
        if mu != 1.0:
            torch._foreach_mul_(z, mu)
        torch._foreach_add_(z, u, alpha=-eta)
    else:
        scale = mu * (1.0 - eta * weight_decay)
        if scale != 1.0:
            torch._foreach_mul_(z, scale)
        if hz is not None:
            torch._foreach_add_(z, list(hz), alpha=-eta * mu)
    if phi == 1.0:
        torch._foreach_sub_(z, v_next)
    else:
        torch._foreach_add_(z, v_next, alpha=-phi)
