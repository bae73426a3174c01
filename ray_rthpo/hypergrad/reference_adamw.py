"""A slow, literal AdamW tangent recursion on flat vectors, written straight from the equations.

Used only by the tests, to check :mod:`ray_rthpo.hypergrad.adamw` at every step. The state is
``s = (w, m, v)`` (3n numbers); one AdamW step with learning rate ``eta`` is the map
``s_{t+1} = Phi_t(s_t; eta)``::

    g  = grad l_t(w);   m' = b1 m + (1 - b1) g;   v' = b2 v + (1 - b2) g^2
    u  = (m' / c1) / (sqrt(v') / sqrt(c2) + eps)
    w' = (1 - eta lam) w - eta u

Its Jacobian ``A_t = dPhi_t/ds`` is formed explicitly as a 3n x 3n matrix, with the Hessian
``H = d^2 l_t / dw^2`` formed explicitly (``torch.func.jacfwd(torch.func.grad(l_t))``, see below)::

    dm'/ds = [(1 - b1) H,           b1 I, 0   ]
    dv'/ds = [2 (1 - b2) diag(g) H, 0,    b2 I]
    du/ds  = diag(du/dm') dm'/ds + diag(du/dv') dv'/ds,
             du/dm' = 1 / (c1 D),  du/dv' = -(m'/c1) / (2 sqrt(v') sqrt(c2) D^2)  (0 where v' = 0)
    dw'/ds = [(1 - eta lam) I, 0, 0] - eta du/ds

and ``B_t = dPhi_t/d eta = (-lam w - u, 0, 0)``. The tangent ``zeta = d s/d eta`` follows MARTHE's
discounted recursion ``zeta_{t+1} = mu A_t zeta_t + B_t`` (``mu = 1``: exact RT-HPO). Each step first
takes the hypergradient ``h_t = grad E(w_t) . z_t`` (validation loss, model in eval mode), moves the
learning rate by ``eta <- clip(eta - beta h_t, 0, eta_max)``, then steps with that ``eta``.

BatchNorm in training mode is supported: the gradient and Hessian are taken with batch statistics and
the running statistics frozen, and the running statistics are then moved once, by one train-mode
forward at ``w_t``. The hypergradient treats running statistics as constants.

The Hessian is ``jacfwd(grad(l))``, not ``torch.func.hessian`` (= ``jacfwd(jacrev(l))``): with
train-mode BatchNorm, torch 2.14's ``torch.func.hessian`` (and ``jacrev(jacrev)``, ``jacfwd(jacfwd)``)
returns a wrong, non-symmetric matrix (about 2% off, silently; compare pytorch/pytorch#196699 on
batch_norm's second-order forward AD), while ``jacfwd(grad)``, ``torch.autograd.functional.hessian``
and the package's HVP routes agree with finite differences. The tests pin this down.

With a schedule ``phi`` (a schedule's scale ``s`` tuned, ``eta_t = s phi_t``), the state's ``eta`` is ``s``,
``A_t`` is formed with ``eta_t`` and ``B_t = dPhi_t/ds = phi_t (-lam w - u, 0, 0)``.

Never use it for training: it builds 3n x 3n matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ray_rthpo.hypergrad.hvp import eval_mode, frozen_batchnorm_stats, has_batchnorm
from ray_rthpo.hypergrad.reference import flat_loss_fn, flat_params

__all__ = ["AdamWReferenceState", "ReferenceAdamW", "adamw_map", "flat_params"]


def adamw_map(
    loss: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
    eta: float | torch.Tensor, *, step: int, beta1: float, beta2: float, eps: float, weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Phi_t(w, m, v; eta) = (w', m', v')``: one AdamW step on flat vectors, literally.

    Differentiable by ``torch.func`` in every argument (``eta`` may be a 0-d tensor). ``loss`` maps a
    flat weight vector to the training minibatch loss (BatchNorm stats must be frozen by the caller).
    """
    g = torch.func.grad(loss)(w)
    m1 = beta1 * m + (1 - beta1) * g
    v1 = beta2 * v + (1 - beta2) * g * g
    c1 = 1 - beta1**step
    c2 = 1 - beta2**step
    u = (m1 / c1) / (torch.sqrt(v1) / math.sqrt(c2) + eps)
    w1 = (1 - eta * weight_decay) * w - eta * u
    return w1, m1, v1


def _unflatten(model: nn.Module, w: torch.Tensor) -> dict[str, torch.Tensor]:
    named = list(model.named_parameters())
    chunks = torch.split(w, [p.numel() for _, p in named])
    return {n: c.view(p.shape) for (n, p), c in zip(named, chunks, strict=True)}


@dataclass
class AdamWReferenceState:
    """``w_t``, ``m_t``, ``v_t``, the stacked tangent ``zeta_t = (z_t, a_t, b_t)``, ``eta`` and ``t``."""

    w: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    zeta: torch.Tensor
    eta: float
    t: int = 0
    history: list[dict] = field(default_factory=list)


class ReferenceAdamW:
    """Literal RT-HPO / MARTHE through AdamW on a flat vector, for tests (3n x 3n Jacobians)."""

    def __init__(
        self, model: nn.Module, *, eta0: float, beta: float = 0.0, eta_max: float = float("inf"),
        mu: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
        weight_decay: float = 0.0, schedule: Callable[[int], float] | None = None,
    ) -> None:
        self.model = model
        self.schedule = schedule
        self.beta, self.eta_max, self.mu = beta, eta_max, mu
        self.beta1, self.beta2, self.eps, self.lam = beta1, beta2, eps, weight_decay
        w = flat_params(model)
        self.n = w.numel()
        zeros = torch.zeros_like(w)
        self.state = AdamWReferenceState(
            w=w, m=zeros.clone(), v=zeros.clone(), zeta=torch.zeros(3 * self.n, dtype=w.dtype), eta=eta0
        )

    def jacobian(
        self, x: torch.Tensor, y: torch.Tensor, *, eta: float, phi: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(A_t, B_t, Phi_t(s_t))`` at the current state for the next step (t+1) with ``eta`` (with a
        schedule: ``eta_t = s phi_t`` and ``B_t = phi_t dPhi_t/d eta``)."""
        s, n = self.state, self.n
        b1, b2, eps, lam = self.beta1, self.beta2, self.eps, self.lam
        step = s.t + 1
        loss = flat_loss_fn(self.model, x, y)
        with frozen_batchnorm_stats(self.model):
            g = torch.func.grad(loss)(s.w)
            hess = self._hessian(loss, s.w)
        eye = torch.eye(n, dtype=s.w.dtype)
        zero = torch.zeros(n, n, dtype=s.w.dtype)
        m1 = b1 * s.m + (1 - b1) * g
        v1 = b2 * s.v + (1 - b2) * g * g
        c1 = 1 - b1**step
        c2 = 1 - b2**step
        root = torch.sqrt(v1)
        d = root / math.sqrt(c2) + eps
        u = (m1 / c1) / d
        du_dm1 = 1 / (c1 * d)
        du_dv1 = torch.where(v1 > 0, -(m1 / c1) / (2 * root * math.sqrt(c2) * d * d), torch.zeros_like(v1))
        dm1_ds = torch.cat([(1 - b1) * hess, b1 * eye, zero], dim=1)
        dv1_ds = torch.cat([2 * (1 - b2) * torch.diag(g) @ hess, zero, b2 * eye], dim=1)
        du_ds = torch.diag(du_dm1) @ dm1_ds + torch.diag(du_dv1) @ dv1_ds
        dw1_ds = torch.cat([(1 - eta * lam) * eye, zero, zero], dim=1) - eta * du_ds
        a_mat = torch.cat([dw1_ds, dm1_ds, dv1_ds], dim=0)
        b_vec = torch.cat([phi * (-lam * s.w - u), torch.zeros(2 * n, dtype=s.w.dtype)])
        w1 = (1 - eta * lam) * s.w - eta * u
        return a_mat, b_vec, (w1, m1, v1)

    @staticmethod
    def _hessian(loss: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        """``H = d^2 loss / dw^2`` as an explicit n x n matrix: forward-mode Jacobian of the gradient."""
        return torch.func.jacfwd(torch.func.grad(loss))(w)

    def validation_gradient(self, xv: torch.Tensor, yv: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``grad E(w)`` on the validation batch, model in eval mode (running statistics as constants)."""
        with eval_mode(self.model):
            return torch.func.grad(flat_loss_fn(self.model, xv, yv))(w)

    def _move_running_stats(self, x: torch.Tensor, w: torch.Tensor) -> None:
        """One train-mode forward at ``w_t``: BatchNorm running statistics move once per step."""
        if not (self.model.training and has_batchnorm(self.model)):
            return
        with torch.no_grad():
            functional_call(self.model, (_unflatten(self.model, w), dict(self.model.named_buffers())), (x,))

    def step(
        self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor | None = None, yv: torch.Tensor | None = None
    ) -> dict:
        """One step: ``h_t``, the new ``eta``, then ``zeta_{t+1} = mu A_t zeta_t + B_t`` and ``s_{t+1}``.

        Returns ``{"h", "eta", "w_next", "m_next", "v_next", "z_next", "a_next", "b_next"}``; ``h`` is
        ``None`` (and ``eta`` does not move) when no validation batch is given.
        """
        s, n = self.state, self.n
        h: float | None = None
        scale = s.eta
        if xv is not None and yv is not None:
            h = float(self.validation_gradient(xv, yv, s.w) @ s.zeta[:n])   # h_t = grad E(w_t) . z_t
            scale = min(self.eta_max, max(0.0, s.eta - self.beta * h))     # clip(eta - beta h, 0, eta_max)
        phi = 1.0 if self.schedule is None else float(self.schedule(s.t))
        eta = scale * phi                                                  # the learning rate of this step
        a_mat, b_vec, (w1, m1, v1) = self.jacobian(x, y, eta=eta, phi=phi)
        zeta1 = self.mu * (a_mat @ s.zeta) + b_vec
        self._move_running_stats(x, s.w)
        record = {
            "h": h, "eta": eta, "w_next": w1.clone(), "m_next": m1.clone(), "v_next": v1.clone(),
            "z_next": zeta1[:n].clone(), "a_next": zeta1[n:2 * n].clone(), "b_next": zeta1[2 * n:].clone(),
        }
        self.state = AdamWReferenceState(
            w=w1, m=m1, v=v1, zeta=zeta1, eta=scale, t=s.t + 1, history=s.history
        )
        s.history.append(record)
        return record
