"""The output folder of an experiment: refused when it already holds one (unless resuming the same
config) or cannot be written, and where Ray keeps its checkpoints (never a URI with credentials in it)."""

from __future__ import annotations

import os
from pathlib import Path

from ray_rthpo.errors import RTHPOError
from ray_rthpo.experiment.config import ExperimentConfig
from ray_rthpo.uris import redact_uri

#: Files whose presence means a folder already holds an experiment (never overwritten silently).
MARKERS = ("config.yaml", "summary.md", "trials.csv", "ray")
#: Sub-folder of the output holding each strategy's journal (``NAME.jsonl``, every reported epoch as it
#: arrives) and, once the strategy is over, ``NAME.done.json`` (its wall seconds and errors).
PROGRESS_DIR = "progress"


def check_storage_path(storage_path: str | None) -> None:
    """Refuse a ``storage_path`` that carries credentials (``s3://KEY:SECRET@bucket``, ``?secret_key=...``, an
    AWS key id): Ray would keep it in its experiment state and logs, and config.yaml, summary.md and the
    progress lines would show it. The error shows the URI redacted."""
    if not storage_path or redact_uri(storage_path) == storage_path:
        return
    raise RTHPOError(
        f"storage_path {redact_uri(storage_path)!r} holds credentials (shown as ***); they would be "
        "written to config.yaml, Ray's experiment state and the logs. Give the URI without them "
        "(e.g. s3://MY-BUCKET/rthpo) and grant access another way: the nodes' instance profile / IAM role "
        "(configs/cluster/aws-gpu.yaml), or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment of "
        "every node.")


def check_writable(out: Path) -> None:
    """Refuse an output folder that cannot be created or written (a read-only file system, a folder this
    user may not write, a file in the way), before anything runs. Writes nothing."""
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RTHPOError(f"output folder {str(out)!r} cannot be created: {str(existing)!r} is a file, not a "
                         "folder; choose another --output.")
    read_only = bool(os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1))
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        raise RTHPOError(f"output folder {str(out)!r} cannot be written: {str(existing)!r} {why}; choose a "
                         "writable --output (e.g. under your home folder).")


def check_output(out: Path, *, resume: bool = False, config_text: str | None = None) -> None:
    """Refuse ``out`` when it already holds an experiment, unless ``resume``; with ``resume`` it must hold
    one, whose ``config.yaml`` equals ``config_text`` (when given): resuming with other settings would mix
    two experiments in one table. Refuse it too when it cannot be written. Writes nothing."""
    check_writable(out)
    held = [m for m in MARKERS if (out / m).exists()]
    if held and not resume:
        raise RTHPOError(f"output folder {str(out)!r} already holds an experiment ({', '.join(held)}); "
                         "continue it with --resume, or choose another --output (or delete that folder).")
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise RTHPOError(f"--resume: {str(saved)!r} does not exist, so {str(out)!r} holds no "
                             "experiment to resume; run without --resume to start it.")
        if config_text is not None and saved.read_text(encoding="utf-8") != config_text:
            raise RTHPOError(f"--resume: the experiment in {str(out)!r} was started with another config "
                             f"(see {str(saved)!r}); resume with the same config file and --set values, or "
                             "start afresh with another --output.")


def ray_storage(exp: ExperimentConfig, out: Path) -> str:
    """Where Ray Tune keeps checkpoints: ``<out>/ray``, or ``<storage_path>/<out folder name>`` (a URI such
    as ``s3://bucket/rthpo`` or a shared mount) so that runs sharing a storage_path do not mix. A
    storage_path with credentials in it is refused (:func:`check_storage_path`)."""
    check_storage_path(exp.storage_path)
    if not exp.storage_path:
        return str((out / "ray").resolve())
    if "://" in exp.storage_path:
        return f"{exp.storage_path.rstrip('/')}/{out.resolve().name}"
    return str(Path(exp.storage_path).expanduser().resolve() / out.resolve().name)


__all__ = ["MARKERS", "PROGRESS_DIR", "check_output", "check_storage_path", "check_writable", "redact_uri",
           "ray_storage"]
