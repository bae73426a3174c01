"""How the learning rate moves given a hypergradient: the paper's additive rule and scale-free rules.

Pure functions over Python floats (one host value per step), no tensors, no optimizer. ``h`` is the
hypergradient ``dE/d eta`` of the step (paper eq. 5, or eq. 6 for the first-order rules); ``beta`` the
hyper-learning rate; every rule keeps ``eta`` in ``[0, eta_max]``. ``k`` (``val_every``) is how many
steps the hypergradient stands for when it is only computed every ``k``-th step: the step is scaled by
``k`` so that ``beta`` keeps its per-step meaning.

* ``additive`` (paper eq. 2)::

      eta <- clip(eta - k beta h, 0, eta_max)

  ``beta`` has the units of eta^2 / loss: its useful value moves by decades with the loss scale, the
  model size and eta itself.
* ``multiplicative`` (normalised; Baydin et al. 2018 give this form for first-order HD)::

      c   = h / (|grad E| |z| + eps)          # a cosine in [-1, 1]
      eta <- clip(eta (1 - k beta c), 0, eta_max)

  ``beta`` is the largest relative change of eta per step (unit-free). With ``agreement_gain`` G > 1 (off
  by default) the step grows while consecutive cosines agree in sign::

      r   <- r + sign(c) if sign(c) = sign(r) != 0, else sign(c)     # the signed run of agreeing signs
      eta <- clip(eta exp(-k beta min(|r|, G) c), 0, eta_max)

  in log space, so that a long run of agreement never takes eta through 0; a sign change starts the run
  again at 1, so a noisy hypergradient moves as with G = 1 and a consistent one up to G times further.
* ``adam_log`` (Adam on ``theta = log eta``, whose gradient is ``eta h``)::

      g = eta h;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  n <- n + 1
      eta <- min(eta exp(-k beta mhat / (sqrt(vhat) + eps)), eta_max)
      (mhat = m / (1 - b1^n), vhat = v / (1 - b2^n))

  ``beta`` is about the relative change of eta per step once the hypergradient's sign is consistent.
* ``sign_log`` (sign of a momentum of ``eta h`` on ``log eta``; MetaOptimize, 2025)::

      g = eta h;  m <- rho m + (1 - rho) g
      eta <- min(eta exp(-k beta sign(mix m + (1 - mix) g)), eta_max)     (rho = 0.99, mix = 0.9)

  ``beta`` is exactly the change of ``log eta`` per step.

How ``beta`` scales with the run's length (``beta_horizon``): ``"step"`` takes ``beta`` as the change per
step, so a consistent hypergradient moves ``log eta`` by up to ``beta T`` over a run of ``T`` steps and
even a noisy one drifts by about ``beta sqrt(T)``: the same ``beta`` that suits 200 steps over-moves at
2,000. ``"sqrt"`` takes ``beta / sqrt(T)`` per step (:func:`per_step_beta`): the random-walk drift of a
noisy hypergradient over the whole run is then about ``beta`` whatever ``T``, while a consistent one still
moves ``log eta`` by up to ``beta sqrt(T)``. When ``T`` is unknown, ``"sqrt"`` assumes
:data:`ASSUMED_HORIZON` steps.

The log-space rules never reach 0 (``exp`` is positive); they and the multiplicative rule are unit-free,
so one ``beta`` can serve models whose raw hypergradients differ by decades.
"""

from __future__ import annotations

import math
from typing import Any

#: The rules a run may use (``lr.hyper_update``), in the order the docs list them.
HYPER_UPDATES = ("additive", "multiplicative", "adam_log", "sign_log")
#: Rules that need ``|grad E|`` and ``|z|`` (a validation gradient, not only its directional derivative).
NEEDS_NORMS = ("multiplicative",)
#: The default rule (``lr.hyper_update``, ``RTHPO(hyper_update=...)``): chosen in docs/beta.md
#: (experiments/beta_robustness.py) as the rule whose best beta falls least short of a grid-searched
#: schedule from every eta-bar up to 0.1 on the three full-grid workloads (no rule had a common window).
DEFAULT_HYPER_UPDATE = "multiplicative"
#: beta when none is given: each scale-free rule's best beta in docs/beta.md; the additive rule's is
#: the paper-style value of the shipped MNIST configs (also its best in docs/beta.md).
DEFAULT_BETA: dict[str, float] = {"additive": 1.0e-4, "multiplicative": 1.0e-1, "adam_log": 3.16e-2,
                                  "sign_log": 3.16e-2}
#: How beta scales with the run's length T (``beta_horizon``): "step" (beta per step), "sqrt" (beta/sqrt(T)).
BETA_HORIZONS = ("step", "sqrt")
#: beta per sqrt(T) steps when none is given with ``beta_horizon="sqrt"``: the per-step defaults at a
#: 100-step horizon (docs/beta.md measured them on ~200 steps), i.e. DEFAULT_BETA x sqrt(100). Only the
#: multiplicative rule's value (1) is measured across horizons (docs/horizon.md); the others are scaled alike.
DEFAULT_BETA_SQRT: dict[str, float] = {rule: 10.0 * beta for rule, beta in DEFAULT_BETA.items()}
#: The run length that ``beta_horizon="sqrt"`` assumes when the number of steps is not given.
ASSUMED_HORIZON = 1000
#: Constants of the stateful rules.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-12
SIGN_MOMENTUM = 0.99
SIGN_MIX = 0.9
NORM_EPS = 1e-12
#: ``agreement_gain`` when none is given: off (the multiplicative rule as it always was). docs/method.md
#: measures larger values.
DEFAULT_AGREEMENT_GAIN = 1.0


def initial_state() -> dict[str, Any]:
    """The state every rule starts from (the stateful rules' moments and count; unused by the others)."""
    return {"m": 0.0, "v": 0.0, "n": 0}


def default_beta(rule: str, horizon: str = "step") -> float:
    """beta when none is given: :data:`DEFAULT_BETA` for ``horizon="step"``, :data:`DEFAULT_BETA_SQRT` for
    ``"sqrt"``."""
    if horizon == "sqrt":
        return DEFAULT_BETA_SQRT[rule]
    return DEFAULT_BETA[rule]


def per_step_beta(beta: float, horizon: str, total_steps: int | None) -> float:
    """The hyper-learning rate applied at each step: ``beta`` (``horizon="step"``) or ``beta / sqrt(T)``
    (``"sqrt"``, ``T = total_steps``, or :data:`ASSUMED_HORIZON` when it is None)."""
    if horizon == "step":
        return beta
    if horizon == "sqrt":
        return beta / math.sqrt(total_steps if total_steps is not None else ASSUMED_HORIZON)
    raise ValueError(f"beta_horizon must be one of {', '.join(BETA_HORIZONS)}, but got {horizon!r}.")


def clip_hypergradient(h: float, clip: float | None) -> float:
    """``h`` clipped to ``[-clip, clip]`` (``clip=None``: unchanged)."""
    return h if clip is None else max(-clip, min(clip, h))


def sign_run(run: int, cosine: float) -> int:
    """The signed count of consecutive hypergradients of one sign after one more of ``cosine``: ``run``
    extended by one when ``cosine`` has its sign, else restarted at ``sign(cosine)`` (0 for 0)."""
    sign = (cosine > 0) - (cosine < 0)
    if sign != 0 and run * sign > 0:
        return run + sign
    return sign


def _in_range(eta: float, eta_max: float) -> float:
    return float(min(eta_max, max(0.0, eta)))


def update(rule: str, eta: float, h: float, state: dict[str, Any], *, beta: float, eta_max: float,
           k: int = 1, clip: float | None = None, grad_norm: float | None = None,
           z_norm: float | None = None, agreement_gain: float = DEFAULT_AGREEMENT_GAIN,
           ) -> tuple[float, dict[str, Any]]:
    """One learning-rate update by ``rule`` (see the module doc); returns ``(eta, new state)``.

    ``h`` must be finite (a non-finite hypergradient is divergence, decided by the caller); it is
    clipped to ``[-clip, clip]`` first. ``grad_norm`` and ``z_norm`` (``|grad E|``, ``|z|``) are needed by
    ``multiplicative`` only, and so is ``agreement_gain`` (1: off; its run is ``state["n"]``). ``state`` is
    not modified; the returned one replaces it.
    """
    if not math.isfinite(h):
        raise ValueError(f"the hypergradient must be finite, but got {h!r}; treat it as divergence.")
    if rule not in HYPER_UPDATES:
        raise ValueError(f"hyper_update must be one of {', '.join(HYPER_UPDATES)}, but got {rule!r}.")
    h = clip_hypergradient(h, clip)
    step = k * beta
    if rule == "additive":
        return _in_range(eta - step * h, eta_max), dict(state)
    if rule == "multiplicative":
        if grad_norm is None or z_norm is None:
            raise ValueError("hyper_update 'multiplicative' needs grad_norm and z_norm (|grad E| and |z|).")
        cosine = h / (grad_norm * z_norm + NORM_EPS)
        if agreement_gain <= 1.0:
            return _in_range(eta * (1.0 - step * cosine), eta_max), dict(state)
        run = sign_run(int(state["n"]), cosine)
        gain = min(float(abs(run)), agreement_gain)
        return _in_range(eta * math.exp(-step * gain * cosine), eta_max), {**state, "n": run}
    g = eta * h  # d E / d log eta
    if rule == "adam_log":
        b1, b2 = ADAM_BETAS
        m = b1 * state["m"] + (1.0 - b1) * g
        v = b2 * state["v"] + (1.0 - b2) * g * g
        n = int(state["n"]) + 1
        m_hat, v_hat = m / (1.0 - b1**n), v / (1.0 - b2**n)
        eta = eta * math.exp(-step * m_hat / (math.sqrt(v_hat) + ADAM_EPS))
        return _in_range(eta, eta_max), {**state, "m": m, "v": v, "n": n}
    m = SIGN_MOMENTUM * state["m"] + (1.0 - SIGN_MOMENTUM) * g
    direction = SIGN_MIX * m + (1.0 - SIGN_MIX) * g
    sign = (direction > 0) - (direction < 0)
    return _in_range(eta * math.exp(-step * sign), eta_max), {**state, "m": m, "n": int(state["n"]) + 1}


__all__ = ["HYPER_UPDATES", "NEEDS_NORMS", "DEFAULT_HYPER_UPDATE", "DEFAULT_BETA", "BETA_HORIZONS",
           "ASSUMED_HORIZON", "DEFAULT_BETA_SQRT", "DEFAULT_AGREEMENT_GAIN", "default_beta",
           "initial_state", "per_step_beta", "sign_run",
           "clip_hypergradient", "update"]
