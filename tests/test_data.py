"""resbench.data: the fingerprint, the validation split and statistics, and batches."""

from __future__ import annotations

import re
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import Tiny, load, write_pickles

from resbench import data as data_mod
from resbench.cifar import Arrays
from resbench.data import Batches, Data, Split
from resbench.errors import DataError

# --------------------------------------------------------------------------------------------
# The fingerprint


def test_the_fingerprint_follows_the_images_and_labels_not_the_form(tmp_path: Path, tiny: Tiny) -> None:
    write_pickles(tmp_path / "a", tiny)
    from_files, from_cache = load(tmp_path / "a"), load(tmp_path / "a")
    assert "cached" in from_cache.source and from_files.fingerprint == from_cache.fingerprint
    assert load(tmp_path / "a", val_size=5).fingerprint == from_files.fingerprint  # taken before the split
    assert re.fullmatch("[0-9a-f]{16}", from_files.fingerprint)
    one_pixel = tiny.train_x.copy()
    one_pixel[3, 1, 2, 3] ^= 1
    one_label = tiny.test_y.copy()
    one_label[[0, 1]] = one_label[[1, 0]]
    for changed in (
        Tiny(one_pixel, tiny.train_y, tiny.test_x, tiny.test_y),
        Tiny(*astuple(tiny)[:3], one_label),
    ):
        root = write_pickles(tmp_path / f"b{len(list(tmp_path.iterdir()))}", changed).parent
        assert load(root).fingerprint != from_files.fingerprint


def test_the_fingerprint_of_cifar_size_data_costs_well_under_a_second() -> None:
    cifar = Arrays(
        np.full((50_000, 3, 32, 32), 7, np.uint8), np.zeros(50_000, np.int64),
        np.full((10_000, 3, 32, 32), 7, np.uint8), np.zeros(10_000, np.int64), "", False, (),
    )  # fmt: skip
    start = time.perf_counter()
    data_mod._fingerprint(cifar)
    assert time.perf_counter() - start < 1.0  # about 0.1 s on one core of a 2-core EPYC


# --------------------------------------------------------------------------------------------
# Validation split and normalisation statistics


def test_val_split_is_fixed_disjoint_and_complete(tiny_cifar10_root: Path, tiny: Tiny) -> None:
    data = load(tiny_cifar10_root, val_size=10)
    again = load(tiny_cifar10_root, val_size=10)
    assert data.val is not None and again.val is not None
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 20)
    assert torch.equal(data.val.images, again.val.images) and torch.equal(
        data.train.images, again.train.images
    )
    rows = {img.tobytes(): label for img, label in zip(tiny.train_x, tiny.train_y, strict=True)}
    train = [img.numpy().tobytes() for img in data.train.images]
    val = [img.numpy().tobytes() for img in data.val.images]
    assert not set(train) & set(val) and set(train) | set(val) == set(rows)
    assert [rows[k] for k in val] == data.val.labels.tolist()


def test_val_split_must_leave_training_images(tiny_cifar10_root: Path) -> None:
    with pytest.raises(DataError, match="val_size=40 leaves no training images; use at most 39"):
        load(tiny_cifar10_root, val_size=40)


def test_pixel_mean_comes_from_the_training_split_only(tiny_cifar10_root: Path) -> None:
    data = load(tiny_cifar10_root, val_size=10)
    train = data.train.images.double() / 255
    assert data.mean.shape == (3, 32, 32) and data.mean.dtype == torch.float32
    assert torch.allclose(data.mean.double(), train.mean(0), atol=1e-6)
    assert torch.equal(data.std, torch.ones(1, 1, 1))
    normalized = data.normalize(data.train.images)
    assert normalized.dtype == torch.float32 and normalized.abs().max() <= 1
    assert normalized.double().mean(0).abs().max() < 1e-5  # §4.2: zero mean at every pixel
    with_val = torch.cat([data.train.images, data.val.images]).double() / 255  # type: ignore[union-attr]
    assert not torch.allclose(data.mean.double(), with_val.mean(0), atol=1e-3)


def test_channel_statistics_come_from_the_training_split_only(tiny_cifar10_root: Path) -> None:
    data = load(tiny_cifar10_root, val_size=10, normalize="channel")
    train = data.train.images.double().permute(1, 0, 2, 3).reshape(3, -1) / 255
    assert data.mean.shape == data.std.shape == (3, 1, 1)
    assert torch.allclose(data.mean.double().flatten(), train.mean(1), atol=1e-6)
    assert torch.allclose(data.std.double().flatten(), train.std(1, correction=0), atol=1e-6)
    normalized = data.normalize(data.train.images).permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(normalized.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normalized.std(1, correction=0), torch.ones(3), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Batches


def test_batches_shapes_dtypes_and_epochs(tiny_cifar10_root: Path) -> None:
    data = load(tiny_cifar10_root)
    batches = Batches(data, batch_size=16, seed=0, channels_last=True)
    assert batches.steps_per_epoch == 2  # 40 images: the last 8 of each epoch are dropped
    for _ in range(5):
        images, labels = batches.next()
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.shape == (16,) and labels.dtype == torch.int64
        assert images.abs().max() <= 1  # pixel_mean: x/255 - mean, and zero padding
    assert batches.epoch == 2


def test_without_augmentation_an_epoch_is_the_normalized_training_set_once(tiny_cifar10_root: Path) -> None:
    data = load(tiny_cifar10_root)
    batches = Batches(data, batch_size=8, seed=3, augment=False)
    images, labels = zip(*(batches.next() for _ in range(batches.steps_per_epoch)), strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    expected = data.normalize(data.train.images)
    match = (images[:, None] == expected[None]).flatten(2).all(-1)  # (seen, train): exact equality
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()  # a permutation of the training set
    assert torch.equal(labels, data.train.labels[match.float().argmax(1)])
    next_epoch = torch.cat([batches.next()[0] for _ in range(batches.steps_per_epoch)])
    assert not torch.equal(next_epoch, images)  # each epoch draws a fresh order


def crafted(n: int) -> Data:
    """n copies of an image whose pixels name their position: red = row, green = column, blue = 255."""
    rows, cols = torch.meshgrid(torch.arange(32) * 8, torch.arange(32) * 8, indexing="ij")
    image = torch.stack([rows, cols, torch.full_like(rows, 255)]).to(torch.uint8)
    split = Split(image.expand(n, 3, 32, 32).contiguous(), torch.arange(n))
    return Data(split, split, None, torch.zeros(1, 1, 1), torch.ones(1, 1, 1), 10, "crafted", False, (), "")


def test_augmentation_crops_and_flips_every_way() -> None:
    data = crafted(32)
    padded = torch.nn.functional.pad(data.normalize(data.train.images[:1]), (4, 4, 4, 4))[0]
    candidates = {}  # (dy, dx, flip) -> the expected image
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            candidates[dy, dx, False], candidates[dy, dx, True] = crop, crop.flip(-1)
    batches = Batches(data, batch_size=32, seed=0, pad=4)
    seen = set()
    for _ in range(40):
        images, _ = batches.next()
        for image in images:
            found = [key for key, crop in candidates.items() if torch.equal(image, crop)]
            assert len(found) == 1  # every output is exactly one shifted (and maybe flipped) crop
            seen.add(found[0])
    assert len(seen) == len(candidates)  # all 81 offsets x 2 flips occur over 1280 draws


def test_batches_are_determined_by_the_seed(tiny_cifar10_root: Path) -> None:
    data = load(tiny_cifar10_root)
    a, b, c = (Batches(data, 16, seed) for seed in (7, 7, 8))
    for _ in range(6):
        (xa, ya), (xb, yb), (xc, _) = a.next(), b.next(), c.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)


def test_resume_continues_exactly_across_epoch_boundaries(tiny_cifar10_root: Path, tmp_path: Path) -> None:
    data = load(tiny_cifar10_root)
    reference = Batches(data, 16, seed=0)
    expected = [reference.next() for _ in range(10)]  # 5 epochs of 2 steps
    first = Batches(data, 16, seed=0)
    for _ in range(5):
        first.next()
    torch.save(first.state_dict(), tmp_path / "batches.pt")
    resumed = Batches(data, 16, seed=123)  # a different seed: the state must override it
    resumed.load_state_dict(torch.load(tmp_path / "batches.pt", weights_only=True))
    for images, labels in expected[5:]:
        got_images, got_labels = resumed.next()
        assert torch.equal(got_images, images) and torch.equal(got_labels, labels)


def test_state_for_another_training_set_is_refused(tiny_cifar10_root: Path) -> None:
    state = Batches(load(tiny_cifar10_root), 16, seed=0).state_dict()
    with pytest.raises(DataError, match=re.escape("did data.val_size or the dataset change")):
        Batches(load(tiny_cifar10_root, val_size=5), 16, seed=0).load_state_dict(state)


def test_a_batch_larger_than_the_training_set_is_refused(tiny_cifar10_root: Path) -> None:
    with pytest.raises(DataError, match="batch size 41 does not fit a training set of 40 images"):
        Batches(load(tiny_cifar10_root), 41, seed=0)
