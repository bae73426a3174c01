"""Data-parallel RTHPO (ray_rthpo/optim/distributed.py, docs/distributed.md), proven on 2 gloo processes (CPU,
float64): after 24 steps every rank holds the same weights, optimizer state (tangents included), learning
rate and hypergradient, bit for bit, and they equal one process stepping on the concatenated batch to 1e-10:
SGD with momentum and weight decay and AdamW; the default rule and ``additive``; ``hvp_every`` and
``val_every`` > 1; batch fractions < 1 (every rank's first examples); unequal shards (weighted by the
ModelClosures' batch sizes); bare closures; ``val_mode="forward"``; ``hd_train``; a schedule with
``tune_fraction`` and ``backoff``. Also: one all_reduce per step, a state saved on rank 0 restores every rank
exactly, ranks that start apart are refused, a DDP-wrapped module and train-mode (Sync)BatchNorm are refused
with the fix, eval-mode BatchNorm runs, an explicit process group equals the default one, and
``process_group=False`` steps each rank alone as one process does today.

The two processes are spawned once for the module (``runs``) and run every case; the tests compare what they
wrote with the single-process references computed here.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gloo_ranks import finish_rank, free_port, spawn_ranks
from torch import nn

from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.optim.rthpo import GLOBAL

WORLD = 2
STEPS = 24
RESUME_AT = 10
TOL = 1e-10

#: name -> (RTHPO keywords, training shard sizes, validation shard sizes, closures: "model" or "bare").
CASES: dict[str, tuple[dict[str, Any], tuple[int, int], tuple[int, int], str]] = {
    "sgd_default": (dict(lr=0.05, momentum=0.9, weight_decay=1e-3), (8, 8), (6, 6), "model"),
    "sgd_additive_every_fraction_unequal": (
        dict(lr=0.05, momentum=0.9, weight_decay=1e-3, hyper_update="additive", beta=0.05, hvp_every=2,
             val_every=3, hvp_batch_fraction=0.5, val_batch_fraction=0.5), (6, 10), (4, 8), "model"),
    "adamw_default_every_fraction_unequal": (
        dict(lr=0.01, base="adamw", weight_decay=0.01, hvp_every=2, val_every=2, hvp_batch_fraction=0.5,
             val_batch_fraction=0.5), (6, 10), (4, 8), "model"),
    "adamw_additive_forward": (
        dict(lr=0.01, base="adamw", weight_decay=0.01, hyper_update="additive", beta=1e-3, val_mode="forward",
             val_every=3), (8, 8), (6, 6), "model"),
    "adamw_hd_train_unequal": (dict(lr=0.01, base="adamw", method="hd_train", beta=1e-4), (5, 11), (6, 6),
                               "model"),
    "sgd_bare_schedule_backoff": (
        dict(lr=2.0, momentum=0.9, weight_decay=1e-3, schedule="warmup_cosine", total_steps=STEPS,
             tune_fraction=0.75, backoff=1.5, backoff_rollback=False), (8, 8), (6, 6), "bare"),
    "sgd_bare_schedule_rollback": (
        dict(lr=2.0, momentum=0.9, weight_decay=1e-3, schedule="warmup_cosine", total_steps=STEPS,
             tune_fraction=0.75, backoff=1.5, backoff_rollback=True), (8, 8), (6, 6), "bare"),
    "adamw_schedule_average": (
        dict(lr=0.01, base="adamw", weight_decay=0.01, schedule="warmup_cosine", total_steps=STEPS,
             tune_fraction=0.75, hypergrad_at="average", average_window=0.3, val_every=2), (6, 10), (4, 8),
        "model"),
}


def _model(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 8)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _head(n: int, fraction: float) -> int:
    """How many of ``n`` examples ModelClosure.head(fraction) keeps."""
    x = torch.zeros(n, 1)
    return int(ModelClosure(nn.Identity(), F.mse_loss, x, x).head(fraction).batch[0].shape[0])


def _order(shards: tuple[int, ...], fraction: float) -> torch.Tensor:
    """The concatenated batch, reordered so that its head is every shard's head (what the ranks use)."""
    starts = [sum(shards[:r]) for r in range(len(shards))]
    heads = [_head(n, fraction) for n in shards]
    assert sum(heads) == _head(sum(shards), fraction)
    first = [torch.arange(s, s + k) for s, k in zip(starts, heads, strict=True)]
    rest = [torch.arange(s + k, s + n) for s, k, n in zip(starts, heads, shards, strict=True)]
    return torch.cat(first + rest)


def _batches(step: int, shards: tuple[int, int], vshards: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1000 + step)
    n, nv = sum(shards), sum(vshards)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    xv = torch.randn(nv, 5, generator=gen, dtype=torch.float64)
    yv = torch.randint(0, 3, (nv,), generator=gen)
    return x, y, xv, yv


def _data(case: str, rank: int | None, step: int) -> tuple[torch.Tensor, ...]:
    """This rank's shard of step ``step``'s batches; ``rank=None``: the concatenated batches (reordered so
    that the fractions take the examples the ranks take)."""
    kwargs, shards, vshards, _ = CASES[case]
    x, y, xv, yv = _batches(step, shards, vshards)
    if rank is None:
        i = _order(shards, kwargs.get("hvp_batch_fraction", 1.0))
        j = _order(vshards, kwargs.get("val_batch_fraction", 1.0))
        return x[i], y[i], xv[j], yv[j]
    a, b = sum(shards[:rank]), sum(shards[:rank + 1])
    av, bv = sum(vshards[:rank]), sum(vshards[:rank + 1])
    return x[a:b], y[a:b], xv[av:bv], yv[av:bv]


def _step(opt: RTHPO, model: nn.Module, case: str, rank: int | None, step: int) -> float:
    x, y, xv, yv = _data(case, rank, step)
    if CASES[case][3] == "bare":
        loss = opt.step(lambda: F.cross_entropy(model(x), y),
                        val_closure=lambda: F.cross_entropy(model(xv), yv))
    else:
        loss = opt.step(ModelClosure(model, F.cross_entropy, x, y),
                        val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
    return float(loss)


def _new(case: str, seed: int = 0, **extra: Any) -> tuple[nn.Module, RTHPO]:
    kwargs = CASES[case][0]
    model = _model(seed)
    bare = {"model": model} if CASES[case][3] == "bare" else {}
    return model, RTHPO(model.parameters(), **kwargs, **bare, **extra)


def _record(model: nn.Module, opt: RTHPO, losses: list[float], etas: list[float]) -> dict[str, Any]:
    state = opt.state_dict()
    return {"params": [p.detach().clone() for p in model.parameters()],
            "state": {k: {n: (v.clone() if isinstance(v, torch.Tensor) else v) for n, v in s.items()}
                      for k, s in state["state"].items() if isinstance(k, int)},
            "lr": opt.scale, "hypergrad": opt.last_hypergrad, "losses": losses, "etas": etas,
            "global": dict(opt.state[GLOBAL])}


def _run(case: str, rank: int | None, start: int = 0, stop: int = STEPS, seed: int = 0,
         load: Path | None = None, **extra: Any) -> tuple[nn.Module, RTHPO, dict[str, Any]]:
    model, opt = _new(case, seed, **extra)
    if load is not None:
        saved = torch.load(load, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
    losses, etas = [], []
    for t in range(start, stop):
        losses.append(_step(opt, model, case, rank, t))
        etas.append(opt.last_step.eta)  # type: ignore[union-attr]
    return model, opt, _record(model, opt, losses, etas)


# ----------------------------------------------------------------------------------- the 2 processes
def _error(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _cases_on_ranks(rank: int, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    calls = {"n": 0}
    all_reduce = dist.all_reduce

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counted  # type: ignore[assignment]
    try:
        for case in CASES:
            calls["n"] = 0
            results[case] = _run(case, rank)[2]
            results[case]["all_reduces"] = calls["n"]
    finally:
        dist.all_reduce = all_reduce  # type: ignore[assignment]

    # a state saved on rank 0 restores every rank exactly (a fresh model of another seed loads it)
    model, opt, _ = _run("sgd_default", rank, stop=RESUME_AT)
    path = out / "resume.pt"
    if rank == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    dist.barrier()
    results["resumed"] = _run("sgd_default", rank, start=RESUME_AT, seed=7, load=path)[2]

    # an explicit group is the default one
    results["new_group"] = _run("sgd_default", rank, process_group=dist.new_group(list(range(WORLD))))[2]
    # process_group=False: each rank alone, on its shard
    results["off"] = _run("adamw_default_every_fraction_unequal", rank, process_group=False)[2]

    # ranks that start apart are refused, on every rank
    model, opt = _new("sgd_default")
    if rank == 1:
        with torch.no_grad():
            next(model.parameters())[0, 0] += 1e-12
    results["apart"] = _error(lambda: _step(opt, model, "sgd_default", rank, 0))

    # DDP: refused in a ModelClosure and as model=, with the fix
    ddp = nn.parallel.DistributedDataParallel(_model())
    x, y, xv, yv = _data("sgd_default", rank, 0)
    opt = RTHPO(ddp.parameters(), lr=0.1)
    val = ModelClosure(ddp.module, F.cross_entropy, xv, yv)
    train = ModelClosure(ddp, F.cross_entropy, x, y)
    results["ddp_closure"] = _error(lambda: opt.step(train, val_closure=val))
    opt = RTHPO(ddp.parameters(), lr=0.1, model=ddp)
    results["ddp_model"] = _error(lambda: opt.step(lambda: F.cross_entropy(ddp.module(x), y),
                                                   val_closure=lambda: F.cross_entropy(ddp.module(xv), yv)))

    # BatchNorm: train mode refused (SyncBatchNorm too); eval mode (frozen statistics) runs, ranks alike
    bn = _model(batchnorm=True)
    opt = RTHPO(bn.parameters(), lr=0.1)
    results["bn_train"] = _error(lambda: opt.step(ModelClosure(bn, F.cross_entropy, x, y),
                                                  val_closure=ModelClosure(bn, F.cross_entropy, xv, yv)))
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(_model(batchnorm=True))
    opt = RTHPO(sync.parameters(), lr=0.1)
    val = ModelClosure(sync, F.cross_entropy, xv, yv)
    train = ModelClosure(sync, F.cross_entropy, x, y)
    results["syncbn_train"] = _error(lambda: opt.step(train, val_closure=val))
    bn.eval()  # the whole model: RTHPO's validation pass restores the model's mode recursively
    opt = RTHPO(bn.parameters(), lr=0.1, momentum=0.9)
    for t in range(4):
        xb, yb, xvb, yvb = _data("sgd_default", rank, t)
        opt.step(ModelClosure(bn, F.cross_entropy, xb, yb),
                 val_closure=ModelClosure(bn, F.cross_entropy, xvb, yvb))
    results["bn_eval"] = _record(bn, opt, [], [])
    return results


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = _cases_on_ranks(rank, Path(out))
    except BaseException:
        (Path(out) / f"error{rank}.txt").write_text(traceback.format_exc())
        dist.destroy_process_group()
        raise
    finish_rank(results, out, rank)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return spawn_ranks(_worker, (free_port(), str(out)), WORLD, out)
    finally:
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


# ----------------------------------------------------------------------------------- comparisons
def _flat(record: dict[str, Any]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [(f"param {i}", p) for i, p in enumerate(record["params"])]
    for k in sorted(record["state"]):
        items += [(f"state {k} {n}", v) for n, v in sorted(record["state"][k].items())]
    items += [("lr", record["lr"]), ("hypergrad", record["hypergrad"]), ("losses", record["losses"]),
              ("etas", record["etas"])]
    return items


def _bitwise(a: dict[str, Any], b: dict[str, Any]) -> None:
    for (name, x), (_, y) in zip(_flat(a), _flat(b), strict=True):
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        assert same, name


def _close(a: dict[str, Any], b: dict[str, Any], tol: float = TOL) -> None:
    for (name, x), (_, y) in zip(_flat(a), _flat(b), strict=True):
        x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        assert float((x - y).abs().max()) <= tol, (name, float((x - y).abs().max()))


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_are_bitwise_equal_and_equal_one_process_on_the_whole_batch(runs: list, case: str) -> None:
    _bitwise(runs[0][case], runs[1][case])
    reference = _run(case, None)[2]
    _close(runs[0][case], reference)
    assert runs[0][case]["lr"] != CASES[case][0]["lr"]  # the learning rate was tuned
    assert runs[0][case]["global"]["step"] == STEPS
    if case in ("sgd_bare_schedule_backoff", "sgd_bare_schedule_rollback"):
        assert reference["global"].get("backoffs", 0) >= 1  # the backoff decision was taken, alike
    if case == "sgd_bare_schedule_rollback":
        assert reference["global"].get("rollbacks", 0) >= 1  # and a step was undone, alike


@pytest.mark.parametrize("case", list(CASES))
def test_one_all_reduce_per_step(runs: list, case: str) -> None:
    """One per step (gradient, H z, validation term and loss together), plus one check at the first step."""
    assert runs[0][case]["all_reduces"] == STEPS + 1


def test_a_state_saved_on_rank_0_restores_every_rank_exactly(runs: list) -> None:
    for r in range(WORLD):
        whole = runs[r]["sgd_default"]
        resumed = dict(runs[r]["resumed"])
        resumed["losses"] = whole["losses"][:RESUME_AT] + resumed["losses"]
        resumed["etas"] = whole["etas"][:RESUME_AT] + resumed["etas"]
        _bitwise(resumed, whole)


def test_an_explicit_process_group_is_the_default_group(runs: list) -> None:
    _bitwise(runs[0]["new_group"], runs[0]["sgd_default"])
    _bitwise(runs[1]["new_group"], runs[1]["sgd_default"])


def test_process_group_false_steps_each_rank_alone_as_one_process(runs: list) -> None:
    for r in range(WORLD):
        _bitwise(runs[r]["off"], _run("adamw_default_every_fraction_unequal", r)[2])
    assert runs[0]["off"]["lr"] != runs[1]["off"]["lr"]


def test_ranks_that_start_apart_are_refused_on_every_rank(runs: list) -> None:
    for r in range(WORLD):
        assert runs[r]["apart"].startswith("RuntimeError: RTHPO: the 2 ranks of the process group hold "
                                           "different weights")
        assert "torch.distributed.broadcast(p.data, 0)" in runs[r]["apart"]


def test_a_ddp_module_is_refused_with_how_to_pass_the_plain_module(runs: list) -> None:
    closure, model = runs[0]["ddp_closure"], runs[0]["ddp_model"]
    assert closure.startswith("TypeError: RTHPO: closure.model is a DistributedDataParallel")
    assert model.startswith("TypeError: RTHPO: model is a DistributedDataParallel")
    for message in (closure, model):
        assert "ModelClosure(ddp.module, loss_fn, x, y)" in message and "#47562" in message


def test_train_mode_batchnorm_is_refused_and_eval_mode_runs(runs: list) -> None:
    bn, sync = runs[0]["bn_train"], runs[0]["syncbn_train"]
    assert bn.startswith("ValueError: RTHPO: closure.model has a BatchNorm1d layer in training mode (1)")
    assert sync.startswith("ValueError: RTHPO: closure.model has a SyncBatchNorm layer in training mode")
    assert "each rank's own batch statistics" in bn and "no derivative" in sync
    assert "GroupNorm" in bn and "model.eval()" in sync
    _bitwise(runs[0]["bn_eval"], runs[1]["bn_eval"])


@pytest.mark.parametrize("value", ["world", True, 0])
def test_a_bad_process_group_names_the_value_and_the_fix(value: Any) -> None:
    with pytest.raises(TypeError, match=r"process_group must be None, False or a torch.distributed."
                                        rf"ProcessGroup, but got {value!r}; pass None \(the default group"):
        RTHPO(_model().parameters(), lr=0.1, process_group=value)


def test_without_torch_distributed_nothing_is_reduced() -> None:
    assert not dist.is_initialized()
    a = _run("sgd_default", 0, stop=5)[2]
    b = _run("sgd_default", 0, stop=5, process_group=False)[2]
    _bitwise(a, b)
