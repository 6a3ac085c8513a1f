"""Re-evaluating runs: a run's final model (its last.pt), evaluated in one process, next to what its
summary.json recorded. This is how a user, and the tests, check that a reported error belongs to the
saved model. Nothing here prints; `resbench evaluate` renders the result.

    evaluate_run(run_dir, overrides, device, split) -> Evaluation

The model is evaluated with the run's own config and precision, on test and, where the run holds out
a validation set, on val, by the function the training loop uses. `split="train"` evaluates it in eval
mode on the un-augmented training split instead (the held-out val images are not part of it): the
training error the construction argument of `resbench deepen` is about. summary.json's train_error
is a running train-mode error on augmented batches, another number, so it is shown, not compared;
except for a constructed run, whose summary.json records exactly this eval-mode number.

`--set data.root=DIR` evaluates the same model on another copy of the data; its numbers are
compared only where the images are the ones the run was trained on (the same `Data.fingerprint`),
and shown otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from resbench import config
from resbench.analysis.trained import final_model
from resbench.config import flatten
from resbench.data import build_data
from resbench.errors import CheckpointError, ConfigError
from resbench.hardware import autocast, resolve_device, resolve_precision
from resbench.rundir import CONFIG, read_summary, run_state
from resbench.train import evaluate

# What `--set` may change: where the images come from, never what the model is or how it sees them.
DATA_KEYS = ("data.root", "data.download")


@dataclass(frozen=True)
class Tolerance:
    error: float  # percentage points
    loss: float  # relative to the recorded loss


# fp32 on CPU computes every batch exactly as the training loop did (under DDP too: see
# train.evaluate). bf16 rounds each layer's output to 8 bits of mantissa, and another device or
# torch.compile runs other kernels, so a few near-tied images may flip: 0.5 points is 50 of CIFAR's
# 10,000 test images.
EXACT = Tolerance(error=0.0, loss=0.0)
ROUNDING = Tolerance(error=0.5, loss=0.01)


@dataclass(frozen=True)
class SplitResult:
    split: str  # test, val or train (eval mode, un-augmented)
    images: int
    error: float  # %, evaluated now
    loss: float
    recorded_error: float | None  # from summary.json; None where nothing was recorded
    recorded_loss: float | None

    def within(self, tolerance: Tolerance) -> bool:
        if self.recorded_error is None or self.recorded_loss is None:
            return True
        error_ok = abs(self.error - self.recorded_error) <= tolerance.error
        return error_ok and abs(self.loss - self.recorded_loss) <= tolerance.loss * abs(self.recorded_loss)


@dataclass(frozen=True)
class Evaluation:
    """One run's last.pt evaluated now, beside what the run recorded."""

    run_dir: Path
    name: str
    seed: int
    iteration: int  # of last.pt
    iterations: int  # of the schedule: last.pt is the final model when they are equal
    device: str
    precision: str
    data_root: Path
    data_fingerprint: str  # Data.fingerprint of the images evaluated
    data_source: str
    official: bool  # every data file matched torchvision's checksums
    notes: tuple[str, ...]  # what the data loader noted about this copy
    splits: tuple[SplitResult, ...]
    tolerance: Tolerance | None  # None: nothing compared, `unchecked` says why
    unchecked: str | None = None

    @property
    def agrees(self) -> bool:
        return self.tolerance is None or all(s.within(self.tolerance) for s in self.splits)


def evaluate_run(
    run_dir: Path,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | None = None,
    split: Literal["test", "train"] = "test",
) -> Evaluation:
    """Evaluate `run_dir`'s last.pt on its test (and val) split, or with `split="train"` on its
    un-augmented training split; compare it with summary.json.

    An unfinished run (a last.pt, no summary.json) is evaluated too, and says so: nothing is compared.
    `overrides` may only set DATA_KEYS; `device` defaults to the run's own run.device.
    """
    trained, model, saved = final_model(run_dir)  # checked: a run directory, its last.pt, its config
    cfg = config.load(run_dir / CONFIG, [*overrides, *([f"run.device={device}"] if device else [])])
    old, new = flatten(trained.to_dict()), flatten(cfg.to_dict())
    if changed := sorted(k for k in new if new[k] != old[k] and k not in (*DATA_KEYS, "run.device")):
        raise ConfigError(
            f"evaluate may only set {', '.join(DATA_KEYS)} (and --device), not {', '.join(changed)}: "
            "a run's model is evaluated with the config it was trained with"
        )
    iteration, where = saved["iteration"], resolve_device(cfg.run.device)
    precision = resolve_precision(saved["precision"], where)
    # channels_last as in training: the same conv kernels, so the same numbers to the bit
    model = model.to(where, memory_format=torch.channels_last)
    data = build_data(cfg.data, where)
    summary = read_summary(run_dir) if run_state(run_dir) == "finished" else None
    if summary is not None and summary.iterations != iteration:
        raise CheckpointError(
            f"{run_dir}: last.pt is at iteration {iteration} but summary.json at "
            f"{summary.iterations}: they are not one model. Train the run again with --force."
        )
    constructed = summary is not None and summary.constructed_from is not None
    recorded = {
        "test": (summary.test_error, summary.test_loss) if summary else (None, None),
        "val": (summary.val_error, summary.val_loss) if summary else (None, None),
        # only a constructed run records the eval-mode training error (see the module docstring)
        "train": (summary.train_error, summary.train_loss) if summary and constructed else (None, None),
    }
    if split == "train":
        splits = {"train": data.train}
    else:
        splits = {"test": data.test, **({"val": data.val} if data.val is not None else {})}
    results = []
    for name, images_of in splits.items():
        loss, error, images = evaluate(model, data, images_of, autocast(where, precision))
        results.append(SplitResult(name, images, error, loss, *recorded[name]))

    root, trained_root = (Path(c.data.root).expanduser().resolve() for c in (cfg, trained))
    # The images decide, not the path: the same root may hold other images now, and another root the
    # same ones. Checkpoints from before the fingerprint was saved fall back to the path.
    recorded_fingerprint = saved.get("data_fingerprint")
    same_data = (
        recorded_fingerprint == data.fingerprint if recorded_fingerprint is not None else root == trained_root
    )
    unchecked = None
    if summary is None:
        unchecked = (
            f"unfinished: last.pt is at iteration {iteration} of {cfg.schedule.iterations}, "
            "and there is no summary.json to compare with"
        )
    elif not same_data:
        trained_on = (
            f"fingerprint {recorded_fingerprint}, here {data.fingerprint}"
            if recorded_fingerprint is not None
            else str(trained_root)
        )
        unchecked = f"other images than the run was trained on ({trained_on}): shown, not compared"
    elif split == "train" and not constructed:
        unchecked = (
            "summary.json's train_error is the running error on augmented batches in train mode, "
            "another number: this eval-mode error on the un-augmented training split is shown, not "
            "compared"
        )
    exact = (
        precision == "fp32"
        and where.type == "cpu"
        and summary is not None
        and summary.device == "cpu"
        and not trained.run.compile
    )
    return Evaluation(
        run_dir=run_dir,
        name=cfg.run.name,
        seed=cfg.run.seed,
        iteration=iteration,
        iterations=cfg.schedule.iterations,
        device=str(where),
        precision=precision,
        data_root=root,
        data_fingerprint=data.fingerprint,
        data_source=data.source,
        official=data.official,
        notes=data.notes,
        splits=tuple(results),
        tolerance=None if unchecked else EXACT if exact else ROUNDING,
        unchecked=unchecked,
    )
