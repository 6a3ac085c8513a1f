"""CIFAR-10/100 on disk: every form resbench reads, checked against the official md5 sums and cached.

Holds:
- `load(dataset, root, download)`: finds the dataset under `root` in any accepted form (our cache,
  torchvision's pickles, the official .tar.gz, an image-folder tree or a .tar.gz of one, or
  torchvision's downloader) and returns it as uint8 numpy `Arrays`, with where it came from, whether
  every file matched torchvision's md5 sums, and notes for the CLI to show.
- the uint8 cache `root/resbench-<dataset>.npz`, so a second start skips decoding and checksums.
  It wins over the files beside it: delete it (or run prepare again) after changing them.
- the safety limits: pickles may hold numpy arrays only, archives may not write outside `root`, and
  a file or archive member larger than a CIFAR file can be is refused before it is read.
- `prepare(src, root, dataset)`: `resbench data prepare --from SRC`.

No tensors, no validation split and no statistics here (data.py makes those from `Arrays`), and
nothing prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from resbench.errors import DataError
from resbench.files import atomic_open, describe

CIFAR10_CLASSES = tuple("airplane automobile bird cat deer dog frog horse ship truck".split())
CIFAR100_CLASSES = tuple(  # the fine labels in official order (which is alphabetical)
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm".split()
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CACHE_VERSION = 1  # bump when the cache's contents change; an older cache is then rebuilt
# A 32x32 PNG or JPEG takes a few KB; a member claiming more is not a CIFAR image and is refused
# before it is read (a small .tar.gz can hold a multi-GB member of zeros).
_MAX_IMAGE_BYTES = 1 << 20
_MAX_ARCHIVE_MEMBER_BYTES = 1 << 30  # the official archives' largest member is 155 MB (CIFAR-100 train)


class _Spec(NamedTuple):
    """One dataset's names on disk, as torchvision lays it out."""

    key: str  # data.dataset
    name: str  # for messages, and torchvision's class without the dash
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    classes: tuple[str, ...]


_SPECS = {
    "cifar10": _Spec(
        "cifar10",
        "CIFAR-10",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        CIFAR10_CLASSES,
    ),
    "cifar100": _Spec(
        "cifar100",
        "CIFAR-100",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        ("test",),
        "fine_labels",
        CIFAR100_CLASSES,
    ),
}


class Arrays(NamedTuple):
    """A dataset on the host: uint8 (N, 3, 32, 32) images and int64 labels, as cached."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # what was loaded from where
    official: bool  # every file matched torchvision's md5 sums
    notes: tuple[str, ...]  # warnings for the CLI to print


# --------------------------------------------------------------------------------------------
# load


def load(dataset: str, root: Path, download: bool = False) -> Arrays:
    """`dataset` from `root` (see the module docstring): the cache, else the first form found, then cached."""
    spec, root = _SPECS[dataset], Path(root).expanduser()
    cache = _cache_path(spec, root)
    arrays = _read_cache(cache, spec) if cache.is_file() else None
    if arrays is not None:
        return arrays._replace(source=f"{arrays.source} (cached in {cache})")
    arrays = _find(spec, root, download)
    with contextlib.suppress(OSError):  # a read-only or full root: run without the cache
        _write_cache(cache, arrays)
    return arrays


def _find(spec: _Spec, root: Path, download: bool) -> Arrays:
    """The first accepted form found under `root`, in the documented order."""
    if (root / spec.folder).is_dir():
        return _read_pickles(spec, root / spec.folder)
    if (root / spec.archive).is_file():
        return _read_official_archive(spec, root / spec.archive, root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _read_image_tree(spec, root)
    official_archives = {s.archive for s in _SPECS.values()}
    for archive in sorted([*root.glob("*.tar.gz"), *root.glob("*.tgz")]):
        arrays = None if archive.name in official_archives else _read_image_archive(spec, archive)
        if arrays is not None:
            return arrays
    if download:
        return _download(spec, root)
    raise DataError(
        f"no {spec.name} data in {root.resolve()}{'' if root.is_dir() else ' (no such folder)'}\n"
        f"  looked for: resbench-{spec.key}.npz, {spec.folder}/, {spec.archive}, "
        "train/ + test/ image folders, and a *.tar.gz holding train/ + test/\n"
        "Fix it in one of three ways:\n"
        "  - download it: set data.download: true in the config, or --set data.download=true\n"
        "  - resbench data prepare --from PATH, where PATH is the official .tar.gz, a "
        f"{spec.folder} folder, or an image-folder tree (train/ and test/) or its .tar.gz\n"
        "  - point --set data.root=DIR at a folder that holds the data"
    )


# --------------------------------------------------------------------------------------------
# The cache


def _cache_path(spec: _Spec, root: Path) -> Path:
    return root / f"resbench-{spec.key}.npz"


def _read_cache(path: Path, spec: _Spec) -> Arrays | None:
    """The cached arrays; None for an older cache version, which is then rebuilt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != _CACHE_VERSION:
                return None
            names = ("train_x", "train_y", "test_x", "test_y")
            arrays = Arrays(
                *(z[k] for k in names),
                str(z["source"]),
                bool(z["official"]),
                tuple(str(s) for s in z["notes"]),
            )
    except Exception as err:  # a torn or foreign file: name it rather than let numpy's error escape
        raise DataError(f"{path} is not a readable resbench cache ({err}); {_REBUILD_CACHE}") from None
    return _checked(arrays, spec, path, _REBUILD_CACHE)


_REBUILD_CACHE = (
    "delete it: the next start rebuilds it from the files beside it, or run resbench data prepare again"
)


def _write_cache(path: Path, arrays: Arrays) -> None:
    """Write atomically: a crash or a full disk leaves no torn cache (WriteError, an OSError)."""
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            version=np.int64(_CACHE_VERSION),
            train_x=arrays.train_x,
            train_y=arrays.train_y,
            test_x=arrays.test_x,
            test_y=arrays.test_y,
            source=np.str_(arrays.source),
            official=np.bool_(arrays.official),
            notes=np.array(arrays.notes, dtype=str),
        )


def _checked(arrays: Arrays, spec: _Spec, where: Path, fix: str) -> Arrays:
    """Refuse what would train wrongly or crash later: the shapes, dtypes and label range of both splits."""
    classes = len(spec.classes)
    for split, x, y in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or y.shape != (len(x),):
            problem = (
                f"expected uint8 {split} images (N, 3, 32, 32) and N labels, got {x.dtype} {x.shape} "
                f"and {y.shape}"
            )
        elif not len(x):
            problem = f"the {split} split is empty"
        elif not np.issubdtype(y.dtype, np.integer):  # float labels would be truncated silently
            problem = f"the {split} labels are {y.dtype}, not integers"
        elif y.min() < 0 or y.max() >= classes:
            problem = (
                f"the {split} labels run from {y.min()} to {y.max()}, outside {spec.name}'s 0..{classes - 1}"
            )
        else:
            continue
        raise DataError(f"{where}: {problem}; {fix}")
    return arrays


# --------------------------------------------------------------------------------------------
# torchvision's pickles and the official archive


_PICKLE_GLOBALS = {"numpy.ndarray", "numpy.dtype", "_codecs.encode"} | {
    f"numpy.{core}.{function}"  # numpy 2 renamed numpy.core to numpy._core; Python 2 pickles name the old one
    for core in ("core", "_core")
    for function in ("multiarray._reconstruct", "numeric._frombuffer")
}


class _NumpyUnpickler(pickle.Unpickler):
    """The CIFAR pickles hold dicts, lists, strings and numpy arrays only. Refuse anything else:
    unpickling an arbitrary file can run arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _official_md5s(spec: _Spec) -> dict[str, str]:
    """File name -> md5, as torchvision hard-codes them (imported here: only a first load needs them)."""
    from torchvision import datasets

    tv = getattr(datasets, spec.name.replace("-", ""))
    return {
        **dict(tv.train_list),
        **dict(tv.test_list),
        tv.meta["filename"]: tv.meta["md5"],
        tv.filename: tv.tgz_md5,
    }


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_batch(path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    """One pickle: `data` is uint8 (N, 3072), R then G then B plane, each row-major."""
    try:
        with open(path, "rb") as f:
            batch = _NumpyUnpickler(f, encoding="latin1").load()
        x, y = batch["data"], np.asarray(batch[spec.label_key])  # dtype kept: float labels are refused
    except Exception as err:  # truncated, foreign or not a pickle: many exception types, one message
        raise DataError(
            f"{path} is not a readable {spec.name} pickle ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{path}: expected uint8 data of shape (N, 3072), got {getattr(x, 'shape', type(x))}")
    integers = y.shape == (len(x),) and np.issubdtype(y.dtype, np.integer)
    if not integers or not ((y >= 0) & (y < len(spec.classes))).all():
        raise DataError(f"{path}: expected {len(x)} integer labels in 0..{len(spec.classes) - 1}")
    return x.reshape(-1, 3, 32, 32), y


def _read_batches(folder: Path, names: tuple[str, ...], spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    batches = [_read_batch(folder / name, spec) for name in names]
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def _read_pickles(spec: _Spec, folder: Path) -> Arrays:
    files = (*spec.train_files, *spec.test_files)
    for name in files:
        if not (folder / name).is_file():
            raise DataError(f"{folder / name} is missing; {folder} must hold {', '.join(files)}")
    train_x, train_y = _read_batches(folder, spec.train_files, spec)
    test_x, test_y = _read_batches(folder, spec.test_files, spec)
    # The data files must match; the meta file (class names only) is checked where it is present.
    sums = {name: md5 for name, md5 in _official_md5s(spec).items() if name != spec.archive}
    present = [name for name in sums if (folder / name).is_file()]
    official = all(_md5(folder / name) == sums[name] for name in present)
    notes = ()
    if not official:
        notes = (
            f"the {spec.name} files in {folder} do not match the official checksums (a re-encoded or "
            "rebuilt copy?); loading them anyway. Results are comparable only with runs on the same copy.",
        )
    source = f"{spec.folder} pickles in {folder.parent}/"
    arrays = Arrays(train_x, train_y, test_x, test_y, source, official, notes)
    return _checked(arrays, spec, folder, "replace it with a good copy (resbench data prepare --from PATH)")


def _read_official_archive(spec: _Spec, archive: Path, root: Path) -> Arrays:
    """md5-check the archive, extract it into `root` and read the pickles it held."""
    archive_ok = _md5(archive) == _official_md5s(spec)[spec.archive]
    _extract(archive, root, spec.folder)
    arrays = _read_pickles(spec, root / spec.folder)
    source = f"{archive.name}, extracted to {root / spec.folder}"
    if archive_ok or not arrays.official:
        return arrays._replace(source=source)
    note = (
        f"{archive} does not match the official checksum; loading the files it held anyway. "
        "Results are comparable only with runs on the same copy."
    )
    return arrays._replace(source=source, official=False, notes=(note,))


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Extract `folder/` from `archive` into `root`; refuses paths that escape and links.

    Extracts into a temporary folder first, so a bad archive leaves no half-written `root/folder`.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:
                    if (
                        PurePosixPath(m.name).is_absolute()
                        or ".." in PurePosixPath(m.name).parts
                        or not (m.isfile() or m.isdir())
                    ):
                        raise DataError(
                            f"{archive}: refusing to extract {m.name!r} (absolute path, '..' or link)"
                        )
                    _check_size(archive, m.name, m.size, _MAX_ARCHIVE_MEMBER_BYTES)
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **safe)
            if not (Path(tmp) / folder).is_dir():
                raise DataError(f"{archive} holds no {folder}/ folder")
            os.replace(Path(tmp) / folder, root / folder)
    except (tarfile.TarError, OSError, EOFError) as err:  # gzip reports truncation as EOFError
        reason = describe(err) if isinstance(err, OSError) else err
        raise DataError(f"cannot extract {archive} into {root}: {reason}") from None


def _check_size(where: Path, name: str, size: int, limit: int) -> None:
    """Refuse a file or archive member by the size it declares, before reading it."""
    if size > limit:
        raise DataError(
            f"{where}: {name} claims {size:,} bytes, more than the {limit:,} a CIFAR file can need; "
            "this is not a CIFAR copy. Use the official archive or an image-folder copy of 32x32 images."
        )


def _download(spec: _Spec, root: Path) -> Arrays:
    from torchvision import datasets

    try:
        getattr(datasets, spec.name.replace("-", ""))(str(root), train=True, download=True)
    except Exception as err:  # URLError, timeouts, HTTP errors, a failed checksum: all end here
        raise DataError(
            f"could not download {spec.name} into {root.resolve()}: {err}\n"
            "Without a network, use resbench data prepare --from PATH or --set data.root=DIR."
        ) from None
    arrays = _read_pickles(spec, root / spec.folder)
    return arrays._replace(source=f"{arrays.source} (downloaded by torchvision)")


# --------------------------------------------------------------------------------------------
# Image folders: train/<class>/*.png and test/<class>/*, as a tree or a .tar.gz of one


class _Image(NamedTuple):
    split: str  # "train" or "test"
    label: str  # the class folder's name
    file: str
    where: str  # for error messages
    data: bytes


def _read_image_tree(spec: _Spec, root: Path) -> Arrays:
    images = [
        _Image(split, class_dir.name, f.name, str(f), _read_image_file(f))
        for split in ("train", "test")
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir() and p.name[0] != ".")
        for f in sorted(class_dir.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    ]
    return _decode(spec, images, f"image folders train/ + test/ in {root}/", root)


def _read_image_file(path: Path) -> bytes:
    _check_size(path.parent, path.name, path.stat().st_size, _MAX_IMAGE_BYTES)
    return path.read_bytes()


def _read_image_archive(spec: _Spec, archive: Path) -> Arrays | None:
    """The images of a .tar.gz holding [prefix/]train/<class>/* and test/<class>/*; None if none."""
    images = []
    try:
        with tarfile.open(archive, "r|gz") as tar:  # streamed: one pass over the members
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if (
                    m.isfile()
                    and len(parts) >= 3
                    and parts[-3] in ("train", "test")
                    and parts[-1].lower().endswith(IMAGE_SUFFIXES)
                    and not parts[-1].startswith(".")
                ):
                    _check_size(archive, m.name, m.size, _MAX_IMAGE_BYTES)
                    data = tar.extractfile(m).read()  # type: ignore[union-attr]
                    images.append(_Image(parts[-3], parts[-2], parts[-1], f"{archive}:{m.name}", data))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive} is not a readable .tar.gz ({err})") from None
    if {i.split for i in images} != {"train", "test"}:
        return None
    return _decode(spec, images, f"image folders in {archive}", archive)


def _decode(spec: _Spec, images: list[_Image], source: str, where: Path) -> Arrays:
    """Decode with PIL, class by class, files in sorted order; every image must be 32x32."""
    arrays: list[np.ndarray] = []
    for split in ("train", "test"):
        chosen = sorted((_label(spec, i), i.file, i) for i in images if i.split == split)
        if not chosen:
            raise DataError(f"{where} holds no {split} images ({split}/<class>/*.png or .jpg)")
        arrays += [
            np.stack([_pixels(i) for *_, i in chosen]),
            np.array([y for y, *_ in chosen], dtype=np.int64),
        ]
    notes = (
        f"the {spec.name} images in {where} are an image-folder copy, not the official pickles"
        + (
            " (JPEG re-encodings are lossy: accuracy runs a little below the official files)"
            if any(i.file.lower().endswith((".jpg", ".jpeg")) for i in images)
            else ""
        )
        + ". Results are comparable only with runs on the same copy.",
    )
    return Arrays(*arrays, source=source, official=False, notes=notes)


def _label(spec: _Spec, image: _Image) -> int:
    if image.label.isdigit() and int(image.label) < len(spec.classes):
        return int(image.label)
    if image.label in spec.classes:
        return spec.classes.index(image.label)
    raise DataError(
        f"{image.where}: the class folder {image.label!r} is neither a {spec.name} class name "
        f"({', '.join(spec.classes[:3])}, ...) nor a class number 0..{len(spec.classes) - 1}"
    )


def _pixels(image: _Image) -> np.ndarray:
    """uint8 (3, 32, 32)."""
    try:
        with Image.open(io.BytesIO(image.data)) as im:
            size = im.size
            rgb = np.asarray(im.convert("RGB")) if size == (32, 32) else None
    except Exception as err:  # PIL raises several types for broken files
        raise DataError(f"{image.where} is not a readable image ({err})") from None
    if rgb is None:
        raise DataError(f"{image.where} is {size[0]}x{size[1]}; CIFAR images are 32x32")
    return rgb.transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------
# resbench data prepare


def prepare(src: Path | None, root: Path, dataset: str = "cifar10") -> str:
    """Copy or extract `src` into `root` where `load` finds it, then write the cache.

    With no `src`, download the official archive with torchvision's downloader. Whatever fails (bad
    data, a full disk, a read-only root, Ctrl-C), `root` is left holding what it held before.
    """
    if dataset not in _SPECS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(_SPECS)}")
    spec, root = _SPECS[dataset], Path(root).expanduser()
    forms = (
        f"the official {spec.archive}, a {spec.folder} folder, an image-folder tree "
        "(train/ and test/) or a .tar.gz of one"
    )
    if src is not None and not Path(src).expanduser().exists():
        raise DataError(f"{src} does not exist; --from takes {forms}")
    before = set(root.iterdir()) if root.is_dir() else set()
    cache = _cache_path(spec, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if src is None:
            arrays, did = _download(spec, root), f"downloaded {spec.name} to {root / spec.folder}"
        else:
            arrays, did = _place_and_read(spec, Path(src).expanduser(), root, forms)
        _write_cache(cache, arrays)
    except BaseException as err:
        for path in set(root.iterdir()) - before if root.is_dir() else ():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise DataError(
                f"cannot prepare {spec.name} in {root}: {describe(err)}. Nothing of it was kept there; "
                "free some space or choose a writable --root, then run it again."
            ) from None
        raise
    status = "official files" if arrays.official else "not the official files: see the note at training"
    return (
        f"{did}; {len(arrays.train_y):,} training + {len(arrays.test_y):,} test images "
        f"cached in {cache} ({status})"
    )


def _place_and_read(spec: _Spec, src: Path, root: Path, forms: str) -> tuple[Arrays, str]:
    """Put `src` where `load` looks for it and read it from there; returns (arrays, what was done)."""
    is_archive = src.is_file() and src.name.endswith((".tar.gz", ".tgz"))
    if src.is_dir() and ((src / spec.folder).is_dir() or (src / spec.train_files[0]).is_file()):
        folder = src / spec.folder if (src / spec.folder).is_dir() else src
        _place(folder, root / spec.folder, shutil.copytree)
        return _read_pickles(spec, root / spec.folder), f"copied {folder} to {root / spec.folder}"
    if src.is_dir() and (src / "train").is_dir() and (src / "test").is_dir():
        for split in ("train", "test"):
            _place(src / split, root / split, shutil.copytree)
        return _read_image_tree(spec, root), f"copied the image folders of {src} to {root}"
    if is_archive and _first_folder(src) == spec.folder:
        if (root / spec.folder).exists():
            raise DataError(f"{root / spec.folder} already exists; remove it to prepare again from {src}")
        return _read_official_archive(spec, src, root), f"extracted {src} to {root / spec.folder}"
    if is_archive:
        _place(src, root / src.name, shutil.copy2)
        arrays = _read_image_archive(spec, root / src.name)
        if arrays is None:
            raise DataError(f"{src} holds neither {spec.folder}/ nor train/ + test/ image folders")
        return arrays, f"copied {src} to {root}"
    raise DataError(f"{src} is not a form resbench reads; --from takes {forms}")


def _place(src: Path, dest: Path, copy: Callable[[Path, Path], Any]) -> None:
    """Copy `src` to `dest`, unless it is already there; never overwrite other data."""
    if dest.exists() and dest.resolve() == src.resolve():
        return
    if dest.exists():
        raise DataError(f"{dest} already exists; remove it to prepare again from {src}")
    copy(src, dest)


def _first_folder(archive: Path) -> str | None:
    """The top folder of an archive's first member: cheap, as only its head is decompressed."""
    try:
        with tarfile.open(archive, "r|gz") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive} is not a readable .tar.gz ({err})") from None
    return PurePosixPath(first.name).parts[0] if first else None
