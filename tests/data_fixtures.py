"""Tiny CIFAR data in every on-disk form `resbench.cifar` reads: random pixels, a few images per class.

Writers take a `Tiny` set and a destination, so a test can put any form anywhere; `load` reads a root
the way training does; the fixtures at the bottom (imported by conftest.py) give the common cases.
Images are random uint8, so every image is unique and a test can check that exactly the written
pixels come back.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resbench.cifar import _SPECS, prepare
from resbench.config import DataConfig
from resbench.data import Data, build_data

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class Tiny:
    train_x: np.ndarray  # uint8 (N, 3, 32, 32), in the order pickles store them
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    dataset: str = "cifar10"

    def class_major(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The order image folders load in: by class, then by file name (= the order written)."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        order = np.argsort(y, kind="stable")
        return x[order], y[order]


def tiny_set(
    dataset: str = "cifar10", train_per_class: int = 4, test_per_class: int = 2, seed: int = 0
) -> Tiny:
    rng = np.random.default_rng(seed)
    classes = len(_SPECS[dataset].classes)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.repeat(np.arange(classes), per_class)).astype(np.int64)
        return rng.integers(0, 256, (len(y), 3, 32, 32), dtype=np.uint8), y

    return Tiny(*split(train_per_class), *split(test_per_class), dataset=dataset)


def write_pickles(parent: Path, tiny: Tiny) -> Path:
    """torchvision's layout: parent/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    spec = _SPECS[tiny.dataset]
    folder = parent / spec.folder
    folder.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(tiny.train_y)), len(spec.train_files))
    files = [
        (name, tiny.train_x[i], tiny.train_y[i]) for name, i in zip(spec.train_files, chunks, strict=True)
    ]
    files.append((spec.test_files[0], tiny.test_x, tiny.test_y))
    for name, x, y in files:
        batch = {"batch_label": name, "data": x.reshape(len(x), 3072), spec.label_key: y.tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # protocol 2, as the official files
    meta_name, meta_key = (
        ("batches.meta", "label_names") if tiny.dataset == "cifar10" else ("meta", "fine_label_names")
    )
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: list(spec.classes)}, protocol=2))
    return folder


def write_official_archive(path: Path, tiny: Tiny) -> Path:
    """The official archive's layout: a .tar.gz holding cifar-10-batches-py/."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pickles(Path(tmp), tiny)
        tar_folder(folder, path)
    return path


def write_image_tree(root: Path, tiny: Tiny, digits: bool = False, suffix: str = ".png") -> Path:
    """root/train/<class>/0000.png ..., root/test/<class>/...; class folders named or numbered."""
    classes = _SPECS[tiny.dataset].classes
    for split in ("train", "test"):
        x, y = (tiny.train_x, tiny.train_y) if split == "train" else (tiny.test_x, tiny.test_y)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            folder = root / split / (str(label) if digits else classes[label])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:04d}{suffix}")
    return root


def write_image_archive(path: Path, tiny: Tiny, prefix: str = "cifar10-png", suffix: str = ".png") -> Path:
    """A .tar.gz of an image-folder tree under `prefix/`."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_image_tree(Path(tmp) / prefix, tiny, suffix=suffix)
        tar_folder(tree, path)
    return path


def tar_folder(folder: Path, path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def md5s(*paths: Path) -> dict[str, str]:
    """File name -> md5: the table to pretend these are the official files."""
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths}


def pretend_official(monkeypatch: pytest.MonkeyPatch, sums: dict[str, str]) -> None:
    """Make `resbench.cifar` take `sums` as torchvision's official md5 table."""
    monkeypatch.setattr("resbench.cifar._official_md5s", lambda spec: sums)


def load(root: Path, **cfg: object) -> Data:
    """`build_data` on the CPU for the data under `root`, with `cfg` as the other data.* keys."""
    return build_data(DataConfig(root=str(root), **cfg), "cpu")


@pytest.fixture
def tiny() -> Tiny:
    """10 classes, 4 training and 2 test images each."""
    return tiny_set()


@pytest.fixture
def tiny_cifar10_root(tmp_path: Path, tiny: Tiny) -> Path:
    """A data root holding the tiny set as torchvision's CIFAR-10 pickles: `DataConfig(root=str(it))`."""
    root = tmp_path / "data"
    write_pickles(root, tiny)
    return root


@pytest.fixture(scope="session")
def real_cifar10_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """The real CIFAR-10 JPEG copy prepared once per session: (root, prepare's message, its seconds)."""
    archive = SHARED_DATA / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"the real CIFAR-10 copy is not at {archive} (only on machines with ../shared/data)")
    root = tmp_path_factory.mktemp("real-cifar10") / "data"
    start = time.perf_counter()
    message = prepare(archive, root)  # decodes 60,000 JPEGs: about 10 s on 2 cores
    return root, message, time.perf_counter() - start


@pytest.fixture(scope="session")
def real_cifar10_root(real_cifar10_prepared: tuple[Path, str, float]) -> Path:
    """A data root holding the real CIFAR-10 (JPEG copy) cache: `DataConfig(root=str(it))`."""
    return real_cifar10_prepared[0]


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes told apart by colour, 16 training and 4 test images each: a tiny net learns them."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (10, 3, 1, 1))

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(10), per_class)
        x = np.clip(colours[y] + rng.normal(0, 30, (len(y), 3, 32, 32)), 0, 255).astype(np.uint8)
        return x, y

    root = tmp_path_factory.mktemp("data")
    write_pickles(root, Tiny(*split(16), *split(4)))
    return root
