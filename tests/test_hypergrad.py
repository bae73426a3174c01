"""Proofs of the hypergradient maths, in float64: autograd through unrolled training, explicit
Hessians, finite differences, the mu identities, and the literal reference at every step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypergrad_helpers import batches, controller, controller_flat_z, tiny_model, unrolled_weights

from ray_rthpo.errors import ConfigError
from ray_rthpo.hypergrad import functional as fn
from ray_rthpo.hypergrad.hvp import (
    grad_and_hvp_double_backward,
    grad_and_hvp_forward_over_reverse,
    validation_directional_derivative,
    validation_gradient,
)
from ray_rthpo.hypergrad.reference import ReferenceHypergradient, flat_loss_fn, flat_params

ROUTES = ["double_backward", "forward_over_reverse"]
OPTIMIZERS = [
    pytest.param(0.0, 0.0, id="sgd"),
    pytest.param(0.9, 0.0, id="momentum"),
    pytest.param(0.0, 0.05, id="weight_decay"),
    pytest.param(0.9, 0.05, id="momentum+weight_decay"),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("momentum,weight_decay", OPTIMIZERS)
def test_tangent_equals_autograd_through_unrolled_training(route: str,
                                                           momentum: float, weight_decay: float) -> None:
    """z_T from the recursion equals dw_T/d eta by autograd through T = 6 unrolled steps (constant eta)."""
    model = tiny_model()
    data = batches(6)
    w0 = flat_params(model)
    eta = 0.3
    jac = torch.func.jacfwd(
        lambda e: unrolled_weights(model, w0, e, data, momentum=momentum, weight_decay=weight_decay)
    )(torch.tensor(eta, dtype=torch.float64))
    ctrl = controller(copy.deepcopy(model), eta0=eta, beta=0.0, momentum=momentum, weight_decay=weight_decay,
                      hvp=route)
    for x, y in data:
        ctrl.train_step(x, y, val_batch=lambda: data[0])
    assert rel_err(controller_flat_z(ctrl), jac) < 1e-8
    w_unrolled = unrolled_weights(model, w0, torch.tensor(eta, dtype=torch.float64), data, momentum=momentum,
                                  weight_decay=weight_decay)
    assert rel_err(flat_params(ctrl.model), w_unrolled) < 1e-12


@pytest.mark.parametrize("route", ROUTES)
def test_hvp_equals_explicit_hessian_product(route: str) -> None:
    model = tiny_model()
    (x, y), = batches(1)
    params = list(model.parameters())
    z = [torch.randn_like(p) for p in params]
    if route == "double_backward":
        out = grad_and_hvp_double_backward(model, x, y, params, z)
    else:
        out = grad_and_hvp_forward_over_reverse(model, x, y, list(model.named_parameters()), z)
    w = flat_params(model)
    hess = torch.autograd.functional.hessian(flat_loss_fn(model, x, y), w)
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    assert rel_err(flat(out.hz), hess @ flat(z)) < 1e-12
    assert rel_err(flat(out.grads), torch.func.grad(flat_loss_fn(model, x, y))(w)) < 1e-12


@pytest.mark.parametrize("momentum,weight_decay", OPTIMIZERS)
def test_rthpo_hypergradient_equals_finite_difference(momentum: float, weight_decay: float) -> None:
    """With beta = 0, h_T = grad E(w_T) . z_T is exactly d E(w_T(eta)) / d eta: check by central
    differences."""
    model = tiny_model()
    data = batches(6)
    xv, yv = batches(1, size=16, seed=7)[0]
    w0 = flat_params(model)
    eta = 0.3
    ctrl = controller(copy.deepcopy(model), eta0=eta, momentum=momentum, weight_decay=weight_decay)
    for x, y in data[:-1]:
        ctrl.train_step(x, y, val_batch=lambda: (xv, yv))
    out = ctrl.train_step(*data[-1], val_batch=lambda: (xv, yv))  # h_T at w_T, with z_T from 5 steps
    energy = flat_loss_fn(model, xv, yv)

    def e_of(eta_: float) -> float:
        w = unrolled_weights(model, w0, torch.tensor(eta_, dtype=torch.float64), data[:-1], momentum=momentum,
                             weight_decay=weight_decay)
        return float(energy(w))

    eps = 1e-6
    fd = (e_of(eta + eps) - e_of(eta - eps)) / (2 * eps)
    assert out.hypergrad is not None
    assert math.isclose(out.hypergrad, fd, rel_tol=1e-6, abs_tol=1e-10)


@pytest.mark.parametrize("method", ["hd_train", "hd_val"])
@pytest.mark.parametrize("momentum,weight_decay", OPTIMIZERS)
def test_first_order_hypergradients_equal_finite_differences(method: str,
                                                             momentum: float, weight_decay: float) -> None:
    """h_t of the first-order rules is d E(w_{t-1} - eta v_t) / d eta (one-step truncation, eq. 6)."""
    model = tiny_model()
    data = batches(4)
    xv, yv = batches(1, size=16, seed=7)[0]
    ctrl = controller(model, method=method, eta0=0.3, beta=0.0, momentum=momentum, weight_decay=weight_decay)
    for x, y in data[:-2]:
        ctrl.train_step(x, y, val_batch=lambda: (xv, yv))
    w_prev = flat_params(model)
    ctrl.train_step(*data[-2], val_batch=lambda: (xv, yv))
    v_t = (w_prev - flat_params(model)) / 0.3  # the direction of the last step
    x_t, y_t = data[-1]
    out = ctrl.train_step(x_t, y_t, val_batch=lambda: (xv, yv))
    if method == "hd_train":
        base = flat_loss_fn(model, x_t, y_t)
        energy = lambda w: base(w) + 0.5 * weight_decay * (w @ w)  # noqa: E731  (d_t includes lam w)
    else:
        energy = flat_loss_fn(model, xv, yv)
    eps = 1e-6
    fd = (float(energy(w_prev - (0.3 + eps) * v_t)) - float(energy(w_prev - (0.3 - eps) * v_t))) / (2 * eps)
    assert out.hypergrad is not None
    assert math.isclose(out.hypergrad, fd, rel_tol=1e-6, abs_tol=1e-10)


def _run(ctrl, data, val) -> list[tuple[float | None, float, torch.Tensor]]:  # type: ignore[no-untyped-def]
    trace = []
    for x, y in data:
        out = ctrl.train_step(x, y, val_batch=lambda: val)
        trace.append((out.hypergrad, out.eta, flat_params(ctrl.model)))
    return trace


@pytest.mark.parametrize("momentum,weight_decay", OPTIMIZERS)
def test_mu_one_is_rthpo_and_mu_zero_is_first_order_val_exactly(momentum: float, weight_decay: float) -> None:
    data = batches(10)
    val = batches(1, size=16, seed=7)[0]
    kw = dict(eta0=0.3, beta=0.05, momentum=momentum, weight_decay=weight_decay)
    rthpo = _run(controller(tiny_model(), method="rthpo", **kw), data, val)
    marthe1 = _run(controller(tiny_model(), method="marthe", mu=1.0, **kw), data, val)
    hd_val = _run(controller(tiny_model(), method="hd_val", **kw), data, val)
    marthe0 = _run(controller(tiny_model(), method="marthe", mu=0.0, **kw), data, val)
    for a, b in [(rthpo, marthe1), (hd_val, marthe0)]:
        for (ha, ea, wa), (hb, eb, wb) in zip(a, b, strict=True):
            assert ha == hb and ea == eb and torch.equal(wa, wb)
    assert rthpo[-1][1] != hd_val[-1][1]  # the two rules really differ


REFERENCE_CASES = [
    pytest.param("rthpo", 1.0, 0.0, 0.0, id="rthpo-sgd"),
    pytest.param("rthpo", 1.0, 0.9, 0.01, id="rthpo-momentum-wd"),
    pytest.param("marthe", 0.6, 0.0, 0.0, id="marthe0.6-sgd"),
    pytest.param("marthe", 0.6, 0.5, 0.01, id="marthe0.6-momentum-wd"),
    pytest.param("hd_val", 0.0, 0.0, 0.0, id="hd_val-sgd"),
    pytest.param("hd_val", 0.0, 0.9, 0.01, id="hd_val-momentum-wd"),
    pytest.param("hd_train", 0.0, 0.0, 0.0, id="hd_train-sgd"),
    pytest.param("hd_train", 0.0, 0.9, 0.01, id="hd_train-momentum-wd"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method,mu,momentum,weight_decay", REFERENCE_CASES)
def test_fast_path_matches_literal_reference_every_step(
    route: str, method: str, mu: float, momentum: float, weight_decay: float
) -> None:
    """20 steps with eta moving (beta > 0): h_t, eta_t and w_{t+1} agree with the literal reference."""
    data = batches(20)
    gen = torch.Generator().manual_seed(3)
    vals = [(torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(20)]
    kw = dict(method=method, eta0=0.4, beta=0.05, mu=mu, momentum=momentum, weight_decay=weight_decay)
    ctrl = controller(tiny_model(), hvp=route, eta_max=2.0, **kw)
    ref = ReferenceHypergradient(tiny_model(), eta_max=2.0, **kw)
    etas = []
    for t, ((x, y), (xv, yv)) in enumerate(zip(data, vals, strict=True)):
        out = ctrl.train_step(x, y, val_batch=lambda xv=xv, yv=yv: (xv, yv))
        rec = ref.step(x, y, xv, yv)
        assert math.isclose(out.eta, rec["eta"], rel_tol=1e-10), t
        if t > 0:
            assert out.hypergrad is not None and math.isclose(out.hypergrad, rec["h"], rel_tol=1e-8,
                                                              abs_tol=1e-13), t
        assert rel_err(flat_params(ctrl.model), rec["w_next"]) < 1e-10, t
        assert rel_err(controller_flat_z(ctrl), rec["z_next"]) < 1e-9, t
        etas.append(out.eta)
    assert max(etas) - min(etas) > 1e-4  # the learning rate really moved


def test_validation_forward_mode_equals_backward() -> None:
    model = tiny_model()
    xv, yv = batches(1, size=16, seed=7)[0]
    z = [torch.randn_like(p) for p in model.parameters()]
    _, grad_e = validation_gradient(model, xv, yv, list(model.parameters()))
    _, h = validation_directional_derivative(model, xv, yv, list(model.named_parameters()), z)
    assert math.isclose(float(h), fn.hypergradient(grad_e, z), rel_tol=1e-12)


def test_forward_mode_validation_matches_backward_over_a_run() -> None:
    data = batches(8)
    val = batches(1, size=16, seed=7)[0]
    back = _run(controller(tiny_model(), beta=0.05, val_mode="backward"), data, val)
    fwd = _run(controller(tiny_model(), beta=0.05, val_mode="forward"), data, val)
    for (ha, ea, wa), (hb, eb, wb) in zip(back, fwd, strict=True):
        assert (ha is None and hb is None) or math.isclose(ha, hb, rel_tol=1e-10)
        assert math.isclose(ea, eb, rel_tol=1e-12) and rel_err(wa, wb) < 1e-12


# -- BatchNorm rules --------------------------------------------------------------------------------

def test_batchnorm_running_stats_move_once_per_step_and_never_on_validation() -> None:
    """A step moves running stats exactly as one train-mode forward of the pre-step weights would."""
    data = batches(3)
    val = batches(1, size=16, seed=7)[0]
    model = tiny_model(batchnorm=True)
    ctrl = controller(model, beta=0.01)
    for x, y in data:
        before = copy.deepcopy(model)
        with torch.no_grad():
            before(x)
        ctrl.train_step(x, y, val_batch=lambda: val)
        assert torch.equal(model[1].running_mean, before[1].running_mean)
        assert torch.equal(model[1].running_var, before[1].running_var)
    assert int(model[1].num_batches_tracked) == len(data)


def test_validation_gradient_is_taken_in_eval_mode_and_leaves_stats_alone() -> None:
    model = tiny_model(batchnorm=True)
    with torch.no_grad():
        model.train()
        for x, _ in batches(5):
            model(x)
    stats = copy.deepcopy(model[1].state_dict())
    xv, yv = batches(1, size=16, seed=7)[0]
    params = list(model.parameters())
    _, grad_e = validation_gradient(model, xv, yv, params)
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert model.training  # mode restored
    model.eval()
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xv), yv), params)
    for a, b in zip(grad_e, expected, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=0)


def test_forward_over_reverse_refuses_batchnorm() -> None:
    with pytest.raises(ConfigError, match="BatchNorm"):
        controller(tiny_model(batchnorm=True), hvp="forward_over_reverse")


def test_subbatch_hvp_does_not_move_batchnorm_stats_twice() -> None:
    model = tiny_model(batchnorm=True)
    ctrl = controller(model, beta=0.01, hvp_batch_fraction=0.5)
    val = batches(1, size=16, seed=7)[0]
    for x, y in batches(3):
        ctrl.train_step(x, y, val_batch=lambda: val)
    assert int(model[1].num_batches_tracked) == 3


# -- Safety -----------------------------------------------------------------------------------------

def test_lr_step_keeps_eta_in_bounds_and_clips_the_hypergradient() -> None:
    assert fn.lr_step(0.1, 1e9, beta=1.0, eta_max=1.0) == 0.0
    assert fn.lr_step(0.1, -1e9, beta=1.0, eta_max=1.0) == 1.0
    assert fn.lr_step(0.1, 5.0, beta=0.01, eta_max=1.0, clip=1.0) == pytest.approx(0.09)
    with pytest.raises(ValueError, match="finite"):
        fn.lr_step(0.1, float("nan"), beta=1.0, eta_max=1.0)


def test_hypergradient_clipping_never_touches_the_training_gradient() -> None:
    data = batches(5)
    val = batches(1, size=16, seed=7)[0]
    clipped = controller(tiny_model(), beta=10.0, hypergrad_clip=1e-6)
    for x, y in data:
        w_before = flat_params(clipped.model)
        g = torch.func.grad(flat_loss_fn(clipped.model, x, y))(w_before)
        out = clipped.train_step(x, y, val_batch=lambda: val)
        assert rel_err(flat_params(clipped.model), w_before - out.eta * g) < 1e-12
        if out.hypergrad is not None:
            assert abs(out.hypergrad) > 1e-6  # h itself is reported unclipped ...
    assert abs(out.eta - 0.3) <= 10.0 * 1e-6 * 4 + 1e-15  # ... but eta moved by at most beta * clip per step


def test_hvp_every_k_drops_the_hessian_term_between_hvp_steps() -> None:
    """With hvp_every=2, odd steps use z_{t+1} = z_t - v_{t+1} (H z dropped; plain SGD), even steps the exact
    rule."""
    data = batches(4)
    val = batches(1, size=16, seed=7)[0]
    every1 = controller(tiny_model(), hvp_every=1)
    every2 = controller(tiny_model(), hvp_every=2)
    _run(every1, data[:1], val)
    _run(every2, data[:1], val)
    assert torch.equal(controller_flat_z(every1), controller_flat_z(every2))  # step 0 is an HVP step
    z1 = controller_flat_z(every2)
    w1 = flat_params(every2.model)
    _run(every2, data[1:2], val)  # step 1: no HVP
    v = (w1 - flat_params(every2.model)) / 0.3
    assert rel_err(controller_flat_z(every2), z1 - v) < 1e-12
