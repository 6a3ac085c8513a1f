"""Checkpoints: one atomic `last.pt` per run, loaded safely, and the checks that make resume exact.

`save` writes to a temp file, fsyncs it and renames it over `last.pt` (files.atomic_open), so a
crash mid-write leaves the previous checkpoint intact. `load` uses `torch.load(weights_only=True)`:
a checkpoint holds only tensors and plain Python values (RNG states are uint8 tensors). What goes
into a checkpoint is decided by `train.py`; this module only moves it to and from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resbench.config import ResbenchError, flatten
from resbench.files import atomic_open

CHECKPOINT = "last.pt"

# Keys that may change between a run and its resume without changing what is computed.
RESUMABLE_CHANGES = frozenset(
    {
        "run.device",
        "run.compile",
        "run.checkpoint_every",
        "analysis.every",
        "analysis.images",
        "analysis.per_channel",
    }
)


class CheckpointError(ResbenchError):
    exit_code = 1


def save(state: dict[str, Any], path: Path) -> None:
    """Write `state` atomically: a crash mid-write leaves the previous checkpoint as it was."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, or say clearly why it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume") from None
    except Exception as err:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a resbench checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}).\nRestore a good copy, or start the run again with --force."
        ) from None


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring harmless ones."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
