"""What data-parallel RTHPO's collectives cost: 2 gloo ranks on CPU against one process, same global batch.

    python experiments/bench_ddp.py                      # MLP 784-512-256-10, global batch 256, SGD
    python experiments/bench_ddp.py --base adamw --rules additive

For each hyper-update rule, the median seconds per RTHPO step (``hvp_every = val_every = 1``: every step
has the HVP and the hypergradient) of

* ``1 process``: one process on the whole batch (one torch thread);
* ``2 ranks``: two processes (one thread each), each on half the batch, averaging over the group
  (docs/distributed.md): the ratio to ``1 process`` is the column ``ratio``;
* ``2 ranks, off``: the same two processes with ``process_group=False`` (the same work per rank, no
  collective): ``2 ranks`` minus this is what the collectives cost per step, also measured directly by
  timing each ``all_reduce`` call in the step (which includes waiting for the slower rank), and one bare
  ``all_reduce`` of as many floats, the ranks starting together (its share of the ``2 ranks`` step).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_rthpo.optim import RTHPO, ModelClosure  # noqa: E402


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _time_steps(args: argparse.Namespace, rule: str, rank: int | None, world: int,
                process_group: Any = None) -> dict[str, float]:
    """Median seconds per step of RTHPO on this process's share of the batch, and the all_reduce time."""
    model = _model()
    kwargs: dict[str, Any] = {"momentum": 0.9} if args.base == "sgd" else {}
    lr = 0.05 if args.base == "sgd" else 1e-3
    opt = RTHPO(model.parameters(), lr=lr, base=args.base, hyper_update=rule, process_group=process_group,
                **kwargs)
    x, y = _batch(args.batch, 1)
    xv, yv = _batch(args.batch, 2)
    if rank is not None:  # this rank's shard
        shard = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
        x, y, xv, yv = x[shard], y[shard], xv[shard], yv[shard]
    spent = {"s": 0.0, "n": 0, "numel": 0}
    all_reduce = dist.all_reduce

    def timed(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        spent["numel"] = max(spent["numel"], a[0].numel())
        try:
            return all_reduce(*a, **k)
        finally:
            spent["s"] += time.perf_counter() - start
            spent["n"] += 1

    dist.all_reduce = timed  # type: ignore[assignment]
    times, reduce_s, reduces = [], 0.0, 0
    try:
        for t in range(args.warmup + args.steps):
            if rank is not None:
                dist.barrier()  # the ranks start each step together
            spent["s"], spent["n"] = 0.0, 0
            start = time.perf_counter()
            opt.step(ModelClosure(model, F.cross_entropy, x, y),
                     val_closure=ModelClosure(model, F.cross_entropy, xv, yv))
            elapsed = time.perf_counter() - start
            if t >= args.warmup:
                times.append(elapsed)
                reduce_s += spent["s"]
                reduces += spent["n"]
    finally:
        dist.all_reduce = all_reduce  # type: ignore[assignment]
    return {"step_s": statistics.median(times), "reduce_s": reduce_s / args.steps,
            "reduces": reduces / args.steps, "numel": spent["numel"]}


def _bare_all_reduce(numel: int, repeats: int = 20) -> float:
    """Median seconds of one all_reduce of ``numel`` floats, the ranks starting together."""
    buffer, times = torch.ones(numel), []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = {}
        for rule in args.rules:
            rows[rule] = {"on": _time_steps(args, rule, rank, 2),
                          "off": _time_steps(args, rule, rank, 2, False)}
            rows[rule]["bare_s"] = _bare_all_reduce(int(rows[rule]["on"]["numel"]))
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    """Print the table (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="global batch (each rank gets half)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--base", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--rules", nargs="+", default=["multiplicative", "additive"])
    args = parser.parse_args(argv)
    if args.batch % 2:
        parser.error(f"--batch must be even (two equal shards), but got {args.batch}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    single = {rule: _time_steps(args, rule, None, 1) for rule in args.rules}
    out = Path(f"/tmp/bench_ddp_{os.getpid()}.pt")
    mp.spawn(_worker, args=(_free_port(), args, str(out)), nprocs=2, join=True)
    ranks = torch.load(out, weights_only=False)
    out.unlink()
    params = sum(p.numel() for p in _model().parameters())
    print(f"MLP 784-512-256-10 ({params:,} parameters), global batch {args.batch}, base {args.base}, "
          f"HVP and hypergradient every step, {args.steps} steps (median), gloo CPU, 1 thread per process")
    print("| rule | 1 process ms | 2 ranks ms | ratio | 2 ranks, off ms | all_reduce ms in the step (share) "
          "| per step | floats | bare all_reduce ms (share) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rule in args.rules:
        one, on, off = single[rule]["step_s"], ranks[rule]["on"]["step_s"], ranks[rule]["off"]["step_s"]
        reduce_s = ranks[rule]["on"]["reduce_s"]
        bare = ranks[rule]["bare_s"]
        print(f"| {rule} | {1e3 * one:.1f} | {1e3 * on:.1f} | {on / one:.2f} | {1e3 * off:.1f} | "
              f"{1e3 * reduce_s:.1f} ({100 * reduce_s / on:.0f}%) | {ranks[rule]['on']['reduces']:.0f} | "
              f"{ranks[rule]['on']['numel']:,} | {1e3 * bare:.1f} ({100 * bare / on:.0f}%) |")


if __name__ == "__main__":
    main()
