"""Loss landscapes (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): a run's final
model moved along random, filter-normalised directions, its loss and error measured at each point.

    landscape_run(run_dir, dim, points, span, images, seed, device, progress) -> Landscape

A direction has the weights' shapes and Gaussian entries; each filter of it (a conv's output
channel, a linear layer's row) is scaled to the norm of the same filter of the trained weights, so
a step of 1 changes every filter by its own size whatever BN did to its scale. Biases and BN
parameters get zero (the paper's `--xignore biasbn`), and BN's running statistics stay: the model
is measured in eval mode. The points are θ + αδ (1-D) or θ + αδ + βη (2-D) on a grid over
[-span, span] that holds α = β = 0; the images are a fixed, seeded subset of the **training set
without augmentation**. The weights are moved in place and put back afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from resbench.analysis.trained import final_model
from resbench.data import Split, build_data
from resbench.errors import ConfigError
from resbench.hardware import autocast, resolve_device, resolve_precision
from resbench.train import evaluate

# CPU-sized: a 56-layer net on 1,000 images costs about 3 s a point on 2 cores (bf16), so 11 x 11
# points take about 6 min; on a GPU, 21 x 21 on 10,000 images is the paper's kind of picture.
DIM, POINTS, SPAN, IMAGES, SEED = 2, 11, 1.0, 1000, 0


@dataclass(frozen=True, eq=False)
class Landscape:
    """One run's loss and error on the grid; 2-D arrays are indexed [beta, alpha]."""

    run_dir: Path
    name: str
    seed: int  # the run's
    residual: bool
    depth: int
    weight_decay: float
    direction_seed: int
    images: int
    alphas: np.ndarray  # (points,)
    betas: np.ndarray | None  # (points,) in 2-D
    loss: np.ndarray  # (points,) or (points, points)
    error: np.ndarray  # %
    seconds_per_point: float

    @property
    def title(self) -> str:
        return f"{'ResNet' if self.residual else 'plain'}-{self.depth}"

    @property
    def centre_loss(self) -> float:
        return float(self.loss[tuple(s // 2 for s in self.loss.shape)])


def check_options(dim: int, points: int, span: float, images: int) -> None:
    """A ConfigError (exit 2) for a grid that cannot be drawn as asked."""
    if dim not in (1, 2):
        raise ConfigError(f"--dim {dim}: a landscape is 1-D (a curve) or 2-D (a surface); give 1 or 2")
    if points < 3 or points % 2 == 0:
        raise ConfigError(
            f"--points {points}: give an odd number of at least 3, so that the grid holds the trained "
            "model itself at its centre (alpha = 0)"
        )
    if not (math.isfinite(span) and span > 0):
        raise ConfigError(f"--span {span}: must be a finite number above 0 (the grid spans [-span, span])")
    if images < 1:
        raise ConfigError(f"--images {images}: must be at least 1")


def filter_normalised_direction(model: nn.Module, generator: torch.Generator) -> list[Tensor]:
    """A Gaussian direction per parameter (drawn on the CPU from `generator`), each filter scaled to
    the trained filter's norm; zero for biases and BN parameters (every parameter of one dimension)."""
    direction = []
    for p in model.parameters():
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        w = p.detach()
        scale = w.flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)
        direction.append(d * scale.view(-1, *([1] * (p.dim() - 1))))
    return direction


def landscape_run(
    run_dir: Path,
    dim: int = DIM,
    points: int = POINTS,
    span: float = SPAN,
    images: int = IMAGES,
    seed: int = SEED,
    device: torch.device | str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Landscape:
    """The landscape of `run_dir`'s final model (its last.pt), with its own precision; `progress`
    is called with (points done, points in all) after each point."""
    check_options(dim, points, span, images)
    cfg, model, saved = final_model(run_dir)
    where = device if isinstance(device, torch.device) else resolve_device(device)
    amp = autocast(where, resolve_precision(saved["precision"], where))
    model = model.to(where, memory_format=torch.channels_last)
    data = build_data(cfg.data, where)
    if images > len(data.train):
        raise ConfigError(
            f"--images {images:,}: the training set of {cfg.data.root} has {len(data.train):,} images; "
            f"ask for {len(data.train):,} or fewer"
        )
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:images]
    pick = pick.to(data.train.images.device)
    subset = Split(data.train.images[pick], data.train.labels[pick])

    generator = torch.Generator().manual_seed(seed)
    directions = [filter_normalised_direction(model, generator) for _ in range(dim)]
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    steps = np.linspace(-span, span, points)
    grid = [(a, 0.0) for a in steps] if dim == 1 else [(a, b) for b in steps for a in steps]
    loss, error = np.zeros(len(grid)), np.zeros(len(grid))
    started = time.perf_counter()
    try:
        with torch.no_grad():
            for i, (a, b) in enumerate(grid):
                torch._foreach_copy_(params, theta)
                torch._foreach_add_(params, directions[0], alpha=float(a))
                if dim == 2:
                    torch._foreach_add_(params, directions[1], alpha=float(b))
                loss[i], error[i], _ = evaluate(model, data, subset, amp)
                if progress is not None:
                    progress(i + 1, len(grid))
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, theta)
    shape = (points,) if dim == 1 else (points, points)
    return Landscape(
        run_dir=run_dir,
        name=cfg.run.name,
        seed=cfg.run.seed,
        residual=cfg.model.residual,
        depth=cfg.model.depth,
        weight_decay=cfg.optim.weight_decay,
        direction_seed=seed,
        images=images,
        alphas=steps,
        betas=steps if dim == 2 else None,
        loss=loss.reshape(shape),
        error=error.reshape(shape),
        seconds_per_point=(time.perf_counter() - started) / len(grid),
    )
