"""The public optimizer ray_rthpo.optim.RTHPO: its contract (closures, param groups, errors, state),
its bases against torch's own optimizers, and its AdamW tangent against autograd through the unrolled
run and against the functional fast path proven in tests/test_adamw_tangent.py (float64)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_adamw_tangent import (
    B1,
    B2,
    EPS,
    ETA,
    MODELS,
    dstate_deta,
    run_fast,
    train_batches,
    val_batch,
)
from torch import nn

from ray_rthpo.hypergrad.reference import flat_params
from ray_rthpo.optim import RTHPO, ModelClosure


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in ts])


def tiny(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 5)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(5))
    layers += [nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).double()


def data(n: int = 6, size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def train(opt: RTHPO, model: nn.Module, batches: list, val: tuple | None = None,
          model_closures: bool = True) -> list:
    """Steps over ``batches``; returns (loss, eta, h) per step."""
    xv, yv = val if val is not None else data(1, 16, 7)[0]
    out = []
    for x, y in batches:
        if model_closures:
            closure = ModelClosure(model, F.cross_entropy, x, y)
            val_closure = ModelClosure(model, F.cross_entropy, xv, yv)
        else:
            def closure(x=x, y=y):  # type: ignore[no-untyped-def]
                return F.cross_entropy(model(x), y)

            def val_closure():  # type: ignore[no-untyped-def]
                return F.cross_entropy(model(xv), yv)
        loss = opt.step(closure, val_closure=val_closure)
        out.append((float(loss), opt.eta, opt.last_step.hypergrad))
    return out


# ------------------------------------------------------------------------------------------ contract
def test_importable_from_the_package_and_the_submodule() -> None:
    import ray_rthpo
    from ray_rthpo.optim import RTHPO as FromOptim

    assert ray_rthpo.RTHPO is FromOptim and "RTHPO" in ray_rthpo.__all__


BAD_ARGUMENTS = [
    ({"lr": -0.1}, ValueError, r"lr must be a finite number > 0, but got -0.1; pass the initial"),
    ({"lr": 20.0}, ValueError, r"lr \(20.0\) must not exceed eta_max \(10.0\); lower lr or raise eta_max"),
    ({"beta": -1e-3}, ValueError, r"beta must be a finite number >= 0, but got -0.001"),
    ({"method": "marthe", "mu": 1.5}, ValueError, r"mu must be a number in \[0, 1\], but got 1.5"),
    ({"method": "marthe"}, ValueError, r"mu must be a number in \[0, 1\] for method='marthe'"),
    ({"mu": 0.5}, ValueError, r"mu must be 1.0 for method='rthpo'.*method='marthe'"),
    ({"base": "adam"}, ValueError, r"base must be one of sgd, adamw, but got 'adam'"),
    ({"method": "rthpo2"}, ValueError, r"method must be one of rthpo, marthe, hd_val, hd_train, but "
                                       r"got 'rthpo2'"),
    ({"hyper_update": "log"}, ValueError, r"hyper_update must be one of additive, multiplicative"),
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), but got 1.0"),
    ({"base": "adamw", "momentum": 0.9}, ValueError, r"momentum must be 0 with base adamw, but got 0.9; "
                                                     r"AdamW's momentum is betas\[0\]"),
    ({"betas": (0.9, 1.0)}, ValueError, r"betas must be two numbers in \[0, 1\)"),
    ({"eps": 0.0}, ValueError, r"eps must be a finite number > 0, but got 0.0"),
    ({"weight_decay": -0.01}, ValueError, r"weight_decay must be a finite number >= 0, but got -0.01"),
    ({"hypergrad_clip": 0.0}, ValueError, r"hypergrad_clip must be None \(null in a config\) or a number > "
                                          r"0, but got 0.0"),
    ({"hvp": "fast"}, ValueError, r"hvp must be one of auto, double_backward"),
    ({"val_mode": "jvp"}, ValueError, r"val_mode must be one of backward, forward"),
    ({"hyper_update": "multiplicative", "val_mode": "forward"}, ValueError,
     r"val_mode must be backward with hyper_update multiplicative, which divides"),
    ({"hvp_every": 0}, ValueError, r"hvp_every must be an integer >= 1, but got 0"),
    ({"val_batch_fraction": 1.5}, ValueError, r"val_batch_fraction must be in \(0, 1\], but got 1.5"),
    ({"model": "net"}, TypeError, r"model must be a torch.nn.Module or None, but got str"),
]


@pytest.mark.parametrize(("kwargs", "error", "regex"), BAD_ARGUMENTS,
                         ids=[str(k) for k, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_name_the_argument_the_value_and_the_fix(kwargs: dict[str, Any], error: type,
                                                               regex: str) -> None:
    with pytest.raises(error, match=regex):
        RTHPO(tiny().parameters(), **kwargs)


def test_bad_closures_are_refused_with_the_fix() -> None:
    model = tiny()
    (x, y), = data(1)
    opt = RTHPO(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="needs closure="):
        opt.step()
    with pytest.raises(ValueError, match=r"must return a scalar loss, but returned a tensor of shape \(8,\)"):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"))
    with pytest.raises(TypeError, match=r"must return the loss as a torch.Tensor, but returned float"):
        opt.step(lambda: F.cross_entropy(model(x), y).item())
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        opt.step(lambda: F.cross_entropy(model(x), y).detach())
    opt.step(lambda: F.cross_entropy(model(x), y))  # step 0 needs no hypergradient (z_0 = 0)
    with pytest.raises(TypeError, match="needs val_closure="):
        opt.step(lambda: F.cross_entropy(model(x), y))
    with pytest.raises(TypeError, match="ModelClosure"):
        RTHPO(model.parameters(), hvp="forward_over_reverse").step(lambda: F.cross_entropy(model(x), y))


def test_param_groups_share_one_learning_rate_and_may_differ_in_weight_decay() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"param group 1 has lr=0.01, but group 0 has 0.1; .*shared by "
                                         r"all groups"):
        RTHPO([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}], lr=0.1)
    opt = RTHPO([{"params": model[0].parameters(), "weight_decay": 0.1}, {"params": model[2].parameters()}],
                lr=0.1, beta=0.0)
    twin = copy.deepcopy(model)
    sgd = torch.optim.SGD([{"params": twin[0].parameters(), "weight_decay": 0.1},
                           {"params": twin[2].parameters()}],
                          lr=0.1)
    for x, y in data(4):
        opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y),
                 val_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
        sgd.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        sgd.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)  # beta = 0: exactly SGD, each group with its own weight decay


def test_per_group_weight_decay_tangent_equals_autograd() -> None:
    """z = dw/d eta through unrolled SGD where only the first layer is decayed (jacfwd)."""
    model, batches = tiny(), data(6)
    w0 = flat_params(model)
    n0 = sum(p.numel() for p in model[0].parameters())
    decay = torch.cat([torch.full((n0,), 0.1, dtype=torch.float64),
                       torch.zeros(w0.numel() - n0, dtype=torch.float64)])
    from ray_rthpo.hypergrad.reference import flat_loss_fn

    def unrolled(eta: torch.Tensor) -> torch.Tensor:
        w = w0
        for x, y in batches:
            w = w - eta * (torch.func.grad(flat_loss_fn(model, x, y))(w) + decay * w)
        return w

    jac = torch.func.jacfwd(unrolled)(torch.tensor(0.3, dtype=torch.float64))
    opt = RTHPO([{"params": model[0].parameters(), "weight_decay": 0.1}, {"params": model[2].parameters()}],
                lr=0.3, beta=0.0)
    train(opt, model, batches)
    z = flat([opt.state[p]["z"] for g in opt.param_groups for p in g["params"]])
    assert rel_err(z, jac) < 1e-10


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_beta_zero_is_exactly_torchs_own_optimizer(base: str) -> None:
    model = tiny()
    twin = copy.deepcopy(model)
    kwargs = (dict(momentum=0.9, weight_decay=0.01) if base == "sgd"
              else dict(weight_decay=0.01, betas=(B1, B2), eps=EPS))
    opt = RTHPO(model.parameters(), lr=0.05, beta=0.0, base=base, **kwargs)
    ref = (torch.optim.SGD if base == "sgd" else torch.optim.AdamW)(twin.parameters(), lr=0.05, **kwargs)
    for x, y in data(8):
        opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y),
                 val_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
        ref.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "adam_log", "sign_log"])
def test_state_dict_continues_a_run_exactly(base: str, rule: str) -> None:
    beta = {"additive": 1e-3, "multiplicative": 0.05, "adam_log": 0.05, "sign_log": 0.01}[rule]
    batches = data(10)

    def fresh() -> tuple[nn.Module, RTHPO]:
        model = tiny()
        return model, RTHPO(model.parameters(), lr=0.05, beta=beta, base=base, hyper_update=rule,
                            weight_decay=0.01)

    model, opt = fresh()
    whole = train(opt, model, batches)
    model2, opt2 = fresh()
    train(opt2, model2, batches[:5])
    saved_model, saved_opt = copy.deepcopy(model2.state_dict()), opt2.state_dict()
    model3, opt3 = fresh()
    model3.load_state_dict(saved_model)
    opt3.load_state_dict(saved_opt)
    rest = train(opt3, model3, batches[5:])
    assert rest == whole[5:]  # loss, eta and h bit for bit
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)
    assert whole[-1][1] != 0.05  # eta moved
    opt3.step(lambda: F.cross_entropy(model3(batches[0][0]), batches[0][1]),
              val_closure=lambda: F.cross_entropy(model3(batches[0][0]), batches[0][1]))
    assert torch.equal(saved_opt["state"][0]["z"], opt2.state_dict()["state"][0]["z"])  # no aliasing


def test_a_non_finite_loss_leaves_the_weights_and_later_steps_raise() -> None:
    model = tiny()
    (x, y), = data(1)
    opt = RTHPO(model.parameters(), lr=0.1)
    opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
    before = copy.deepcopy(model.state_dict())
    loss = opt.step(lambda: F.cross_entropy(model(x), y) * float("nan"),
                    val_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
    assert math.isnan(float(loss)) and opt.diverged and opt.last_step.diverged
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(RuntimeError, match="diverged at step 1"):
        opt.step(lambda: F.cross_entropy(model(x), y),
                 val_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))


def test_hd_train_needs_no_validation_closure_and_bare_closures_equal_model_closures() -> None:
    model, batches = tiny(), data(5)
    opt = RTHPO(model.parameters(), lr=0.1, beta=1e-2, method="hd_train")
    for x, y in batches:
        opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y))
    assert opt.eta != 0.1
    a, b = tiny(), tiny()
    ta = train(RTHPO(a.parameters(), lr=0.1, beta=1e-2), a, batches, model_closures=True)
    tb = train(RTHPO(b.parameters(), lr=0.1, beta=1e-2), b, batches, model_closures=False)
    assert ta == tb


@pytest.mark.parametrize("route", ["forward_over_reverse", "forward_over_reverse_bn"])
def test_the_functional_route_equals_the_closure_route(route: str) -> None:
    batchnorm = route.endswith("_bn")
    a, b = tiny(batchnorm=batchnorm), tiny(batchnorm=batchnorm)
    batches = data(6)
    ta = train(RTHPO(a.parameters(), lr=0.1, beta=1e-2, hvp="double_backward"), a, batches)
    tb = train(RTHPO(b.parameters(), lr=0.1, beta=1e-2, hvp=route), b, batches)
    for (la, ea, ha), (lb, eb, hb) in zip(ta, tb, strict=True):
        assert math.isclose(la, lb, rel_tol=1e-12) and math.isclose(ea, eb, rel_tol=1e-10)
        assert (ha is None and hb is None) or math.isclose(ha, hb, rel_tol=1e-9, abs_tol=1e-14)
    for key, value in a.state_dict().items():
        assert torch.allclose(value, b.state_dict()[key], rtol=1e-10, atol=0), key


@pytest.mark.parametrize("how", ["model_closure", "model_argument"])
def test_the_validation_pass_never_moves_batchnorm_statistics(how: str) -> None:
    model, batches = tiny(batchnorm=True), data(4)
    xv, yv = data(1, 16, 7)[0]
    opt = RTHPO(model.parameters(), lr=0.1, beta=1e-2, model=model if how == "model_argument" else None)
    for x, y in batches:
        val = (ModelClosure(model, F.cross_entropy, xv, yv) if how == "model_closure"
               else (lambda: F.cross_entropy(model(xv), yv)))
        opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y), val_closure=val)
    assert int(model[1].num_batches_tracked) == len(batches)  # the training passes only
    assert model.training  # its mode restored after the validation pass


# ---------------------------------------------------------------------------------- AdamW, exactly
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_tangent_equals_autograd_through_the_unrolled_run(kind: str, weight_decay: float) -> None:
    """RTHPO(base='adamw') over 20 steps: z_T = dw_T/d eta by jacfwd through the unrolled AdamW run
    (an MLP, and a conv net with train-mode BatchNorm), relative error < 1e-8."""
    model_fn = MODELS[kind][0]
    batches = train_batches(kind)
    model = model_fn(0)
    w0 = flat_params(model)
    jac = dstate_deta(model_fn(0), w0, batches, eta=ETA, weight_decay=weight_decay)
    opt = RTHPO(model.parameters(), lr=ETA, beta=0.0, base="adamw", weight_decay=weight_decay, betas=(B1, B2),
                eps=EPS)
    train(opt, model, batches, val=val_batch(kind))
    z = flat([opt.state[p]["z"] for p in model.parameters()])
    assert rel_err(z, jac[:w0.numel()]) < 1e-8


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize(("mu", "weight_decay"), [(1.0, 0.0), (1.0, 0.1), (0.5, 0.1), (0.0, 0.1)])
def test_adamw_class_equals_the_proven_fast_path_every_step_while_eta_moves(kind: str, mu: float,
                                                                           weight_decay: float) -> None:
    """The class against tests/test_adamw_tangent.py's functional path (itself checked against the
    literal 3n x 3n reference and autograd): h, eta, w and z at each of 20 steps, beta > 0. With BatchNorm
    the two take the validation pass at w_t on either side of the step's training pass (the class after
    it, as the trainer always has), so the running statistics in eval mode differ by one update and h with
    them: there eta is held fixed (beta = 0) and w and z are compared."""
    model_fn = MODELS[kind][0]
    batches, val = train_batches(kind), val_batch(kind)
    beta = 1e-3 if kind == "mlp" else 0.0
    records = run_fast(model_fn(0), batches, eta=ETA, weight_decay=weight_decay, mu=mu,
                       val=[val] * len(batches), beta=beta, eta_max=10.0)
    model = model_fn(0)
    method = {1.0: "rthpo", 0.0: "hd_val"}.get(mu, "marthe")
    opt = RTHPO(model.parameters(), lr=ETA, beta=beta, base="adamw", weight_decay=weight_decay,
                betas=(B1, B2), eps=EPS, method=method, mu=mu if method == "marthe" else None, eta_max=10.0,
                hyper_update="additive")  # the fast path's rule: the paper's eq. 2
    xv, yv = val
    for t, ((x, y), rec) in enumerate(zip(batches, records, strict=True)):
        opt.step(ModelClosure(model, F.cross_entropy, x, y),
                 val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
        if t > 0 and beta > 0:
            assert math.isclose(opt.last_step.hypergrad, rec["h"], rel_tol=1e-10, abs_tol=1e-15), t
        assert math.isclose(opt.eta, rec["eta"], rel_tol=1e-12), t
        assert rel_err(flat_params(model), rec["w_next"]) < 1e-13, t
        assert rel_err(flat([opt.state[p]["z"] for p in model.parameters()]), rec["z_next"]) < 1e-10, t
    assert opt.eta != ETA or beta == 0.0  # eta moved


def test_adamw_hypergradient_equals_central_finite_difference_through_the_class() -> None:
    from test_adamw_tangent import unrolled_adamw

    from ray_rthpo.hypergrad.reference import flat_loss_fn

    model_fn = MODELS["bn_conv"][0]
    batches = train_batches("bn_conv")
    xv, yv = val_batch("bn_conv")
    model = model_fn(0)
    w0 = flat_params(model)
    opt = RTHPO(model.parameters(), lr=ETA, beta=0.0, base="adamw", weight_decay=0.1, betas=(B1, B2), eps=EPS)
    train(opt, model, batches, val=(xv, yv))
    opt.step(ModelClosure(model, F.cross_entropy, *batches[0]),
             val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
    h = opt.last_step.hypergrad  # grad E(w_T) . z_T, E in eval mode (running statistics held fixed)
    energy = flat_loss_fn(model, xv, yv)
    model.eval()

    def e_of(eta: float) -> float:
        with torch.no_grad():
            return float(energy(unrolled_adamw(model_fn(0), w0, eta, batches, weight_decay=0.1)[:w0.numel()]))

    d = 1e-5 * ETA
    fd = (e_of(ETA + d) - e_of(ETA - d)) / (2 * d)
    assert h is not None and math.isclose(h, fd, rel_tol=1e-7), (h, fd)


def test_forward_mode_validation_evaluates_batchnorm_in_eval_mode_like_the_backward_one() -> None:
    """val_mode='forward' (a JVP of the validation loss) on a BatchNorm model in training: the same h as
    the validation gradient in eval mode, and the running statistics never moved by the validation pass."""
    batches, val = data(6), data(1, 16, 7)[0]
    a, b = tiny(batchnorm=True), tiny(batchnorm=True)
    # additive: the multiplicative default divides by |grad E|, which a forward-mode JVP does not give
    ta = train(RTHPO(a.parameters(), lr=0.1, beta=1e-2, val_mode="backward", hyper_update="additive"), a,
               batches, val)
    tb = train(RTHPO(b.parameters(), lr=0.1, beta=1e-2, val_mode="forward", hyper_update="additive"), b,
               batches, val)
    for (_, ea, ha), (_, eb, hb) in zip(ta, tb, strict=True):
        assert (ha is None and hb is None) or math.isclose(ha, hb, rel_tol=1e-10, abs_tol=1e-15)
        assert math.isclose(ea, eb, rel_tol=1e-12)
    assert int(b[1].num_batches_tracked) == len(batches) and b.training


def test_batchnorm_hypergradient_is_the_derivative_with_running_statistics_held_fixed() -> None:
    """On a BatchNorm MLP (SGD, RT-HPO), h_T = dE(w_T(eta))/d eta by central differences when E uses the
    final running statistics for every eta (they are constants of the hypergradient); the full derivative,
    with the statistics re-estimated along each perturbed run, differs by the gap printed on failure."""
    from ray_rthpo.hypergrad.reference import flat_loss_fn

    batches, (xv, yv) = data(6), data(1, 16, 7)[0]
    eta = 0.3

    def run(e: float) -> nn.Module:
        model = tiny(batchnorm=True)
        opt = RTHPO(model.parameters(), lr=e, beta=0.0)
        train(opt, model, batches, (xv, yv))
        return model

    twin = tiny(batchnorm=True)  # the run at eta, to read z_T and h at w_T
    opt = RTHPO(twin.parameters(), lr=eta, beta=0.0)
    train(opt, twin, batches, (xv, yv))
    params = list(twin.parameters())
    twin.eval()
    grad_e = torch.autograd.grad(F.cross_entropy(twin(xv), yv), params)
    h = float(sum((g * opt.state[p]["z"]).sum() for g, p in zip(grad_e, params, strict=True)))
    energy = flat_loss_fn(twin, xv, yv)  # eval mode with the run's final running statistics, held fixed
    d = 1e-6

    def e_fixed(e: float) -> float:
        trained = run(e)
        trained.eval()
        with torch.no_grad():
            return float(energy(flat_params(trained)))

    def e_full(e: float) -> float:
        trained = run(e)
        trained.eval()
        with torch.no_grad():
            return float(F.cross_entropy(trained(xv), yv))

    fixed = (e_fixed(eta + d) - e_fixed(eta - d)) / (2 * d)
    full = (e_full(eta + d) - e_full(eta - d)) / (2 * d)
    assert math.isclose(h, fixed, rel_tol=1e-6), (h, fixed)
    assert abs(h) > 1e-3 and not math.isclose(h, full, rel_tol=1e-6), (h, full)  # the statistics do matter
