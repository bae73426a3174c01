"""Next-character prediction on the Python standard library's own source, offline on every machine.

:func:`load` is a data factory (``data.factory: char_lm_demo.data:load``): ``load(seed=..., **factory_args)``
returns ``{"train", "val", "test", "num_classes"}``, each split an ``(x, y)`` pair: ``x`` (N, context) uint8
character ids (the model casts them to int64), ``y`` (N,) int64, the id of the character that follows.

* Text: the ``*.py`` files directly in ``sysconfig.get_paths()["stdlib"]`` (not its packages), sorted by name,
  read as UTF-8. The corpus is the interpreter's: the same on every machine with the same Python version.
* Vocabulary: ``string.printable`` (100 characters: digits, letters, punctuation, whitespace) in its order,
  then one id for every other character: 101 classes.
* Splits by file, so no text is shared: a file goes to test when ``crc32(name) % 10 == 0``, to validation
  when it is 1, else to training (:func:`split_files`); a file's split does not depend on which other files
  exist. Each split's examples are windows drawn without replacement, inside one file, at positions a fixed
  generator chooses (the same for every ``seed``: the data do not change between a suite's seeds).
"""

from __future__ import annotations

import string
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import torch

#: The characters with their own id (``string.printable``); every other character is :data:`OTHER`.
VOCAB = string.printable
OTHER = len(VOCAB)
NUM_CLASSES = len(VOCAB) + 1
SPLITS = ("train", "val", "test")
#: crc32(file name) % 10 -> split: 0 test, 1 validation, 2..9 training.
_BUCKETS = {0: "test", 1: "val"}
_TABLE = np.full(128, OTHER, dtype=np.uint8)
_TABLE[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB), dtype=np.uint8)


def stdlib_root() -> Path:
    """The folder of the standard library's source (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: str | Path | None = None) -> list[Path]:
    """The corpus: the ``*.py`` files directly in ``root`` (default :func:`stdlib_root`), sorted by name."""
    folder = Path(root) if root is not None else stdlib_root()
    files = sorted(p for p in folder.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.py files in {folder}; pass root= a folder of Python sources")
    return files


def split_of(name: str) -> str:
    """The split of the file called ``name``: test, val or train, by ``crc32(name) % 10``."""
    return _BUCKETS.get(zlib.crc32(name.encode()) % 10, "train")


def split_files(root: str | Path | None = None) -> dict[str, list[Path]]:
    """``{"train", "val", "test"}``: the corpus's files of each split (disjoint, each sorted by name)."""
    out: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for path in source_files(root):
        out[split_of(path.name)].append(path)
    return out


def encode(text: str) -> np.ndarray:
    """Character ids (uint8) of ``text``: its index in :data:`VOCAB`, or :data:`OTHER`."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _TABLE[np.minimum(codes, 127)] if codes.size else np.zeros(0, dtype=np.uint8)


def decode(ids: np.ndarray | torch.Tensor) -> str:
    """The text of ``ids`` (:data:`OTHER` shown as U+FFFD), for looking at examples."""
    return "".join(VOCAB[i] if i < OTHER else "\ufffd" for i in np.asarray(ids).tolist())


def windows(files: list[Path], size: int, context: int, rng: np.random.Generator) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """``size`` examples (x: the ``context`` characters before a position, y: the character there), drawn
    without replacement from the positions of ``files`` that have a full window inside their file."""
    texts = [encode(p.read_text(encoding="utf-8", errors="replace")) for p in files]
    stream = np.concatenate(texts) if texts else np.zeros(0, dtype=np.uint8)
    starts = np.cumsum([0] + [len(t) for t in texts])
    targets = np.concatenate([np.arange(a + context, b) for a, b in zip(starts[:-1], starts[1:], strict=True)
                              if b - a > context] or [np.zeros(0, dtype=np.int64)])
    if size > len(targets):
        raise ValueError(f"asked for {size} windows of {context} characters, but {len(files)} files hold "
                         f"only {len(targets)}; ask for fewer")
    chosen = np.sort(rng.choice(len(targets), size=size, replace=False))
    t = targets[chosen]
    x = stream[t[:, None] - context + np.arange(context)]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(stream[t].astype(np.int64))


def load(seed: int = 0, *, context: int = 64, train_size: int = 25_600, val_size: int = 4_096,
         test_size: int = 4_096, root: str | None = None) -> dict[str, object]:
    """The data factory: train, validation and test windows from disjoint files, and ``num_classes``.

    ``seed`` is accepted as the factory contract asks but not used: the windows are drawn with a fixed
    generator per split, so every seed of a comparison trains and validates on the same examples."""
    del seed  # the data are the same for every seed (the Trainer's seed varies the model and the order)
    files = split_files(root)
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    out: dict[str, object] = {name: windows(files[name], sizes[name], context, np.random.default_rng(i))
                              for i, name in enumerate(SPLITS)}
    out["num_classes"] = NUM_CLASSES
    return out
