"""A slow, literal implementation of the hypergradient methods, written straight from the equations.

Used only by the tests, to check the fast path (:class:`ray_rthpo.optim.RTHPO`)
at every step. Everything is a flat parameter vector; the Hessian is formed explicitly; the tangent
recursion is the paper's ``zeta_{t+1} = mu A_t zeta_t + B_t`` with the block Jacobian of the SGD-with-
momentum map ``Phi(w, v, eta) = (w - eta (m v + grad l(w) + lam w), m v + grad l(w) + lam w)``::

    A_t = [[I - eta_t (H_t + lam I),  -eta_t m I],     B_t = [[-(m v_t + grad l(w_t) + lam w_t)],
           [H_t + lam I,               m I      ]]            [0                               ]]

With a schedule ``phi`` (a schedule's scale ``s`` tuned, ``eta_t = s phi_t``) the state's ``eta`` is ``s``,
``A_t`` is formed with ``eta_t`` and ``B_t = dPhi_t/ds = phi_t dPhi_t/d eta`` (``-phi_t v_{t+1}`` in the
weight block); the first-order rules' ``z_t = -v_t`` becomes ``-phi_{t-1} v_t``.

Never use it for training: it builds N x N matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def flat_loss_fn(model: nn.Module, x: torch.Tensor,
                 y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``w -> cross_entropy(model_w(x), y)`` for a flat parameter vector ``w`` (buffers as in ``model``)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss(w: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(w, sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    return loss


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` concatenated into one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


@dataclass
class ReferenceState:
    """``w_t``, ``v_t``, the stacked tangent ``zeta_t = (z_t, u_t)``, ``eta`` (the tuned value: the learning
    rate, or a schedule's scale ``s``) and the schedule's factor of the previous step."""

    w: torch.Tensor
    v: torch.Tensor
    zeta: torch.Tensor
    eta: float
    t: int = 0
    history: list[dict] = field(default_factory=list)
    phi_prev: float = 1.0


class ReferenceHypergradient:
    """Literal RT-HPO / MARTHE / First-order (Train, Val) on a flat vector, for tests.

    ``method`` is one of ``rthpo``, ``marthe``, ``hd_train``, ``hd_val``. First-order rules use
    eq. (6) literally: ``eta <- eta + beta <v_t, grad>`` with ``v_t`` the previous update direction.
    The model is evaluated in eval mode for the validation gradient (no BatchNorm is expected here).
    """

    def __init__(
        self, model: nn.Module, *, method: str, eta0: float, beta: float, mu: float = 1.0,
        momentum: float = 0.0, weight_decay: float = 0.0, eta_max: float = float("inf"),
        clip: float | None = None, schedule: Callable[[int], float] | None = None,
    ) -> None:
        self.model = model
        self.schedule = schedule
        self.method = method
        self.beta, self.momentum, self.lam = beta, momentum, weight_decay
        self.eta_max, self.clip = eta_max, clip
        self.mu = {"rthpo": 1.0, "hd_train": 0.0, "hd_val": 0.0}.get(method, mu)
        w = flat_params(model)
        n = w.numel()
        self.n = n
        self.state = ReferenceState(w=w, v=torch.zeros_like(w),
                                    zeta=torch.zeros(2 * n, dtype=w.dtype), eta=eta0)

    def _grad(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(flat_loss_fn(self.model, x, y))(w)

    def _hessian(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.func.hessian(flat_loss_fn(self.model, x, y))(w)

    def step(self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor | None,
             yv: torch.Tensor | None) -> dict:
        """One step of the literal algorithm; returns ``{"h", "eta", "w_next"}`` for comparison."""
        s, n, m, lam = self.state, self.n, self.momentum, self.lam
        eye = torch.eye(n, dtype=s.w.dtype)
        g = self._grad(x, y, s.w)
        d = g + lam * s.w
        phi = 1.0 if self.schedule is None else float(self.schedule(s.t))
        # The hypergradient at w_t with the current tangent z_t.
        if self.method == "hd_train":
            h = -s.phi_prev * float(s.v @ d)                      # eq. (6): Delta eta = <v_t, d_t>
        elif self.method == "hd_val":
            h = -s.phi_prev * float(s.v @ self._grad(xv, yv, s.w))  # eq. (6) with the validation gradient
        else:
            z = s.zeta[:n]
            h = float(self._grad(xv, yv, s.w) @ z)     # eq. (5)
        scale = s.eta - self.beta * (max(-self.clip, min(self.clip, h)) if self.clip is not None else h)
        scale = min(self.eta_max, max(0.0, scale))    # eq. (2), kept in [0, eta_max]
        eta = scale * phi                             # the learning rate of this step
        # The block Jacobian of Phi at (w_t, v_t) with eta_t, and B_t.
        hess = self._hessian(x, y, s.w) + lam * eye
        a = torch.zeros(2 * n, 2 * n, dtype=s.w.dtype)
        a[:n, :n] = eye - eta * hess
        a[:n, n:] = -eta * m * eye
        a[n:, :n] = hess
        a[n:, n:] = m * eye
        v_next = m * s.v + d
        b = torch.cat([-phi * v_next, torch.zeros(n, dtype=s.w.dtype)])
        zeta_next = self.mu * (a @ s.zeta) + b
        w_next = s.w - eta * v_next
        record = {"h": h, "eta": eta, "scale": scale, "w_next": w_next.clone(),
                  "z_next": zeta_next[:n].clone()}
        self.state = ReferenceState(w=w_next, v=v_next, zeta=zeta_next, eta=scale, t=s.t + 1,
                                    history=s.history, phi_prev=phi)
        s.history.append(record)
        return record
