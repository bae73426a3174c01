"""Datasets as uint8 tensors: load, split train/validation/test, normalize and augment on the device.

:func:`load_data` returns a :class:`DataBundle` of three :class:`Split` s that hold raw uint8 pixels
(N, C, H, W) on the CPU; the training loop moves them (or batches of them) to its device once and calls
:meth:`DataBundle.normalize` there, so no per-batch float conversion happens on the host.

* The validation split is always carved from the *training* set with the run's seed; the official test
  set is only used to report accuracy.
* ``digits`` (scikit-learn, always offline) has no official test set: a fixed, seed-independent
  stratified 20% is held out as test set.
* MNIST/Fashion-MNIST IDX files are read directly (gzipped or not), CIFAR-10 also from the JPEG
  archives in ``shared/data/cifar10-jpeg`` (decoded once, then cached as .npy in :func:`cache_dir`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ray_rthpo.config import DataConfig
from ray_rthpo.data import files as dio
from ray_rthpo.data.bundle import DataBundle, Split, split_indices
from ray_rthpo.errors import ConfigError, DataError

_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
_DIGITS_TEST_FRACTION = 0.2


def default_data_dir() -> Path:
    """Where datasets are looked for (and downloaded to) when ``data.data_dir`` is null:
    ``$RTHPO_DATA_DIR`` if set, else ``~/.cache/ray_rthpo/data``."""
    env = os.environ.get("RTHPO_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ray_rthpo" / "data"


def cache_dir() -> Path:
    """Where decoded arrays (e.g. CIFAR-10 JPEGs as .npy) are cached: ``$RTHPO_CACHE_DIR`` if set,
    else ``~/.cache/ray_rthpo/cache``."""
    env = os.environ.get("RTHPO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ray_rthpo" / "cache"


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Load ``cfg.name``, carve the validation split from the training set with ``seed``, then keep the
    first ``cfg.train_subset`` remaining training examples (if set; all of them if there are fewer), and
    the first ``cfg.val_subset`` validation examples (the split is already random) and a fixed random
    sample of ``cfg.test_subset`` test examples (the same for every seed).

    ``cfg.data_dir`` null means :func:`default_data_dir`; as a convenience for the project's offline
    machines, ``../shared/data`` and ``./shared/data`` (relative to the current directory) are tried next
    when the dataset is not there. An explicit ``data_dir`` is the only folder searched. The split is a
    seeded random permutation: ``round(val_fraction * N)`` examples go to validation; same seed, same split.
    ``mean``/``std`` are per channel over the final (scaled) training images, computed exactly.

    With ``cfg.factory`` set, the user's data factory supplies the splits instead
    (:func:`ray_rthpo.data.user.load_user_data`).
    """
    if seed < 0:
        raise ConfigError(f"the data split seed must be an integer >= 0, but got {seed!r}.")
    if cfg.factory is not None:  # the user's own data (ray_rthpo.data.user)
        from ray_rthpo.data.user import load_user_data

        return load_user_data(cfg, seed)
    raw, num_classes, scale = _load_raw(cfg)
    train_idx, val_idx = split_indices(len(raw.y_train), cfg.val_fraction, seed)
    if cfg.train_subset is not None:
        train_idx = train_idx[:cfg.train_subset]
    if cfg.val_subset is not None:
        val_idx = val_idx[:cfg.val_subset]
    test_idx = np.arange(len(raw.y_test))
    if cfg.test_subset is not None and cfg.test_subset < len(test_idx):
        # a fixed random sample (the same for every seed and run): test sets stored class by class
        # (ImageFolder, the CIFAR JPEG archives) would otherwise give a subset of one class
        test_idx = np.sort(np.random.default_rng(0).permutation(len(test_idx))[:cfg.test_subset])
    train = _take(raw.x_train, raw.y_train, train_idx)
    val = _take(raw.x_train, raw.y_train, val_idx)
    test = _take(raw.x_test, raw.y_test, test_idx)
    mean, std = _channel_stats(train.x, scale)
    c, h, w = train.x.shape[1:]
    return DataBundle(name=cfg.name, train=train, val=val, test=test, num_classes=num_classes,
                      input_shape=(int(c), int(h), int(w)), scale=scale, mean=mean, std=std)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + random horizontal flip of an NCHW batch (uint8 or float) on
    its own device. The random numbers are drawn on the generator's device (normally the CPU) and then
    moved, so the result depends only on the generator's state, not on the device of ``x``."""
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects an (N, C, H, W) batch, but got shape {tuple(x.shape)}.")
    n, _, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=generator.device).to(x.device)
    flips = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = shifts[:, :1] + torch.arange(h, device=x.device)  # (n, h)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + shifts[:, 1:]  # (n, w), crop then flip
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last


# ----------------------------------------------------------------------------------------- private
def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(y[idx].astype(np.int64)))


def _channel_stats(x: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of ``x / scale``, from a 256-bin histogram per channel
    (integer arithmetic: no float64 copy of the images, ~10x faster than summing)."""
    levels = np.arange(256, dtype=object)  # Python ints: exact sums of squares, no overflow
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).numpy().astype(object)
        s1, s2 = int((hist * levels).sum()), int((hist * levels * levels).sum())
        mean.append(s1 / count / scale)
        std.append(math.sqrt(s2 * count - s1 * s1) / count / scale or 1.0)  # a constant channel: std 1
    return tuple(mean), tuple(std)


def _load_raw(cfg: DataConfig) -> tuple[dio.Raw, int, float]:
    """(arrays, number of classes, scale) of ``cfg.name``, before the validation split."""
    if cfg.name == "digits":
        return _load_digits(), 10, 16.0
    if cfg.name == "fake":
        return _load_fake(cfg), cfg.fake_classes, 255.0
    name, num_classes = cfg.name, _NUM_CLASSES[cfg.name]
    roots = _roots(cfg.data_dir)
    for root in roots:
        if name in dio.IDX_FOLDERS:
            folder = dio.find_idx_dir(root, name)
            if folder is not None:
                return dio.load_idx(folder), num_classes, 255.0
        else:
            found = dio.find_image_source(root, name)
            if found is not None:
                return dio.load_images(*found, name, num_classes, cache_dir()), num_classes, 255.0
    if cfg.download:
        if name in dio.IDX_FOLDERS:
            return dio.load_idx(dio.download_idx(name, roots[0])), num_classes, 255.0
        return dio.load_cifar_pickle(name, roots[0], download=True), num_classes, 255.0
    raise DataError(_not_found_message(name, roots, cfg.data_dir is None))


def _roots(data_dir: str | None) -> list[Path]:
    """Folders to search: ``data_dir`` (resolved against the cwd), or the default folder followed by
    the offline copies ``../shared/data`` and ``./shared/data`` (a convenience for the project machines)."""
    if data_dir is not None:
        return [Path(data_dir).expanduser().resolve()]
    roots = [default_data_dir().resolve(), (Path.cwd() / ".." / "shared" / "data").resolve(),
             (Path.cwd() / "shared" / "data").resolve()]
    return list(dict.fromkeys(roots))


def _not_found_message(name: str, roots: list[Path], defaulted: bool) -> str:
    where = ", ".join(str(r) for r in roots)
    if name in dio.IDX_FOLDERS:
        expected = f"{dio.IDX_FOLDERS[name]}/raw/ with train-images-idx3-ubyte[.gz] and the 3 other IDX files"
        folder = f"{dio.IDX_FOLDERS[name]}/raw/*.gz"
    elif name == "cifar10":
        expected = ("train/<class>/*.jpg + test/, cifar10_train_jpg.tar.gz + cifar10_test_jpg.tar.gz "
                    "(also under cifar10-jpeg/), or cifar-10-batches-py/")
        folder = "cifar10-jpeg/*.tar.gz"
    else:
        expected = "cifar-100-python/ or train/<class>/ + test/<class>/ image folders"
        folder = "cifar-100-python/"
    hint = (" (offline tests use name: fake with fake_classes: 100, fake_shape: [3, 32, 32])"
            if name == "cifar100" else "")
    searched = "searched" if defaulted else "data.data_dir"
    return (f"{name} not found ({searched}: {where}); expected {expected}: set data.data_dir to a folder "
            f"with {folder}, or data.download: true (needs internet){hint}.")


def _load_digits() -> dio.Raw:
    """scikit-learn's 8x8 digits (values 0..16) with a fixed stratified 20% test split (random_state=0).

    Importing scikit-learn costs seconds in every new trial process (it pulls in scipy); so the split
    arrays are cached in :func:`cache_dir` the first time, keyed by the data file scikit-learn ships
    (found without importing it), and later processes read the cache."""
    import importlib.util
    import io

    from ray_rthpo.report.files import atomic_write_bytes

    spec = importlib.util.find_spec("sklearn")
    package = Path(next(iter(spec.submodule_search_locations or []), "")) if spec is not None else None
    source = package / "datasets" / "data" / "digits.csv.gz" if package is not None else None
    cached = None
    if source is not None and source.is_file():
        stamp = f"{source.stat().st_size}-{source.stat().st_mtime_ns}-{_DIGITS_TEST_FRACTION}"
        cached = cache_dir() / f"digits-{stamp}.npz"
        if cached.is_file():
            try:
                with np.load(cached) as arrays:
                    return dio.Raw(*(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")))
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt below
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.rint(digits.images).astype(np.uint8)[:, None]
    y = digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=_DIGITS_TEST_FRACTION, stratify=y,
                                   random_state=0)
    train, test = np.sort(train), np.sort(test)
    raw = dio.Raw(x[train], y[train], x[test], y[test])
    if cached is not None:
        buffer = io.BytesIO()
        np.savez(buffer, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test)
        try:
            atomic_write_bytes(cached, buffer.getvalue())
        except OSError:
            pass  # a read-only or full cache folder only costs the import next time
    return raw


def _load_fake(cfg: DataConfig) -> dio.Raw:
    """torchvision FakeData of ``cfg.fake_shape`` ((D,) is read as (1, 1, D)); the test images use the
    indices after the training ones, so the two sets differ. Independent of the seed."""
    shape = tuple(cfg.fake_shape) if len(cfg.fake_shape) == 3 else (1, 1, cfg.fake_shape[0])
    x_train, y_train = _fake_arrays(cfg.fake_train_size, shape, cfg.fake_classes, 0)
    x_test, y_test = _fake_arrays(cfg.fake_test_size, shape, cfg.fake_classes, cfg.fake_train_size)
    return dio.Raw(x_train, y_train, x_test, y_test)


def _fake_arrays(size: int, shape: tuple[int, ...], classes: int,
                 offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel for pixel ``FakeData(size, shape, classes, random_offset=offset)`` as uint8 arrays (the test
    suite checks this), without its PIL round trip (20-70x faster), for any number of channels, and with
    a private generator instead of reseeding torch's global one."""
    x, y = np.empty((size, *shape), dtype=np.uint8), np.empty(size, dtype=np.int64)
    for i in range(size):
        g = torch.Generator().manual_seed(i + offset)  # FakeData: torch.manual_seed(index + random_offset)
        x[i] = torch.randn(shape, generator=g).mul(255).byte().numpy()  # ToPILImage: pic.mul(255).byte()
        y[i] = int(torch.randint(0, classes, (1,), generator=g))
    return x, y
