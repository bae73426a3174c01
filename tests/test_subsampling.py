"""Sub-sampled hypergradients compute what they say, and the engine's shortcuts change nothing.

Float64, tiny models (``hypergrad_helpers``). A literal flat-vector implementation of sub-sampled
RT-HPO with explicit Hessians (``subsampled_reference``) is the oracle: the HVP of the first k
examples every ``hvp_every`` steps, the hypergradient on the first examples of the validation batch
every ``val_every`` steps (eta moved by ``val_every * beta * h``), eta untouched in between.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypergrad_helpers import ConfigRTHPO, batches, controller, controller_flat_z, tiny_model

from ray_rthpo.config import PRESET_VALUES, Config, LRConfig, ModelConfig, config_from_dict, load_config
from ray_rthpo.errors import ConfigError
from ray_rthpo.hypergrad import functional as fn
from ray_rthpo.hypergrad.hvp import (
    default_hvp_route,
    grad_and_hvp_double_backward,
    grad_and_hvp_forward_over_reverse,
)
from ray_rthpo.hypergrad.reference import flat_loss_fn, flat_params
from ray_rthpo.models import build_model
from ray_rthpo.training.methods import build_optimizer

ROUTES = ["double_backward", "forward_over_reverse"]
OPTIMIZERS = [
    pytest.param(0.0, 0.0, id="sgd"),
    pytest.param(0.9, 0.05, id="momentum+weight_decay"),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def head(n: int, fraction: float) -> int:
    return n if fraction >= 1.0 else max(1, min(n, int(round(fraction * n))))


def val_batches(n: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(size, 4, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def subsampled_reference(
    model: torch.nn.Module, data: list, vals: list, *, eta0: float, beta: float, eta_max: float,
    momentum: float, weight_decay: float, hvp_every: int, hvp_batch_fraction: float, val_every: int,
    val_batch_fraction: float,
) -> list[dict]:
    """Literal sub-sampled RT-HPO (mu = 1) on a flat vector, explicit Hessians; one record per step."""
    w = flat_params(model)
    v, z, u = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
    eta, records = eta0, []
    for t, ((x, y), (xv, yv)) in enumerate(zip(data, vals, strict=True)):
        d = torch.func.grad(flat_loss_fn(model, x, y))(w) + weight_decay * w
        h = None
        if t > 0 and t % val_every == 0:
            kv = head(xv.shape[0], val_batch_fraction)
            h = float(torch.func.grad(flat_loss_fn(model, xv[:kv], yv[:kv]))(w) @ z)   # eq. (5)
            eta = min(eta_max, max(0.0, eta - val_every * beta * h))  # eq. (2), h stands for k steps
        hz = torch.zeros_like(w)
        if t % hvp_every == 0:
            k = head(x.shape[0], hvp_batch_fraction)
            hz = torch.autograd.functional.hessian(flat_loss_fn(model, x[:k], y[:k]), w) @ z
        v = momentum * v + d
        u = momentum * u + hz + weight_decay * z
        z = z - eta * u - v
        w = w - eta * v
        records.append({"h": h, "eta": eta, "w": w.clone(), "z": z.clone()})
    return records


SUBSAMPLING_CASES = [
    pytest.param(dict(hvp_every=1, hvp_batch_fraction=0.5, val_every=1, val_batch_fraction=1.0),
                 id="hvp-half-batch"),
    pytest.param(dict(hvp_every=1, hvp_batch_fraction=0.3, val_every=1, val_batch_fraction=1.0),
                 id="hvp-0.3-rounds"),
    pytest.param(dict(hvp_every=3, hvp_batch_fraction=1.0, val_every=1, val_batch_fraction=1.0),
                 id="hvp-every-3"),
    pytest.param(dict(hvp_every=1, hvp_batch_fraction=1.0, val_every=2, val_batch_fraction=1.0),
                 id="val-every-2"),
    pytest.param(dict(hvp_every=1, hvp_batch_fraction=1.0, val_every=1, val_batch_fraction=0.25),
                 id="val-quarter"),
    pytest.param(dict(hvp_every=2, hvp_batch_fraction=0.25, val_every=3, val_batch_fraction=0.5),
                 id="all-four"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("momentum,weight_decay", OPTIMIZERS)
@pytest.mark.parametrize("sub", SUBSAMPLING_CASES)
def test_subsampled_rthpo_matches_literal_reference_every_step(
    route: str, momentum: float, weight_decay: float, sub: dict
) -> None:
    """12 steps, eta moving: h, eta, w and z agree with the explicit-Hessian reference at every step."""
    data, vals = batches(12), val_batches(12)
    kw = dict(eta0=0.4, beta=0.05, eta_max=2.0, momentum=momentum, weight_decay=weight_decay)
    ctrl = controller(tiny_model(), hvp=route, **kw, **sub)
    ref = subsampled_reference(tiny_model(), data, vals, **kw, **sub)
    etas = []
    for t, ((x, y), (xv, yv), rec) in enumerate(zip(data, vals, ref, strict=True)):
        out = ctrl.train_step(x, y, val_batch=lambda xv=xv, yv=yv: (xv, yv))
        assert (out.hypergrad is None) == (rec["h"] is None), t
        if rec["h"] is not None:
            assert math.isclose(out.hypergrad, rec["h"], rel_tol=1e-8, abs_tol=1e-13), t
        assert math.isclose(out.eta, rec["eta"], rel_tol=1e-10), t
        assert rel_err(flat_params(ctrl.model), rec["w"]) < 1e-10, t
        assert rel_err(controller_flat_z(ctrl), rec["z"]) < 1e-9, t
        etas.append(out.eta)
    if sub["val_every"] == 1:
        assert max(etas) - min(etas) > 1e-4  # the learning rate really moved


def _trace(ctrl, data, vals) -> list[tuple[float | None, float, torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
    out_trace = []
    for (x, y), (xv, yv) in zip(data, vals, strict=True):
        out = ctrl.train_step(x, y, val_batch=lambda xv=xv, yv=yv: (xv, yv))
        out_trace.append((out.hypergrad, out.eta, flat_params(ctrl.model), controller_flat_z(ctrl)))
    return out_trace


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("momentum,weight_decay", OPTIMIZERS)
def test_every_one_and_full_batches_is_exact_rthpo_bitwise(route: str,
                                                           momentum: float, weight_decay: float) -> None:
    data, vals = batches(10), val_batches(10)
    kw = dict(hvp=route, eta0=0.4, beta=0.05, eta_max=2.0, momentum=momentum, weight_decay=weight_decay)
    exact = _trace(controller(tiny_model(), **kw), data, vals)
    ones = _trace(controller(tiny_model(), hvp_every=1, hvp_batch_fraction=1.0, val_every=1,
                             val_batch_fraction=1.0, **kw), data, vals)
    preset = _trace(controller(tiny_model(), preset="exact", **kw), data, vals)
    for a, b, c in zip(exact, ones, preset, strict=True):
        assert a[0] == b[0] == c[0] and a[1] == b[1] == c[1]
        assert torch.equal(a[2], b[2]) and torch.equal(a[2], c[2])
        assert torch.equal(a[3], b[3]) and torch.equal(a[3], c[3])


@pytest.mark.parametrize("route", ROUTES)
def test_subbatch_hvp_is_the_hvp_of_the_first_k_examples(route: str) -> None:
    """One step from a non-zero tangent: z_{t+1} = z_t - eta H_k z_t - g, H_k the Hessian of the first k."""
    data = batches(4)
    ctrl = controller(tiny_model(), hvp=route, hvp_batch_fraction=0.375)  # 3 of 8 examples
    for x, y in data[:3]:
        ctrl.train_step(x, y, val_batch=lambda: data[0])
    x, y = data[3]
    w, z = flat_params(ctrl.model), controller_flat_z(ctrl)
    out = ctrl.train_step(x, y, val_batch=lambda: data[0])
    hess_k = torch.autograd.functional.hessian(flat_loss_fn(ctrl.model, x[:3], y[:3]), w)
    g = torch.func.grad(flat_loss_fn(ctrl.model, x, y))(w)
    assert rel_err(controller_flat_z(ctrl), z - out.eta * (hess_k @ z) - g) < 1e-12
    assert rel_err(flat_params(ctrl.model), w - out.eta * g) < 1e-12  # the step itself uses the whole batch


def test_val_every_k_holds_eta_and_gives_the_exact_hypergradient_on_due_steps() -> None:
    """beta = 0: the trajectories coincide, so due steps report exactly the exact run's h; others None."""
    data, vals = batches(9), val_batches(9)
    exact = _trace(controller(tiny_model(), beta=0.0), data, vals)
    every3 = _trace(controller(tiny_model(), beta=0.0, val_every=3), data, vals)
    for t, (a, b) in enumerate(zip(exact, every3, strict=True)):
        assert b[0] == (a[0] if t % 3 == 0 else None), t
        assert torch.equal(a[3], b[3])
    moving = controller(tiny_model(), beta=0.05, val_every=3)
    eta_prev = moving.optimizer.param_groups[0]["lr"]
    for t, ((x, y), (xv, yv)) in enumerate(zip(data, vals, strict=True)):
        w, z = flat_params(moving.model), controller_flat_z(moving)
        out = moving.train_step(x, y, val_batch=lambda xv=xv, yv=yv: (xv, yv))
        if t % 3 != 0 or t == 0:
            assert out.hypergrad is None and out.eta == eta_prev, t
        else:
            h = float(torch.func.grad(flat_loss_fn(moving.model, xv, yv))(w) @ z)
            assert math.isclose(out.hypergrad, h, rel_tol=1e-10), t
            assert math.isclose(out.eta, fn.lr_step(eta_prev, h, beta=3 * 0.05, eta_max=10.0), rel_tol=1e-12)
        eta_prev = out.eta


def test_validation_is_not_evaluated_on_skipped_steps() -> None:
    calls = []
    data = batches(7)
    ctrl = controller(tiny_model(), val_every=3)

    def val() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(ctrl.step_count)
        return data[0]

    for x, y in data:
        ctrl.train_step(x, y, val_batch=val)
    assert calls == [3, 6]


# -- presets ---------------------------------------------------------------------------------------

def test_presets_resolve_to_the_documented_values_and_explicit_values_win() -> None:
    assert LRConfig(preset="exact").subsampling._asdict() == PRESET_VALUES["exact"] == {
        "hvp_every": 1, "hvp_batch_fraction": 1.0, "val_every": 1, "val_batch_fraction": 1.0}
    assert LRConfig().subsampling._asdict() == PRESET_VALUES["cheap"] == {  # the default (docs/horizon.md)
        "hvp_every": 10, "hvp_batch_fraction": 0.25, "val_every": 10, "val_batch_fraction": 0.25}
    assert LRConfig(preset="fast").subsampling._asdict() == PRESET_VALUES["fast"] == {
        "hvp_every": 4, "hvp_batch_fraction": 0.25, "val_every": 4, "val_batch_fraction": 0.5}
    mixed = LRConfig(preset="fast", hvp_every=1, val_batch_fraction=1.0).subsampling
    assert (mixed.hvp_every, mixed.hvp_batch_fraction, mixed.val_every,
            mixed.val_batch_fraction) == (1, 0.25, 4, 1.0)
    assert LRConfig(hvp_every=3).subsampling.hvp_every == 3  # explicit values win over the default preset


def test_preset_from_yaml_overrides_and_the_flat_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fast.yaml"
    path.write_text("lr: {method: rthpo, preset: fast}\n")
    cfg = load_config(path, ["lr.val_every=2"])
    assert cfg.lr.subsampling.val_every == 2 and cfg.lr.subsampling.hvp_every == 4
    assert cfg.lr.hvp_every is None  # left to the preset, so changing the preset changes it
    assert config_from_dict(cfg.to_flat()) == cfg
    exact = cfg.replace(**{"lr.preset": "exact"}).lr.subsampling
    assert (exact.hvp_every, exact.val_every) == (1, 2)


BAD = [
    ({"preset": "faster"}, r"lr\.preset must be one of exact, fast, cheap, but got 'faster'.*'fast'"),
    ({"hvp_every": 0}, r"lr\.hvp_every must be an integer >= 1, but got 0; .* \(or null: the value of "
                       r"lr\.preset\)"),
    ({"val_every": -2}, r"lr\.val_every must be an integer >= 1"),
    ({"hvp_batch_fraction": 0.0}, r"lr\.hvp_batch_fraction must be in \(0, 1\]"),
    ({"val_batch_fraction": 1.5}, r"lr\.val_batch_fraction must be in \(0, 1\], but got 1\.5"),
    ({"val_mode": "sideways"}, r"lr\.val_mode must be one of backward, forward"),
]


@pytest.mark.parametrize("lr,pattern", BAD, ids=[p for _, p in BAD])
def test_bad_subsampling_values_fail_with_key_value_and_fix(lr: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict({"lr": lr})


# -- engine: BatchNorm with forward-over-reverse, the auto rules -------------------------------------

def test_forward_over_reverse_bn_equals_double_backward_and_moves_stats_once() -> None:
    model = tiny_model(batchnorm=True)
    twin = copy.deepcopy(model)
    (x, y), = batches(1)
    z = [torch.randn_like(p) for p in model.parameters()]
    a = grad_and_hvp_forward_over_reverse(model, x, y, list(model.named_parameters()), z,
                                          replay_batchnorm=True)
    b = grad_and_hvp_double_backward(twin, x, y, list(twin.parameters()), z)
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    assert rel_err(flat(a.grads), flat(b.grads)) < 1e-12 and rel_err(flat(a.hz), flat(b.hz)) < 1e-12
    assert torch.equal(a.logits, b.logits)
    for key, value in model.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key  # the replay is one ordinary forward
    with pytest.raises(ValueError, match="BatchNorm"):
        grad_and_hvp_forward_over_reverse(model, x, y, list(model.named_parameters()), z)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_batchnorm_runs_agree_between_routes(fraction: float) -> None:
    data, vals = batches(6), val_batches(6)
    runs = []
    for route in ("double_backward", "forward_over_reverse_bn"):
        model = tiny_model(batchnorm=True)
        trace = _trace(controller(model, hvp=route, beta=0.05, momentum=0.5, hvp_batch_fraction=fraction),
                       data, vals)
        runs.append((trace, copy.deepcopy(model[1].state_dict())))
    (ta, sa), (tb, sb) = runs
    for a, b in zip(ta, tb, strict=True):
        assert math.isclose(a[1], b[1], rel_tol=1e-10)
        assert rel_err(a[2], b[2]) < 1e-10 and rel_err(a[3], b[3]) < 1e-9
    assert int(sb["num_batches_tracked"]) == len(data)
    for key in sa:
        assert torch.allclose(sa[key], sb[key], rtol=1e-10, atol=0), key


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet18"])
def test_auto_route_rule_is_deterministic_and_valid(name: str) -> None:
    model = build_model(ModelConfig(name=name), (3, 8, 8), 4)
    expected = "forward_over_reverse_bn" if name == "resnet18" else "double_backward"
    assert default_hvp_route(model) == expected


@pytest.mark.parametrize("route", ["double_backward", "forward_over_reverse_bn"])
def test_build_optimizer_runs_resnet_with_batchnorm(route: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18"), (3, 8, 8), 4).double()
    cfg = Config(lr=LRConfig(method="rthpo", beta=1e-3, hvp=route, preset="exact"),
                 model=ModelConfig(name="resnet18"))
    run = build_optimizer(model, cfg, steps_per_epoch=2)
    assert run.optimizer.param_groups[0]["hvp"] == route
    stepper = ConfigRTHPO(model, run.optimizer)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (4,), generator=gen)
    for _ in range(2):
        out = stepper.train_step(x, y, val_batch=lambda: (x, y))
    assert not out.diverged and out.hypergrad is not None
    assert int(model.bn1.num_batches_tracked) == 2


@pytest.mark.parametrize("mu", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.05), (0.9, 0.05)])
@pytest.mark.parametrize("with_hvp", [True, False])
def test_in_place_tangent_step_is_the_textbook_recursion(
    mu: float, momentum: float, weight_decay: float, with_hvp: bool
) -> None:
    """The in-place, foreach-fused tangent update equals u' = mu (m u + H z + lam z), z' = mu z - eta u' - v,
    written out tensor by tensor (the H z term dropped when there is no HVP)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 1, 3)]
    z, u, hz, v = ([torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(4))
    eta = 0.3
    u_exp = [mu * (momentum * ui + (hzi if with_hvp else 0.0) + weight_decay * zi)
             for ui, hzi, zi in zip(u, hz, z, strict=True)]
    z_exp = [mu * zi - eta * ui - vi for zi, ui, vi in zip(z, u_exp, v, strict=True)]
    u_in = u if momentum != 0.0 else None
    z_new = [t.clone() for t in z]
    u_new = None if u_in is None else [t.clone() for t in u_in]
    fn.tangent_step_(z_new, u_new, hz if with_hvp else None, v, eta=eta, mu=mu, momentum=momentum,
                     weight_decay=weight_decay)
    for a, b in zip(z_new, z_exp, strict=True):
        assert torch.allclose(a, b, rtol=1e-14, atol=1e-15)
    if momentum != 0.0:
        for a, b in zip(u_new, u_exp, strict=True):  # type: ignore[arg-type]
            assert torch.allclose(a, b, rtol=1e-14, atol=1e-15)


def test_a_short_run_keeps_enough_hypergradient_steps_under_the_cheap_preset() -> None:
    """The cheap preset's period 10 is cut so that the tuning quarter holds at least 8 hypergradient steps
    (a 20-step run tunes on every step of its first 5); explicit periods are kept."""
    lr = LRConfig()
    assert lr.subsampling_for(3600).val_every == 10 and lr.subsampling_for(360).val_every == 10
    assert lr.subsampling_for(200).val_every == 6 and lr.subsampling_for(20).val_every == 1
    assert lr.subsampling_for(None) == lr.subsampling
    assert LRConfig(val_every=10).subsampling_for(20).val_every == 10
    assert LRConfig(preset="exact").subsampling_for(20).hvp_every == 1
