"""Per-step wall time of plain SGD / AdamW and the hypergradient methods, against the cost limit of RT-HPO.

Usage::

    python experiments/bench_step_cost.py --device cpu --json docs/perf/bench_step_cost_cpu.json
    python experiments/bench_step_cost.py --device cuda --json docs/perf/bench_step_cost_cuda.json
    python experiments/bench_step_cost.py --models mlp lenet --reps 10          # a quicker look
    python experiments/bench_step_cost.py --markdown docs/perf/bench_step_cost_cpu.json \\
        --doc docs/performance.md

For each model (``mlp`` and ``lenet`` on 1x28x28 inputs with batch 128, ``resnet18`` on 3x32x32 with
batch 32 on CPU and 128 on CUDA, ``cifar_cnn`` (the suite's CIFAR-10 CNN, examples/cifar_cnn) on 3x32x32
with batch 128; 10 classes; random inputs and labels), everything runs in one
process, round-robin: every repetition times each entry once, in an order rotated by one position
per repetition, and the median over repetitions is reported. Every entry runs on its own
copy of the weights, once per repetition, as it would inside a training step after other work:
no entry is timed over back-to-back repeats that keep its data hot in the caches. Entries:

* the units of the ratios: ``sgd`` and ``adamw``, one training step of ``lr.method: fixed`` over
  ``optim.base`` sgd / adamw as the Trainer takes it (forward, backward, ``optimizer.step`` of
  ``torch.optim.SGD`` / ``torch.optim.AdamW``, the latter with weight decay 0.01);
* the methods, each built by :func:`ray_rthpo.training.methods.build_optimizer` and stepped as the Trainer
  steps RTHPO (``opt.step`` with :class:`ray_rthpo.optim.ModelClosure` closures; ``lr.hvp: auto``):
  ``hd_train``, ``hd_val``, ``rthpo``, ``marthe`` (mu = 0.9), ``rthpo_fast`` (``lr.preset: fast``) over
  SGD, and the same over AdamW (``hd_train_adamw``, ..., ``rthpo_fast_adamw``); ``rthpo`` with each
  HVP route and validation mode forced (``rthpo[...]``), which is what justifies the ``auto`` rules;
  and the two ways to drive :class:`ray_rthpo.optim.RTHPO`, for SGD and AdamW: the closure route
  (``rthpo[closure]``, ``rthpo_adamw[closure]``: ``opt.step`` with bare Python closures,
  ``hvp="double_backward"``) and the functional route (``rthpo[functional]``,
  ``rthpo_adamw[functional]``: a ``ModelClosure`` with ``hvp`` forward_over_reverse, or
  forward_over_reverse_bn for a model with BatchNorm). An entry that does what an earlier one does
  (e.g. the functional route where ``auto`` already picks it) is not timed twice: it is reported with
  ``same_as``. A method that does its hypergradient work every k steps is timed over blocks of k
  consecutive steps (lcm of ``hvp_every`` and ``val_every``): the reported time is the mean step of a
  block, never the median of cheap and dear steps;
* the pieces of the lower bound for an exact RT-HPO step, written here independently of the
  library: ``grad+HVP`` by forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``; BatchNorm
  normalises by batch statistics and its running statistics are left alone, which only makes the
  bound lower) and by reverse-over-reverse (a second backward through a ``create_graph=True``
  gradient), one validation gradient (eval mode, forward + backward, on a validation batch of the
  same size as the training batch), and AdamW's own update (``torch.optim.AdamW.step`` on given
  gradients). ``bound = min(the two grad+HVP) + validation gradient`` and ``bound_ratio = bound /
  sgd``; for AdamW ``adamw_bound = bound + AdamW update`` and ``adamw_bound_ratio = adamw_bound /
  adamw``. Each method's ``ratio_to_unit`` and ``ratio_to_bound`` use its own base: SGD entries the
  ``sgd`` step and ``bound``, AdamW entries the ``adamw`` step and ``adamw_bound``.

The learning rate is held (beta = 0) so that all methods do identical work at every repetition;
the hypergradient is still computed at every step it is due. ``torch.set_num_threads`` is left at
its default and printed. On CUDA every timing is bracketed by ``torch.cuda.synchronize`` and the
peak memory of each entry is reported (resident state plus the step's transient peak).

Output: a table, and with ``--json PATH`` the file
``{"device": ..., "models": {MODEL: {"sgd_ms": x, "bound_ratio": x, "bound": {...}, "adamw_ms": x,
"adamw_bound_ratio": x, "adamw_bound": {...}, "methods": {METHOD: {"ms": x, "ratio_to_sgd": x,
"ratio_to_unit": x, "ratio_to_bound": x, "unit": "sgd" | "adamw", ...}}}}}`` (the keys of the SGD
entries are those of earlier versions, so older files stay comparable). ``--markdown JSON`` writes
the tables of docs/performance.md from such a file (``--doc FILE`` puts them between the file's
``<!-- begin: JSON_STEM -->`` and ``<!-- end: JSON_STEM -->`` markers).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

# The package next to this script, not whichever copy is installed: the benchmark measures this code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_rthpo.config import Config, DataConfig, LRConfig, ModelConfig, OptimConfig
from ray_rthpo.hypergrad.hvp import has_batchnorm
from ray_rthpo.models import build_model
from ray_rthpo.optim import RTHPO, ModelClosure
from ray_rthpo.training.methods import build_optimizer

#: model -> (input shape, batch size on CPU, batch size on CUDA)
MODEL_SETUPS: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "mlp": ((1, 28, 28), 128, 128),
    "lenet": ((1, 28, 28), 128, 128),
    "resnet18": ((3, 32, 32), 32, 128),
    "cifar_cnn": ((3, 32, 32), 128, 128),
}
#: Models that are not a ``model.name`` of the library: the suite's CIFAR-10 CNN
#: (configs/suite/cifar10_cnn.yaml, a user factory in examples/cifar_cnn: conv 32-64-128 with BatchNorm,
#: then 2048-128-10).
MODEL_CONFIGS: dict[str, ModelConfig] = {
    "cifar_cnn": ModelConfig(factory="cifar_cnn_demo.model:build",
                             factory_args={"widths": [32, 64, 128], "hidden": 128}),
}
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "cifar_cnn"))
DEFAULT_REPS = {"mlp": 100, "lenet": 60, "resnet18": 15, "cifar_cnn": 30}
DEFAULT_REPS_CUDA = {"mlp": 200, "lenet": 200, "resnet18": 40, "cifar_cnn": 100}


def model_config(name: str) -> ModelConfig:
    """The model config of bench model ``name``: a library model by its name, or :data:`MODEL_CONFIGS`."""
    return MODEL_CONFIGS[name] if name in MODEL_CONFIGS else ModelConfig(name=name)
NUM_CLASSES = 10
ETA0 = 0.01
#: AdamW's learning rate and decoupled weight decay (torch.optim.AdamW's default 0.01, so that the
#: tangent's ``-lam w_t`` term is part of what is timed).
ETA0_ADAMW = 1e-3
ADAMW_WEIGHT_DECAY = 0.01
#: Placeholder for the functional HVP route of a model: ``forward_over_reverse``, or
#: ``forward_over_reverse_bn`` for a model with BatchNorm.
FUNCTIONAL = "<functional>"
TARGET_RATIO_TO_BOUND = 1.15
TARGET_FAST_RATIO = 1.5  # issue 4: the fast preset at most 1.5x its unit


class Spec(NamedTuple):
    """One timed method: its ``lr.*`` overrides, the base optimizer (``optim.base``) and the driver:
    ``stepper`` steps it as the Trainer does (ray_rthpo/training/trainer.py: ``opt.step`` with
    :class:`ray_rthpo.optim.ModelClosure` closures); ``closure`` drives the same
    :class:`ray_rthpo.optim.RTHPO` with bare Python closures (``opt.step(lambda: loss, val_closure=...)``)."""

    lr: dict[str, Any]
    base: str = "sgd"
    driver: str = "stepper"


#: The methods as users select them (lr.* overrides); "sgd" and "adamw" are the fixed-rate units.
METHODS: dict[str, Spec] = {
    "sgd": Spec({"method": "fixed"}),
    "hd_train": Spec({"method": "hd_train"}),
    "hd_val": Spec({"method": "hd_val"}),
    "rthpo": Spec({"method": "rthpo"}),
    "marthe": Spec({"method": "marthe", "mu": 0.9}),
    "rthpo_fast": Spec({"method": "rthpo", "preset": "fast"}),
    "adamw": Spec({"method": "fixed"}, "adamw"),
    "hd_train_adamw": Spec({"method": "hd_train"}, "adamw"),
    "hd_val_adamw": Spec({"method": "hd_val"}, "adamw"),
    "rthpo_adamw": Spec({"method": "rthpo"}, "adamw"),
    "marthe_adamw": Spec({"method": "marthe", "mu": 0.9}, "adamw"),
    "rthpo_fast_adamw": Spec({"method": "rthpo", "preset": "fast"}, "adamw"),
}
#: rthpo with the route / validation mode / driver forced: the measurements behind the ``auto`` rules,
#: and the closure route (bare closures, double backward) beside the functional one (a ModelClosure,
#: forward-over-reverse through torch.func). A variant that does what an entry above already does is
#: not timed twice: it is reported with ``same_as``.
VARIANTS: dict[str, Spec] = {
    "rthpo[double_backward]": Spec({"method": "rthpo", "hvp": "double_backward"}),
    "rthpo[forward_over_reverse_bn]": Spec({"method": "rthpo", "hvp": "forward_over_reverse_bn"}),
    # forward mode gives no |grad E|, which the default (multiplicative) rule divides by: the paper's rule
    "rthpo[val_mode=forward]": Spec({"method": "rthpo", "val_mode": "forward", "hyper_update": "additive"}),
    "rthpo[closure]": Spec({"method": "rthpo", "hvp": "double_backward", "preset": "exact"},
                           "sgd", "closure"),
    "rthpo[functional]": Spec({"method": "rthpo", "hvp": FUNCTIONAL}),
    # sub-sampled every 10th step on a quarter of the batch: a candidate for the cheap default
    "rthpo[every10,quarter]": Spec({"method": "rthpo", "hvp_every": 10, "hvp_batch_fraction": 0.25,
                                    "val_every": 10, "val_batch_fraction": 0.25}),
    "rthpo_adamw[every10,quarter]": Spec({"method": "rthpo", "hvp_every": 10, "hvp_batch_fraction": 0.25,
                                          "val_every": 10, "val_batch_fraction": 0.25}, "adamw"),
    # the same with the hypergradient at the running average of the weights (lr.hypergrad_at: average): two
    # more lerps per step while tuning, and the average swapped in for the validation pass
    "rthpo[every10,quarter,average]": Spec({"method": "rthpo", "hvp_every": 10, "hvp_batch_fraction": 0.25,
                                            "val_every": 10, "val_batch_fraction": 0.25,
                                            "hypergrad_at": "average"}),
    "rthpo_adamw[every10,quarter,average]": Spec({"method": "rthpo", "hvp_every": 10,
                                                  "hvp_batch_fraction": 0.25, "val_every": 10,
                                                  "val_batch_fraction": 0.25, "hypergrad_at": "average"},
                                                 "adamw"),
    # a step after lr.tune_fraction of the run (the tuning is over: the base step alone, on the schedule)
    "rthpo[after_tuning]": Spec({"method": "rthpo", "tune_fraction": 1e-4, "schedule": "warmup_cosine"}),
    "rthpo_adamw[after_tuning]": Spec({"method": "rthpo", "tune_fraction": 1e-4, "schedule": "warmup_cosine"},
                                      "adamw"),
    "rthpo_adamw[closure]": Spec({"method": "rthpo", "hvp": "double_backward", "preset": "exact"},
                                 "adamw", "closure"),
    "rthpo_adamw[functional]": Spec({"method": "rthpo", "hvp": FUNCTIONAL}, "adamw"),
}
#: base optimizer -> the entry that is the unit of its ratios
UNITS = {"sgd": "sgd", "adamw": "adamw"}


# -- the lower bound, written independently of ray_rthpo ---------------------------------------------

@contextmanager
def _batchnorm_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm normalises by batch statistics but leaves running statistics alone."""
    mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]
    for m in mods:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in mods:
            m.track_running_stats = True


def grad_hvp_forward_over_reverse(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                  z: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """``(g, H z)`` as ``torch.func.jvp`` of ``torch.func.grad`` of the training loss."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (x,)), y)

    with _batchnorm_stats_frozen(model):
        return jvp(grad(loss), (params,), (z,))


def grad_hvp_double_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             z: list[torch.Tensor]) -> tuple[Any, Any]:
    """``(g, H z)`` by reverse-over-reverse, as the public reference code does."""
    params = list(model.parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    hz = torch.autograd.grad(g, params, grad_outputs=z)
    return [t.detach() for t in g], hz


def validation_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One validation gradient: eval mode, forward + backward."""
    model.eval()
    try:
        return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    finally:
        model.train()


def validation_jvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, z: dict[str, torch.Tensor]) -> Any:
    """``grad E . z`` as one forward-mode JVP of the validation loss (for information)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    model.eval()
    try:
        with torch.no_grad():
            return jvp(lambda p: F.cross_entropy(functional_call(model, (p, buffers), (x,)), y),
                       (params,), (z,))
    finally:
        model.train()


def adamw_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """AdamW's own update (``torch.optim.AdamW.step`` on fixed gradients), the extra piece of its bound."""
    params = list(model.parameters())
    for p, g in zip(params, torch.autograd.grad(F.cross_entropy(model(x), y), params), strict=True):
        p.grad = g
    defaults = OptimConfig()
    opt = torch.optim.AdamW(params, lr=ETA0_ADAMW, betas=tuple(defaults.betas), eps=defaults.eps,
                            weight_decay=ADAMW_WEIGHT_DECAY)
    return lambda: opt.step()


# -- timing ---------------------------------------------------------------------------------------

class Entry:
    """One timed thing: ``run()`` does ``period`` steps; the time per step is reported."""

    def __init__(self, name: str, run: Callable[[], None], period: int = 1, info: dict | None = None) -> None:
        self.name, self.run, self.period, self.info = name, run, period, info or {}
        self.times: list[float] = []
        self.resident_bytes = 0
        self.peak_step_bytes = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: ``--clock``: wall time, or the CPU time of this process (CPU only: time the process did not run, while
#: other processes had the core, is not counted).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(entry: Entry, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    entry.run()
    _sync(device)
    return (clock() - start) / entry.period


def _measure_peak(entry: Entry, device: torch.device) -> None:
    if device.type != "cuda":
        return
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    entry.run()
    _sync(device)
    entry.peak_step_bytes = torch.cuda.max_memory_allocated(device) - before


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _config(name: str, spec: Spec, bs: int, functional_route: str) -> Config:
    """The run config a user would write for ``spec`` (the learning rate held: beta = 0)."""
    lr = dict(spec.lr)
    if lr.get("hvp") == FUNCTIONAL:
        lr["hvp"] = functional_route
    adamw = spec.base == "adamw"
    return Config(data=DataConfig(name="fake", batch_size=bs, val_batch_size=bs),
                  model=model_config(name),
                  optim=OptimConfig(base=spec.base, weight_decay=ADAMW_WEIGHT_DECAY if adamw else 0.0),
                  lr=LRConfig(eta0=ETA0_ADAMW if adamw else ETA0, beta=0.0, **lr))


def build_entries(name: str, device: torch.device, methods: list[str]) -> tuple[list[Entry], dict[str, Any]]:
    """Models, optimizers and the bound's pieces for model ``name``, each with its own copy of the weights."""
    shape, bs_cpu, bs_cuda = MODEL_SETUPS[name]
    bs = bs_cuda if device.type == "cuda" else bs_cpu
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, *shape, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (bs,), generator=gen).to(device)
    xv = torch.randn(bs, *shape, generator=gen).to(device)
    yv = torch.randint(0, NUM_CLASSES, (bs,), generator=gen).to(device)
    torch.manual_seed(0)
    base = build_model(model_config(name), shape, NUM_CLASSES).to(device)
    base.train()
    functional_route = "forward_over_reverse_bn" if has_batchnorm(base) else "forward_over_reverse"
    entries: list[Entry] = []
    aliases: dict[str, str] = {}
    timed: dict[str, str] = {}  # what an entry does (json) -> the first entry that does it
    for method in methods:
        spec = {**METHODS, **VARIANTS}[method]
        before = _allocated(device)
        model = copy.deepcopy(base)
        config = _config(name, spec, bs, functional_route)
        optimizer = build_optimizer(model, config, steps_per_epoch=1000).optimizer
        info: dict[str, Any] = {"base": spec.base}
        period = 1
        if isinstance(optimizer, RTHPO):
            group = optimizer.param_groups[0]
            sub = {k: group[k] for k in ("hvp_every", "hvp_batch_fraction", "val_every",
                                         "val_batch_fraction")}
            period = math.lcm(sub["hvp_every"], sub["val_every"])
            info.update({"hvp_route": group["hvp"], "val_mode": group["val_mode"], "subsampling": sub,
                         "driver": spec.driver, "tune_fraction": group["tune_fraction"],
                         "hypergrad_at": group["hypergrad_at"]})
            what = json.dumps([group["method"], group["mu"], info], sort_keys=True)
        else:
            what = json.dumps([config.lr.method, info], sort_keys=True)
        if what in timed:
            aliases[method] = timed[what]  # the variant is what an entry above already does: not timed twice
            continue
        timed[what] = method
        step = _step_function(optimizer, spec.driver, model, x, y, xv, yv)

        def run(step: Callable[[], bool] = step, period: int = period, method: str = method) -> None:
            for _ in range(period):
                if step():
                    raise RuntimeError(f"{name}/{method}: a benchmark step diverged; lower the "
                                       "learning rate.")

        entry = Entry(method, run, period, info)
        run()  # creates optimizer state; then resident memory is what the method keeps between steps
        entry.resident_bytes = _allocated(device) - before
        entries.append(entry)

    z_list = [1e-3 * torch.randn(p.shape, generator=gen).to(device) for p in base.parameters()]
    z = {n: t for (n, _), t in zip(base.named_parameters(), z_list, strict=True)}
    m_for, m_db, m_val, m_jvp = (copy.deepcopy(base) for _ in range(4))
    entries += [
        Entry("bound:grad+hvp forward_over_reverse", lambda: grad_hvp_forward_over_reverse(m_for, x, y, z)),
        Entry("bound:grad+hvp double_backward", lambda: grad_hvp_double_backward(m_db, x, y, z_list)),
        Entry("bound:validation gradient", lambda: validation_grad(m_val, xv, yv)),
        Entry("info:validation jvp", lambda: validation_jvp(m_jvp, xv, yv, z)),
    ]
    if any(METHODS.get(m, VARIANTS.get(m)).base == "adamw" for m in methods):  # type: ignore[union-attr]
        entries.append(Entry("bound:adamw update", adamw_update(copy.deepcopy(base), x, y)))
    return entries, {"batch_size": bs, "val_batch_size": bs, "input_shape": list(shape), "aliases": aliases,
                     "functional_route": functional_route}


def _step_function(opt: torch.optim.Optimizer, driver: str, model: nn.Module, x: torch.Tensor,
                   y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> Callable[[], bool]:
    """One training step as users run it (the Trainer's ``_step``); returns whether it diverged."""
    if not isinstance(opt, RTHPO):  # the units: forward, backward, step

        def plain_step() -> bool:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            return False

        return plain_step
    if driver == "closure":  # RTHPO on its own, as in its docstring: bare closures (RTHPO knows the model)

        def closure_step() -> bool:
            opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(model(xv), yv))
            return opt.diverged

        return closure_step

    def trainer_step() -> bool:  # ModelClosures, the validation batch drawn when due
        opt.step(ModelClosure(model, F.cross_entropy, x, y),
                 val_closure=ModelClosure(model, F.cross_entropy, batch=lambda: (xv, yv)))
        return opt.diverged

    return trainer_step


def bench_model(name: str, device: torch.device, reps: int, warmup: int, methods: list[str],
                clock: str = "wall") -> dict[str, Any]:
    """Time every entry of ``name`` round-robin for ``reps`` repetitions; medians and ratios."""
    entries, meta = build_entries(name, device, methods)
    for _ in range(warmup):
        for entry in entries:
            entry.run()
    for entry in entries:
        _measure_peak(entry, device)
    for rep in range(reps):
        k = rep % len(entries)
        for entry in entries[k:] + entries[:k]:
            entry.times.append(_timed(entry, device, CLOCKS[clock]))
    ms = {e.name: 1e3 * statistics.median(e.times) for e in entries}
    sgd = ms["sgd"]
    pieces = {
        "grad_hvp_forward_over_reverse_ms": ms["bound:grad+hvp forward_over_reverse"],
        "grad_hvp_double_backward_ms": ms["bound:grad+hvp double_backward"],
        "validation_gradient_ms": ms["bound:validation gradient"],
        "validation_jvp_ms": ms["info:validation jvp"],
    }
    cheaper = min(pieces["grad_hvp_forward_over_reverse_ms"], pieces["grad_hvp_double_backward_ms"])
    cheaper_route = ("forward_over_reverse" if cheaper == pieces["grad_hvp_forward_over_reverse_ms"]
                     else "double_backward")
    bound = cheaper + pieces["validation_gradient_ms"]
    pieces.update({
        "cheaper_route": cheaper_route,
        "bound_ms": bound,
        **{k.replace("_ms", "_ratio_to_sgd"): v / sgd for k, v in pieces.items() if k.endswith("_ms")},
    })
    result: dict[str, Any] = {**meta, "reps": reps, "sgd_ms": sgd, "bound_ratio": bound / sgd,
                              "bound": pieces, "methods": {}}
    units = {"sgd": (sgd, bound)}
    if "adamw" in ms:
        # AdamW's unit is a plain AdamW step and its bound adds AdamW's own update to the pieces above.
        adamw = ms["adamw"]
        adamw_bound = bound + ms["bound:adamw update"]
        adamw_pieces = {
            "grad_hvp_ms": cheaper, "cheaper_route": cheaper_route,
            "validation_gradient_ms": pieces["validation_gradient_ms"],
            "adamw_update_ms": ms["bound:adamw update"], "bound_ms": adamw_bound,
        }
        adamw_pieces.update({k.replace("_ms", "_ratio_to_adamw"): v / adamw
                             for k, v in list(adamw_pieces.items()) if k.endswith("_ms")})
        result.update({"adamw_ms": adamw, "adamw_bound_ratio": adamw_bound / adamw,
                       "adamw_bound": adamw_pieces})
        units["adamw"] = (adamw, adamw_bound)
    for entry in entries:
        if entry.name.startswith(("bound:", "info:")):
            continue
        base_name = entry.info.get("base", "sgd")
        unit_ms, unit_bound = units[base_name]
        row: dict[str, Any] = {"ms": ms[entry.name], "ratio_to_sgd": ms[entry.name] / sgd,
                               "ratio_to_bound": ms[entry.name] / unit_bound, "steps_per_block": entry.period,
                               "iqr_ms": _iqr_ms(entry.times), **entry.info,
                               "times_ms": [round(1e3 * t, 3) for t in entry.times],  # in repetition order
                               "unit": UNITS[base_name], "ratio_to_unit": ms[entry.name] / unit_ms}
        if base_name == "adamw":
            row["ratio_to_adamw"] = ms[entry.name] / unit_ms
        if device.type == "cuda":
            row["resident_mb"] = entry.resident_bytes / 2**20
            row["peak_step_mb"] = entry.peak_step_bytes / 2**20
            row["peak_mb"] = (entry.resident_bytes + entry.peak_step_bytes) / 2**20
        result["methods"][entry.name] = row
    for alias, target in meta["aliases"].items():
        if target in result["methods"]:
            result["methods"][alias] = {**result["methods"][target], "same_as": target}
    return result


def _iqr_ms(times: list[float]) -> float:
    if len(times) < 4:
        return float("nan")
    q = statistics.quantiles(times, n=4)
    return 1e3 * (q[2] - q[0])


def print_table(results: dict[str, Any]) -> None:
    """One block per model: ms per step, ratio to the unit (SGD or AdamW step), ratio to its bound."""
    for name, res in results["models"].items():
        b = res["bound"]
        print(f"\n{name}  (batch {res['batch_size']}, validation batch {res['val_batch_size']}, "
              f"{res['reps']} interleaved repetitions, medians)")
        print(f"  bound = min(grad+HVP fwd-over-rev {b['grad_hvp_forward_over_reverse_ratio_to_sgd']:.2f}x, "
              f"double backward {b['grad_hvp_double_backward_ratio_to_sgd']:.2f}x) + validation gradient "
              f"{b['validation_gradient_ratio_to_sgd']:.2f}x = {res['bound_ratio']:.2f}x SGD "
              f"(validation JVP: {b['validation_jvp_ratio_to_sgd']:.2f}x)")
        if "adamw_bound" in res:
            a = res["adamw_bound"]
            print(f"  AdamW bound = grad+HVP {a['grad_hvp_ratio_to_adamw']:.2f}x + validation gradient "
                  f"{a['validation_gradient_ratio_to_adamw']:.2f}x + AdamW update "
                  f"{a['adamw_update_ratio_to_adamw']:.2f}x = {res['adamw_bound_ratio']:.2f}x AdamW "
                  f"({res['adamw_ms']:.2f} ms)")
        mem = "peak_mb" in next(iter(res["methods"].values()))
        print(f"  {'method':32s} {'ms/step':>9s} {'x unit':>7s} {'x bound':>8s}  route / val_mode"
              + ("   peak MB" if mem else ""))
        for method, row in res["methods"].items():
            route = f"{row.get('hvp_route', '')} / {row.get('val_mode', '')}" if "hvp_route" in row else ""
            if row.get("driver") == "closure":
                route += " (bare closures)"
            if "same_as" in row:
                route += f" (= {row['same_as']})"
            extra = f"   {row['peak_mb']:.0f}" if mem else ""
            unit = row.get("ratio_to_unit", row["ratio_to_sgd"])
            print(f"  {method:32s} {row['ms']:9.2f} {unit:7.2f} {row['ratio_to_bound']:8.2f}  {route}{extra}")


# -- the Markdown tables of docs/performance.md, written from the JSON --------------------------------

def _cell(res: dict[str, Any], method: str, key: str = "ratio_to_unit") -> str:
    row = res["methods"].get(method)
    if row is None:
        return "-"
    value = row.get(key, row["ratio_to_sgd"] if key == "ratio_to_unit" else None)
    return "-" if value is None else f"{value:.2f}"


def _verdict(results: dict[str, Any], method: str, key: str = "ratio_to_bound",
             limit: float = TARGET_RATIO_TO_BOUND) -> str:
    met, missed = [], []
    for name, res in results["models"].items():
        row = res["methods"].get(method)
        if row is not None:
            value = row.get(key, row["ratio_to_sgd"])
            (met if value <= limit else missed).append(f"{name} {value:.2f}")
    parts = ([f"met on {', '.join(met)}"] if met else []) + ([f"NOT met on {', '.join(missed)}"]
                                                             if missed else [])
    return "; ".join(parts) if parts else "not measured"


#: The run configs' default: lr.tune_fraction of the run tunes (``[every10,quarter]``, the cheap preset), the
#: rest is the step after the tuning (``[after_tuning]``); its cost over a run is the mix of the two.
DEFAULT_TUNE_FRACTION = 0.25
TARGET_DEFAULT_RATIO = 1.3  # issue 18: the default settings at most 1.3x the base step


def measured_on(results: dict[str, Any]) -> str:
    """The line that says how and where a JSON of this script was measured."""
    return (("CPU time of the process" if results.get("clock") == "cpu" else "Wall time")
            + f" measured on {results['device']}"
            + (f" ({results['device_name']})" if results.get("device_name") else "")
            + f", torch {results['torch']}, {results['num_threads']} thread"
            + f"{'s' if results['num_threads'] != 1 else ''}, {results['cpu_count']} cores, load "
            f"average {results['load_average_before']:.2f} before and "
            f"{results['load_average_after']:.2f} after; "
            + ", ".join(f"{name} {res['reps']} repetitions" for name, res in results["models"].items()) + ".")


def default_cost_table(results: dict[str, Any]) -> list[str]:
    """The cost of the run configs' default over a run, per model and base, from the cheap and after-tuning
    rows."""
    lines = ["| model | base | tuning step (cheap) | step after the tuning | over a run "
             f"({DEFAULT_TUNE_FRACTION:g} / {1 - DEFAULT_TUNE_FRACTION:g}) | at most "
             f"{TARGET_DEFAULT_RATIO}x |",
             "|---|---|---|---|---|---|"]
    for name, res in results["models"].items():
        for base, prefix in (("sgd", "rthpo"), ("adamw", "rthpo_adamw")):
            tune = res["methods"].get(f"{prefix}[every10,quarter]")
            after = res["methods"].get(f"{prefix}[after_tuning]")
            if tune is None or after is None:
                continue
            t = tune.get("ratio_to_unit", tune["ratio_to_sgd"])
            a = after.get("ratio_to_unit", after["ratio_to_sgd"])
            run = DEFAULT_TUNE_FRACTION * t + (1 - DEFAULT_TUNE_FRACTION) * a
            lines.append(f"| {name} | {base} | {t:.2f}x | {a:.2f}x | {run:.2f}x | "
                         f"{'met' if run <= TARGET_DEFAULT_RATIO else 'NOT met'} |")
    return lines


def markdown_tables(results: dict[str, Any]) -> str:
    """The step-cost tables of ``docs/performance.md`` (SGD, then AdamW) from a JSON of this script; a JSON
    of the default's rows only (no ``rthpo``) gives the header and :func:`default_cost_table`."""
    models = results["models"]
    if not any("rthpo" in res["methods"] for res in models.values()):
        return "\n".join([measured_on(results), "", *default_cost_table(results)])
    lines = [
        measured_on(results),
        "",
        "SGD (ratios to a plain SGD step; `bound` = min(grad + HVP by the two routes) + one validation "
        "gradient):",
        "",
        "| model | SGD ms/step | bound (x SGD) | hd_train | hd_val | rthpo | marthe | rthpo fast | "
        "rthpo / bound | closure route | functional route |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in models.items():
        lines.append(
            f"| {name} | {res['sgd_ms']:.2f} | {res['bound_ratio']:.2f} | {_cell(res, 'hd_train')} | "
            f"{_cell(res, 'hd_val')} | {_cell(res, 'rthpo')} | {_cell(res, 'marthe')} | "
            f"{_cell(res, 'rthpo_fast')} | {_cell(res, 'rthpo', 'ratio_to_bound')} | "
            f"{_cell(res, 'rthpo[closure]')} | {_cell(res, 'rthpo[functional]')} |")
    lines += ["", f"`rthpo` at most {TARGET_RATIO_TO_BOUND}x its bound: {_verdict(results, 'rthpo')}. "
              f"`rthpo fast` at most {TARGET_FAST_RATIO}x SGD: "
              f"{_verdict(results, 'rthpo_fast', 'ratio_to_unit', TARGET_FAST_RATIO)}. `rthpo` / `hd_train`: "
              + ", ".join(f"{n} {r['methods']['rthpo']['ms'] / r['methods']['hd_train']['ms']:.1f}x"
                          for n, r in models.items() if {"rthpo", "hd_train"} <= set(r["methods"])) + "."]
    adamw_models = {n: r for n, r in models.items() if "adamw_ms" in r}
    if adamw_models:
        lines += [
            "",
            "AdamW (ratios to a plain `torch.optim.AdamW` step; `bound` = the pieces above + AdamW's "
            f"own update; weight decay {ADAMW_WEIGHT_DECAY}):",
            "",
            "| model | AdamW ms/step | bound (x AdamW) | hd_train | hd_val | rthpo | marthe | rthpo fast "
            "| rthpo / bound | closure route | functional route |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in adamw_models.items():
            lines.append(
                f"| {name} | {res['adamw_ms']:.2f} | {res['adamw_bound_ratio']:.2f} | "
                f"{_cell(res, 'hd_train_adamw')} | {_cell(res, 'hd_val_adamw')} | "
                f"{_cell(res, 'rthpo_adamw')} | {_cell(res, 'marthe_adamw')} | "
                f"{_cell(res, 'rthpo_fast_adamw')} | {_cell(res, 'rthpo_adamw', 'ratio_to_bound')} | "
                f"{_cell(res, 'rthpo_adamw[closure]')} | {_cell(res, 'rthpo_adamw[functional]')} |")
        fast = _verdict({"models": adamw_models}, "rthpo_fast_adamw", "ratio_to_unit", TARGET_FAST_RATIO)
        lines += ["", f"`rthpo_adamw` at most {TARGET_RATIO_TO_BOUND}x its bound: "
                  f"{_verdict({'models': adamw_models}, 'rthpo_adamw')}. `rthpo fast` at most "
                  f"{TARGET_FAST_RATIO}x AdamW: {fast}."]
    routes = ", ".join(f"{name}: {res['functional_route']}" for name, res in models.items()
                       if "functional_route" in res)
    if routes:
        lines += ["",
                  "Closure route: `RTHPO.step` driven by bare Python closures, `hvp=\"double_backward\"`. "
                  f"Functional route: a `ModelClosure` with the torch.func route ({routes}). Where the "
                  "functional route is what `lr.hvp: auto` picks, it is the `rthpo` measurement itself."]
    if device_is_cuda(results):
        lines += ["", "Peak memory (MB, resident state + the step's transient peak):", "",
                  "| model | " + " | ".join(_PEAK_METHODS) + " |", "|---|" + "---|" * len(_PEAK_METHODS)]
        for name, res in models.items():
            lines.append(f"| {name} | " + " | ".join(_cell(res, m, "peak_mb") for m in _PEAK_METHODS) + " |")
    return "\n".join(lines)


_PEAK_METHODS = ("sgd", "rthpo", "rthpo[closure]", "rthpo[functional]", "adamw", "rthpo_adamw",
                 "rthpo_adamw[closure]", "rthpo_adamw[functional]")


def device_is_cuda(results: dict[str, Any]) -> bool:
    """True for a JSON written with ``--device cuda``."""
    return results.get("device") == "cuda"


def update_doc(doc: Path, json_path: Path, tables: str) -> None:
    """Replace the text between ``<!-- begin: STEM -->`` and ``<!-- end: STEM -->`` in ``doc``."""
    begin, end = f"<!-- begin: {json_path.stem} -->", f"<!-- end: {json_path.stem} -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"error: {doc} has no '{begin}' ... '{end}' block; add the two markers where the "
                         "tables go.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n<!-- generated by: python experiments/bench_step_cost.py --markdown "
                   f"{json_path.as_posix()} --doc {doc.as_posix()} -->\n\n{tables}\n\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", nargs="+", choices=tuple(MODEL_SETUPS), default=list(MODEL_SETUPS))
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS) + tuple(VARIANTS),
                        default=list(METHODS) + list(VARIANTS),
                        help="'sgd' is always included, 'adamw' whenever an AdamW method is")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"repetitions per model (default: {DEFAULT_REPS} on CPU, "
                             f"{DEFAULT_REPS_CUDA} on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's default; on a shared machine one "
                             "thread per process avoids OpenMP oversubscription stalls)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: wall-clock time (default); cpu: CPU time of this process "
                             "(CPU device only), which other processes' use of the cores does not inflate: "
                             "with --threads 1 it is the work of the step, the choice for a shared machine")
    parser.add_argument("--markdown", type=Path, default=None, metavar="JSON",
                        help="measure nothing: print the Markdown tables of docs/performance.md "
                             "from this JSON")
    parser.add_argument("--doc", type=Path, default=None,
                        help="with --markdown: write the tables into this file, between the markers "
                             "'<!-- begin: JSON_STEM -->' and '<!-- end: JSON_STEM -->'")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        tables = markdown_tables(json.loads(args.markdown.read_text()))
        if args.doc is not None:
            update_doc(args.doc, args.markdown, tables)
            print(f"wrote the tables of {args.markdown} into {args.doc}")
        else:
            print(tables)
        return 0
    if args.doc is not None:
        print("error: --doc goes with --markdown JSON.", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, but got {args.threads}.", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device; run with --device cpu.", file=sys.stderr)
        return 2
    if args.clock == "cpu" and args.device != "cpu":
        print("error: --clock cpu measures CPU time, which says nothing of GPU work; use --clock wall with "
              "--device cuda.", file=sys.stderr)
        return 2
    if args.reps is not None and args.reps < 1:
        print(f"error: --reps must be >= 1, but got {args.reps}.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    methods = [m for m in args.methods if m not in UNITS.values()]
    bases = {"sgd"} | {{**METHODS, **VARIANTS}[m].base for m in methods}
    methods = [UNITS[b] for b in UNITS if b in bases] + methods
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch.get_num_threads() = {torch.get_num_threads()}, cpu_count = {os.cpu_count()}, "
          f"load average {load_before[0]:.2f}, clock {args.clock}")
    results: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
        "clock": args.clock, "load_average_before": load_before[0], "models": {},
    }
    for name in args.models:
        reps = args.reps if args.reps is not None else (DEFAULT_REPS_CUDA if device.type == "cuda"
                                                        else DEFAULT_REPS)[name]
        start = time.perf_counter()
        results["models"][name] = bench_model(name, device, reps, args.warmup, methods, args.clock)
        results["models"][name]["wall_s"] = time.perf_counter() - start
        print_table({"models": {name: results["models"][name]}})
    results["load_average_after"] = os.getloadavg()[0]
    if max(results["load_average_before"], results["load_average_after"]) > (os.cpu_count() or 1):
        print(f"\nwarning: the load average ({results['load_average_before']:.1f} before, "
              f"{results['load_average_after']:.1f} after) exceeded the {os.cpu_count()} cores: other "
              "processes competed for the CPU; rerun on a quieter machine.")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
