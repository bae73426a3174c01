"""The eta-update rules of ray_rthpo.hypergrad.hyper_updates against the equations of its module docstring,
re-implemented literally below in plain Python floats: over the first steps of a fixed hypergradient
sequence with sign changes, with ``k`` (val_every) > 1 and ``clip``, at both clamps of ``[0, eta_max]``, and
through RTHPO (``param_group["lr"]`` after each hypergradient step is the rule applied to
``opt.last_hypergrad``), including ``beta_horizon="sqrt"`` (``beta / sqrt(T)``).

Every check takes the rules' module as an argument, so ``test_the_checks_catch_a_broken_variant`` runs the
same checks against mutated copies of the module's source (loaded with ``exec``, never written to disk):
no clamp, no bias correction in adam_log, no ``k`` scaling, no clip, ... each must make named checks fail.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import types
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.hypergrad import hyper_updates
from ray_rthpo.optim import RTHPO
from ray_rthpo.optim import rthpo as rthpo_module

RULES = ("additive", "multiplicative", "adam_log", "sign_log")

# ------------------------------------------------------------------ the docstring's equations, literally
B1, B2, ADAM_EPS = 0.9, 0.999, 1e-12  # Adam's moments on log eta
RHO, MIX = 0.99, 0.9  # sign_log: "(rho = 0.99, mix = 0.9)"
NORM_EPS = 1e-12  # multiplicative: "c = h / (|grad E| |z| + eps)"


def _clip(h: float, clip: float | None) -> float:
    return h if clip is None else max(-clip, min(clip, h))


def ref_update(rule: str, eta: float, h: float, s: dict, *, beta: float, eta_max: float, k: int = 1,
               clip: float | None = None, gn: float | None = None, zn: float | None = None,
               clamp: bool = True) -> tuple[float, dict]:
    """One step of ``rule`` as the module docstring writes it; ``s`` is this reference's own state
    (``clamp=False``: the value before the clamp, to see that a case reaches it)."""
    if not clamp:
        eta_max = math.inf
    h = _clip(h, clip)
    s = dict(s)
    if rule == "additive":  # eta <- clip(eta - k beta h, 0, eta_max)
        return min(max(eta - k * beta * h, 0.0 if clamp else -math.inf), eta_max), s
    if rule == "multiplicative":  # c = h / (|grad E| |z| + eps); eta <- clip(eta (1 - k beta c), 0, eta_max)
        c = h / (gn * zn + NORM_EPS)
        return min(max(eta * (1 - k * beta * c), 0.0 if clamp else -math.inf), eta_max), s
    g = eta * h
    if rule == "adam_log":
        s["m"] = B1 * s["m"] + (1 - B1) * g
        s["v"] = B2 * s["v"] + (1 - B2) * g**2
        s["n"] = s["n"] + 1
        mhat, vhat = s["m"] / (1 - B1 ** s["n"]), s["v"] / (1 - B2 ** s["n"])
        return min(eta * math.exp(-k * beta * mhat / (math.sqrt(vhat) + ADAM_EPS)), eta_max), s
    assert rule == "sign_log"
    s["m"] = RHO * s["m"] + (1 - RHO) * g
    d = MIX * s["m"] + (1 - MIX) * g
    sign = 1.0 if d > 0 else -1.0 if d < 0 else 0.0
    return min(eta * math.exp(-k * beta * sign), eta_max), s


def ref_state() -> dict:
    return {"m": 0.0, "v": 0.0, "n": 0}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)


# ------------------------------------------------------------------ checks of the pure rules
#: A fixed hypergradient sequence with sign changes, a zero, and values beyond the clip below.
H = (0.8, -0.3, 1.5, 2.0, -5.0, 0.0, 0.4, -0.05, 1.1, -1.7, 0.6)
#: |grad E| and |z| for the multiplicative rule: |h| <= |grad E| |z| at every step (a cosine).
GN = (1.0, 1.5, 2.0, 1.2, 1.8, 1.0, 0.9, 1.1, 1.6, 1.3, 1.0)
ZN = (1.0, 0.8, 1.0, 2.0, 3.0, 1.0, 1.0, 0.5, 1.0, 1.5, 2.0)
BETA = {"additive": 0.01, "multiplicative": 0.1, "adam_log": 0.05, "sign_log": 0.05}
#: name -> (k, clip)
CASES = {"k1": (1, None), "k3_clip": (3, 1.0)}


def check_sequence(mod: types.ModuleType, rule: str, case: str) -> None:
    """update(...) from initial_state() over H equals the written equation, step by step, and stays in
    range."""
    k, clip = CASES[case]
    eta = ref_eta = 0.1
    state, ref_s = mod.initial_state(), ref_state()
    for t, (h, gn, zn) in enumerate(zip(H, GN, ZN, strict=True)):
        kw = dict(beta=BETA[rule], eta_max=10.0, k=k, clip=clip)
        norms = dict(grad_norm=gn, z_norm=zn) if rule == "multiplicative" else {}
        eta, state = mod.update(rule, eta, h, state, **kw, **norms)
        ref_eta, ref_s = ref_update(rule, ref_eta, h, ref_s, **kw, gn=gn, zn=zn)
        assert isinstance(eta, float)
        assert close(eta, ref_eta), (f"{rule} step {t} (h={h}, k={k}, clip={clip}): {eta!r} != equation's "
                                     f"{ref_eta!r}")
        assert 0.0 < eta < 10.0, "the sequence is meant to stay inside the clamps"


#: Sequences that reach the clamps: rule -> (eta0, eta_max, beta, k, [(h, |grad E|, |z|), ...]).
CLAMP_CASES = {
    # 0.05 - 0.1 h: below 0 -> 0; back up from 0; above eta_max -> eta_max; then inside again
    "additive": (0.05, 0.2, 0.1, 1, [(1.0, 1, 1), (-0.3, 1, 1), (-5.0, 1, 1), (0.5, 1, 1), (4.0, 1, 1)]),
    # k beta = 1.2: a cosine of -1 multiplies eta by 2.2 (-> eta_max), of +1 by -0.2 (-> 0, where it stays)
    "multiplicative": (0.05, 0.2, 0.6, 2, [(-1.0, 1, 1), (-2.0, 2, 1), (0.5, 1, 1), (1.0, 1, 1),
                                           (-1.0, 1, 1)]),
    # log rules: exp(k beta) = e above eta_max -> eta_max; then the moments continue from the clamped eta
    "adam_log": (0.1, 0.15, 0.5, 2, [(-1.0, 1, 1), (-0.5, 1, 1), (2.0, 1, 1), (3.0, 1, 1), (-0.2, 1, 1),
                                     (5.0, 1, 1), (5.0, 1, 1)]),
    # sign_log: the second step's sign is the momentum's (g = eta h), not the raw h's
    "sign_log": (0.1, 0.15, 0.5, 2, [(1.0, 1, 1), (-0.15, 1, 1), (-3.0, 1, 1), (-3.0, 1, 1), (-3.0, 1, 1),
                                     (0.5, 1, 1)]),
}


def check_clamps(mod: types.ModuleType, rule: str) -> None:
    """At both clamps: a step that would leave [0, eta_max] lands on the bound; later steps start from it."""
    eta0, eta_max, beta, k, steps = CLAMP_CASES[rule]
    eta = ref_eta = eta0
    state, ref_s = mod.initial_state(), ref_state()
    etas, raw = [], []
    for t, (h, gn, zn) in enumerate(steps):
        kw = dict(beta=beta, eta_max=eta_max, k=k)
        norms = dict(grad_norm=float(gn), z_norm=float(zn)) if rule == "multiplicative" else {}
        unclamped, _ = ref_update(rule, ref_eta, h, ref_s, beta=beta, eta_max=eta_max, k=k, gn=gn, zn=zn,
                                  clamp=False)
        eta, state = mod.update(rule, eta, h, state, **kw, **norms)
        ref_eta, ref_s = ref_update(rule, ref_eta, h, ref_s, **kw, gn=gn, zn=zn)
        assert close(eta, ref_eta), f"{rule} step {t} (h={h}): {eta!r} != equation's {ref_eta!r}"
        assert 0.0 <= eta <= eta_max, f"{rule} step {t}: eta={eta!r} outside [0, {eta_max}]"
        etas.append(eta)
        raw.append(unclamped)
    assert any(r > eta_max for r in raw) and eta_max in etas, "the case must reach the upper clamp"
    if rule in ("additive", "multiplicative"):
        assert min(raw) < 0.0 and 0.0 in etas, "the case must reach the lower clamp"
    else:  # "The log-space rules never reach 0": not even after a step of k beta = 100 in log eta
        eta, _ = mod.update(rule, eta, 5.0, state, beta=50.0, eta_max=eta_max, k=k)
        ref_eta, _ = ref_update(rule, ref_eta, 5.0, ref_s, beta=50.0, eta_max=eta_max, k=k)
        assert close(eta, ref_eta) and 0.0 < eta < 1e-20 * eta_max, (f"{rule}: {eta!r} != equation's "
                                                                      f"{ref_eta!r}")


def check_state(mod: types.ModuleType, rule: str) -> None:
    """initial_state(); update() leaves the state it is given untouched; h = 0 from the start keeps eta."""
    assert mod.initial_state() == {"m": 0.0, "v": 0.0, "n": 0}
    norms = dict(grad_norm=2.0, z_norm=1.5) if rule == "multiplicative" else {}
    state = mod.initial_state()
    kept = copy.deepcopy(state)
    eta, new = mod.update(rule, 0.1, 0.7, state, beta=BETA[rule], eta_max=10.0, **norms)
    assert state == kept, "update() must not modify the state it is given"
    again, _ = mod.update(rule, 0.1, 0.7, mod.initial_state(), beta=BETA[rule], eta_max=10.0, **norms)
    assert again == eta
    same, _ = mod.update(rule, 0.1, 0.0, mod.initial_state(), beta=BETA[rule], eta_max=10.0, **norms)
    assert same == 0.1, f"{rule}: h = 0 on the first step must leave eta unchanged, got {same!r}"
    with pytest.raises(ValueError, match="finite"):
        mod.update(rule, 0.1, math.nan, state, beta=0.1, eta_max=10.0, **norms)


def check_per_step_beta(mod: types.ModuleType) -> None:
    """"step": beta; "sqrt": beta / sqrt(T), T = total_steps or ASSUMED_HORIZON."""
    for total in (None, 1, 400, 2000):
        assert mod.per_step_beta(0.3, "step", total) == 0.3
    for total in (1, 400, 2000):
        assert close(mod.per_step_beta(0.3, "sqrt", total), 0.3 / math.sqrt(total))
    assert close(mod.per_step_beta(0.3, "sqrt", None), 0.3 / math.sqrt(mod.ASSUMED_HORIZON))
    with pytest.raises(ValueError, match="beta_horizon"):
        mod.per_step_beta(0.3, "linear", 100)


def check_default_beta(mod: types.ModuleType) -> None:
    """default_beta: DEFAULT_BETA per step; DEFAULT_BETA_SQRT = DEFAULT_BETA x sqrt(100) per sqrt(T)."""
    for rule in RULES:
        assert mod.default_beta(rule) == mod.default_beta(rule, "step") == mod.DEFAULT_BETA[rule] > 0
        assert close(mod.default_beta(rule, "sqrt"), mod.DEFAULT_BETA[rule] * math.sqrt(100))


# ------------------------------------------------------------------ checks through the optimizer
def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batches(n: int) -> tuple[list, tuple]:
    """The first ``n`` of 12 fixed training batches, and one validation batch."""
    gen = torch.Generator().manual_seed(1)
    train = [(torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
             for _ in range(12)]
    val = (torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen))
    return train[:n], val


#: name -> (steps, RTHPO settings, beta per rule, which clamps the run must reach)
OPT_CASES: dict[str, tuple[int, dict, dict[str, float], tuple[str, ...]]] = {
    "per_step": (7, dict(lr=0.5), {"additive": 0.5, "multiplicative": 0.3, "adam_log": 0.3,
                                   "sign_log": 0.3}, ()),
    # beta / sqrt(16) per step, eta moves every 2nd step by 2 steps' worth, |h| clipped at 0.02
    "sqrt_k2_clip": (11, dict(lr=0.5, beta_horizon="sqrt", total_steps=16, val_every=2, hypergrad_clip=0.02),
                     {"additive": 2.0, "multiplicative": 1.2, "adam_log": 1.2, "sign_log": 1.2}, ()),
    # a small eta: negative hypergradients push it into eta_max (the additive rule then into 0 as well)
    "clamp_top": (10, dict(lr=0.02, eta_max=0.03), {"additive": 20.0, "multiplicative": 3.0, "adam_log": 0.5,
                                                     "sign_log": 0.5}, ("top",)),
    # a large eta: positive hypergradients push it into 0 (the rules that can reach it)
    "clamp_zero": (9, dict(lr=0.5, eta_max=0.6), {"additive": 20.0, "multiplicative": 10.0}, ("zero",)),
}
OPT_PARAMS = [(rule, case) for case, (_, _, betas, _) in OPT_CASES.items() for rule in RULES if rule in betas]


@contextlib.contextmanager
def _optimizer_uses(mod: types.ModuleType) -> Iterator[None]:
    """RTHPO with ``mod`` as its rules' module (the module itself: nothing changes): every loaded module of
    the package that names the rules' module ``hyper_updates`` (the optimizer, its settings) sees ``mod``."""
    users = [m for name, m in list(sys.modules.items())
             if name.startswith("ray_rthpo") and getattr(m, "hyper_updates", None) is hyper_updates]
    assert rthpo_module in users
    for user in users:
        user.hyper_updates = mod
    try:
        yield
    finally:
        for user in users:
            user.hyper_updates = hyper_updates


def check_optimizer(mod: types.ModuleType, rule: str, case: str) -> None:
    """param_group["lr"] after each hypergradient step is the written rule applied to opt.last_hypergrad."""
    steps, settings, betas, clamps = OPT_CASES[case]
    beta, k = betas[rule], settings.get("val_every", 1)
    total, clip = settings.get("total_steps"), settings.get("hypergrad_clip")
    eta_max = settings.get("eta_max", 10.0)
    per_step = beta / math.sqrt(total) if settings.get("beta_horizon") == "sqrt" else beta
    model = _tiny()
    train, (xv, yv) = _batches(steps)

    def val_loss() -> torch.Tensor:
        return F.cross_entropy(model(xv), yv)

    with _optimizer_uses(mod):
        opt = RTHPO(model.parameters(), beta=beta, hyper_update=rule, model=model, **settings)
        params = list(model.parameters())
        ref_s, seen, hypergrad_steps, hs = ref_state(), [], [], []
        for t, (x, y) in enumerate(train):
            before = opt.param_groups[0]["lr"]
            gn = zn = None
            # |grad E(w_t)| and |z_t|, taken before the step moves them
            if rule == "multiplicative" and t > 0:
                grad_e = torch.autograd.grad(val_loss(), params)
                z = [opt.state[p]["z"] for p in params]
                gn = math.sqrt(sum(float((g * g).sum()) for g in grad_e))
                zn = math.sqrt(sum(float((v * v).sum()) for v in z))
                dot = sum(float((g * v).sum()) for g, v in zip(grad_e, z, strict=True))
            opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y), val_closure=val_loss)
            after = opt.param_groups[0]["lr"]
            if opt.last_step.hypergrad is None:
                assert after == before, (f"step {t}: no hypergradient, yet lr moved from {before!r} to "
                                         f"{after!r}")
                continue
            hypergrad_steps.append(t)
            h = opt.last_hypergrad
            assert h == opt.last_step.hypergrad
            hs.append(h)
            if gn is not None:
                assert math.isclose(h, dot, rel_tol=1e-9), "the norms below must be those of h's own vectors"
            expected, ref_s = ref_update(rule, before, h, ref_s, beta=per_step, eta_max=eta_max, k=k,
                                         clip=clip, gn=gn, zn=zn)
            assert close(after, expected), (f"{rule}, {case}, step {t} (h={h!r}): lr={after!r}, but the rule "
                                            f"gives {expected!r} from lr={before!r}")
            assert opt.eta == after
            seen.append(after)
    assert hypergrad_steps == [t for t in range(1, steps) if t % k == 0]
    if clip is not None:
        bites = any(abs(h) > clip for h in hs) and any(abs(h) < clip for h in hs)
        assert bites, "the clip must bite, not always"
    if "top" in clamps:
        assert eta_max in seen, f"{rule}: the case must reach eta_max"
    if "zero" in clamps:
        assert 0.0 in seen, f"{rule}: the case must reach 0"


def check_optimizer_default_beta(mod: types.ModuleType, rule: str) -> None:
    """RTHPO(beta=None) takes the rule's default: per step, or per sqrt(T) with beta_horizon="sqrt"."""
    with _optimizer_uses(mod):
        for horizon, factor in (("step", 1.0), ("sqrt", math.sqrt(100))):
            opt = RTHPO(_tiny().parameters(), lr=0.1, hyper_update=rule, beta_horizon=horizon)
            assert close(opt.param_groups[0]["beta"], hyper_updates.DEFAULT_BETA[rule] * factor)


# ------------------------------------------------------------------ the tests (on the module itself)
SEQUENCE_PARAMS = [(rule, case) for rule in RULES for case in CASES]


@pytest.mark.parametrize(("rule", "case"), SEQUENCE_PARAMS, ids=[f"{r}-{c}" for r, c in SEQUENCE_PARAMS])
def test_rule_follows_its_equation(rule: str, case: str) -> None:
    check_sequence(hyper_updates, rule, case)


@pytest.mark.parametrize("rule", RULES)
def test_rule_at_the_clamps(rule: str) -> None:
    check_clamps(hyper_updates, rule)


@pytest.mark.parametrize("rule", RULES)
def test_rule_state(rule: str) -> None:
    check_state(hyper_updates, rule)


def test_per_step_beta() -> None:
    check_per_step_beta(hyper_updates)


def test_default_beta() -> None:
    check_default_beta(hyper_updates)


@pytest.mark.parametrize(("rule", "case"), OPT_PARAMS, ids=[f"{r}-{c}" for r, c in OPT_PARAMS])
def test_optimizer_lr_follows_the_rule(rule: str, case: str) -> None:
    check_optimizer(hyper_updates, rule, case)


@pytest.mark.parametrize("rule", RULES)
def test_optimizer_default_beta(rule: str) -> None:
    check_optimizer_default_beta(hyper_updates, rule)


def all_checks() -> Iterator[tuple[str, Callable[[types.ModuleType], None]]]:
    """Every check above, named as its test."""
    for rule, case in SEQUENCE_PARAMS:
        yield f"test_rule_follows_its_equation[{rule}-{case}]", partial(check_sequence, rule=rule, case=case)
    for rule in RULES:
        yield f"test_rule_at_the_clamps[{rule}]", partial(check_clamps, rule=rule)
        yield f"test_rule_state[{rule}]", partial(check_state, rule=rule)
        yield f"test_optimizer_default_beta[{rule}]", partial(check_optimizer_default_beta, rule=rule)
    yield "test_per_step_beta", check_per_step_beta
    yield "test_default_beta", check_default_beta
    for rule, case in OPT_PARAMS:
        yield (f"test_optimizer_lr_follows_the_rule[{rule}-{case}]",
               partial(check_optimizer, rule=rule, case=case))


# ------------------------------------------------------------------ the checks catch broken variants
_SOURCE = Path(hyper_updates.__file__)
_CLAMP = "return float(min(eta_max, max(0.0, eta)))"
_BIAS = "m_hat, v_hat = m / (1.0 - b1**n), v / (1.0 - b2**n)"
#: name -> ([(text of hyper_updates.py, its replacement)], tests that must fail on that variant)
MUTATIONS: dict[str, tuple[list[tuple[str, str]], set[str]]] = {
    "no_clamp": ([(_CLAMP, "return float(eta)")],
                 {f"test_rule_at_the_clamps[{r}]" for r in RULES}
                 | {f"test_optimizer_lr_follows_the_rule[{r}-clamp_top]" for r in RULES}),
    "no_lower_clamp": ([(_CLAMP, "return float(min(eta_max, eta))")],
                       {"test_rule_at_the_clamps[additive]", "test_rule_at_the_clamps[multiplicative]",
                        "test_optimizer_lr_follows_the_rule[additive-clamp_zero]",
                        "test_optimizer_lr_follows_the_rule[multiplicative-clamp_zero]"}),
    "no_upper_clamp": ([(_CLAMP, "return float(max(0.0, eta))")],
                       {f"test_rule_at_the_clamps[{r}]" for r in RULES}),
    "additive_unclamped": ([("return _in_range(eta - step * h, eta_max), dict(state)",
                             "return eta - step * h, dict(state)")],
                           {"test_rule_at_the_clamps[additive]"}),
    "multiplicative_unclamped": ([("return _in_range(eta * (1.0 - step * cosine), eta_max), dict(state)",
                                   "return eta * (1.0 - step * cosine), dict(state)")],
                                 {"test_rule_at_the_clamps[multiplicative]"}),
    "adam_log_unclamped": ([('return _in_range(eta, eta_max), {**state, "m": m, "v": v, "n": n}',
                             'return eta, {**state, "m": m, "v": v, "n": n}')],
                           {"test_rule_at_the_clamps[adam_log]",
                            "test_optimizer_lr_follows_the_rule[adam_log-clamp_top]"}),
    "sign_log_unclamped": ([("return _in_range(eta * math.exp(-step * sign), eta_max)",
                             "return (eta * math.exp(-step * sign))")],
                           {"test_rule_at_the_clamps[sign_log]",
                            "test_optimizer_lr_follows_the_rule[sign_log-clamp_top]"}),
    "adam_log_no_bias_correction": ([(_BIAS, "m_hat, v_hat = m, v")],
                                    {"test_rule_follows_its_equation[adam_log-k1]",
                                     "test_rule_follows_its_equation[adam_log-k3_clip]",
                                     "test_rule_at_the_clamps[adam_log]",
                                     "test_optimizer_lr_follows_the_rule[adam_log-per_step]"}),
    "adam_log_no_first_moment_correction": ([(_BIAS, "m_hat, v_hat = m, v / (1.0 - b2**n)")],
                                            {"test_rule_follows_its_equation[adam_log-k1]"}),
    "adam_log_no_second_moment_correction": ([(_BIAS, "m_hat, v_hat = m / (1.0 - b1**n), v")],
                                             {"test_rule_follows_its_equation[adam_log-k1]"}),
    "no_k_scaling": ([("step = k * beta", "step = beta")],
                     {f"test_rule_follows_its_equation[{r}-k3_clip]" for r in RULES}
                     | {f"test_optimizer_lr_follows_the_rule[{r}-sqrt_k2_clip]" for r in RULES}),
    # (sign_log's run through the optimizer takes the same signs with and without the clip)
    "no_hypergradient_clip": ([("h = clip_hypergradient(h, clip)", "h = h")],
                              {f"test_rule_follows_its_equation[{r}-k3_clip]" for r in RULES}
                              | {f"test_optimizer_lr_follows_the_rule[{r}-sqrt_k2_clip]" for r in RULES[:3]}),
    "sqrt_horizon_ignored": ([("return beta / math.sqrt(total_steps if total_steps is not None else "
                               "ASSUMED_HORIZON)",
                               "return beta")],
                             {"test_per_step_beta"}
                             | {f"test_optimizer_lr_follows_the_rule[{r}-sqrt_k2_clip]" for r in RULES}),
    "multiplicative_not_normalised": ([("cosine = h / (grad_norm * z_norm + NORM_EPS)", "cosine = h")],
                                      {"test_rule_follows_its_equation[multiplicative-k1]",
                                       "test_optimizer_lr_follows_the_rule[multiplicative-per_step]"}),
    "log_rules_on_raw_h": ([("g = eta * h  # d E / d log eta", "g = h")],
                           {"test_rule_follows_its_equation[adam_log-k1]",
                            "test_rule_at_the_clamps[sign_log]"}),
    "sign_log_without_momentum": ([("direction = SIGN_MIX * m + (1.0 - SIGN_MIX) * g", "direction = g")],
                                  {"test_rule_follows_its_equation[sign_log-k1]"}),
    "sign_log_momentum_only": ([("direction = SIGN_MIX * m + (1.0 - SIGN_MIX) * g", "direction = m")],
                               {"test_rule_follows_its_equation[sign_log-k1]"}),
    "default_beta_sqrt_unscaled": ([("return DEFAULT_BETA_SQRT[rule]", "return DEFAULT_BETA[rule]")],
                                   {"test_default_beta", "test_optimizer_default_beta[additive]"}),
}


def mutant(replacements: list[tuple[str, str]]) -> types.ModuleType:
    """A copy of hyper_updates with ``replacements`` made in its source, built in memory."""
    source = _SOURCE.read_text()
    for old, new in replacements:
        assert source.count(old) == 1, (f"{_SOURCE} no longer contains {old!r} once: update MUTATIONS in "
                                        f"{__file__} to the code's new text")
        source = source.replace(old, new)
    module = types.ModuleType("hyper_updates_mutant")
    module.__file__ = str(_SOURCE)
    exec(compile(source, f"<mutated {_SOURCE.name}>", "exec"), module.__dict__)  # noqa: S102
    return module


def failing_checks(mod: types.ModuleType, only: set[str] | None = None) -> set[str]:
    """The names of the checks (of ``only``, or all) that fail on ``mod``."""
    failed = set()
    for name, check in all_checks():
        if only is not None and name not in only:
            continue
        try:
            check(mod)
        except Exception:  # an assertion, or the variant failing in another way: either way it is caught
            failed.add(name)
    return failed


def test_an_unmutated_copy_passes_every_check() -> None:
    assert failing_checks(mutant([])) == set()


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_checks_catch_a_broken_variant(name: str) -> None:
    replacements, must_fail = MUTATIONS[name]
    assert must_fail <= {name for name, _ in all_checks()}
    failed = failing_checks(mutant(replacements), only=must_fail)
    assert must_fail <= failed, (f"{name}: these checks pass on the broken variant: "
                                 f"{sorted(must_fail - failed)}")
