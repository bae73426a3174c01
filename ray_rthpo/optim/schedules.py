"""Learning-rate schedule shapes ``phi(step)`` for RT-HPO on a schedule's scale: ``eta_t = s * phi(t)``.

RTHPO with ``schedule=`` tunes the scale ``s`` (the peak learning rate of the shapes below, whose
largest factor is 1) by its hypergradient ``dE/ds``; the annealing comes from the shape. A shape is any
callable ``step -> factor`` (``step`` counts from 0, the factor is a finite number >= 0); the built-in
ones are small frozen dataclasses, so they pickle (Ray ships them to trial processes) and compare equal
when their settings do.

* :class:`Constant`: ``phi = 1`` (today's RT-HPO on a flat eta, bit for bit).
* :class:`WarmupCosine`: ``phi = (t + 1) / W`` for the ``W`` warmup steps, then
  ``final + (1 - final) (1 + cos(pi p)) / 2`` with ``p = (t - W) / (T - W)`` the progress through the
  rest of the run of ``T`` steps (``p`` held at 1 past the end).
* :class:`WarmupLinear`: the same warmup, then ``final + (1 - final) (1 - p)``.

``warmup`` is a fraction of ``total_steps`` (below 1) or a number of steps (an integer >= 1);
``round(warmup * total_steps)`` steps for a fraction.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

#: Names of the built-in shapes (``RTHPO(schedule=NAME, total_steps=T)``, ``lr.schedule`` in configs).
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")
#: The warmup of the named shapes when none is given: 5% of the run.
DEFAULT_WARMUP = 0.05

Schedule = Callable[[int], float]


def _check_total(total_steps: object, name: str) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"schedule {name!r} needs total_steps, the run's number of optimizer steps (an "
                         f"integer >= 1), but got {total_steps!r}; pass total_steps= (the Trainer passes "
                         "epochs x steps per epoch).")
    return total_steps


def warmup_steps(warmup: float, total_steps: int) -> int:
    """The number of warmup steps: ``round(warmup * total_steps)`` for a fraction in [0, 1), else ``warmup``
    itself (an integer); at most ``total_steps - 1``, so that the decay has at least one step."""
    if (isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not math.isfinite(warmup)
            or warmup < 0):
        raise ValueError("warmup must be a fraction of the run in [0, 1) or a whole number of "
                         f"steps, but got {warmup!r}; 0.05 warms up over the first 5% of the steps.")
    if warmup < 1:
        steps = round(warmup * total_steps)
    elif float(warmup).is_integer():
        steps = int(warmup)
    else:
        raise ValueError(f"warmup must be a fraction below 1 or a whole number of steps, but got {warmup!r}.")
    return min(steps, total_steps - 1)


def _check_final(final: float) -> None:
    if isinstance(final, bool) or not isinstance(final, (int, float)) or not 0.0 <= final <= 1.0:
        raise ValueError(f"final (the factor at the end of the run, relative to the peak) must be in [0, 1], "
                         f"but got {final!r}; 0 decays to zero.")


@dataclass(frozen=True)
class Constant:
    """``phi(t) = 1``: a flat learning rate (the tuned scale is the learning rate itself)."""

    def __call__(self, step: int) -> float:
        """The factor at ``step``: always 1.0."""
        return 1.0


@dataclass(frozen=True)
class _Warmup:
    """Linear warmup over ``warmup`` (a fraction or a step count), then :meth:`decay` from 1 to ``final``."""

    total_steps: int
    warmup: float = DEFAULT_WARMUP
    final: float = 0.0

    def __post_init__(self) -> None:
        _check_total(self.total_steps, self.name)
        warmup_steps(self.warmup, self.total_steps)
        _check_final(self.final)

    name = "warmup"

    def decay(self, p: float) -> float:
        """The decay's factor from 1 (``p = 0``) to 0 (``p = 1``) over the rest of the run."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        """The factor at ``step`` (0-based)."""
        w = warmup_steps(self.warmup, self.total_steps)
        if step < w:
            return (step + 1) / w
        p = min(1.0, (step - w) / (self.total_steps - w))
        return self.final + (1.0 - self.final) * self.decay(p)


@dataclass(frozen=True)
class WarmupCosine(_Warmup):
    """Linear warmup, then cosine from 1 to ``final``."""

    name = "warmup_cosine"

    def decay(self, p: float) -> float:
        """``(1 + cos(pi p)) / 2``."""
        return 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class WarmupLinear(_Warmup):
    """Linear warmup, then linear decay from 1 to ``final``."""

    name = "warmup_linear"

    def decay(self, p: float) -> float:
        """``1 - p``."""
        return 1.0 - p


def make_schedule(spec: str | Schedule | None, total_steps: int | None = None, *,
                  warmup: float = DEFAULT_WARMUP, final: float = 0.0) -> Schedule:
    """The shape ``phi`` that ``spec`` names: None or ``"constant"`` -> :class:`Constant`; ``"warmup_cosine"``
    or ``"warmup_linear"`` over ``total_steps`` with ``warmup`` and ``final``; a callable is returned as
    is."""
    if spec is None or spec == "constant":
        return Constant()
    if callable(spec):
        return spec
    if spec == "warmup_cosine":
        return WarmupCosine(_check_total(total_steps, spec), warmup, final)
    if spec == "warmup_linear":
        return WarmupLinear(_check_total(total_steps, spec), warmup, final)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)} or a callable step -> factor, but got "
                     f"{spec!r}; warmup_cosine is the usual choice.")


def factor(schedule: Schedule, step: int) -> float:
    """``schedule(step)`` as a float, checked: finite and >= 0 (else ValueError naming the step and value)."""
    value = schedule(step)
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0):
        raise ValueError(f"the schedule returned {value!r} at step {step}; a schedule must return a finite "
                         "factor >= 0 (the learning rate is scale * factor).")
    return float(value)


__all__ = ["SCHEDULES", "DEFAULT_WARMUP", "Schedule", "Constant", "WarmupCosine", "WarmupLinear",
           "make_schedule", "factor", "warmup_steps"]
