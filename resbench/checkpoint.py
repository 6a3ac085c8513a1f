"""Checkpoints on disk: an atomic save, a safe load, and `Saved`, a loaded checkpoint whose missing
key is a clear error.

`save` writes to a temp file, fsyncs it and renames it over the checkpoint (files.atomic_open), so a
crash mid-write leaves the previous one intact. `load` uses `torch.load(weights_only=True)`: a
checkpoint holds only tensors and plain Python values (RNG states are uint8 tensors). What goes into
a checkpoint, and whether a resume may continue it on this device and in this precision, is
decided by `train.py`; where it lives (`last.pt`) and whether a resume may use it (the same config,
the same data) by `rundir.py`. This module only moves it to and from disk.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from resbench.errors import CheckpointError
from resbench.files import atomic_open


def save(state: dict[str, Any], path: Path) -> None:
    """Write `state` atomically: a crash mid-write leaves the previous checkpoint as it was."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


class Saved(dict[str, Any]):
    """A loaded checkpoint. A key it lacks is a `CheckpointError` naming the file, not a KeyError."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        super().__init__(state)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise CheckpointError(_unreadable(self.path, f"it lacks {key!r}"))


def load(path: Path) -> Saved:
    """Read a checkpoint onto the CPU, or say clearly why it cannot be read."""
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle just before it refuses it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume") from None
    except Exception as err:  # torch raises many kinds for an empty, truncated or foreign file
        raise CheckpointError(_unreadable(path, _why(path, err))) from None
    if not isinstance(state, dict):
        raise CheckpointError(_unreadable(path, f"it holds a {type(state).__name__}, not a run's state"))
    return Saved(path, state)


def _unreadable(path: Path, why: str) -> str:
    return (
        f"checkpoint {path} is corrupt or not a resbench checkpoint: {why}.\n"
        "Restore a good copy of it, or train the run again with --force (resbench keeps no older checkpoint)."
    )


def _why(path: Path, err: Exception) -> str:
    if "weights only load failed" in str(err).lower():
        # our own words, not torch's: its message suggests the unsafe, code-running load as the fix
        return "it holds more than tensors and plain values, so it was refused (unpickling could run code)"
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    first = str(err).strip().split(". ")[0][:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
