"""What training uses of CIFAR-10/100: splits on the device, their statistics, the §4.2 batches.

Holds:
- `build_data(cfg, device)`: takes the images and labels from `cifar.load` (whatever form they were
  on disk), carves out the validation split, computes the normalisation statistics on the training
  split and puts uint8 tensors on the device once.
- `Data.fingerprint`: a checksum of the loaded images and labels, so a resumed run can tell that
  the files under the same `data.root` were replaced.
- `Batches`: endless training batches with the §4.2 augmentation (pad 4, random 32x32 crop, flip) as
  batched tensor ops on the device: no DataLoader, no PIL and no host sync per step.

No file formats, checksums or cache here (cifar.py reads the disk), no training loop, and nothing
prints: warnings travel in `Data.notes` for the CLI to show.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from resbench import cifar
from resbench.config import NUM_CLASSES, DataConfig
from resbench.errors import DataError


@dataclass(frozen=True, eq=False)
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32), contiguous, on the device
    labels: torch.Tensor  # int64 (N,), on the device

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Data:
    """The dataset on the device. `mean` and `std` are in [0, 1] pixel units, from `train` only."""

    train: Split
    test: Split
    val: Split | None  # held out of the official training set when data.val_size > 0
    mean: torch.Tensor  # float32: the (3, 32, 32) mean image (pixel_mean) or (3, 1, 1) channel means
    std: torch.Tensor  # float32: ones (1, 1, 1) for pixel_mean, per-channel std (3, 1, 1) for channel
    num_classes: int
    source: str  # what was loaded from where
    official: bool  # every file matched torchvision's md5 sums
    notes: tuple[str, ...]  # warnings for the CLI to print
    fingerprint: str  # sha256 of every image and label loaded, before the val split (hex, 16 digits)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, 32, 32) -> float32 (x/255 - mean) / std."""
        return (images.float() / 255 - self.mean) / self.std


def build_data(cfg: DataConfig, device: torch.device | str) -> Data:
    """Load `cfg.dataset` from `cfg.root` (see cifar.py), split it and move it to `device`."""
    arrays = cifar.load(cfg.dataset, Path(cfg.root), cfg.download)
    device = torch.device(device)
    train_x, train_y = arrays.train_x, arrays.train_y
    val = None
    if cfg.val_size:
        n = len(train_y)
        if cfg.val_size >= n:
            raise DataError(f"data.val_size={cfg.val_size} leaves no training images; use at most {n - 1}")
        # Split seed 0, not run.seed: every run holds out the same images (§4.2's 45k/5k split).
        order = np.random.default_rng(0).permutation(n)
        held, kept = np.sort(order[: cfg.val_size]), np.sort(order[cfg.val_size :])
        val = _split(train_x[held], train_y[held], device)
        train_x, train_y = train_x[kept], train_y[kept]
    mean, std = _statistics(train_x, cfg.normalize)
    return Data(
        train=_split(train_x, train_y, device),
        test=_split(arrays.test_x, arrays.test_y, device),
        val=val,
        mean=mean.to(device),
        std=std.to(device),
        num_classes=NUM_CLASSES[cfg.dataset],
        source=arrays.source,
        official=arrays.official,
        notes=arrays.notes,
        fingerprint=_fingerprint(arrays),
    )


def _fingerprint(arrays: cifar.Arrays) -> str:
    """What was loaded, not where from: the same images and labels give the same value from any form.
    sha256 takes about 0.1 s for CIFAR's 184 MB."""
    digest = hashlib.sha256()
    for a in (arrays.train_x, arrays.train_y.astype(np.int64), arrays.test_x, arrays.test_y.astype(np.int64)):
        digest.update(str(a.shape).encode())
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()[:16]


def _split(x: np.ndarray, y: np.ndarray, device: torch.device) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return Split(images=images, labels=torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device))


def _statistics(x: np.ndarray, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std in [0, 1] units of the training images only: the test set stays unseen."""
    if normalize == "pixel_mean":  # §4.2: "the per-pixel mean subtracted", no division
        mean = x.mean(axis=0, dtype=np.float64) / 255
        return torch.from_numpy(mean).float(), torch.ones(1, 1, 1)
    # Per-channel histograms of the uint8 values give exact moments without a float copy of the set.
    counts = torch.stack(
        [torch.bincount(torch.from_numpy(x[:, c]).flatten(), minlength=256) for c in range(3)]
    )
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = counts.double() @ levels / counts.sum(1)
    std = (counts.double() @ levels**2 / counts.sum(1) - mean**2).sqrt()
    return mean.float().view(3, 1, 1), std.float().view(3, 1, 1)


# --------------------------------------------------------------------------------------------
# Batches


class Batches:
    """Endless training batches: seeded per-epoch permutation, batched random crop + flip on the device.

    Each epoch visits the training set in a fresh random order and drops the last partial batch, so
    every step sees `batch_size` images (128 in §4.2). Augmentation (§4.2): "4 pixels are padded on
    each side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip".
    """

    def __init__(
        self,
        data: Data,
        batch_size: int,
        seed: int,
        augment: bool = True,
        pad: int = 4,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        n = len(data.train)
        if not 0 < batch_size <= n:
            raise DataError(f"batch size {batch_size} does not fit a training set of {n} images")
        self.data, self.batch_size, self.augment, self.pad = data, batch_size, augment, pad
        # Under DDP every rank draws the same global batch and keeps its slice of it.
        self.local = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.steps_per_epoch = n // batch_size
        device = data.train.images.device
        self.generator = torch.Generator(device=device)  # the only source of randomness here
        self.generator.manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator, device=device)  # refilled in place
        self.pos = 0  # the next batch starts at perm[pos]; Python ints keep next() free of host syncs
        self.epoch = 0
        # pos again, on the device, so that `take` needs no host int and a CUDA graph can replay it
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(self.local.start, self.local.stop, device=device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 normalized images (B, 3, 32, 32) and int64 labels (B,)."""
        self.advance()
        return self.take()

    def advance(self) -> None:
        """The host's side of the next batch: a new epoch if it does not fit (the partial batch left
        over is dropped), a fresh order drawn now and written into the same buffer; then `pos` moves
        on. `take` does the device's side, which a CUDA graph can replay."""
        n = len(self.perm)
        if self.pos + self.batch_size > n:
            self.perm.copy_(torch.randperm(n, generator=self.generator, device=self.perm.device))
            self.pos, self.epoch = 0, self.epoch + 1
            self.cursor.zero_()
        self.pos += self.batch_size

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at the cursor, and the cursor moved on. Device work only, in tensors that stay
        where they are, so a CUDA graph can replay it; `next` is `advance`, then `take`."""
        index = self.perm.index_select(0, self.cursor + self.offsets)
        self.cursor += self.batch_size
        images = self.data.normalize(self.data.train.images[index])
        if self.augment:
            images = self._crop_and_flip(images)
        return images.contiguous(memory_format=self.memory_format), self.data.train.labels[index]

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        """One gather: each image's own crop offset, and reversed columns where it is flipped."""
        b, _, h, w = x.shape
        p, g, device, n = self.pad, self.generator, x.device, self.batch_size
        # Zeros after normalization: the padding is the mean image (pixel_mean) or colour (channel).
        padded = F.pad(x, (p, p, p, p))
        # Drawn for the whole global batch, then sliced: the same draws whatever the world size.
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=g, device=device)[self.local]
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=g, device=device)[self.local]
        flip = (torch.rand((n, 1), generator=g, device=device) < 0.5)[self.local]
        i, j = torch.arange(h, device=device), torch.arange(w, device=device)
        rows = dy + i  # (b, h)
        cols = dx + torch.where(flip, w - 1 - j, j)  # (b, w): a flip reads the columns right to left
        samples = torch.arange(b, device=device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=device)[None, :, None, None]
        return padded[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only, so `torch.load(weights_only=True)` reads it back."""
        return {
            "generator": self.generator.get_state(),
            "perm": self.perm.cpu(),
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` was taken: same order, same crops and flips."""
        if state["perm"].shape != self.perm.shape:
            raise DataError(
                f"the saved batch order covers {len(state['perm'])} training images, this training "
                f"set has {len(self.perm)}: did data.val_size or the dataset change?"
            )
        self.generator.set_state(state["generator"].cpu())  # CPU and CUDA generators both take a CPU tensor
        self.perm.copy_(state["perm"])  # into the same tensors: a CUDA graph may be captured on them
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])
        self.cursor.fill_(self.pos)
