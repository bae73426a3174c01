"""Trial checkpoints that a killed driver can always resume from, and a check of the ones it will resume from.

**Retention.** Ray deletes a trial's older checkpoints the moment a newer one is registered
(``CheckpointConfig(num_to_keep=...)``), but it saves its experiment state (which names each trial's
checkpoint) only every few seconds. A driver killed in between leaves a state that names a checkpoint Ray
has already deleted, and ``Tuner.restore`` then fails that trial ("does not exist on storage anymore").
:func:`retention_callback` deletes instead, with Ray's own deletion turned off (``num_to_keep=None``): a
trial's last ``keep_last`` checkpoints are kept, and so is every checkpoint named by either of the last two
experiment-state snapshots (the newest one may be half-written when the driver dies)::

    tune.RunConfig(callbacks=[retention_callback(keep_last=1)],
                   checkpoint_config=tune.CheckpointConfig(num_to_keep=None))

**Checking before a resume.** :func:`restorable_checkpoints` reads, from the newest experiment-state
snapshot, the checkpoint folder each unfinished trial will be restored from, and
:func:`check_trial_checkpoints` refuses a truncated or corrupt one with the fix. Both read Ray's
experiment-state file (``experiment_state-*.json``, Ray 2.60's layout) and find nothing when it differs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from ray_rthpo.errors import RTHPOError
from ray_rthpo.tune.trainable import CHECKPOINT_FILE


def retention_callback(keep_last: int = 1) -> Any:
    """A Tune callback that deletes a trial's checkpoints older than its last ``keep_last``, except those the
    last two experiment-state snapshots name (see the module doc). Use with ``num_to_keep=None``."""
    from ray import tune

    class CheckpointRetention(tune.Callback):
        def __init__(self) -> None:
            self.kept: dict[str, list[Any]] = {}  # trial id -> its checkpoints not deleted yet, oldest first
            self.snapshots: list[set[str]] = []  # paths the last two snapshots name

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                          **info: Any) -> None:
            # a trial restored from an experiment snapshot starts with that snapshot's checkpoint
            kept = self.kept.setdefault(trial.trial_id, [trial.checkpoint] if trial.checkpoint else [])
            kept.append(checkpoint)
            self._prune(trial.trial_id)

        def get_state(self) -> None:
            # Tune calls this right after it wrote its experiment state: what that state names is kept
            named = {kept[-1].path for kept in self.kept.values() if kept}
            self.snapshots = [*self.snapshots[-1:], named]
            for trial_id in list(self.kept):
                self._prune(trial_id)
            return None

        def _prune(self, trial_id: str) -> None:
            kept = self.kept[trial_id]
            protected = set().union(*self.snapshots)
            survivors = []
            for index, checkpoint in enumerate(kept):
                if index >= len(kept) - keep_last or checkpoint.path in protected:
                    survivors.append(checkpoint)
                    continue
                try:
                    checkpoint.filesystem.delete_dir(checkpoint.path)
                except (FileNotFoundError, OSError):
                    pass  # already gone (a trial that re-reported the same index)
            self.kept[trial_id] = survivors

    return CheckpointRetention()


def _decoded(part: Any) -> Any:
    return json.loads(part) if isinstance(part, str) else part


def snapshot_trials(experiment: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(trial, run metadata) of every trial in the newest experiment-state snapshot of the Tune experiment
    folder ``experiment`` (Ray 2.60's layout); empty when there is none or it cannot be read (being
    written)."""
    states = sorted(Path(experiment).glob("experiment_state-*.json"))  # named by start time, as Ray picks
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text(encoding="utf-8"))
        return [(_decoded(trial), _decoded(metadata)) for trial, metadata in data["trial_data"]]
    except (ValueError, KeyError, IndexError, TypeError, OSError):
        return []


def restorable_checkpoints(experiment: Path) -> dict[str, Path]:
    """trial id -> the checkpoint folder ``Tuner.restore`` will continue that trial from, for every trial of
    the Tune experiment folder ``experiment`` that its newest snapshot records as not finished. Empty when
    there is no snapshot or it cannot be read (Ray then reports any problem itself)."""
    found: dict[str, Path] = {}
    try:
        for trial, metadata in snapshot_trials(experiment):
            name = (metadata.get("last_result") or {}).get("checkpoint_dir_name")
            if trial.get("status") == "TERMINATED" or not name:
                continue
            for folder in Path(experiment).glob(f"*_{trial['trial_id']}_*"):
                found[str(trial["trial_id"])] = folder / name
    except (KeyError, TypeError, AttributeError, OSError):
        return {}
    return found


def check_trial_checkpoints(experiment: Path) -> None:
    """Refuse (RTHPOError, with the fix) a checkpoint that ``Tuner.restore`` would continue a trial from
    (:func:`restorable_checkpoints`) when its ``trainer.pt`` is truncated or corrupt: a zip whose every record
    passes its CRC check. The fix: delete that file (not its folder), and the trial starts again from its
    first epoch."""
    for trial_id, folder in sorted(restorable_checkpoints(experiment).items()):
        file = folder / CHECKPOINT_FILE
        if not folder.is_dir() or not file.exists():
            continue  # Ray reports a missing folder itself; a missing file means: start that trial again
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            why = f"record {bad!r} fails its CRC check" if bad else None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            why = f"{type(err).__name__}: {err}"
        if why:
            raise RTHPOError(f"--resume: Ray trial checkpoint {str(file)!r} (trial {trial_id}) is truncated "
                             f"or corrupt ({why}); replace it with an intact copy, or delete that file "
                             "(keep its folder) and run the same command again: the trial then starts again "
                             "from its first epoch (the epochs it reported are kept, each counted once).")


__all__ = ["retention_callback", "snapshot_trials", "restorable_checkpoints", "check_trial_checkpoints"]
