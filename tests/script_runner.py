"""Run a repository script (``python SCRIPT ARGS``) inside the test process, on the session's local Ray.

A script run as a subprocess pays for its own Python, torch and Ray start-up (10-25 s on 2 cores), and a
script that runs ``python -m ray_rthpo.cli ...`` as a subprocess of its own (experiments/suite.py's cells)
pays again per call. ``run_script`` runs the script with ``runpy`` under the ``sys.argv``, ``sys.path`` and
working folder that ``python SCRIPT ARGS`` would give it, runs those ``ray_rthpo.cli`` calls in this process
too, and returns the exit status. The caller requests the ``ray_local`` fixture first where the script
needs Ray (the script's ``ray.init`` then joins the running one). Used by tests/test_documented_commands.py,
tests/test_suite.py and tests/test_table1_experiment.py. ``torchrun`` launches ``torchrun ARGS`` as a
subprocess (tests/test_documented_commands.py, tests/test_train_torchrun.py).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest


@contextlib.contextmanager
def script_context(script: Path, argv: Sequence[str]) -> Iterator[None]:
    """sys.argv and sys.path as ``python SCRIPT ARGS`` sets them, and the signal handlers; restored after."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    # a script may set its own handlers
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def chdir(folder: str | os.PathLike[str]) -> Iterator[None]:
    """contextlib.chdir (Python 3.11+) for 3.10."""
    saved = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(saved)


def exit_code(run: Callable[[], object]) -> int:
    """The exit status of ``run()`` as a process would report it (SystemExit's code, an int returned, or
    0)."""
    try:
        result = run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return result if isinstance(result, int) else 0


def cli_in_process(cmd: Sequence[str], cwd: str | os.PathLike[str] | None = None, **_: object) -> int:
    """``subprocess.call([python, -m, ray_rthpo.cli, ...], cwd=...)``, run in this process."""
    from ray_rthpo.cli import main

    with chdir(cwd or os.getcwd()):
        return exit_code(lambda: main(list(cmd[3:])))


def run_script(script: Path, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> int:
    """Run ``python SCRIPT ARGV`` (from ``cwd``) in this process; its ``subprocess.call`` of
    ``python -m ray_rthpo.cli`` runs in this process as well. Returns the exit status."""
    real_call = subprocess.call

    def call(cmd: Sequence[str], *args: object, **kwargs: object) -> int:
        if list(cmd[1:3]) == ["-m", "ray_rthpo.cli"]:
            return cli_in_process(cmd, *args, **kwargs)  # type: ignore[arg-type]
        return real_call(cmd, *args, **kwargs)  # type: ignore[arg-type]

    with chdir(cwd or os.getcwd()), script_context(script, argv), pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "call", call)
        return exit_code(lambda: runpy.run_path(str(script), run_name="__main__"))


def torchrun(args: Sequence[str], cwd: str | os.PathLike[str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun ARGS`` (as ``python -m torch.distributed.run``, this interpreter) from ``cwd``, its output
    captured: outside any torchrun of this process's own (its rank variables dropped), one thread per
    process."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], cwd=cwd,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)
