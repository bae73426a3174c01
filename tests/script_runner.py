"""Run a repository script (``python SCRIPT ARGS``) inside the test process, on the session's local Ray.

A script run as a subprocess pays for its own Python, torch and Ray start-up (10-25 s on 2 cores), and a
script that runs ``python -m ray_rthpo.cli ...`` as a subprocess of its own (experiments/suite.py's cells)
pays again per call. ``run_script`` runs the script with ``runpy`` under the ``sys.argv``, ``sys.path`` and
working folder that ``python SCRIPT ARGS`` would give it, runs those ``ray_rthpo.cli`` calls in this process
too, and returns the exit status. The caller requests the ``ray_local`` fixture first where the script
needs Ray (the script's ``ray.init`` then joins the running one). Used by tests/test_documented_commands.py,
tests/test_suite.py and tests/test_table1_experiment.py. ``torchrun`` launches ``torchrun ARGS`` as a
subprocess (tests/test_documented_commands.py, tests/test_train_torchrun.py).

``run_isolated`` is ``subprocess.run(args, capture_output=True, text=True, timeout=...)`` for commands that
start processes of their own (Ray, torchrun's ranks): the command runs in a session of its own with its
output in files, and on a timeout its whole process group is killed and the test fails with the output's
tail. With pipes, a surviving grandchild (a Ray process) holds them open and ``subprocess.run`` waits on
them forever, past its own timeout; a test must fail instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (it was started with ``start_new_session=True``): the
    command and every process it started that stayed in its session (a Ray it started, torchrun's ranks)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_isolated(args: Sequence[str], *, timeout: float, cwd: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None,
                 log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``args`` as ``subprocess.run(args, capture_output=True, text=True, timeout=timeout)`` would, but in
    a session of its own with stdout and stderr in files (``log`` + ``.out``/``.err`` when given, else
    temporary ones), so that no process it leaves behind can block the test. Past ``timeout`` seconds the
    whole group is killed and the test fails, showing the output's tail."""
    with contextlib.ExitStack() as stack:
        if log is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="run-isolated-")))
            out_path, err_path = folder / "stdout", folder / "stderr"
        else:
            out_path, err_path = Path(f"{log}.out"), Path(f"{log}.err")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(list(args), cwd=cwd, env=None if env is None else dict(env), stdout=out,
                                    stderr=err, text=True, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_group(proc)
                proc.wait()
                pytest.fail(f"{' '.join(map(str, args))[:300]} ran past {timeout:g} s (its process group was "
                            f"killed):\n{out_path.read_text()[-3000:]}\n{err_path.read_text()[-3000:]}")
            finally:
                if proc.poll() is None:  # the test was interrupted: leave nothing running
                    stop_group(proc)
                    proc.wait()
        done = subprocess.CompletedProcess(list(args), proc.returncode, out_path.read_text(),
                                           err_path.read_text())
    return done


def torchrun(args: Sequence[str], cwd: str | os.PathLike[str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun ARGS`` (as ``python -m torch.distributed.run``, this interpreter) from ``cwd``, its output
    captured: outside any torchrun of this process's own (its rank variables dropped), one thread per
    process (:func:`run_isolated`: a rank that hangs cannot hang the test)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return run_isolated([sys.executable, "-m", "torch.distributed.run", *args], cwd=cwd,
                        env={**env, "OMP_NUM_THREADS": "1"}, timeout=timeout)
