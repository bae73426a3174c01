"""Tests of ray_rthpo.data: loading, the train/val/test splits, normalization and augmentation.

MNIST and CIFAR-10 come from the offline copies in ``../shared/data`` (relative to the repo root); the
tests that need them are skipped when that folder is absent.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_rthpo.config import DataConfig
from ray_rthpo.data import DataBundle, Split, augment_batch, cache_dir, default_data_dir, load_data
from ray_rthpo.data import files as dio
from ray_rthpo.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_RAW = SHARED / "MNIST" / "raw"
CIFAR_JPEG = SHARED / "cifar10-jpeg"
needs_mnist = pytest.mark.skipif(not (MNIST_RAW / "train-images-idx3-ubyte.gz").is_file(),
                                 reason=f"offline MNIST copy not found at {MNIST_RAW}")


@pytest.fixture(autouse=True)
def _tmp_cache(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the home cache clean, except for the slow CIFAR test (a warm cache speeds later runs)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("RTHPO_CACHE_DIR", str(tmp_path / "cache"))


def _rows(split: Split) -> Counter:
    return Counter(bytes(row) for row in split.x.reshape(len(split), -1).numpy())


# ------------------------------------------------------------------------------------------ digits
def test_digits_shapes_and_partition() -> None:
    from sklearn.datasets import load_digits

    b = load_data(DataConfig(name="digits", val_fraction=0.1), seed=0)
    assert isinstance(b, DataBundle) and b.name == "digits"
    assert (b.num_classes, b.input_shape, b.scale) == (10, (1, 8, 8), 16.0)
    assert len(b.test) == 360 and len(b.train) + len(b.val) == 1797 - 360
    assert len(b.val) == round(0.1 * 1437)
    for split in (b.train, b.val, b.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.shape[0] == split.y.shape[0] == len(split)
        assert int(split.x.max()) <= 16 and set(split.y.tolist()) <= set(range(10))
    assert set(b.test.y.tolist()) == set(range(10))  # stratified test split
    # train, val and test partition the 1797 images (as a multiset: digits has duplicate images).
    every = Counter(bytes(row) for row in np.rint(load_digits().images).astype(np.uint8).reshape(1797, -1))
    assert _rows(b.train) + _rows(b.val) + _rows(b.test) == every


def test_digits_split_depends_on_seed_only() -> None:
    cfg = DataConfig(name="digits")
    a, a2, c = load_data(cfg, seed=0), load_data(cfg, seed=0), load_data(cfg, seed=1)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).x, getattr(a2, name).x)
        assert torch.equal(getattr(a, name).y, getattr(a2, name).y)
    assert not torch.equal(a.val.x, c.val.x)
    assert _rows(a.val) != _rows(c.val)
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)  # test set: seed-independent
    assert _rows(a.train) + _rows(a.val) == _rows(c.train) + _rows(c.val)


def test_train_subset_keeps_first_examples() -> None:
    full = load_data(DataConfig(name="digits"), seed=3)
    sub = load_data(DataConfig(name="digits", train_subset=100), seed=3)
    assert len(sub.train) == 100 and torch.equal(sub.train.x, full.train.x[:100])
    assert torch.equal(sub.val.x, full.val.x)


def test_val_and_test_subsets_keep_first_examples() -> None:
    full = load_data(DataConfig(name="digits"), seed=3)
    sub = load_data(DataConfig(name="digits", val_subset=50, test_subset=70), seed=3)
    assert torch.equal(sub.val.x, full.val.x[:50]) and torch.equal(sub.val.y, full.val.y[:50])
    assert len(sub.test) == 70 and torch.equal(sub.train.x, full.train.x)
    rows = {tuple(r) for r in full.test.x.reshape(len(full.test), -1).tolist()}
    assert all(tuple(r) in rows for r in sub.test.x.reshape(70, -1).tolist())  # a sample of the test set
    again = load_data(DataConfig(name="digits", test_subset=70), seed=9)
    assert torch.equal(again.test.x, sub.test.x)  # the same sample whatever the seed
    # not the first 70: a test set stored class by class would give a one-class subset
    assert not torch.equal(sub.test.y, full.test.y[:70]) and len(set(sub.test.y.tolist())) == 10
    assert sub.mean == full.mean and sub.std == full.std  # normalisation comes from the training images only
    with pytest.raises(ConfigError, match=r"data\.val_subset must be null or an integer >= 1, but got 0"):
        DataConfig(name="digits", val_subset=0)


def test_normalize_digits() -> None:
    b = load_data(DataConfig(name="digits"), seed=0)
    z = b.normalize(b.train.x, torch.float64)
    assert z.dtype == torch.float64 and z.shape == b.train.x.shape
    assert abs(z.mean().item()) < 1e-9 and abs(z.std(unbiased=False).item() - 1.0) < 1e-9
    z32 = b.normalize(b.train.x)
    assert z32.dtype == torch.float32 and torch.allclose(z32.double(), z, atol=1e-5)
    assert torch.allclose(b.normalize(b.train.x[0]), z32[0])  # a single (C, H, W) image
    expected = (b.train.x[:5].double() / 16.0 - b.mean[0]) / b.std[0]
    assert torch.allclose(b.normalize(b.train.x[:5], torch.float64), expected)


# ------------------------------------------------------------------------------------------- MNIST
@pytest.fixture(scope="module")
def mnist() -> DataBundle:
    if not (MNIST_RAW / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"offline MNIST copy not found at {MNIST_RAW}")
    return load_data(DataConfig(name="mnist", data_dir=str(SHARED), val_fraction=0.1), seed=0)


def test_mnist_from_shared(mnist: DataBundle) -> None:
    assert len(mnist.train) + len(mnist.val) == 60000 and len(mnist.test) == 10000
    assert len(mnist.val) == 6000
    assert (mnist.num_classes, mnist.input_shape, mnist.scale) == (10, (1, 28, 28), 255.0)
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.x.dtype == torch.uint8 and set(split.y.unique().tolist()) == set(range(10))
    assert abs(mnist.mean[0] - 0.1307) < 0.001 and abs(mnist.std[0] - 0.3081) < 0.001
    assert mnist.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the canonical MNIST test set


@needs_mnist
def test_mnist_uncompressed_copy_loads_identically(mnist: DataBundle, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in MNIST_RAW.glob("*.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    b = load_data(DataConfig(name="mnist", data_dir=str(tmp_path / "MNIST"), val_fraction=0.1), seed=0)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(b, name).x, getattr(mnist, name).x)
        assert torch.equal(getattr(b, name).y, getattr(mnist, name).y)


@needs_mnist
def test_idx_folder_forms() -> None:
    assert dio.find_idx_dir(SHARED, "mnist") == MNIST_RAW
    assert dio.find_idx_dir(SHARED / "MNIST", "mnist") == MNIST_RAW
    assert dio.find_idx_dir(MNIST_RAW, "mnist") == MNIST_RAW
    assert dio.find_idx_dir(MNIST_RAW, "fashion_mnist") is None  # never mistake MNIST for Fashion-MNIST
    assert dio.find_idx_dir(SHARED, "fashion_mnist") is None


def _raw_copy(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in MNIST_RAW.glob("*.gz"):
        (raw / gz.name).symlink_to(gz)
    return raw


@needs_mnist
def test_truncated_gz_raises_data_error(tmp_path: Path) -> None:
    raw = _raw_copy(tmp_path)
    data = (MNIST_RAW / "train-images-idx3-ubyte.gz").read_bytes()
    (raw / "train-images-idx3-ubyte.gz").unlink()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz") as info:
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path)), seed=0)
    msg = str(info.value)
    assert "\n" not in msg and "truncated" in msg and "replace" in msg and "download" in msg


@needs_mnist
def test_wrong_size_idx_raises_data_error(tmp_path: Path) -> None:
    raw = _raw_copy(tmp_path)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    header = bytes((0, 0, 8, 1)) + (10000).to_bytes(4, "big")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(header + bytes(100))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*truncated"):
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path)), seed=0)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(100))
    with pytest.raises(DataError, match="magic"):
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path)), seed=0)


def test_missing_folder_raises_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        with pytest.raises(DataError) as info:
            load_data(DataConfig(name=name, data_dir=str(missing), download=False), seed=0)
        msg = str(info.value)
        assert str(missing) in msg and "data.data_dir" in msg and "data.download" in msg and "\n" not in msg
        assert not missing.exists()


def test_default_dirs_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTHPO_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RTHPO_CACHE_DIR", str(tmp_path / "c"))
    assert default_data_dir() == tmp_path / "d" and cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RTHPO_DATA_DIR")
    monkeypatch.delenv("RTHPO_CACHE_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "ray_rthpo" / "data"
    assert cache_dir() == Path.home() / ".cache" / "ray_rthpo" / "cache"


# -------------------------------------------------------------------------------------------- fake
def test_fake_cifar100_shape_and_determinism() -> None:
    cfg = DataConfig(name="fake", fake_shape=(3, 32, 32), fake_classes=100, fake_train_size=512,
                     fake_test_size=128)
    a, a2, c = load_data(cfg, seed=0), load_data(cfg, seed=0), load_data(cfg, seed=1)
    assert (a.num_classes, a.input_shape, a.scale) == (100, (3, 32, 32), 255.0)
    assert (len(a.train), len(a.val), len(a.test)) == (461, 51, 128)
    assert a.train.x.dtype == torch.uint8 and int(a.train.y.max()) < 100
    assert torch.equal(a.train.x, a2.train.x) and torch.equal(a.val.y, a2.val.y)
    assert torch.equal(a.test.x, c.test.x) and not torch.equal(a.val.x, c.val.x)
    assert len(a.mean) == len(a.std) == 3


def test_fake_matches_torchvision_fakedata() -> None:
    from torchvision.datasets import FakeData

    cfg = DataConfig(name="fake", fake_shape=(3, 8, 8), fake_classes=7, fake_train_size=20, fake_test_size=6)
    b = load_data(cfg, seed=0)
    ds = FakeData(size=26, image_size=(3, 8, 8), num_classes=7)
    for j in range(6):
        img, target = ds[20 + j]
        assert np.array_equal(np.asarray(img).transpose(2, 0, 1), b.test.x[j].numpy())
        assert target == int(b.test.y[j])


def test_fake_vector_shape() -> None:
    b = load_data(DataConfig(name="fake", fake_shape=(20,), fake_train_size=50, fake_test_size=10), seed=0)
    assert b.input_shape == (1, 1, 20) and b.train.x.shape[1:] == (1, 1, 20)


# ----------------------------------------------------------------------------------------- augment
def _reference_candidates(img: np.ndarray, pad: int = 4) -> list[np.ndarray]:
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    h, w = img.shape[1:]
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c[:, :, ::-1] for c in crops]


def test_augment_batch_is_crop_and_flip_and_deterministic() -> None:
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, torch.Generator().manual_seed(42))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(42)))
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(43)))
    assert torch.equal(augment_batch(x.float(), torch.Generator().manual_seed(42)), out.float())
    for i in range(len(x)):
        assert any(np.array_equal(out[i].numpy(), c) for c in _reference_candidates(x[i].numpy()))
    flipped = sum(any(np.array_equal(out[i].numpy(), c) for c in _reference_candidates(x[i].numpy())[81:])
                  for i in range(len(x)))
    assert 0 < flipped < len(x)


# ------------------------------------------------------------------------------------------- CIFAR
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_cifar10_image_folder_and_archive(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {(split, cls, k): rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
              for split, n in (("train", 3), ("test", 1)) for cls in dio.CIFAR10_CLASSES for k in range(n)}
    folder = tmp_path / "folder"
    for (split, cls, k), arr in images.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        (folder / split / cls / f"{k:04d}.png").write_bytes(_png(arr))
    cfg = DataConfig(name="cifar10", data_dir=str(folder), val_fraction=0.2)
    b = load_data(cfg, seed=0)
    assert (len(b.train), len(b.val), len(b.test)) == (24, 6, 10) and b.input_shape == (3, 32, 32)
    assert b.test.y.tolist() == list(range(10))  # sorted class folders = CIFAR-10 label order
    assert np.array_equal(b.test.x[3].numpy(), images[("test", "cat", 0)].transpose(2, 0, 1))  # PNG: exact
    assert len(list(cache_dir().glob("cifar10-train-*-x.npy"))) == 1
    again = load_data(cfg, seed=0)  # from the cache
    assert torch.equal(again.train.x, b.train.x) and torch.equal(again.test.y, b.test.y)
    with pytest.raises(DataError, match="10 class folders"):
        load_data(DataConfig(name="cifar100", data_dir=str(folder)), seed=0)

    archive_dir = tmp_path / "archives" / "cifar10-jpeg"
    archive_dir.mkdir(parents=True)
    for split in ("train", "test"):
        with tarfile.open(archive_dir / f"cifar10_{split}_jpg.tar.gz", "w:gz") as tar:
            for (s, cls, k), arr in images.items():
                if s == split:
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{cls}/{k:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    c = load_data(DataConfig(name="cifar10", data_dir=str(tmp_path / "archives"), val_fraction=0.2), seed=0)
    assert (len(c.train), len(c.val), len(c.test)) == (24, 6, 10) and c.test.y.tolist() == list(range(10))
    assert torch.equal(c.train.y, b.train.y)  # same order, same split


@pytest.mark.slow
def test_cifar10_from_jpeg_archive() -> None:
    if not (CIFAR_JPEG / "cifar10_train_jpg.tar.gz").is_file():
        pytest.skip(f"offline CIFAR-10 JPEG archives not found in {CIFAR_JPEG}")
    b = load_data(DataConfig(name="cifar10", data_dir=str(SHARED)), seed=0)
    assert len(b.train) + len(b.val) == 50000 and len(b.val) == 5000 and len(b.test) == 10000
    assert (b.num_classes, b.input_shape, b.scale) == (10, (3, 32, 32), 255.0)
    assert b.test.y.bincount().tolist() == [1000] * 10
    for got, want in zip(b.mean, (0.4913, 0.4821, 0.4465), strict=True):
        assert abs(got - want) < 0.01
    for got, want in zip(b.std, (0.245, 0.243, 0.261), strict=True):
        assert abs(got - want) < 0.01


def test_digits_are_cached_so_trials_skip_importing_scikit_learn(tmp_path: Path) -> None:
    """The first load builds the split with scikit-learn and caches it; a new process then loads the
    identical split without importing scikit-learn (it costs seconds in every trial process)."""
    import subprocess
    import sys

    from ray_rthpo.config import DataConfig

    first = load_data(DataConfig(name="digits"), seed=0)
    assert list(cache_dir().glob("digits-*.npz"))
    code = ("import sys, torch; from ray_rthpo.config import DataConfig; from ray_rthpo.data import "
            "load_data; b = load_data(DataConfig(name='digits'), seed=0); "
            "print(int(b.train.x.sum()), int(b.test.y.sum()), 'sklearn' in sys.modules)")
    env = {**os.environ, "RTHPO_CACHE_DIR": str(cache_dir())}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(int(first.train.x.sum())), str(int(first.test.y.sum())), "False"]
