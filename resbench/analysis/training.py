"""What runs recorded while they trained: their probes.jsonl (written with `analysis.every`), read
back layer by layer and block by block over iterations. Two pictures come from it (report.py):
gradient flow (each 3x3 layer's weight-gradient norm against iteration) and residual branches under
weight decay (each block's ||F(x)|| / ||shortcut(x)|| against iteration). Nothing is measured here.

    training_probes(run_dir) -> RunProbes | None   None: the run logged no probes
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resbench.errors import RunDirError
from resbench.models import build_model
from resbench.probe import residual_blocks, response_layers
from resbench.rundir import PROBES, read_probes, read_run_config, read_summary, run_state

# A block whose branch adds less than this fraction of its shortcut's norm is "near the identity".
NEAR_IDENTITY = 0.2


@dataclass(frozen=True, eq=False)
class RunProbes:
    """One run's probes over training: arrays of (analysis points, layers) and (points, blocks)."""

    run_dir: Path
    name: str
    seed: int
    residual: bool
    depth: int
    weight_decay: float
    iterations: np.ndarray  # (points,)
    layers: tuple[str, ...]  # the 3x3 layers' BN names, in network order
    blocks: tuple[str, ...]  # the residual blocks, in network order; () for a plain net
    grad_norm: np.ndarray  # (points, layers)
    block_ratio: np.ndarray | None  # (points, blocks): ||F(x)|| / ||shortcut(x)||
    branch_gamma: np.ndarray | None  # (points, blocks): ||gamma|| of the branch's last BN
    train_error: float | None  # summary.json's, where the run is finished
    test_error: float | None

    @property
    def title(self) -> str:
        return f"{'ResNet' if self.residual else 'plain'}-{self.depth}, wd {self.weight_decay:g}"

    @property
    def label(self) -> str:
        return f"{self.title} ({self.name}, seed {self.seed})"

    @property
    def final_median_ratio(self) -> float | None:
        return None if self.block_ratio is None else float(np.median(self.block_ratio[-1]))

    @property
    def final_near_identity(self) -> float | None:
        """The fraction of blocks whose last ratio is below NEAR_IDENTITY."""
        return None if self.block_ratio is None else float((self.block_ratio[-1] < NEAR_IDENTITY).mean())

    @property
    def first_to_last_gradient(self) -> np.ndarray:
        """The first 3x3 layer's gradient norm over the last one's, per analysis point."""
        return self.grad_norm[:, 0] / self.grad_norm[:, -1]


def training_probes(run_dir: Path) -> RunProbes | None:
    """`run_dir`'s probes.jsonl as arrays, checked against the run's net (one value per layer or
    block, in network order); None where the run has none (trained without `analysis.every`)."""
    cfg, _ = read_run_config(run_dir)
    records = read_probes(run_dir, torn_tail_ok=True)
    if not records:
        return None
    with torch.random.fork_rng(devices=[]):  # building a net draws its init from the global RNG
        model = build_model(cfg.model)
    layers = tuple(name for name, _, _ in response_layers(model))
    blocks = tuple(name for name, _ in residual_blocks(model))

    def matrix(key: str, names: tuple[str, ...]) -> np.ndarray:
        rows = [r.get(key) for r in records]
        if any(row is None or len(row) != len(names) for row in rows):
            raise RunDirError(
                f"{run_dir / PROBES} does not hold {len(names)} values of {key} per line, one for each "
                f"{'3x3 layer' if 'grad' in key else 'residual block'} of {cfg.run.name}'s net: it is "
                "not this run's. Restore the run's own file, or train the run again with --force."
            )
        return np.array(rows, dtype=float)

    summary = read_summary(run_dir) if run_state(run_dir) == "finished" else None
    return RunProbes(
        run_dir=run_dir,
        name=cfg.run.name,
        seed=cfg.run.seed,
        residual=cfg.model.residual,
        depth=cfg.model.depth,
        weight_decay=cfg.optim.weight_decay,
        iterations=np.array([r["iteration"] for r in records]),
        layers=layers,
        blocks=blocks,
        grad_norm=matrix("analysis/grad_norm", layers),
        block_ratio=matrix("analysis/block_ratio", blocks) if blocks else None,
        branch_gamma=matrix("analysis/branch_gamma", blocks) if blocks else None,
        train_error=summary.train_error if summary else None,
        test_error=summary.test_error if summary else None,
    )
