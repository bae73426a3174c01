"""``RTHPO(backoff_rollback=True)``: a loss spike while tuning undoes the step that led to it.

* The spike's step is not taken, and the weights and every state tensor are back to the copy kept before
  the step that led to it (SGD's momentum and its tangent restarted from zero), the scale halved;
* a run in which no spike fires is the same, bit for bit, with and without the setting, and the copy is
  freed once tuning is over;
* a state saved while a copy is kept resumes exactly;
* off, spikes only halve the scale, as before; left out (None), it is on over SGD and off over AdamW.
The data-parallel case (the ranks roll back alike) is in tests/test_distributed.py.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.optim.rthpo import GLOBAL, UNDO

STEPS = 24


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _batch(step: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(100 + step)
    x, xv = torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 5, generator=gen,
                                                                                  dtype=torch.float64)
    return x, torch.randint(0, 3, (16,), generator=gen), xv, torch.randint(0, 3, (16,), generator=gen)


def _opt(model: nn.Module, lr: float, **kwargs: Any) -> RTHPO:
    return RTHPO(model.parameters(), lr=lr, momentum=0.9, schedule="warmup_cosine", total_steps=STEPS,
                 tune_fraction=0.75, backoff=1.5, beta=0.1, **kwargs)


def _step(opt: RTHPO, model: nn.Module, t: int) -> float:
    x, y, xv, yv = _batch(t)
    return float(opt.step(ModelClosure(model, F.cross_entropy, x, y),
                          val_closure=ModelClosure(model, F.cross_entropy, xv, yv)))


def _snapshot(model: nn.Module, opt: RTHPO) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    params = list(model.parameters())
    states = [{k: v.clone() for k, v in opt.state[p].items()
               if isinstance(v, torch.Tensor) and not k.startswith(UNDO)} for p in params]
    return [p.detach().clone() for p in params], states


@pytest.mark.parametrize("extra", [{}, {"hypergrad_at": "average"}], ids=["weights", "average"])
def test_a_spike_undoes_the_step_before_it_restarts_momentum_and_halves_the_scale(extra: dict) -> None:
    """With ``hypergrad_at="average"`` the running average and its tangent are state too: undone alike."""
    model = _model()
    opt = _opt(model, 8.0, backoff_rollback=True, **extra)  # far above the stable range: spikes in warmup
    before: list[Any] = []
    undone = 0
    for t in range(STEPS):
        before.append(_snapshot(model, opt))
        scale, rollbacks = opt.scale, int(opt.state[GLOBAL].get("rollbacks", 0))
        _step(opt, model, t)
        if int(opt.state[GLOBAL].get("rollbacks", 0)) == rollbacks + 1:
            undone += 1
            weights, states = before[t - 1]  # the copy kept before step t - 1
            assert all(("avg_w" in st) == bool(extra) for st in states)
            for p, w, s in zip(model.parameters(), weights, states, strict=True):
                assert torch.equal(p.detach(), w)
                for key, value in s.items():
                    if key in ("momentum_buffer", "u"):
                        assert not opt.state[p][key].any(), key  # restarted
                    else:
                        assert torch.equal(opt.state[p][key], value), key
            assert opt.scale == scale * 0.5 or opt.scale < scale  # halved (after any hyper-step)
            assert opt.state[GLOBAL]["step"] == t + 1  # the schedule goes on
    assert undone >= 2  # spikes in a row are undone again
    assert all(not k.startswith(UNDO) for p in model.parameters() for k in opt.state[p])  # freed after tuning


def test_without_a_spike_the_run_is_the_same_with_and_without_rollback() -> None:
    runs = []
    for rollback in (False, True):
        model = _model()
        opt = _opt(model, 0.05, backoff_rollback=rollback)
        losses = [_step(opt, model, t) for t in range(STEPS)]
        assert opt.state[GLOBAL].get("backoffs", 0) == 0
        runs.append((losses, [p.detach().clone() for p in model.parameters()], opt.scale))
    (l0, w0, s0), (l1, w1, s1) = runs
    assert l0 == l1 and s0 == s1 and all(torch.equal(a, b) for a, b in zip(w0, w1, strict=True))


def test_off_a_spike_halves_the_scale_and_the_run_goes_on_from_it() -> None:
    model = _model()
    opt = _opt(model, 8.0, backoff_rollback=False)
    for t in range(STEPS):
        _step(opt, model, t)
    assert opt.state[GLOBAL].get("backoffs", 0) >= 1 and "rollbacks" not in opt.state[GLOBAL]
    assert all(not k.startswith(UNDO) for p in model.parameters() for k in opt.state[p])


def test_a_state_saved_while_a_copy_is_kept_resumes_exactly() -> None:
    model = _model()
    opt = _opt(model, 8.0, backoff_rollback=True)
    losses = []
    saved = None
    for t in range(STEPS):
        losses.append(_step(opt, model, t))
        if t == 6:
            assert opt.state[GLOBAL].get("undo_kept")
            saved = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, saved)
    assert opt.state[GLOBAL].get("rollbacks", 0) >= 1
    assert saved is not None
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    again = _model()
    again.load_state_dict(state["model"])
    resumed = _opt(again, 8.0, backoff_rollback=True)
    resumed.load_state_dict(state["opt"])
    assert [_step(resumed, again, t) for t in range(7, STEPS)] == losses[7:]
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_left_out_it_follows_the_base_on_over_sgd_off_over_adamw(base: str) -> None:
    model = _model()
    opt = RTHPO(model.parameters(), lr=8.0 if base == "sgd" else 0.5, base=base, schedule="warmup_cosine",
                total_steps=STEPS, tune_fraction=0.75, backoff=1.5, beta=0.1)
    assert opt.param_groups[0]["backoff_rollback"] is (base == "sgd")
    for t in range(STEPS):
        _step(opt, model, t)
    assert opt.state[GLOBAL].get("backoffs", 0) >= 1  # spikes fired on both bases
    assert (opt.state[GLOBAL].get("rollbacks", 0) >= 1) is (base == "sgd")
