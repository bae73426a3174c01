"""Tests that train on several ``torch.distributed`` processes (gloo, CPU) started by ``mp.spawn``.

``spawn_ranks(worker, args, nprocs, out)`` runs ``worker(rank, *args)`` in ``nprocs`` spawned processes
(``args`` usually hold a :func:`free_port` for the gloo group and ``out``), each of which joins the group,
computes its results and ends with ``finish_rank(results, out, rank)``; the caller gets each rank's results
back.

Why the helper: a gloo process can abort (SIGABRT, "terminate called without an active exception") while
its C++ worker threads are torn down, after the last collective, in ``destroy_process_group`` or at
interpreter exit. CI saw it twice, in two sessions (tests/test_train_workers.py, tests/
test_train_torchrun.py), both times after the last collective. So a rank writes its results atomically
*before* it tears the group down, then leaves with ``os._exit(0)`` (no interpreter finalisation), and a
rank killed by a signal *after* its results file is whole is a warning, not a failed test: what the tests
check is the results, which are all there. A rank that fails or dies before writing them still fails the test.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for ``init_method=tcp://...``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def result_path(out: str | os.PathLike[str], rank: int) -> Path:
    """Where rank ``rank`` writes its results."""
    return Path(out) / f"rank{rank}.pt"


def finish_rank(results: Any, out: str | os.PathLike[str], rank: int) -> None:
    """Write ``results`` atomically to :func:`result_path`, tear the process group down and leave the
    process at once (``os._exit(0)``, output flushed): nothing after the results can fail the test."""
    import torch.distributed as dist

    path = result_path(out, rank)
    part = path.with_suffix(".part")
    torch.save(results, part)
    os.replace(part, path)
    if dist.is_initialized():
        dist.barrier()  # no rank tears its pairs down while another still uses them
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_ranks(worker: Callable[..., None], args: Sequence[Any], nprocs: int,
                out: str | os.PathLike[str]) -> list[Any]:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes (the worker ends with
    :func:`finish_rank`) and return each rank's results, in rank order.

    A rank that exits non-zero or dies by a signal before its results file exists fails the caller with
    torch's ``ProcessRaisedException`` / ``ProcessExitedException``; one killed by a signal after writing
    them (gloo's teardown, see the module's docstring) is reported with a warning."""
    import torch.multiprocessing as mp

    try:
        mp.spawn(worker, args=tuple(args), nprocs=nprocs, join=True)
    except mp.ProcessExitedException as err:
        written = [result_path(out, r).is_file() for r in range(nprocs)]
        if err.signal_name is None or not all(written):
            raise
        warnings.warn(f"a gloo rank died by {err.signal_name} after writing its results (teardown): {err}",
                      RuntimeWarning, stacklevel=2)
    return [torch.load(result_path(out, r), weights_only=False) for r in range(nprocs)]
