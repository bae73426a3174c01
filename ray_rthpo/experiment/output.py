"""The output folder of an experiment: refused when it already holds one (unless resuming the same
config), and where Ray keeps its checkpoints."""

from __future__ import annotations

from pathlib import Path

from ray_rthpo.errors import RTHPOError
from ray_rthpo.experiment.config import ExperimentConfig

#: Files whose presence means a folder already holds an experiment (never overwritten silently).
MARKERS = ("config.yaml", "summary.md", "trials.csv", "ray")
#: Sub-folder of the output holding each strategy's journal (``NAME.jsonl``, every reported epoch as it
#: arrives) and, once the strategy is over, ``NAME.done.json`` (its wall seconds and errors).
PROGRESS_DIR = "progress"


def check_output(out: Path, *, resume: bool = False, config_text: str | None = None) -> None:
    """Refuse ``out`` when it already holds an experiment, unless ``resume``; with ``resume`` it must hold
    one, whose ``config.yaml`` equals ``config_text`` (when given): resuming with other settings would mix
    two experiments in one table. Writes nothing."""
    held = [m for m in MARKERS if (out / m).exists()]
    if held and not resume:
        raise RTHPOError(f"output folder {str(out)!r} already holds an experiment ({', '.join(held)}); "
                         "continue it with --resume, or choose another --output (or delete that folder).")
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise RTHPOError(f"--resume: {str(saved)!r} does not exist, so {str(out)!r} holds no experiment to "
                             "resume; run without --resume to start it.")
        if config_text is not None and saved.read_text(encoding="utf-8") != config_text:
            raise RTHPOError(f"--resume: the experiment in {str(out)!r} was started with another config "
                             f"(see {str(saved)!r}); resume with the same config file and --set values, or "
                             "start afresh with another --output.")


def ray_storage(exp: ExperimentConfig, out: Path) -> str:
    """Where Ray Tune keeps checkpoints: ``<out>/ray``, or ``<storage_path>/<out folder name>`` (a URI such
    as ``s3://bucket/rthpo`` or a shared mount) so that runs sharing a storage_path do not mix."""
    if not exp.storage_path:
        return str((out / "ray").resolve())
    if "://" in exp.storage_path:
        return f"{exp.storage_path.rstrip('/')}/{out.resolve().name}"
    return str(Path(exp.storage_path).expanduser().resolve() / out.resolve().name)


__all__ = ["MARKERS", "PROGRESS_DIR", "check_output", "ray_storage"]
