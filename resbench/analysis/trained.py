"""A run's trained model: its run directory opened for the config it was trained with and the net
of its last.pt. Every measurement on a trained run starts here. No measuring and no training here.

    final_model(run_dir) -> (RunConfig, model, Saved)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from resbench import checkpoint, config
from resbench.errors import RunDirError
from resbench.models import build_model
from resbench.rundir import CONFIG, read_run_config


def final_model(run_dir: Path) -> tuple[config.RunConfig, nn.Module, checkpoint.Saved]:
    """Open a run directory for its final model: the run's config, its net with the weights of
    last.pt, and last.pt's saved state. A RunDirError (exit 1) for anything that is not a run's
    final model: not a run directory, no last.pt, a config.yaml that is not the one last.pt was
    trained with (rundir.read_run_config), or weights of another net."""
    cfg, saved = read_run_config(run_dir, need_checkpoint=True)
    assert saved is not None
    weights = saved["model"]
    model = build_model(cfg.model)
    try:
        model.load_state_dict(weights if isinstance(weights, dict) else {})
    except RuntimeError as err:  # the keys or shapes of another architecture
        raise RunDirError(
            f"{saved.path} does not hold the model of {run_dir / CONFIG}: "
            f"{' '.join(str(err).split())[:200]}... It may belong to another run: restore this run's "
            "own last.pt, or train the run again with --force."
        ) from None
    return cfg, model, saved
