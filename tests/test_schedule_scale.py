"""Proofs of RT-HPO on a schedule's scale (eta_t = s phi_t, s tuned), in float64: the class's tangent
zeta = dw/ds against forward-mode autograd through the unrolled SGD (momentum, L2) and AdamW runs, with
and without BatchNorm; the hypergradient dE/ds against central finite differences; the class against
the literal references (ray_rthpo/hypergrad/reference*.py) at every step while s moves, MARTHE's mu
included; phi = 1 reproduces RT-HPO on a flat eta bit for bit; a scheduled run resumes exactly."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adamw_tangent import B1, B2, EPS, MODELS, train_batches, val_batch
from torch import nn

from ray_rthpo.hypergrad import hyper_updates
from ray_rthpo.hypergrad.hvp import frozen_batchnorm_stats
from ray_rthpo.hypergrad.reference import ReferenceHypergradient, flat_loss_fn, flat_params
from ray_rthpo.hypergrad.reference_adamw import ReferenceAdamW
from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.optim.schedules import Constant, WarmupCosine, WarmupLinear, make_schedule, warmup_steps

STEPS = 12
S0 = 0.05
Batch = tuple[torch.Tensor, torch.Tensor]
SHAPES: dict[str, Callable[[int], float]] = {
    "warmup_cosine": WarmupCosine(STEPS, warmup=3),
    "warmup_linear": WarmupLinear(STEPS, warmup=0.25, final=0.1),
    "callable": lambda t: 1.0 / (1.0 + 0.3 * t),
}
SGD_SETTINGS = [
    pytest.param(0.0, 0.0, id="sgd"),
    pytest.param(0.9, 0.05, id="momentum+weight_decay"),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in ts])


def tangent(opt: RTHPO, model: nn.Module) -> torch.Tensor:
    return flat([opt.state[p]["z"] for p in model.parameters()])


def train(opt: RTHPO, model: nn.Module, batches: list[Batch], val: Batch) -> list[tuple[float, float | None]]:
    """Steps over ``batches`` with ModelClosures; returns (eta used, h) per step."""
    out = []
    for x, y in batches:
        opt.step(ModelClosure(model, F.cross_entropy, x, y),
                 val_closure=ModelClosure(model, F.cross_entropy, *val))
        out.append((opt.last_step.eta, opt.last_step.hypergrad))
    return out


# ----------------------------------------------------------------------- oracles: unrolled runs in s
def unrolled_sgd(model: nn.Module, w0: torch.Tensor, s: torch.Tensor, data: list[Batch],
                 phi: Callable[[int], float], *, momentum: float, weight_decay: float) -> torch.Tensor:
    """``w_T`` as a differentiable function of the scale ``s``: SGD (heavy ball, L2) with lr ``s phi(t)``.
    Train-mode BatchNorm uses batch statistics; its running statistics are frozen (not in the loss)."""
    w, v = w0, torch.zeros_like(w0)
    with frozen_batchnorm_stats(model):
        for t, (x, y) in enumerate(data):
            g = torch.func.grad(flat_loss_fn(model, x, y))(w)
            v = momentum * v + g + weight_decay * w
            w = w - (s * phi(t)) * v
    return w


def unrolled_adamw(model: nn.Module, w0: torch.Tensor, s: torch.Tensor, data: list[Batch],
                   phi: Callable[[int], float], *, weight_decay: float) -> torch.Tensor:
    """``w_T`` of torch's AdamW with lr ``s phi(t)``, in torch's operation order (as
    tests/test_adamw_tangent.py's oracle for a constant eta)."""
    w, m, v = w0, torch.zeros_like(w0), torch.zeros_like(w0)
    with frozen_batchnorm_stats(model):
        for t, (x, y) in enumerate(data, start=1):
            eta = s * phi(t - 1)
            g = torch.func.grad(flat_loss_fn(model, x, y))(w)
            m = torch.lerp(m, g, 1 - B1)
            v = torch.addcmul(v * B2, g, g, value=1 - B2)
            denom = torch.sqrt(v) / (1 - B2**t) ** 0.5 + EPS
            w = w * (1 - eta * weight_decay) + (-(eta / (1 - B1**t))) * (m / denom)
    return w


def dw_ds(oracle: Callable[..., torch.Tensor], model: nn.Module, data: list[Batch],
          phi: Callable[[int], float], s: float = S0, **kwargs: float) -> torch.Tensor:
    w0 = flat_params(model)
    return torch.func.jacfwd(lambda scale: oracle(model, w0, scale, data, phi, **kwargs))(
        torch.tensor(s, dtype=torch.float64))


# ------------------------------------------------------------------------- 1. the tangent is exact
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize(("momentum", "weight_decay"), SGD_SETTINGS)
def test_sgd_scale_tangent_equals_autograd_through_the_unrolled_run(shape: str, kind: str, momentum: float,
                                                                    weight_decay: float) -> None:
    """zeta_T = dw_T/ds by jacfwd through 12 unrolled SGD steps with lr s phi(t) (an MLP and a conv net
    with train-mode BatchNorm), relative error < 1e-9; the weights are the unrolled run's."""
    model_fn = MODELS[kind][0]
    batches, phi = train_batches(kind, STEPS), SHAPES[shape]
    jac = dw_ds(unrolled_sgd, model_fn(0), batches, phi, momentum=momentum, weight_decay=weight_decay)
    model = model_fn(0)
    opt = RTHPO(model.parameters(), lr=S0, beta=0.0, momentum=momentum, weight_decay=weight_decay,
                schedule=phi)
    etas = train(opt, model, batches, val_batch(kind))
    assert rel_err(tangent(opt, model), jac) < 1e-9
    w_unrolled = unrolled_sgd(model_fn(0), flat_params(model_fn(0)), torch.tensor(S0, dtype=torch.float64),
                              batches, phi, momentum=momentum, weight_decay=weight_decay)
    assert rel_err(flat_params(model), w_unrolled) < 1e-12
    assert [e for e, _ in etas] == [S0 * phi(t) for t in range(STEPS)]


@pytest.mark.parametrize("shape", ["warmup_cosine", "callable"])
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_scale_tangent_equals_autograd_through_the_unrolled_run(shape: str, kind: str,
                                                                      weight_decay: float) -> None:
    """RTHPO(base='adamw', schedule=phi): zeta_T = dw_T/ds by jacfwd through the unrolled AdamW run."""
    model_fn = MODELS[kind][0]
    batches, phi = train_batches(kind, STEPS), SHAPES[shape]
    jac = dw_ds(unrolled_adamw, model_fn(0), batches, phi, weight_decay=weight_decay)
    model = model_fn(0)
    opt = RTHPO(model.parameters(), lr=S0, beta=0.0, base="adamw", weight_decay=weight_decay, betas=(B1, B2),
                eps=EPS, schedule=phi)
    train(opt, model, batches, val_batch(kind))
    assert rel_err(tangent(opt, model), jac) < 1e-8


# ------------------------------------------------------------ 2. dE/ds against finite differences
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_scale_hypergradient_equals_central_finite_difference(base: str) -> None:
    """h = grad E(w_T) . zeta_T equals (E(w_T(s + d)) - E(w_T(s - d))) / 2d (warmup + cosine; SGD with
    momentum and L2, AdamW with decoupled decay; BatchNorm's running statistics held fixed in E)."""
    kind = "bn_conv"
    model_fn = MODELS[kind][0]
    batches, (xv, yv), phi = train_batches(kind, STEPS), val_batch(kind), SHAPES["warmup_cosine"]
    kwargs = dict(momentum=0.9, weight_decay=0.05) if base == "sgd" else dict(weight_decay=0.1)
    model = model_fn(0)
    opt = RTHPO(model.parameters(), lr=S0, beta=0.0, base=base, schedule=phi, **kwargs)
    train(opt, model, batches, (xv, yv))
    params = list(model.parameters())
    model.eval()
    grad_e = torch.autograd.grad(F.cross_entropy(model(xv), yv), params)
    h = float(sum((g * opt.state[p]["z"]).sum() for g, p in zip(grad_e, params, strict=True)))
    energy = flat_loss_fn(model, xv, yv)  # eval mode with the run's running statistics, held fixed
    oracle = unrolled_sgd if base == "sgd" else unrolled_adamw
    w0 = flat_params(model_fn(0))

    def e_of(s: float) -> float:
        with torch.no_grad():
            return float(energy(oracle(model_fn(0), w0, torch.tensor(s, dtype=torch.float64), batches, phi,
                                       **kwargs)))

    d = 1e-5 * S0
    fd = (e_of(S0 + d) - e_of(S0 - d)) / (2 * d)
    assert abs(h) > 1e-4 and math.isclose(h, fd, rel_tol=1e-6), (h, fd)


# ------------------------------------------------- 3. the class against the literal references
@pytest.mark.parametrize(("method", "mu"), [("rthpo", None), ("marthe", 0.5), ("hd_val", None)])
@pytest.mark.parametrize(("momentum", "weight_decay"), SGD_SETTINGS)
def test_sgd_class_equals_the_literal_reference_every_step_while_s_moves(
        method: str, mu: float | None, momentum: float, weight_decay: float) -> None:
    """h, the scale s, the learning rate s phi(t), w and zeta at each of 12 steps against
    ReferenceHypergradient(schedule=phi), which forms A_t and B_t = phi_t dPhi/d eta explicitly."""
    kind = "mlp"
    batches, (xv, yv), phi = train_batches(kind, STEPS), val_batch(kind), SHAPES["warmup_cosine"]
    beta = 1e-2
    ref = ReferenceHypergradient(MODELS[kind][0](0), method=method, eta0=S0, beta=beta, mu=mu or 1.0,
                                 momentum=momentum, weight_decay=weight_decay, eta_max=10.0, schedule=phi)
    model = MODELS[kind][0](0)
    opt = RTHPO(model.parameters(), lr=S0, beta=beta, method=method, mu=mu, momentum=momentum,
                weight_decay=weight_decay, hyper_update="additive", schedule=phi)
    for t, (x, y) in enumerate(batches):
        rec = ref.step(x, y, xv, yv)
        opt.step(ModelClosure(model, F.cross_entropy, x, y),
                 val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
        if t > 0:
            assert math.isclose(opt.last_step.hypergrad, rec["h"], rel_tol=1e-9, abs_tol=1e-15), t
        assert math.isclose(opt.scale, rec["scale"], rel_tol=1e-12), t
        assert math.isclose(opt.last_step.eta, rec["eta"], rel_tol=1e-12), t
        assert rel_err(flat_params(model), rec["w_next"]) < 1e-12, t
        assert rel_err(tangent(opt, model), rec["z_next"]) < 1e-9, t
    assert opt.scale != S0


@pytest.mark.parametrize("mu", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_class_equals_the_literal_reference_every_step_while_s_moves(
        mu: float, weight_decay: float) -> None:
    """The same against ReferenceAdamW(schedule=phi) (3n x 3n Jacobians), MARTHE's mu included."""
    kind = "mlp"
    batches, (xv, yv), phi = train_batches(kind, STEPS), val_batch(kind), SHAPES["warmup_linear"]
    beta = 1e-3
    ref = ReferenceAdamW(MODELS[kind][0](0), eta0=S0, beta=beta, eta_max=10.0, mu=mu, beta1=B1, beta2=B2,
                         eps=EPS, weight_decay=weight_decay, schedule=phi)
    model = MODELS[kind][0](0)
    method = {1.0: "rthpo", 0.0: "hd_val"}.get(mu, "marthe")
    opt = RTHPO(model.parameters(), lr=S0, beta=beta, base="adamw", weight_decay=weight_decay, betas=(B1, B2),
                eps=EPS, method=method, mu=mu if method == "marthe" else None, hyper_update="additive",
                schedule=phi)
    for t, (x, y) in enumerate(batches):
        rec = ref.step(x, y, xv, yv)
        opt.step(ModelClosure(model, F.cross_entropy, x, y),
                 val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
        if t > 0:
            assert math.isclose(opt.last_step.hypergrad, rec["h"], rel_tol=1e-9, abs_tol=1e-15), t
        assert math.isclose(opt.last_step.eta, rec["eta"], rel_tol=1e-12), t
        assert rel_err(flat_params(model), rec["w_next"]) < 1e-12, t
        assert rel_err(tangent(opt, model), rec["z_next"]) < 1e-9, t
    assert opt.scale != S0


# -------------------------------------------------------------- 4. phi = 1 is flat RT-HPO, bit for bit
@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("rule", ["multiplicative", "additive"])
def test_a_constant_schedule_is_flat_rthpo_bit_for_bit(base: str, rule: str) -> None:
    kind = "bn_conv"
    batches, val = train_batches(kind, STEPS), val_batch(kind)
    kwargs = dict(momentum=0.9, weight_decay=0.05) if base == "sgd" else dict(weight_decay=0.1)
    beta = 0.1 if rule == "multiplicative" else 1e-2
    runs = []
    for schedule in (None, "constant", Constant(), lambda t: 1.0):
        model = MODELS[kind][0](0)
        opt = RTHPO(model.parameters(), lr=S0, beta=beta, base=base, hyper_update=rule,
                    schedule=schedule, **kwargs)
        runs.append((train(opt, model, batches, val), flat_params(model), tangent(opt, model), opt.eta))
    first = runs[0]
    assert first[0][-1][0] != S0  # eta moved
    for other in runs[1:]:
        assert other[0] == first[0] and other[3] == first[3]
        assert torch.equal(other[1], first[1]) and torch.equal(other[2], first[2])


# --------------------------------------------------------------------------- 5. checkpoints, horizon
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_a_scheduled_run_resumes_exactly_from_its_state_dict(base: str) -> None:
    kind = "mlp"
    batches, val = train_batches(kind, STEPS), val_batch(kind)
    kwargs: dict = dict(lr=S0, beta=0.3, base=base, schedule="warmup_cosine", total_steps=STEPS, warmup=2,
                        beta_horizon="sqrt")
    model = MODELS[kind][0](0)
    opt = RTHPO(model.parameters(), **kwargs)
    train(opt, model, batches, val)
    model2 = MODELS[kind][0](0)
    opt2 = RTHPO(model2.parameters(), **kwargs)
    train(opt2, model2, batches[:5], val)
    saved, weights = copy.deepcopy(opt2.state_dict()), copy.deepcopy(model2.state_dict())
    model3 = MODELS[kind][0](1)
    model3.load_state_dict(weights)
    opt3 = RTHPO(model3.parameters(), **kwargs)
    opt3.load_state_dict(saved)
    assert opt3.step_count == 5 and opt3.eta == opt2.eta
    train(opt3, model3, batches[5:], val)
    assert torch.equal(flat_params(model3), flat_params(model)) and opt3.scale == opt.scale
    assert torch.equal(tangent(opt3, model3), tangent(opt, model))


def test_a_state_saved_before_the_schedule_settings_existed_loads_as_it_ran() -> None:
    model = MODELS["mlp"][0](0)
    opt = RTHPO(model.parameters(), lr=S0)
    train(opt, model, train_batches("mlp", 3), val_batch("mlp"))
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["beta_horizon"], group["total_steps"]
    again = RTHPO(model.parameters(), lr=S0)
    again.load_state_dict(old)
    assert again.param_groups[0]["beta_horizon"] == "step" and again.param_groups[0]["total_steps"] is None


def test_sqrt_horizon_divides_beta_by_the_root_of_the_run_length() -> None:
    """beta_horizon='sqrt' with beta b over T steps is beta_horizon='step' with b / sqrt(T), bit for bit;
    without total_steps it assumes ASSUMED_HORIZON."""
    kind = "mlp"
    batches, val = train_batches(kind, STEPS), val_batch(kind)
    runs = []
    for kwargs in (dict(beta=2.0, beta_horizon="sqrt", total_steps=400),
                   dict(beta=2.0 / 20.0, beta_horizon="step"),
                   dict(beta=2.0 * math.sqrt(hyper_updates.ASSUMED_HORIZON / 400), beta_horizon="sqrt")):
        model = MODELS[kind][0](0)
        opt = RTHPO(model.parameters(), lr=S0, **kwargs)
        runs.append((train(opt, model, batches, val), flat_params(model)))
    assert runs[0][0][-1][0] != S0
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert all(math.isclose(a[0], b[0], rel_tol=1e-12) for a, b in zip(runs[0][0], runs[2][0], strict=True))
    assert hyper_updates.per_step_beta(1.0, "sqrt", None) == 1.0 / math.sqrt(hyper_updates.ASSUMED_HORIZON)


# ------------------------------------------------------------------------------ 6. shapes, errors
def test_the_built_in_shapes() -> None:
    cos = WarmupCosine(100, warmup=0.1)
    assert [cos(t) for t in range(3)] == [0.1, 0.2, 0.3] and cos(9) == 1.0
    assert math.isclose(cos(55), 0.5, abs_tol=1e-12) and 0.0 < cos(99) < 1e-3 and cos(100) == 0.0
    lin = WarmupLinear(10, warmup=0, final=0.2)
    assert lin(0) == 1.0 and math.isclose(lin(5), 0.6) and math.isclose(lin(10), 0.2)
    assert warmup_steps(0.05, 1000) == 50 and warmup_steps(7, 1000) == 7 and warmup_steps(0.5, 1) == 0
    assert make_schedule(None) == Constant() and make_schedule("warmup_cosine", 10) == WarmupCosine(10)


BAD_SCHEDULES = [
    ({"schedule": "warmup_cosine"}, r"schedule 'warmup_cosine' needs total_steps.*got None"),
    ({"schedule": "cosine", "total_steps": 10}, r"schedule must be None, one of constant, warmup_cosine, "
                                                r"warmup_linear, or a callable"),
    ({"schedule": "warmup_linear", "total_steps": 10, "warmup": 1.5},
     r"warmup must be a fraction of the run in \[0, 1\) or a whole number of steps, but got 1.5"),
    ({"schedule": "warmup_linear", "total_steps": 10, "warmup": -0.1},
     r"warmup must be a fraction .* got -0.1"),
    ({"total_steps": 0}, r"total_steps must be None or an integer >= 1, but got 0"),
    ({"beta_horizon": "log"}, r"beta_horizon must be one of step, sqrt, but got 'log'"),
]


@pytest.mark.parametrize(("kwargs", "regex"), BAD_SCHEDULES, ids=[str(k) for k, _ in BAD_SCHEDULES])
def test_bad_schedule_settings_name_the_setting_the_value_and_the_fix(kwargs: dict, regex: str) -> None:
    with pytest.raises(ValueError, match=regex):
        RTHPO(MODELS["mlp"][0](0).parameters(), **kwargs)


def test_a_schedule_returning_a_bad_factor_is_refused_at_its_step() -> None:
    model = MODELS["mlp"][0](0)
    opt = RTHPO(model.parameters(), lr=S0, schedule=lambda t: 1.0 if t < 2 else float("nan"))
    with pytest.raises(ValueError, match=r"the schedule returned nan at step 2.*finite factor >= 0"):
        train(opt, model, train_batches("mlp", 3), val_batch("mlp"))


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_after_its_tune_fraction_a_step_is_the_base_optimizers_alone(base: str) -> None:
    """tune_fraction=0.5 over 12 steps: the first 6 steps equal the full run's bit for bit; from step 6 the
    scale stays, no hypergradient is computed, the tangent is frozen and the weights follow torch's own
    optimizer on the schedule from the same state."""
    kind = "mlp"
    batches, val, phi = train_batches(kind, STEPS), val_batch(kind), SHAPES["warmup_cosine"]
    kwargs: dict = dict(lr=S0, beta=0.3, base=base, schedule=phi, total_steps=STEPS,
                        **({"momentum": 0.9, "weight_decay": 0.05} if base == "sgd"
                           else {"weight_decay": 0.1}))
    full_model, model = MODELS[kind][0](0), MODELS[kind][0](0)
    full = train(RTHPO(full_model.parameters(), **kwargs), full_model, batches[:6], val)
    opt = RTHPO(model.parameters(), tune_fraction=0.5, **kwargs)
    head = train(opt, model, batches[:6], val)
    assert head == full and torch.equal(flat_params(model), flat_params(full_model)) and not opt.tuning
    frozen, scale = tangent(opt, model), opt.scale
    twin = copy.deepcopy(model)
    plain_cls = torch.optim.SGD if base == "sgd" else torch.optim.AdamW
    plain_kwargs = {k: v for k, v in kwargs.items() if k in ("momentum", "weight_decay")}
    plain = plain_cls(twin.parameters(), lr=scale, **plain_kwargs)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):  # the base optimizer's own state
        plain.state[q].update({k: v.clone() for k, v in opt.state[p].items()
                               if k in ("momentum_buffer", "exp_avg", "exp_avg_sq", "step")})
    tail = train(opt, model, batches[6:], val)
    for t, (x, y) in enumerate(batches[6:], start=6):
        for group in plain.param_groups:
            group["lr"] = scale * phi(t)
        plain.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        plain.step()
    assert all(h is None for _, h in tail)
    assert [e for e, _ in tail] == [scale * phi(t) for t in range(6, STEPS)]
    assert opt.scale == scale and torch.equal(tangent(opt, model), frozen)
    assert rel_err(flat_params(model), flat_params(twin)) < 1e-13


# --------------------------------------------------------------------- through the Trainer (run configs)
def _digits(*overrides: str):  # type: ignore[no-untyped-def]
    from ray_rthpo.config import load_config

    return load_config(None, ["data.name=digits", "data.batch_size=64", "model.hidden=[32]", "train.epochs=4",
                              "train.device=cpu", "lr.method=rthpo", "lr.schedule=warmup_cosine", *overrides])


TIMING = ("time/", "node/")


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in history]


@pytest.mark.harness
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_a_scheduled_trainer_run_resumes_exactly_from_a_checkpoint(base: str) -> None:
    """The run configs' defaults on warmup + cosine: a checkpoint after epoch 2 continues to the same epochs,
    learning rates and tuned scale as the run that never stopped."""
    from ray_rthpo.training.trainer import Trainer

    config = _digits(f"optim.base={base}", "lr.eta0=0.01" if base == "adamw" else "lr.eta0=0.1")
    whole = Trainer(config)
    while not whole.done:
        whole.run_epoch()
    part = Trainer(config)
    part.run_epoch()
    part.run_epoch()
    saved = copy.deepcopy(part.state_dict())
    again = Trainer(config)
    again.load_state_dict(saved)
    while not again.done:
        again.run_epoch()
    assert _untimed(again.history) == _untimed(whole.history)
    lrs = [row["lr"] for row in whole.history]
    assert lrs[-1] < 0.05 * max(lrs)  # the schedule decays to the run's end
    assert whole.history[-1]["lr_scale"] != config.lr.eta0  # the scale was tuned


@pytest.mark.harness
def test_a_scheduled_run_refuses_a_resume_with_another_length() -> None:
    from ray_rthpo.errors import ConfigError
    from ray_rthpo.training.trainer import Trainer

    trainer = Trainer(_digits())
    trainer.run_epoch()
    saved = copy.deepcopy(trainer.state_dict())
    longer = Trainer(_digits("train.epochs=8"))
    with pytest.raises(ConfigError, match=r"train.epochs \(checkpoint 4, now 8\)"):
        longer.load_state_dict(saved)
