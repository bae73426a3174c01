"""Private readers behind :func:`ray_rthpo.data.load_data`: IDX files, CIFAR JPEG archives/folders,
torchvision's pickle layouts, and the on-disk cache of decoded arrays.

Every reader returns :class:`Raw` (uint8 NCHW arrays and int64 labels) or ``None`` when the dataset is
simply not in the folder; anything present but unreadable raises a one-line :class:`DataError`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ray_rthpo.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = "v1"


@dataclass(frozen=True)
class Raw:
    """A dataset before the validation split: uint8 (N, C, H, W) images and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ----------------------------------------------------------------------------------------------- IDX
def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one uint8 IDX file (gzipped or not), checking its magic number and its size."""
    fix = "delete it and download it again (data.download: true), or replace it with a good copy"
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is truncated or corrupt ({err}); {fix}.") from None
    head = 4 + 4 * ndim
    if len(data) < head or data[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataError(f"{path} is not a uint8 IDX file with {ndim} dimension(s) "
                        f"(bad magic number {data[:4].hex()}); {fix}.")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) != head + int(np.prod(dims)):
        raise DataError(f"{path} has {len(data)} bytes but its header {list(dims)} says "
                        f"{head + int(np.prod(dims))}; the file is truncated or corrupt: {fix}.")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)


def find_idx_dir(root: Path, name: str) -> Path | None:
    """The folder holding the four IDX files of ``name`` under ``root`` (``root/MNIST/raw``, or ``root`` is
    the ``MNIST`` folder, or ``root`` is the ``raw`` folder itself); None if none holds all four."""
    folder = IDX_FOLDERS[name]
    others = set(IDX_FOLDERS.values()) - {folder}
    for cand in (root / folder / "raw", root / "raw", root):
        # Do not mistake an MNIST folder given directly for Fashion-MNIST (or the other way round).
        if cand != root / folder / "raw" and ({cand.name, cand.parent.name} & others):
            continue
        if all(_idx_file(cand, base) is not None for base in IDX_FILES):
            return cand
    return None


def _idx_file(folder: Path, base: str) -> Path | None:
    for path in (folder / base, folder / f"{base}.gz"):  # the uncompressed file is faster to read
        if path.is_file():
            return path
    return None


def load_idx(folder: Path) -> Raw:
    """Read MNIST-style train/test IDX files from ``folder`` into a :class:`Raw` (images get C=1)."""
    arrays = [read_idx(_idx_file(folder, base), 3 if "images" in base else 1) for base in IDX_FILES]  # type: ignore[arg-type]
    x_train, y_train, x_test, y_test = arrays
    for x, y, base in ((x_train, y_train, IDX_FILES[0]), (x_test, y_test, IDX_FILES[2])):
        if len(x) != len(y) or (len(y) and int(y.max()) > 9):
            raise DataError(f"{folder / base}: {len(x)} images but {len(y)} labels "
                            f"(max {int(y.max(initial=0))}); the files do not belong together: replace them "
                            "with a matching set.")
    return Raw(x_train[:, None].copy(), y_train.astype(np.int64), x_test[:, None].copy(),
               y_test.astype(np.int64))


def download_idx(name: str, root: Path) -> Path:
    """Download MNIST/Fashion-MNIST with torchvision into ``root``; return the folder of IDX files."""
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    for train in (True, False):
        _torchvision(lambda t=train: cls(root=str(root), train=t, download=True), name, root)
    return root / IDX_FOLDERS[name] / "raw"


# ------------------------------------------------------------------------------------------ CIFAR
def find_image_source(root: Path, name: str) -> tuple[str, Path] | None:
    """Where CIFAR-style images of ``name`` live under ``root``, in order of preference:
    ``("folder", dir)`` with ``dir/train/<class>/*``, ``("archive", dir)`` with the two tar.gz files, or
    ``("pickle", root)`` with torchvision's python layout; None when nothing is there."""
    for base in (root, root / f"{name}-jpeg"):
        if (base / "train").is_dir() and (base / "test").is_dir():
            return "folder", base
    for base in (root, root / f"{name}-jpeg"):
        if all((base / f"{name}_{split}_jpg.tar.gz").is_file() for split in ("train", "test")):
            return "archive", base
    pickle_dir = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    if (root / pickle_dir).is_dir():
        return "pickle", root
    return None


def load_images(kind: str, base: Path, name: str, num_classes: int, cache: Path) -> Raw:
    """Load the images found by :func:`find_image_source` (decoded JPEGs are cached under ``cache``)."""
    if kind == "pickle":
        return load_cifar_pickle(name, base, download=False)
    parts = []
    for split in ("train", "test"):
        src = base / split if kind == "folder" else base / f"{name}_{split}_jpg.tar.gz"
        x, y, classes = _cached(src, cache, f"{name}-{split}", lambda s=src: _decode_source(kind, s))
        if len(classes) != num_classes:
            raise DataError(f"{src} holds {len(classes)} class folders, but {name} has {num_classes}; "
                            "set data.data_dir to the right dataset folder.")
        if name == "cifar10" and tuple(classes) != CIFAR10_CLASSES:
            raise DataError(f"{src} has class folders {list(classes)}, not CIFAR-10's "
                            f"{list(CIFAR10_CLASSES)}; rename the folders or point data.data_dir elsewhere.")
        parts += [x, y]
    return Raw(*parts)


def load_cifar_pickle(name: str, root: Path, download: bool) -> Raw:
    """CIFAR-10/100 from torchvision's python-pickle layout under ``root`` (downloading if asked)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    out = []
    for train in (True, False):
        ds = _torchvision(lambda t=train: cls(root=str(root), train=t, download=download), name, root)
        out += [np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)]
    return Raw(*out)


def _torchvision(make: Callable[[], Any], name: str, root: Path) -> Any:
    try:
        return make()
    except Exception as err:  # torchvision raises RuntimeError, URLError, ... for missing/corrupt data
        msg = " ".join(str(err).split())
        raise DataError(f"torchvision could not load or download {name} into {root} ({msg}); check "
                        "the internet connection, or set data.data_dir to a folder that already "
                        f"holds {name}.") from None


def _decode_source(kind: str, src: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image of an ImageFolder tree or of a tar.gz archive, sorted by (class, file name)."""
    items: list[tuple[str, str, bytes]] = []
    if kind == "folder":
        for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
            items += [(cls_dir.name, f.name, f.read_bytes()) for f in sorted(cls_dir.iterdir())
                      if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        try:
            with tarfile.open(src, "r|gz") as tar:
                for member in tar:
                    path = PurePosixPath(member.name)
                    if member.isfile() and path.suffix.lower() in IMAGE_SUFFIXES:
                        items.append((path.parent.name, path.name, tar.extractfile(member).read()))  # type: ignore[union-attr]
        except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
            raise DataError(f"{src} is truncated or corrupt ({err}); replace it with a good copy.") from None
    if not items:
        raise DataError(f"{src} holds no .jpg/.jpeg/.png images in <class>/ folders; point data.data_dir "
                        "elsewhere.")
    items.sort(key=lambda it: it[:2])
    classes = sorted({c for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    x = _decode_all([b for _, _, b in items], [f"{src}:{c}/{n}" for c, n, _ in items])
    return x, np.array([index[c] for c, _, _ in items], dtype=np.int64), classes


def _decode_all(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """Decode encoded images to a uint8 (N, 3, H, W) array: torchvision's batched JPEG decoder (about 3x
    faster than PIL for 32x32 images, identical pixels), PIL for anything it refuses (PNG, odd JPEGs)."""
    import torch

    try:  # deprecated in torchvision 0.29 (moving to TorchCodec): PIL does the work once it is gone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        decode_jpeg = None

    out: list[np.ndarray] = []
    step = 4096
    for start in range(0, len(blobs), step):
        chunk = blobs[start:start + step]
        try:
            if decode_jpeg is None:
                raise ImportError("torchvision.io.decode_jpeg is not available")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in chunk]
                out += [t.numpy() for t in decode_jpeg(tensors, mode=ImageReadMode.RGB)]
        except Exception:  # fall back image by image, with a precise error
            out += [_decode_pil(b, n) for b, n in zip(chunk, names[start:start + step], strict=True)]
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise DataError(f"images under {names[0].rsplit(':', 1)[0]} have different sizes "
                        f"{sorted(shapes)[:3]}; resize them all to one size first.")
    return np.stack(out)


def _decode_pil(blob: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    except Exception as err:
        raise DataError(f"cannot decode image {name} ({err}); delete or replace that file.") from None


# ------------------------------------------------------------------------------------------ cache
def _fingerprint(src: Path) -> str:
    """Key of a source: resolved path + size + mtime (for a folder: file count, total size, newest mtime)."""
    src = src.resolve()
    if src.is_dir():
        stats = [f.stat() for f in _walk_files(src)]
        sig = f"{len(stats)}|{sum(s.st_size for s in stats)}|{max((s.st_mtime_ns for s in stats), default=0)}"
    else:
        st = src.stat()
        sig = f"{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(f"{_CACHE_VERSION}|{src}|{sig}".encode()).hexdigest()[:16]


def _walk_files(folder: Path) -> Iterable[Path]:
    for dirpath, _, files in os.walk(folder):
        yield from (Path(dirpath) / f for f in files)


def _cached(src: Path, cache: Path, stem: str,
            make: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]],
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return ``make()``, stored as ``<stem>-<key>-{x,y,classes}.npy`` in ``cache``; later calls with an
    unchanged source read the .npy files instead. Writes are atomic (tmp file + os.replace); a cache that
    cannot be written or read is skipped with a warning, never fatal."""
    key = _fingerprint(src)
    paths = [cache / f"{stem}-{key}-{part}.npy" for part in ("x", "y", "classes")]
    if all(p.is_file() for p in paths):
        try:
            x, y, classes = (np.load(p, allow_pickle=False) for p in paths)
            if len(x) == len(y):
                return x, y, [str(c) for c in classes]
        except (OSError, ValueError) as err:
            warnings.warn(f"ignoring unreadable cache {paths[0]} ({err}); decoding {src} again.",
                          stacklevel=3)
    x, y, classes = make()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for path, arr in zip(paths, (x, y, np.array(classes, dtype=str)), strict=True):
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not write the decoded-image cache in {cache} ({err}); set RTHPO_CACHE_DIR "
                      "to a writable folder to make the next load fast.", stacklevel=3)
    return x, y, classes
