"""resbench.cifar: every on-disk form, md5 checks, the cache, the safety limits, download and prepare."""

from __future__ import annotations

import errno
import gzip
import io
import os
import pickle
import re
import tarfile
import tempfile
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from data_fixtures import (
    Tiny,
    load,
    md5s,
    pretend_official,
    tar_folder,
    tiny_set,
    write_image_archive,
    write_image_tree,
    write_official_archive,
    write_pickles,
)
from PIL import Image

from resbench import cifar
from resbench.cifar import prepare
from resbench.config import DataConfig
from resbench.data import Data, build_data
from resbench.errors import DataError


def assert_holds(data: Data, x_train: np.ndarray, y_train: np.ndarray, tiny: Tiny) -> None:
    """`data` holds exactly these training images and the tiny set's test images (in their load order)."""
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.train.images.shape == (len(y_train), 3, 32, 32) and data.train.images.is_contiguous()
    assert np.array_equal(data.train.images.numpy(), x_train)
    assert np.array_equal(data.train.labels.numpy(), y_train)
    assert data.num_classes == len(cifar._SPECS[tiny.dataset].classes) and data.val is None


def assert_holds_pickle_order(data: Data, tiny: Tiny) -> None:
    assert_holds(data, tiny.train_x, tiny.train_y, tiny)
    assert np.array_equal(data.test.images.numpy(), tiny.test_x)
    assert np.array_equal(data.test.labels.numpy(), tiny.test_y)


def assert_holds_class_major(data: Data, tiny: Tiny) -> None:
    assert_holds(data, *tiny.class_major("train"), tiny)
    test_x, test_y = tiny.class_major("test")
    assert np.array_equal(data.test.images.numpy(), test_x) and np.array_equal(
        data.test.labels.numpy(), test_y
    )


# --------------------------------------------------------------------------------------------
# Every accepted form


def test_our_file_names_are_torchvision_s() -> None:
    for tv, spec in ((torchvision.datasets.CIFAR10, cifar._SPECS["cifar10"]),
                     (torchvision.datasets.CIFAR100, cifar._SPECS["cifar100"])):  # fmt: skip
        assert (tv.base_folder, tv.filename) == (spec.folder, spec.archive)
        assert [n for n, _ in tv.train_list] == list(spec.train_files)
        assert [n for n, _ in tv.test_list] == list(spec.test_files)


def test_rebuilt_pickles_load_with_one_checksum_note(tmp_path: Path, tiny: Tiny) -> None:
    write_pickles(tmp_path / "data", tiny)
    data = load(tmp_path / "data")
    assert_holds_pickle_order(data, tiny)
    assert not data.official
    assert len(data.notes) == 1 and "official checksums" in data.notes[0] and "anyway" in data.notes[0]
    assert "cifar-10-batches-py" in data.source


def test_pickles_matching_the_official_checksums_are_official(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_pickles(tmp_path / "data", tiny)
    pretend_official(monkeypatch, md5s(*folder.iterdir()))
    data = load(tmp_path / "data")
    assert_holds_pickle_order(data, tiny)
    assert data.official and data.notes == ()


def test_one_changed_file_makes_the_copy_unofficial(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_pickles(tmp_path / "data", tiny)
    sums = md5s(*folder.iterdir())
    pretend_official(monkeypatch, {**sums, "batches.meta": "0" * 32})
    assert not load(tmp_path / "data").official


@pytest.mark.parametrize("official", [True, False])
def test_official_archive_is_checked_and_extracted(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch, official: bool
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    archive = write_official_archive(root / "cifar-10-python.tar.gz", tiny)
    if official:
        staged = write_pickles(tmp_path / "staged", tiny)  # the same bytes as the archive's members
        pretend_official(monkeypatch, {**md5s(*staged.iterdir()), **md5s(archive)})
    data = load(root)
    assert_holds_pickle_order(data, tiny)
    assert (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert data.official is official and len(data.notes) == (0 if official else 1)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_archive_members_that_escape_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"gotcha"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="refusing to extract") as err:
        load(root)
    assert str(archive) in str(err.value)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("digits", [False, True], ids=["class-names", "digits"])
def test_png_tree_loads_exact_pixels(tmp_path: Path, tiny: Tiny, digits: bool) -> None:
    write_image_tree(tmp_path / "data", tiny, digits=digits)
    data = load(tmp_path / "data")
    assert_holds_class_major(data, tiny)
    assert not data.official and len(data.notes) == 1 and "not the official" in data.notes[0]
    assert "JPEG" not in data.notes[0]


def test_png_tree_archive_loads_exact_pixels(tmp_path: Path, tiny: Tiny) -> None:
    (tmp_path / "data").mkdir()
    write_image_archive(tmp_path / "data" / "cifar10-png.tar.gz", tiny)
    data = load(tmp_path / "data")
    assert_holds_class_major(data, tiny)
    assert not data.official and "cifar10-png.tar.gz" in data.source and "not the official" in data.notes[0]


def test_jpeg_tree_loads_close_pixels_and_says_it_is_lossy(tmp_path: Path, tiny: Tiny) -> None:
    write_image_tree(tmp_path / "data", tiny, suffix=".jpg")
    data = load(tmp_path / "data")
    x, y = tiny.class_major("train")
    assert np.array_equal(data.train.labels.numpy(), y) and data.train.images.shape == x.shape
    assert "JPEG" in data.notes[0] and not data.official


def test_cifar100_pickles_use_the_fine_labels(tmp_path: Path) -> None:
    tiny = tiny_set("cifar100", train_per_class=1, test_per_class=1)
    write_pickles(tmp_path / "data", tiny)
    data = load(tmp_path / "data", dataset="cifar100")
    assert_holds_pickle_order(data, tiny)
    assert data.num_classes == 100 and (tmp_path / "data" / "resbench-cifar100.npz").is_file()


def test_cifar100_tree_maps_fine_label_names(tmp_path: Path) -> None:
    tiny = tiny_set("cifar100", train_per_class=1, test_per_class=1)
    write_image_tree(tmp_path / "data", tiny)
    assert_holds_class_major(load(tmp_path / "data", dataset="cifar100"), tiny)


def test_download_is_tried_only_when_asked(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    class FakeCIFAR10(torchvision.datasets.CIFAR10):  # keeps torchvision's md5 table
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(root)
            write_pickles(Path(root), tiny)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(DataError):
        load(tmp_path / "data")
    data = load(tmp_path / "data", download=True)
    assert calls == [str(tmp_path / "data")] and "downloaded" in data.source
    assert_holds_pickle_order(data, tiny)


def test_prepare_without_a_source_downloads_and_caches(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeCIFAR10(torchvision.datasets.CIFAR10):
        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_pickles(Path(root), tiny)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    assert "downloaded" in prepare(None, tmp_path / "data")
    assert (tmp_path / "data" / "resbench-cifar10.npz").is_file()
    assert_holds_pickle_order(load(tmp_path / "data"), tiny)


def test_a_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class OfflineCIFAR10(torchvision.datasets.CIFAR10):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    with pytest.raises(DataError, match=r"could not download CIFAR-10.*Name or service not known"):
        load(tmp_path / "data", download=True)


# --------------------------------------------------------------------------------------------
# The cache


def test_the_cache_is_written_once_and_read_instead_of_the_files(tmp_path: Path, tiny: Tiny) -> None:
    root = tmp_path / "data"
    write_pickles(root, tiny)
    first = load(root)
    assert (root / "resbench-cifar10.npz").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "resbench-cifar10.npz"]
    for path in (root / "cifar-10-batches-py").iterdir():
        path.unlink()  # the second load must not touch the pickles
    second = load(root)
    assert_holds_pickle_order(second, tiny)
    assert "cached" in second.source and "cached" not in first.source
    assert (second.official, second.notes) == (first.official, first.notes) and len(second.notes) == 1


def test_a_read_only_root_skips_the_cache(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    write_pickles(tmp_path / "data", tiny)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # how every atomic write starts
    assert_holds_pickle_order(load(tmp_path / "data"), tiny)
    assert not (tmp_path / "data" / "resbench-cifar10.npz").exists()


def test_a_corrupt_cache_is_named(tmp_path: Path) -> None:
    (tmp_path / "resbench-cifar10.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=re.escape("resbench-cifar10.npz is not a readable resbench cache")):
        load(tmp_path)


def test_an_older_cache_version_is_rebuilt(tmp_path: Path, tiny: Tiny) -> None:
    write_pickles(tmp_path, tiny)
    np.savez(tmp_path / "resbench-cifar10.npz", version=np.int64(0))
    assert_holds_pickle_order(load(tmp_path), tiny)
    assert int(np.load(tmp_path / "resbench-cifar10.npz")["version"]) == cifar._CACHE_VERSION


def _arrays(tiny: Tiny, **changes: np.ndarray) -> cifar.Arrays:
    arrays = cifar.Arrays(tiny.train_x, tiny.train_y, tiny.test_x, tiny.test_y, "tiny", False, ())
    return arrays._replace(**changes)


BAD_CACHES = {  # what is wrong -> (a change to the tiny set's arrays, what the message says)
    "label-too-large": (lambda t: {"train_y": np.where(t.train_y == 9, 10, t.train_y)}, "run from 0 to 10"),
    "label-negative": (lambda t: {"test_y": t.test_y - 1}, "run from -1 to 8"),
    "float-labels": (lambda t: {"train_y": t.train_y + 0.5}, "labels are float64, not integers"),
    "float-images": (lambda t: {"test_x": t.test_x.astype(np.float32)}, "expected uint8 test images"),
    "channels-last": (lambda t: {"train_x": t.train_x.transpose(0, 2, 3, 1)}, "(N, 3, 32, 32)"),
    "label-count": (lambda t: {"train_y": t.train_y[:-1]}, "and N labels"),
    "empty-test": (lambda t: {"test_x": t.test_x[:0], "test_y": t.test_y[:0]}, "the test split is empty"),
}


@pytest.mark.parametrize("case", BAD_CACHES)
def test_a_cache_that_would_train_wrongly_is_refused_when_it_loads(
    tmp_path: Path, tiny: Tiny, case: str
) -> None:
    change, problem = BAD_CACHES[case]
    cache = tmp_path / "resbench-cifar10.npz"
    cifar._write_cache(cache, _arrays(tiny, **change(tiny)))
    with pytest.raises(DataError) as err:
        load(tmp_path)
    assert str(err.value).startswith(f"{cache}: ") and problem in str(err.value)
    assert "delete it" in str(err.value) and "resbench data prepare" in str(err.value)


def test_float_labels_in_a_pickle_are_refused_not_truncated(tmp_path: Path, tiny: Tiny) -> None:
    folder = write_pickles(tmp_path, tiny)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"] = [label + 0.5 for label in batch["labels"]]
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=re.escape(f"{folder / 'test_batch'}: expected 20 integer labels")):
        load(tmp_path)


# --------------------------------------------------------------------------------------------
# Missing and broken data


def test_missing_data_says_where_it_looked_and_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        build_data(DataConfig(), "cpu")
    message = str(err.value)
    assert str(tmp_path.resolve() / "data") in message and err.value.exit_code == 1
    for looked_for in ("resbench-cifar10.npz", "cifar-10-batches-py", "cifar-10-python.tar.gz", "train/"):
        assert looked_for in message
    for fix in ("--set data.download=true", "resbench data prepare --from PATH", "--set data.root=DIR"):
        assert fix in message


def test_a_truncated_pickle_is_named(tmp_path: Path, tiny: Tiny) -> None:
    folder = write_pickles(tmp_path, tiny)
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match=re.escape(f"{batch} is not a readable CIFAR-10 pickle")):
        load(tmp_path)


def test_a_pickle_with_the_wrong_shape_is_named(tmp_path: Path, tiny: Tiny) -> None:
    folder = write_pickles(tmp_path, tiny)
    (folder / "test_batch").write_bytes(
        pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    )
    with pytest.raises(DataError, match=re.escape(f"{folder / 'test_batch'}: expected uint8 data of shape")):
        load(tmp_path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, tiny: Tiny) -> None:
    folder = write_pickles(tmp_path, tiny)
    (folder / "test_batch").write_bytes(pickle.dumps(print))  # any global but numpy's is refused
    with pytest.raises(DataError, match=re.escape("refusing to load builtins.print")):
        load(tmp_path)


def test_a_missing_batch_is_named(tmp_path: Path, tiny: Tiny) -> None:
    folder = write_pickles(tmp_path, tiny)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5 is missing"):
        load(tmp_path)


@pytest.mark.parametrize("kind", ["official", "images"])
def test_a_truncated_archive_is_named(tmp_path: Path, tiny: Tiny, kind: str) -> None:
    name = "cifar-10-python.tar.gz" if kind == "official" else "cifar10-png.tar.gz"
    writer = write_official_archive if kind == "official" else write_image_archive
    archive = writer(tmp_path / name, tiny)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(str(archive))):
        load(tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [("small", "is 16x16; CIFAR images are 32x32"), ("garbage", "is not a readable image")],
)
def test_a_bad_image_is_named(tmp_path: Path, tiny: Tiny, content: str, problem: str) -> None:
    write_image_tree(tmp_path, tiny)
    bad = tmp_path / "train" / "cat" / "9999.png"
    if content == "small":
        Image.new("RGB", (16, 16)).save(bad)
    else:
        bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=re.escape(f"{bad} {problem}")):
        load(tmp_path)


def test_an_unknown_class_folder_is_named(tmp_path: Path, tiny: Tiny) -> None:
    write_image_tree(tmp_path, tiny)
    (tmp_path / "train" / "cat").rename(tmp_path / "train" / "kitten")
    with pytest.raises(DataError, match="the class folder 'kitten' is neither a CIFAR-10 class name"):
        load(tmp_path)


# --------------------------------------------------------------------------------------------
# prepare


def official_archive(tmp_path: Path, tiny: Tiny) -> Path:
    (tmp_path / "downloads").mkdir()
    return write_official_archive(tmp_path / "downloads" / "cifar-10-python.tar.gz", tiny)


SOURCES = {  # form -> (writer of the source, whether images load class by class)
    "official-archive": (official_archive, False),
    "pickle-folder": (lambda tmp, tiny: write_pickles(tmp / "copy", tiny), False),
    "image-tree": (lambda tmp, tiny: write_image_tree(tmp / "cifar10-png", tiny), True),
    "image-archive": (lambda tmp, tiny: write_image_archive(tmp / "cifar10-png.tar.gz", tiny), True),
}


@pytest.mark.parametrize("form", SOURCES)
def test_prepare_puts_each_form_where_build_data_finds_it(tmp_path: Path, tiny: Tiny, form: str) -> None:
    write, class_major = SOURCES[form]
    src, root = write(tmp_path, tiny), tmp_path / "data"
    message = prepare(src, root)
    assert "40 training + 20 test images" in message and str(root / "resbench-cifar10.npz") in message
    check = assert_holds_class_major if class_major else assert_holds_pickle_order
    cached = load(root)
    check(cached, tiny)
    assert "cached" in cached.source and not cached.official
    (root / "resbench-cifar10.npz").unlink()  # without the cache, the copy in root is found
    check(load(root), tiny)


def test_prepare_from_a_pickle_folder_inside_root_copies_nothing(tmp_path: Path, tiny: Tiny) -> None:
    folder = write_pickles(tmp_path / "data", tiny)
    prepare(folder, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "cifar-10-batches-py",
        "resbench-cifar10.npz",
    ]


def test_prepare_refuses_to_overwrite_other_data(tmp_path: Path, tiny: Tiny) -> None:
    write_pickles(tmp_path / "data", tiny)
    src = write_pickles(tmp_path / "other", tiny_set(seed=1))
    with pytest.raises(DataError, match="cifar-10-batches-py already exists; remove it"):
        prepare(src, tmp_path / "data")


def test_prepare_removes_what_it_copied_when_the_data_is_bad(tmp_path: Path, tiny: Tiny) -> None:
    tree = write_image_tree(tmp_path / "tree", tiny)
    Image.new("RGB", (8, 8)).save(tree / "test" / "cat" / "9999.png")
    with pytest.raises(DataError, match="is 8x8"):
        prepare(tree, tmp_path / "data")
    assert os.listdir(tmp_path / "data") == []


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_enospc(src: Path, dest: Path, *args: object, **kwargs: object) -> None:
    """A copy that runs out of space halfway, leaving a truncated file, as a full disk does."""
    dest = Path(dest)
    if Path(src).is_dir():
        (dest / "cat").mkdir(parents=True)
        dest = dest / "cat" / "0000.png"
        src = next(Path(src).rglob("*.*"))
    dest.write_bytes(Path(src).read_bytes()[: Path(src).stat().st_size // 2])
    raise _enospc()


def _extract_half_then_enospc(self: tarfile.TarFile, path: str, *args: object, **kwargs: object) -> None:
    (Path(path) / "cifar-10-batches-py").mkdir()
    (Path(path) / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x02}q")
    raise _enospc()


def _savez_half_then_enospc(f: io.BufferedWriter, **arrays: object) -> None:
    f.write(b"PK\x03\x04 half a cache")
    raise _enospc()


FAULTS = {  # (source form, what runs out of space): the function that fails, and its stand-in
    ("pickle-folder", "copy"): ("shutil.copytree", _half_then_enospc),
    ("image-tree", "copy"): ("shutil.copytree", _half_then_enospc),
    ("image-archive", "copy"): ("shutil.copy2", _half_then_enospc),
    ("official-archive", "extract"): ("tarfile.TarFile.extractall", _extract_half_then_enospc),
    ("image-archive", "cache"): ("numpy.savez", _savez_half_then_enospc),
    ("download", "cache"): ("numpy.savez", _savez_half_then_enospc),
}


@pytest.mark.parametrize(("form", "step"), FAULTS, ids=["-".join(k) for k in FAULTS])
def test_a_full_disk_during_prepare_leaves_root_as_it_was(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch, form: str, step: str
) -> None:
    class FakeCIFAR10(torchvision.datasets.CIFAR10):
        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_pickles(Path(root), tiny)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    src = None if form == "download" else SOURCES[form][0](tmp_path, tiny)
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")  # what root held before must stay
    target, fault = FAULTS[form, step]
    with monkeypatch.context() as m:
        m.setattr(target, fault)
        with pytest.raises(DataError) as err:
            prepare(src, root)
    message = str(err.value)
    assert "No space left on device" in message and str(root) in message
    if step != "extract":  # extraction names the archive it could not extract instead
        assert f"cannot prepare CIFAR-10 in {root}" in message and "--root" in message
    assert sorted(os.listdir(root)) == ["notes.txt"] and (root / "notes.txt").read_text() == "mine"
    assert "40 training + 20 test images" in prepare(src, root)  # nothing left in the way of a retry


def test_a_read_only_root_fails_prepare_cleanly_through_the_cli(
    cli: Callable[..., Any], tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "data" / "train"))

    monkeypatch.setattr("shutil.copytree", read_only)
    result = cli(
        "data", "prepare", "--from", write_image_tree(tmp_path / "png", tiny), "--root", tmp_path / "data"
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, no traceback
    assert "Read-only file system" in result.output and "--root" in result.output
    assert os.listdir(tmp_path / "data") == []


def _huge_member_archive(path: Path, tiny: Tiny) -> Path:
    """An image-folder .tar.gz whose first image claims 5 GiB in its header, with 1 KB behind it:
    what a multi-GB member of zeros looks like before it is read."""
    huge = tarfile.TarInfo("cifar10-png/train/cat/0000.png")
    huge.size = 5 << 30
    with tempfile.TemporaryDirectory() as tmp:
        write_image_archive(Path(tmp) / "rest.tar.gz", tiny)
        with tarfile.open(Path(tmp) / "rest.tar.gz") as rest:
            members = [(m, rest.extractfile(m).read() if m.isfile() else b"") for m in rest.getmembers()]
    with gzip.open(path, "wb") as f:
        f.write(huge.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
        for m, data in members:
            f.write(m.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512))
    return path


def test_an_archive_member_claiming_gigabytes_is_refused_before_it_is_read(
    tmp_path: Path, tiny: Tiny
) -> None:
    archive = _huge_member_archive(tmp_path / "bomb.tar.gz", tiny)
    with pytest.raises(DataError, match=r"cifar10-png/train/cat/0000\.png claims 5,368,709,120 bytes"):
        prepare(archive, tmp_path / "data")
    assert os.listdir(tmp_path / "data") == []
    with pytest.raises(DataError, match="claims 5,368,709,120 bytes, more than the 1,048,576"):
        load(archive.parent)  # the same archive found by build_data in data.root


def test_a_huge_file_in_an_image_tree_is_refused_before_it_is_read(tmp_path: Path, tiny: Tiny) -> None:
    tree = write_image_tree(tmp_path / "data", tiny)
    with open(tree / "train" / "cat" / "9999.png", "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB by its size, nothing on disk
    with pytest.raises(DataError, match=r"9999\.png claims 3,221,225,472 bytes"):
        load(tree)


def test_an_official_archive_member_past_the_cap_is_refused(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar, "_MAX_ARCHIVE_MEMBER_BYTES", 1000)  # the tiny pickles are larger
    with pytest.raises(DataError, match=r"data_batch_1 claims [\d,]+ bytes, more than the 1,000"):
        prepare(official_archive(tmp_path, tiny), tmp_path / "data")
    assert os.listdir(tmp_path / "data") == []


def test_prepare_names_a_source_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=re.escape("does not exist; --from takes the official cifar-10-python.tar.gz")
    ):
        prepare(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=re.escape("notes.txt is not a form resbench reads")):
        prepare(tmp_path / "notes.txt", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    tar_folder(tmp_path / "empty", tmp_path / "empty.tar.gz")
    with pytest.raises(DataError, match="holds neither cifar-10-batches-py/ nor train/ \\+ test/"):
        prepare(tmp_path / "empty.tar.gz", tmp_path / "data")
    assert not (tmp_path / "data" / "empty.tar.gz").exists()


# --------------------------------------------------------------------------------------------
# The real CIFAR-10 copy in ../shared/data (decoded once per session: see data_fixtures)


@pytest.mark.real_data
def test_real_cifar10_jpeg_copy(real_cifar10_prepared: tuple[Path, str, float]) -> None:
    root, message, prepare_seconds = real_cifar10_prepared
    assert "50,000 training + 10,000 test images" in message
    start = time.perf_counter()
    data = load(root)
    seconds = time.perf_counter() - start
    assert "cached" in data.source and seconds < 1, f"cached build_data took {seconds:.2f} s"
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert not data.official and len(data.notes) == 1 and "JPEG" in data.notes[0]
    print(f"prepare from the JPEG tar.gz: {prepare_seconds:.1f} s; cached build_data: {seconds:.2f} s")
