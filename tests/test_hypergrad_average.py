"""Proofs of ``RTHPO(hypergrad_at="average")``, in float64: the hypergradient is dE(w-bar_t)/ds, the
derivative of the validation loss at the running average of the weights,
w-bar_t = w-bar_{t-1} + a_t (w_t - w-bar_{t-1}) with a_t = max(1/t, 1/(average_window T)), against
forward-mode autograd through the unrolled SGD (momentum, L2) and AdamW runs at every step, and against
central finite differences with BatchNorm; a run resumes exactly from its state_dict; the average is freed
when tuning ends."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_adamw_tangent import B1, B2, EPS, MODELS, train_batches, val_batch
from test_schedule_scale import S0, STEPS, flat, train, unrolled_adamw, unrolled_sgd
from torch import nn

from ray_rthpo.hypergrad.reference import flat_loss_fn, flat_params
from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.optim.schedules import WarmupCosine

#: The run's length T as RTHPO is told it (one step more than trained, for the final measuring step), and
#: a window whose average turns exponential within the run: a_t = max(1/t, 1/4).
TOTAL = STEPS + 1
WINDOW = 4 / TOTAL
PHI = WarmupCosine(TOTAL, warmup=3)
BASES: dict[str, tuple[Callable[..., torch.Tensor], dict[str, float]]] = {
    "sgd": (unrolled_sgd, {"momentum": 0.9, "weight_decay": 0.05}),
    "adamw": (unrolled_adamw, {"weight_decay": 0.1}),
}


def average_weight(n: int) -> float:
    """a_n, the weight of w_n in the average after step n (1-based)."""
    return max(1.0 / n, 1.0 / (WINDOW * TOTAL))


def unrolled_average(base: str, model: nn.Module, s: torch.Tensor, batches: list, n: int) -> torch.Tensor:
    """w-bar_n as a differentiable function of ``s``: the average of the unrolled run's w_1 ... w_n from
    ``model``'s weights (which are not changed)."""
    oracle, kwargs = BASES[base]
    w0 = flat_params(model)
    avg = w0
    for k in range(1, n + 1):
        w_k = oracle(model, w0, s, batches[:k], PHI, **kwargs)
        avg = avg + average_weight(k) * (w_k - avg)
    return avg


def optimizer(model: nn.Module, base: str, **extra: object) -> RTHPO:
    """RTHPO at the average over ``base`` with the oracle's settings; beta 0 (the scale stays) unless
    ``extra`` says otherwise."""
    kwargs: dict = dict(BASES[base][1], beta=0.0)
    if base == "adamw":
        kwargs.update(betas=(B1, B2), eps=EPS)
    return RTHPO(model.parameters(), lr=S0, base=base, schedule=PHI, total_steps=TOTAL,
                 hypergrad_at="average", average_window=WINDOW, **{**kwargs, **extra})


@pytest.mark.parametrize("base", list(BASES))
def test_every_hypergradient_is_the_derivative_of_the_loss_at_the_average(base: str) -> None:
    """h_t = dE(w-bar_t)/ds by jacfwd through the unrolled run, at each of the 11 steps that compute one
    (an MLP; the plain mean for 4 steps, then the exponential average), relative error < 1e-9."""
    kind = "mlp"
    batches, (xv, yv) = train_batches(kind, STEPS), val_batch(kind)
    model = MODELS[kind][0](0)
    hs = [h for _, h in train(optimizer(model, base), model, batches, (xv, yv))]
    fresh = MODELS[kind][0](0)
    energy, w0, s0 = flat_loss_fn(fresh, xv, yv), flat_params(fresh), torch.tensor(S0, dtype=torch.float64)
    oracle, kwargs = BASES[base]
    at_weights = []
    for t in range(1, STEPS):
        expected = torch.func.jacfwd(lambda s, t=t: energy(unrolled_average(base, fresh, s, batches, t)))(s0)
        assert math.isclose(hs[t], float(expected), rel_tol=1e-9), (t, hs[t], float(expected))
        at_weights.append(float(torch.func.jacfwd(
            lambda s, t=t: energy(oracle(fresh, w0, s, batches[:t], PHI, **kwargs)))(s0)))
    # the average is another point than the weights: its hypergradients differ once the mean has 2 terms
    assert all(not math.isclose(a, b, rel_tol=1e-3) for a, b in zip(hs[2:], at_weights[1:], strict=True))


@pytest.mark.parametrize("base", list(BASES))
def test_the_hypergradient_at_the_average_equals_central_finite_differences_with_batchnorm(base: str) -> None:
    """A conv net with train-mode BatchNorm: after 12 steps, one more step (in eval mode, so the running
    statistics stay as the run left them) computes h = grad E(w-bar_12) . z-bar_12; it equals
    (E(w-bar(s + d)) - E(w-bar(s - d))) / 2d and jacfwd's dE(w-bar)/ds, the running statistics held fixed."""
    kind = "bn_conv"
    batches, (xv, yv) = train_batches(kind, STEPS + 1), val_batch(kind)
    model = MODELS[kind][0](0)
    opt = optimizer(model, base)
    train(opt, model, batches[:STEPS], (xv, yv))
    model.eval()
    x, y = batches[STEPS]
    opt.step(ModelClosure(model, F.cross_entropy, x, y),
             val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
    h = opt.last_step.hypergrad
    energy = flat_loss_fn(model, xv, yv)  # eval mode with the run's running statistics, held fixed
    fresh = MODELS[kind][0](0)

    def e_of(s: float) -> float:
        with torch.no_grad():
            return float(energy(unrolled_average(base, fresh, torch.tensor(s, dtype=torch.float64), batches,
                                                 STEPS)))

    d = 1e-5 * S0
    fd = (e_of(S0 + d) - e_of(S0 - d)) / (2 * d)
    jac = torch.func.jacfwd(lambda s: energy(unrolled_average(base, fresh, s, batches, STEPS)))(
        torch.tensor(S0, dtype=torch.float64))
    assert h is not None and abs(h) > 1e-4
    assert math.isclose(h, fd, rel_tol=1e-6), (h, fd)
    assert math.isclose(h, float(jac), rel_tol=1e-9), (h, float(jac))


@pytest.mark.parametrize("base", list(BASES))
def test_a_run_at_the_average_resumes_exactly_from_its_state_dict(base: str) -> None:
    """The average and its tangent are optimizer state: a run stopped after 5 steps and loaded into a new
    model and optimizer ends bit for bit where the uninterrupted run ends (beta > 0: the scale moves)."""
    kind = "mlp"
    batches, val = train_batches(kind, STEPS), val_batch(kind)
    model = MODELS[kind][0](0)
    opt = optimizer(model, base, beta=0.5, beta_horizon="sqrt")
    train(opt, model, batches, val)
    model2 = MODELS[kind][0](0)
    opt2 = optimizer(model2, base, beta=0.5, beta_horizon="sqrt")
    train(opt2, model2, batches[:5], val)
    saved, weights = copy.deepcopy(opt2.state_dict()), copy.deepcopy(model2.state_dict())
    model3 = MODELS[kind][0](1)
    model3.load_state_dict(weights)
    opt3 = optimizer(model3, base, beta=0.5, beta_horizon="sqrt")
    opt3.load_state_dict(saved)
    train(opt3, model3, batches[5:], val)
    assert opt.scale != S0 and opt3.scale == opt.scale
    assert torch.equal(flat_params(model3), flat_params(model))
    for key in ("z", "avg_w", "avg_z"):
        assert torch.equal(flat([opt3.state[p][key] for p in model3.parameters()]),
                           flat([opt.state[p][key] for p in model.parameters()]))


def test_the_average_is_freed_when_tuning_ends_and_the_weights_are_never_left_at_it() -> None:
    """While tuning, every parameter holds w-bar and z-bar and the weights after each step are the run's own
    (the average is swapped in for the validation pass only); after tune_fraction both are gone."""
    kind = "mlp"
    batches, val = train_batches(kind, STEPS), val_batch(kind)
    model, plain = MODELS[kind][0](0), MODELS[kind][0](0)
    opt = optimizer(model, "sgd", tune_fraction=0.5)
    reference = RTHPO(plain.parameters(), lr=S0, beta=0.0, schedule=PHI, total_steps=TOTAL, tune_fraction=0.5,
                      **BASES["sgd"][1])
    for t, (x, y) in enumerate(batches):
        tuned = opt.tuning  # this step does hypergradient work (the next one may not)
        for o, m in ((opt, model), (reference, plain)):
            o.step(ModelClosure(m, F.cross_entropy, x, y), val_closure=ModelClosure(m, F.cross_entropy, *val))
        # beta = 0: the point the hypergradient is taken at changes nothing in the training itself
        assert torch.equal(flat_params(model), flat_params(plain))
        kept = ["avg_w" in opt.state[p] for p in model.parameters()]
        assert all(kept) if tuned else not any(kept), t
    assert not opt.tuning


def test_first_order_train_has_no_validation_point_to_move() -> None:
    with pytest.raises(ValueError, match="hypergrad_at must be weights with method hd_train"):
        RTHPO(nn.Linear(3, 2).parameters(), lr=0.1, method="hd_train", hypergrad_at="average")
