"""Shared pytest fixtures, and the ``harness`` marker: a test that needs the extra ``tune`` (the config layer,
the Trainer, Ray) is skipped where it is not installed (CI's core leg, .ci/core_env.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

#: The extra tune's modules a ``harness`` test may need.
_HARNESS = ("yaml", "ray", "sklearn", "torchvision", "pandas")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``harness`` tests, with the reason, where the extra ``tune`` is not installed."""
    missing = [m for m in _HARNESS if importlib.util.find_spec(m) is None]
    if not missing:
        return
    skip = pytest.mark.skip(
        reason=f"needs the extra tune (pip install -e '.[tune]'); missing {', '.join(missing)}")
    for item in items:
        if item.get_closest_marker("harness") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tests' tensors are tiny: one intra-op thread is faster than two fighting over a shared CPU
    (Ray trials run in their own processes and keep their own setting)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: How long a test that uses ``ray_local`` waits for the session's Ray to have every CPU free again (the
#: previous test's trial actors are still being torn down) before it restarts that Ray.
_RAY_IDLE_WAIT_S = 60.0


def _start_session_ray() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)


@pytest.fixture(autouse=True)
def _session_ray_is_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before a test that uses ``ray_local``: every CPU of the session's Ray is free. A test that failed or
    injected faults (tests/test_faults.py kills trial workers) can leave actors holding CPUs; the next
    test's trials would then wait for resources that never come back, and the session would hang. When
    the CPUs are not back within ``_RAY_IDLE_WAIT_S``, the session's Ray is restarted, with a warning."""
    if "ray_local" not in request.fixturenames:
        yield
        return
    import time
    import warnings

    import ray

    request.getfixturevalue("ray_local")
    deadline = time.monotonic() + _RAY_IDLE_WAIT_S
    while ray.is_initialized():
        total = ray.cluster_resources().get("CPU", 0.0)
        if total and ray.available_resources().get("CPU", 0.0) >= total:
            break
        if time.monotonic() > deadline:
            warnings.warn(f"the session's Ray still had CPUs held {_RAY_IDLE_WAIT_S:.0f} s after the "
                          f"previous test ({ray.available_resources()} of {ray.cluster_resources()}); "
                          f"restarting it before {request.node.nodeid}", stacklevel=1)
            ray.shutdown()
            _start_session_ray()
            break
        time.sleep(0.5)
    yield


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One real local Ray for the whole test session (2 CPUs, no dashboard), shut down at the end.

    Tests that use it should also pass ``RunConfig(storage_path=str(tmp_path))`` (or
    ``tune.run(storage_path=...)``) so that nothing is written under the home directory.
    """
    import ray

    # Ray workers unpickle trainables defined in test modules by importing those modules: put
    # tests/ on the path that the Ray processes started below inherit; and examples/tabular, whose plain
    # Tune trainable (and its tabular_demo package) a user's local Ray finds the same way (README).
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "RAY_DEDUP_LOGS")}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    example_dir = os.path.join(os.path.dirname(tests_dir), "examples", "tabular")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, example_dir, saved["PYTHONPATH"]) if p)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _start_session_ray()
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def ray_env() -> Iterator[dict[str, str]]:
    """Environment for a subprocess that starts its own local Ray under a short private temp dir."""
    temp = tempfile.mkdtemp(prefix="rtr", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=temp, PYTHONUNBUFFERED="1")
    try:
        yield env
    finally:
        shutil.rmtree(temp, ignore_errors=True)
