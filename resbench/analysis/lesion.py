"""Lesion studies (Veit et al. 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow
Networks"): blocks of a trained run's final model deleted at test time, and its test error measured
without them. Nothing here trains, prints or draws (report.py draws, console.py renders).

    lesion_run(run_dir, images, k_max, draws, seed, device) -> Lesion
    lesion_labels(lesions)                                  -> a label per run: name, values, seed

What "deleting" a block means:
- a residual block becomes its shortcut alone, relu(shortcut(x)): what the block computes when its
  branch F(x) outputs zero. That is x itself for an identity shortcut, x subsampled and zero-padded
  with option A, and the 1x1 projection with B or C (see `Deleted` for the ReLU);
- a plain block of unchanged shape becomes the identity: a plain net has no shortcut to fall back
  on, so the identity is the nearest thing to "no block";
- a plain block that changes the shape (stride 2, more planes) has nothing of the right shape to
  stand in for it: it is not deleted, and the Lesion says so (`BlockLesion.skipped`).

Every measurement is the error of the final model in eval mode, with the run's precision, on one
fixed, seeded subset of test images (probe.fixed_test_indices), by train.evaluate: the function the
training loop evaluates with, so on all test images the baseline is the run's own test error (to
the bit in fp32 on CPU, where the tests check it). The blocks are swapped in place for each
measurement and put back in a `finally`, so nothing leaks from one measurement to the next.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resbench.analysis.trained import final_model
from resbench.data import Split, build_data
from resbench.errors import ConfigError
from resbench.hardware import autocast, resolve_device, resolve_precision
from resbench.models import BasicBlock, Bottleneck
from resbench.probe import branch_end, fixed_test_indices
from resbench.train import evaluate

# The defaults of `resbench analyze --lesion`. 1,000 images: each measurement is one pass over them,
# about 4 s for a 56-layer net on 2 CPU cores in bf16, and a 56-layer net takes about 80 of them.
K_MAX = 10  # random deletions of k = 1..K blocks
DRAWS = 5  # seeded draws per k
IMAGES = 1000
SEED = 0  # of the random draws


@dataclass(frozen=True)
class LesionOptions:
    """What a lesion study measures; checked when made, so a bad option stops before any run is read."""

    k_max: int = K_MAX
    draws: int = DRAWS
    images: int = IMAGES
    seed: int = SEED

    def __post_init__(self) -> None:
        for option, value in (
            ("--lesion-k", self.k_max),
            ("--lesion-draws", self.draws),
            ("--lesion-images", self.images),
        ):
            if value < 1:
                raise ConfigError(f"{option} {value}: must be at least 1")
        if self.seed < 0:
            raise ConfigError(f"--lesion-seed {self.seed}: must be 0 or more")


@dataclass(frozen=True)
class BlockLesion:
    """One block deleted, all others kept."""

    index: int  # 1-based, in network order
    name: str  # e.g. stage2.0
    downsampling: bool  # stride 2 or a change in the number of planes
    error: float | None  # test error (%) without this block; None where it cannot be deleted
    skipped: str | None = None  # why it cannot be deleted (a plain downsampling block)


@dataclass(frozen=True)
class RandomLesion:
    """k blocks deleted at once, drawn at random among the deletable ones, `len(errors)` times."""

    k: int
    deleted: tuple[tuple[str, ...], ...]  # per draw, the blocks deleted, in network order
    errors: tuple[float, ...]  # per draw, test error (%)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.errors)

    @property
    def std(self) -> float:
        """Sample std over the draws (0 for one draw), as compare's Stat over seeds."""
        return statistics.stdev(self.errors) if len(self.errors) > 1 else 0.0


@dataclass(frozen=True)
class Lesion:
    """A run's lesion study: the baseline, each block deleted alone, and k random blocks at once."""

    run_dir: Path
    name: str  # run.name
    seed: int  # run.seed (the draws have their own: draw_seed)
    depth: int
    residual: bool
    shortcut: str | None  # A, B, C; None for a plain net
    images: int  # test images every error is measured on
    device: str
    precision: str
    chance: float  # % error of a net that guesses: 100 - 100 / classes
    baseline: float  # test error (%) with nothing deleted
    blocks: tuple[BlockLesion, ...]
    random: tuple[RandomLesion, ...]  # k = 1..K, K = min(k_max, deletable blocks)
    draw_seed: int
    overrides: tuple[str, ...] = field(default=())  # run.overrides: runs of one sweep differ in them

    @property
    def deletable(self) -> list[BlockLesion]:
        return [b for b in self.blocks if b.error is not None]

    @property
    def worst(self) -> BlockLesion | None:
        """The single deletion that costs the most; None where no block can be deleted."""
        return max(self.deletable, key=lambda b: b.error or 0.0, default=None)


def lesion_labels(lesions: Sequence[Lesion]) -> list[str]:
    """A label per run, for a legend or a table: its run.name, then its sweep values where runs
    differ in them, then its seed where another run has the same name and values."""
    shared = set.intersection(*(set(x.overrides) for x in lesions)) if lesions else set()
    models = [(x.name, tuple(e for e in x.overrides if e not in shared)) for x in lesions]
    labels = []
    for x, (name, overrides) in zip(lesions, models, strict=True):
        label = f"{name} [{','.join(overrides)}]" if overrides else name
        labels.append(label + (f" seed {x.seed}" if models.count((name, overrides)) > 1 else ""))
    return labels


# --------------------------------------------------------------------------------------------
# Deleting blocks


@dataclass(frozen=True, eq=False)
class Site:
    """Where a block sits (`stage[position]`), and what stands in for it deleted."""

    index: int  # 1-based, in network order
    name: str
    stage: nn.Sequential
    position: int
    downsampling: bool
    replacement: nn.Module | None  # None: it cannot be deleted, `skipped` says why
    skipped: str | None = None


class Deleted(nn.Module):
    """A residual block without its branch: relu(shortcut(x)), the block with F(x) = 0.

    The ReLU after the addition stays (§3.2, Fig. 2). With an identity or option A shortcut it
    changes nothing, since every block's input is already the output of a ReLU; with a projection it
    does, and without it a deleted block would differ from one whose branch outputs zero.
    """

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x))


def sites(model: nn.Module) -> list[Site]:
    """Every block of a CIFAR net (stage1..3), in network order, with what replaces it deleted."""
    found = []
    for stage_name in ("stage1", "stage2", "stage3"):
        stage = getattr(model, stage_name)
        for position, block in enumerate(stage):
            assert isinstance(block, (BasicBlock, Bottleneck)), type(block)
            stride = (block.conv1 if isinstance(block, BasicBlock) else block.conv2).stride[0]
            in_planes, out_planes = block.conv1.in_channels, branch_end(block).num_features
            downsampling = stride != 1 or in_planes != out_planes
            replacement: nn.Module | None = None
            skipped = None
            if block.shortcut is not None:
                replacement = Deleted(block.shortcut)
            elif not downsampling:
                replacement = nn.Identity()
            else:
                skipped = (
                    f"plain downsampling block (stride {stride}, {in_planes} -> {out_planes} planes): "
                    "with no shortcut, nothing of the right shape can stand in for it"
                )
            name = f"{stage_name}.{position}"
            found.append(Site(len(found) + 1, name, stage, position, downsampling, replacement, skipped))
    return found


@contextmanager
def deleted(model: nn.Module, chosen: Sequence[Site]) -> Iterator[nn.Module]:
    """The model with the chosen blocks replaced, for the block's duration; then the blocks are back."""
    kept = [(s, s.stage[s.position]) for s in chosen]
    try:
        for s in chosen:
            assert s.replacement is not None, f"{s.name} cannot be deleted"
            s.stage[s.position] = s.replacement
        yield model
    finally:
        for s, block in kept:
            s.stage[s.position] = block


# --------------------------------------------------------------------------------------------
# A run's lesion study


def draw_deletions(deletable: int, k_max: int, draws: int, seed: int) -> list[list[list[int]]]:
    """For k = 1..min(k_max, deletable), `draws` seeded draws of k distinct positions among
    `deletable`, each sorted: [k - 1][draw] -> positions. One generator, seeded once, in that order."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [sorted(torch.randperm(deletable, generator=generator)[:k].tolist()) for _ in range(draws)]
        for k in range(1, min(k_max, deletable) + 1)
    ]


def lesion_run(
    run_dir: Path,
    images: int = IMAGES,
    k_max: int = K_MAX,
    draws: int = DRAWS,
    seed: int = SEED,
    device: torch.device | str = "auto",
) -> Lesion:
    """The lesion study of a run's final model (its last.pt) on `images` fixed test images: the
    baseline, each block deleted alone, and k = 1..K random deletions, `draws` seeded draws each."""
    LesionOptions(k_max, draws, images, seed)  # checked here too, for callers of this function
    cfg, model, saved = final_model(run_dir)
    where = device if isinstance(device, torch.device) else resolve_device(device)
    precision = resolve_precision(saved["precision"], where)
    amp = autocast(where, precision)
    # channels_last as in training: the same conv kernels, so the baseline is the run's own numbers
    model = model.to(where, memory_format=torch.channels_last)
    data = build_data(cfg.data, where)
    if images > len(data.test):
        raise ConfigError(
            f"--lesion-images {images:,}: the test set of {cfg.data.root} has {len(data.test):,} images; "
            f"ask for {len(data.test):,} or fewer"
        )
    pick = fixed_test_indices(data, images)
    subset = Split(data.test.images[pick], data.test.labels[pick])

    measured: dict[tuple[int, ...], float] = {}  # by the sites deleted: a set drawn twice runs once

    def error(chosen: Sequence[Site]) -> float:
        key = tuple(s.index for s in chosen)
        if key not in measured:
            with torch.no_grad(), deleted(model, chosen):
                _, measured[key], _ = evaluate(model, data, subset, amp)  # loss, error (%), images
        return measured[key]

    every = sites(model)
    baseline = error([])
    deletable = [s for s in every if s.replacement is not None]
    blocks = tuple(
        BlockLesion(s.index, s.name, s.downsampling, error([s]) if s in deletable else None, s.skipped)
        for s in every
    )
    random = []
    for k, picks in enumerate(draw_deletions(len(deletable), k_max, draws, seed), start=1):
        chosen = [[deletable[i] for i in positions] for positions in picks]
        random.append(
            RandomLesion(
                k,
                tuple(tuple(s.name for s in c) for c in chosen),
                tuple(error(c) for c in chosen),
            )
        )
    return Lesion(
        run_dir=run_dir,
        name=cfg.run.name,
        seed=cfg.run.seed,
        depth=cfg.model.depth,
        residual=cfg.model.residual,
        shortcut=cfg.model.shortcut,
        images=images,
        device=str(where),
        precision=precision,
        chance=100.0 - 100.0 / data.num_classes,
        baseline=baseline,
        blocks=blocks,
        random=tuple(random),
        draw_seed=seed,
        overrides=cfg.run.overrides,
    )
