"""Per-step wall time of plain SGD and the hypergradient methods, against the cost limit of RT-HPO.

Usage::

    python experiments/bench_step_cost.py --device cpu --json results/bench_step_cost_cpu.json
    python experiments/bench_step_cost.py --device cuda --json results/bench_step_cost_cuda.json
    python experiments/bench_step_cost.py --models mlp lenet --reps 10          # a quicker look

For each model (``mlp`` and ``lenet`` on 1x28x28 inputs with batch 128, ``resnet18`` on 3x32x32 with
batch 32 on CPU and 128 on CUDA; 10 classes; random inputs and labels), everything runs in one
process, round-robin: every repetition times each entry once, in an order rotated by one position
per repetition, and the median over repetitions is reported. Every entry runs on its own
copy of the weights, once per repetition, as it would inside a training step after other work:
no entry is timed over back-to-back repeats that keep its data hot in the caches. Entries:

* ``sgd``: one step of :class:`ray_rthpo.training.steppers.ScheduleStepper` with ``lr.method: fixed``
  (forward, backward, ``optimizer.step``) - the unit of every ratio;
* the methods, each through ``HypergradientController.train_step`` built by
  :func:`ray_rthpo.training.steppers.build_stepper` (the code users run, ``lr.hvp: auto``):
  ``hd_train``, ``hd_val``, ``rthpo``, ``marthe`` (mu = 0.9), ``rthpo_fast`` (``lr.preset: fast``),
  and ``rthpo`` with each HVP route and validation mode forced (``rthpo[...]``), which is what
  justifies the ``auto`` rules. A method that does its hypergradient work every k steps is timed
  over blocks of k consecutive steps (lcm of ``hvp_every`` and ``val_every``): the reported time
  is the mean step of a block, never the median of cheap and dear steps;
* the pieces of the lower bound for an exact RT-HPO step, written here independently of the
  library: ``grad+HVP`` by forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``; BatchNorm
  normalises by batch statistics and its running statistics are left alone, which only makes the
  bound lower) and by reverse-over-reverse (a second backward through a ``create_graph=True``
  gradient), and one validation gradient (eval mode, forward + backward, on a validation batch of
  the same size as the training batch). ``bound = min(the two grad+HVP) + validation gradient``
  and ``bound_ratio = bound / sgd``.

The learning rate is held (beta = 0) so that all methods do identical work at every repetition;
the hypergradient is still computed at every step it is due. ``torch.set_num_threads`` is left at
its default and printed. On CUDA every timing is bracketed by ``torch.cuda.synchronize`` and the
peak memory of each entry is reported (resident state plus the step's transient peak).

Output: a table, and with ``--json PATH`` the file
``{"device": ..., "models": {MODEL: {"sgd_ms": x, "bound_ratio": x, "methods": {METHOD: {"ms": x,
"ratio_to_sgd": x, ...}}, "bound": {...}}}}``.
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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

# The package next to this script, not whichever copy is installed: the benchmark measures this code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_rthpo.config import Config, DataConfig, LRConfig, ModelConfig
from ray_rthpo.models import build_model
from ray_rthpo.training.steppers import HypergradientController, build_stepper

#: model -> (input shape, batch size on CPU, batch size on CUDA)
MODEL_SETUPS: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "mlp": ((1, 28, 28), 128, 128),
    "lenet": ((1, 28, 28), 128, 128),
    "resnet18": ((3, 32, 32), 32, 128),
}
DEFAULT_REPS = {"mlp": 100, "lenet": 60, "resnet18": 7}
NUM_CLASSES = 10
ETA0 = 0.01
#: The methods as users select them (lr.* overrides); "sgd" is the fixed-rate baseline.
METHODS: dict[str, dict[str, Any]] = {
    "sgd": {"method": "fixed"},
    "hd_train": {"method": "hd_train"},
    "hd_val": {"method": "hd_val"},
    "rthpo": {"method": "rthpo"},
    "marthe": {"method": "marthe", "mu": 0.9},
    "rthpo_fast": {"method": "rthpo", "preset": "fast"},
}
#: rthpo with the route / validation mode forced: the measurements behind the ``auto`` rules.
VARIANTS: dict[str, dict[str, Any]] = {
    "rthpo[double_backward]": {"method": "rthpo", "hvp": "double_backward"},
    "rthpo[forward_over_reverse_bn]": {"method": "rthpo", "hvp": "forward_over_reverse_bn"},
    "rthpo[val_mode=forward]": {"method": "rthpo", "val_mode": "forward"},
}


# -- the lower bound, written independently of ray_rthpo ---------------------------------------------

@contextmanager
def _batchnorm_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm normalises by batch statistics but leaves running statistics alone."""
    mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
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
            return jvp(lambda p: F.cross_entropy(functional_call(model, (p, buffers), (x,)), y), (params,), (z,))
    finally:
        model.train()


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


def _timed(entry: Entry, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    entry.run()
    _sync(device)
    return (time.perf_counter() - start) / entry.period


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


def build_entries(name: str, device: torch.device, methods: list[str]) -> tuple[list[Entry], dict[str, Any]]:
    """Models, steppers and the bound's pieces for model ``name``, each with its own copy of the weights."""
    shape, bs_cpu, bs_cuda = MODEL_SETUPS[name]
    bs = bs_cuda if device.type == "cuda" else bs_cpu
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, *shape, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (bs,), generator=gen).to(device)
    xv = torch.randn(bs, *shape, generator=gen).to(device)
    yv = torch.randint(0, NUM_CLASSES, (bs,), generator=gen).to(device)
    torch.manual_seed(0)
    base = build_model(ModelConfig(name=name), shape, NUM_CLASSES).to(device)
    base.train()
    entries: list[Entry] = []
    aliases: dict[str, str] = {}
    rthpo_info: dict[str, Any] | None = None
    for method in methods:
        overrides = {**METHODS, **VARIANTS}[method]
        before = _allocated(device)
        model = copy.deepcopy(base)
        config = Config(data=DataConfig(name="fake", batch_size=bs, val_batch_size=bs), model=ModelConfig(name=name),
                        lr=LRConfig(eta0=ETA0, beta=0.0, **overrides))
        _, stepper = build_stepper(model, config, steps_per_epoch=1000, device=device)
        info: dict[str, Any] = {}
        period = 1
        if isinstance(stepper, HypergradientController):
            sub = stepper.sub
            period = math.lcm(sub.hvp_every, sub.val_every)
            info = {"hvp_route": stepper.hvp_route, "val_mode": stepper.val_mode, "subsampling": sub._asdict()}

        def run(stepper: Any = stepper, period: int = period) -> None:
            for _ in range(period):
                out = stepper.train_step(x, y, val_batch=lambda: (xv, yv))
                if out.diverged:
                    raise RuntimeError(f"{name}/{stepper.cfg.method}: a benchmark step diverged; lower ETA0.")

        if method in VARIANTS and info == rthpo_info:
            aliases[method] = "rthpo"  # the variant is what auto already picks: not timed twice
            continue
        if method == "rthpo":
            rthpo_info = info
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
    return entries, {"batch_size": bs, "val_batch_size": bs, "input_shape": list(shape), "aliases": aliases}


def bench_model(name: str, device: torch.device, reps: int, warmup: int, methods: list[str]) -> dict[str, Any]:
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
            entry.times.append(_timed(entry, device))
    ms = {e.name: 1e3 * statistics.median(e.times) for e in entries}
    sgd = ms["sgd"]
    pieces = {
        "grad_hvp_forward_over_reverse_ms": ms["bound:grad+hvp forward_over_reverse"],
        "grad_hvp_double_backward_ms": ms["bound:grad+hvp double_backward"],
        "validation_gradient_ms": ms["bound:validation gradient"],
        "validation_jvp_ms": ms["info:validation jvp"],
    }
    cheaper = min(pieces["grad_hvp_forward_over_reverse_ms"], pieces["grad_hvp_double_backward_ms"])
    bound = cheaper + pieces["validation_gradient_ms"]
    pieces.update({
        "cheaper_route": "forward_over_reverse" if cheaper == pieces["grad_hvp_forward_over_reverse_ms"]
        else "double_backward",
        "bound_ms": bound,
        **{k.replace("_ms", "_ratio_to_sgd"): v / sgd for k, v in pieces.items() if k.endswith("_ms")},
    })
    result: dict[str, Any] = {**meta, "reps": reps, "sgd_ms": sgd, "bound_ratio": bound / sgd, "bound": pieces,
                              "methods": {}}
    for entry in entries:
        if entry.name.startswith(("bound:", "info:")):
            continue
        row: dict[str, Any] = {"ms": ms[entry.name], "ratio_to_sgd": ms[entry.name] / sgd,
                               "ratio_to_bound": ms[entry.name] / bound, "steps_per_block": entry.period,
                               "iqr_ms": _iqr_ms(entry.times), **entry.info}
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
    """One block per model: ms per step, ratio to SGD, ratio to the bound."""
    for name, res in results["models"].items():
        b = res["bound"]
        print(f"\n{name}  (batch {res['batch_size']}, validation batch {res['val_batch_size']}, "
              f"{res['reps']} interleaved repetitions, medians)")
        print(f"  bound = min(grad+HVP fwd-over-rev {b['grad_hvp_forward_over_reverse_ratio_to_sgd']:.2f}x, "
              f"double backward {b['grad_hvp_double_backward_ratio_to_sgd']:.2f}x) + validation gradient "
              f"{b['validation_gradient_ratio_to_sgd']:.2f}x = {res['bound_ratio']:.2f}x SGD "
              f"(validation JVP: {b['validation_jvp_ratio_to_sgd']:.2f}x)")
        mem = "peak_mb" in next(iter(res["methods"].values()))
        print(f"  {'method':32s} {'ms/step':>9s} {'x SGD':>7s} {'x bound':>8s}  route / val_mode"
              + ("   peak MB" if mem else ""))
        for method, row in res["methods"].items():
            route = f"{row.get('hvp_route', '')} / {row.get('val_mode', '')}" if "hvp_route" in row else ""
            extra = f"   {row['peak_mb']:.0f}" if mem else ""
            print(f"  {method:32s} {row['ms']:9.2f} {row['ratio_to_sgd']:7.2f} {row['ratio_to_bound']:8.2f}  "
                  f"{route}{extra}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", nargs="+", choices=tuple(MODEL_SETUPS), default=list(MODEL_SETUPS))
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS) + tuple(VARIANTS),
                        default=list(METHODS) + list(VARIANTS), help="'sgd' is always included")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"repetitions per model (default: {DEFAULT_REPS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's default; on a shared machine one "
                             "thread per process avoids OpenMP oversubscription stalls)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, but got {args.threads}.", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device; run with --device cpu.", file=sys.stderr)
        return 2
    if args.reps is not None and args.reps < 1:
        print(f"error: --reps must be >= 1, but got {args.reps}.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    methods = ["sgd"] + [m for m in args.methods if m != "sgd"]
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch.get_num_threads() = {torch.get_num_threads()}, cpu_count = {os.cpu_count()}, "
          f"load average {load_before[0]:.2f}")
    results: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
        "load_average_before": load_before[0], "models": {},
    }
    for name in args.models:
        reps = args.reps if args.reps is not None else DEFAULT_REPS[name]
        start = time.perf_counter()
        results["models"][name] = bench_model(name, device, reps, args.warmup, methods)
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
