"""CI's second leg: the optimizer installed with torch alone, in a fresh virtualenv, and its tests run there.

    python .ci/core_env.py /tmp/rthpo-core      # build the env, pip install -e . into it, run the core tests

A fresh virtualenv without system site packages gets the distributions that torch and pytest need (their
requirement closure, read from this interpreter's installed metadata and linked, not copied: torch with its
CUDA wheels is gigabytes); then ``pip install -e .`` resolves the project's own requirements there, which must
add nothing (torch is present), and the env must not be able to import Ray or any module of the extra
``tune``. Then the optimizer's tests run with that env's interpreter; tests marked ``harness`` skip there.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
#: What the env may hold: the requirement closure of these distributions.
ROOTS = ("torch", "pytest")
#: The optimizer's tests (each imports torch and ray_rthpo.optim / ray_rthpo.hypergrad only).
CORE_TESTS = ("tests/test_core_install.py", "tests/test_optim.py", "tests/test_adamw_tangent.py",
              "tests/test_schedule_scale.py", "tests/test_update_rules.py", "tests/test_distributed.py",
              "tests/test_backoff_rollback.py", "tests/test_hypergrad_average.py")
#: Modules of the extra ``tune`` that must not be importable in the env.
HARNESS = ("ray", "optuna", "skopt", "sklearn", "torchvision", "pandas", "matplotlib", "yaml")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def closure(roots: tuple[str, ...]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``roots`` need, with their requirements' requirements (markers
    evaluated for this interpreter; a requirement's extras followed, as pip does: torch needs
    ``cuda-toolkit[cublas, ...]``)."""
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(root, "") for root in roots]
    while todo:
        name, extra = todo.pop()
        name = _name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed here
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                if req.marker is not None and extra == "" and "extra" in str(req.marker):
                    continue  # a requirement of an extra nobody asked for
                todo.append((req.name, ""))
                todo.extend((req.name, e) for e in req.extras)
    return found


def link_distributions(dists: dict[str, metadata.Distribution], site: Path) -> list[str]:
    """Symlink each distribution's top-level files and folders (its packages and dist-info) into ``site``."""
    linked: list[str] = []
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            source, target = base / top, site / top
            if source.exists() and not target.exists() and top != "__pycache__":
                target.symlink_to(source)
                linked.append(top)
    return linked


def run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def main(env_dir: str) -> int:
    env = Path(env_dir)
    venv.EnvBuilder(clear=True, with_pip=True, system_site_packages=False).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; "
                                                            "print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    dists = closure(ROOTS)
    link_distributions(dists, site)
    print(f"linked {len(dists)} distributions into {site}: {', '.join(sorted(dists))}")
    # The project's own requirements, resolved by pip in the env: torch is there, so nothing else comes.
    report = env / "pip-report.json"
    run([str(python), "-m", "pip", "install", "-q", "-e", str(REPO), "--report", str(report)])
    import json

    installed = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    if [_name(n) for n in installed] != ["ray-rthpo"]:
        print(f"pip install -e . installed {installed}; it must install ray_rthpo alone (torch is present)")
        return 1
    probe = f"import importlib.util as u; print([m for m in {HARNESS!r} if u.find_spec(m) is not None])"
    leaked = subprocess.check_output([str(python), "-c", probe], text=True).strip()
    if leaked != "[]":
        print(f"the core env can import {leaked}, which the core install must not bring")
        return 1
    tests = [t for t in CORE_TESTS if (REPO / t).exists()]
    run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=REPO,
        env={**os.environ, "RTHPO_CORE_ENV": "1"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rthpo-core"))
