"""Where trials find their data: paths made absolute in the driver, and a missing dataset caught early.

Ray runs each trial in its own folder, possibly on another machine, so a relative ``data.data_dir``
(``../shared/data``) means nothing there. :func:`resolve_data_dir` resolves it where the user ran the
command; :func:`check_data` fails before Ray starts when a local dataset is missing.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ray_rthpo.config import Config
from ray_rthpo.data import files as dio
from ray_rthpo.data.datasets import default_data_dir
from ray_rthpo.errors import DataError

FILELESS = ("digits", "fake")


def _holds(root: Path, name: str) -> bool:
    """True when ``root`` holds dataset ``name`` in a layout the data module reads."""
    found = dio.find_idx_dir(root, name) if name in dio.IDX_FOLDERS else dio.find_image_source(root, name)
    return found is not None


def resolve_data_dir(config: Config, cwd: Path | None = None) -> Config:
    """``config`` with ``data.data_dir`` made absolute, so trials find the data whatever their directory.

    Ray runs trials in their own folders (and on other machines): a relative path is resolved here,
    against ``cwd`` (default: the current directory), where the user ran the command. A null data_dir
    for a file-based dataset becomes the first folder among the data module's defaults that holds it.
    """
    cwd = (cwd or Path.cwd()).resolve()
    data_dir = config.data.data_dir
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        return config.replace(**{"data.data_dir": str(path if path.is_absolute()
                                                      else (cwd / path).resolve())})
    if config.data.name in FILELESS:
        return config
    roots = [default_data_dir(), cwd / ".." / "shared" / "data", cwd / "shared" / "data"]
    for root in (r.resolve() for r in roots):
        if _holds(root, config.data.name):
            return config.replace(**{"data.data_dir": str(root)})
    return config.replace(**{"data.data_dir": str(roots[0].resolve())})


def check_data(config: Config) -> None:
    """Fail before Ray starts when a file-based dataset is not in ``data.data_dir`` (and no download)."""
    if config.data.name in FILELESS or config.data.download or config.data.data_dir is None:
        return
    root, name = Path(config.data.data_dir), config.data.name
    if name != "cifar100" and not _holds(root, name):  # cifar100 is read by torchvision: not checked here
        raise DataError(f"{name} not found in data.data_dir {str(root)!r}; point --set "
                        "data.data_dir=... at the folder that holds it, or --set data.download=true "
                        "with internet.")
    if name in dio.IDX_FOLDERS:  # small enough to read here: a truncated file fails now, not in every trial
        folder = dio.find_idx_dir(root, name)
        if folder is not None:
            _check_idx(folder, tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())))


@functools.lru_cache(maxsize=8)
def _check_idx(folder: Path, stamp: tuple[tuple[str, int], ...]) -> None:
    """Read and validate the four IDX files of ``folder`` once per content stamp (raises DataError)."""
    dio.load_idx(folder)


__all__ = ["resolve_data_dir", "check_data"]
