"""The multiplicative rule's sign-agreement gain (``agreement_gain``, ray_rthpo/hypergrad/hyper_updates.py)
against its equations written literally below: the signed run of agreeing cosines, the log-space step
``eta exp(-k beta min(|r|, G) c)`` with ``k`` and ``clip``, at the clamp, through RTHPO (``param_group["lr"]``
after each hypergradient step is the equation applied to the hypergradient and the norms of its own vectors),
across a ``state_dict`` round trip, and refused with the rules that have no cosine. ``agreement_gain=1`` (the
default) is the rule as it was, state untouched.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.hypergrad import hyper_updates
from ray_rthpo.optim import RTHPO
from ray_rthpo.optim.settings import SettingError


def ref_run(run: int, c: float) -> int:
    """r <- r + sign(c) if sign(c) = sign(r) != 0, else sign(c)."""
    sign = 1 if c > 0 else (-1 if c < 0 else 0)
    if sign != 0 and (run > 0) == (sign > 0) and run != 0:
        return run + sign
    return sign


def ref_step(eta: float, h: float, run: int, *, beta: float, k: int, gain: float, gn: float, zn: float,
             eta_max: float, clip: float | None = None) -> tuple[float, int]:
    """c = h / (|grad E| |z| + 1e-12); eta <- clip(eta exp(-k beta min(|r|, G) c), 0, eta_max)."""
    if clip is not None:
        h = max(-clip, min(clip, h))
    c = h / (gn * zn + 1e-12)
    run = ref_run(run, c)
    return min(eta_max, max(0.0, eta * math.exp(-k * beta * min(abs(run), gain) * c))), run


def test_sign_run_counts_agreeing_signs_and_restarts_on_a_change() -> None:
    runs, run = [], 0
    for c in (-0.3, -0.1, -0.2, 0.05, 0.4, 0.0, 0.2, -0.1):
        run = hyper_updates.sign_run(run, c)
        runs.append(run)
    assert runs == [-1, -2, -3, 1, 2, 0, 1, -1]


SEQUENCE = [(-3.0, 1.0, 10.0), (-2.0, 2.0, 5.0), (-4.0, 1.0, 8.0), (-1.0, 1.5, 3.0), (2.5, 1.0, 5.0),
            (3.0, 2.0, 2.0), (-0.5, 1.0, 1.0), (0.0, 1.0, 1.0), (-2.0, 1.0, 4.0), (-2.0, 1.0, 4.0)]


@pytest.mark.parametrize(("gain", "k", "clip"), [(2.0, 1, None), (3.5, 2, None), (8.0, 3, 2.5)])
def test_gain_follows_its_equation(gain: float, k: int, clip: float | None) -> None:
    eta, run, state = 0.1, 0, hyper_updates.initial_state()
    ran = []
    for h, gn, zn in SEQUENCE:
        got, state = hyper_updates.update("multiplicative", eta, h, state, beta=0.2, eta_max=10.0, k=k,
                                          clip=clip, grad_norm=gn, z_norm=zn, agreement_gain=gain)
        expected, run = ref_step(eta, h, run, beta=0.2, k=k, gain=gain, gn=gn, zn=zn, eta_max=10.0, clip=clip)
        assert math.isclose(got, expected, rel_tol=1e-13), (h, got, expected)
        assert state["n"] == run
        ran.append(abs(run))
        eta = got
    assert max(ran) == 4, "the sequence's longest run is 4: the cap bites for gains 2 and 3.5, not for 8"


def test_gain_reaches_the_clamp_and_never_crosses_zero() -> None:
    eta, state = 1.0, hyper_updates.initial_state()
    for _ in range(6):  # a run of large positive cosines: exp never reaches 0; 1 - k beta c would
        eta, state = hyper_updates.update("multiplicative", eta, 9.0, state, beta=0.5, eta_max=10.0,
                                          grad_norm=1.0, z_norm=10.0, agreement_gain=4.0)
        assert eta > 0.0
    eta, state = 1.0, hyper_updates.initial_state()
    for _ in range(6):
        eta, state = hyper_updates.update("multiplicative", eta, -9.0, state, beta=0.5, eta_max=3.0,
                                          grad_norm=1.0, z_norm=10.0, agreement_gain=4.0)
    assert eta == 3.0


def test_gain_one_is_the_rule_as_it_was() -> None:
    eta, state = 0.1, hyper_updates.initial_state()
    for h, gn, zn in SEQUENCE:
        got, new = hyper_updates.update("multiplicative", eta, h, state, beta=0.2, eta_max=10.0, k=2,
                                        grad_norm=gn, z_norm=zn, agreement_gain=1.0)
        assert got == min(10.0, max(0.0, eta * (1.0 - 2 * 0.2 * h / (gn * zn + 1e-12))))
        assert new == state
        eta, state = got, new
    assert RTHPO(nn.Linear(2, 2).parameters()).param_groups[0]["agreement_gain"] == 1.0


def _problem(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]],
                                     tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    batches = [(torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(14)]
    return model, batches, (torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,)))


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_optimizer_lr_follows_the_gain(base: str) -> None:
    model, batches, (xv, yv) = _problem()
    extra = dict(momentum=0.5) if base == "sgd" else {}
    opt = RTHPO(model.parameters(), lr=0.05 if base == "sgd" else 3e-3, beta=0.4, base=base, val_every=2,
                agreement_gain=3.0, schedule="warmup_cosine", total_steps=len(batches), model=model, **extra)
    params = list(model.parameters())
    run, gains = 0, []

    def val_loss() -> torch.Tensor:
        return F.cross_entropy(model(xv), yv)

    for t, (x, y) in enumerate(batches):
        before = opt.param_groups[0]["lr"]
        grad_e = torch.autograd.grad(val_loss(), params)
        z = [opt.state[p]["z"].clone() if "z" in opt.state[p] else torch.zeros_like(p) for p in params]
        gn = math.sqrt(sum(float((g * g).sum()) for g in grad_e))
        zn = math.sqrt(sum(float((v * v).sum()) for v in z))
        opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y), val_closure=val_loss)
        after = opt.param_groups[0]["lr"]
        if opt.last_step.hypergrad is None:
            assert after == before, f"step {t}: no hypergradient, yet the scale moved"
            continue
        expected, run = ref_step(before, opt.last_hypergrad, run, beta=0.4, k=2, gain=3.0, gn=gn, zn=zn,
                                 eta_max=10.0)
        assert math.isclose(after, expected, rel_tol=1e-9), (t, after, expected)
        gains.append(abs(run))
    assert max(gains) >= 2, "the run must see agreeing hypergradients in a row, or the gain is not exercised"


def test_the_run_of_signs_survives_a_state_dict_round_trip() -> None:
    def run(split: int | None) -> list[float]:
        model, batches, (xv, yv) = _problem(1)
        kwargs = dict(lr=0.05, beta=0.4, val_every=2, agreement_gain=4.0, model=model)
        opt = RTHPO(model.parameters(), **kwargs)
        lrs = []
        for t, (x, y) in enumerate(batches):
            if t == split:  # a new optimizer on the same weights, from the saved state
                saved = opt.state_dict()
                opt = RTHPO(model.parameters(), **kwargs)
                opt.load_state_dict(saved)
            opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y),
                     val_closure=lambda: F.cross_entropy(model(xv), yv))
            lrs.append(opt.param_groups[0]["lr"])
        return lrs

    assert run(7) == run(None)


@pytest.mark.parametrize("rule", ["additive", "adam_log", "sign_log"])
def test_gain_is_refused_with_a_rule_without_a_cosine(rule: str) -> None:
    with pytest.raises(SettingError, match="agreement_gain.*must be 1 with hyper_update"):
        RTHPO(nn.Linear(2, 2).parameters(), hyper_update=rule, agreement_gain=2.0)
    RTHPO(nn.Linear(2, 2).parameters(), hyper_update=rule, agreement_gain=1.0)


def test_gain_below_one_is_refused() -> None:
    with pytest.raises(SettingError, match="agreement_gain.*must be a finite number >= 1, but got 0.5"):
        RTHPO(nn.Linear(2, 2).parameters(), agreement_gain=0.5)
