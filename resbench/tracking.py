"""Run directories and what a run records: the lock, config.yaml, env.json, TensorBoard, metrics.jsonl.

A run lives in `runs/<name>/seed<k>/`:

    config.yaml     the resolved config (`--config` accepts it back)
    env.json        versions, device, git commit, command line (one entry per start or resume)
    events.out...   TensorBoard scalars, step = iteration; hparams in the same directory
    metrics.jsonl   one JSON line per log point: the canonical record
    last.pt         the checkpoint (see checkpoint.py)
    summary.json    written at the end: final errors, parameters, MACs, wall time, images/s

The training loop sends every side effect through a `Tracker`. The base class does nothing (the
null twin), `RunFiles` writes the files above, and the CLI adds a console tracker of its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch

import resbench
from resbench.checkpoint import CHECKPOINT, changed_keys
from resbench.config import ConfigError, ResbenchError, RunConfig, flatten, load, validate
from resbench.files import atomic_write

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"


class RunDirError(ResbenchError):
    exit_code = 1


@dataclass(frozen=True)
class Summary:
    """The final numbers of one run (summary.json). Errors are in %, losses are cross-entropy."""

    name: str
    seed: int
    iterations: int
    train_error: float  # running error on augmented train-mode batches, over the last log window
    train_loss: float
    test_error: float  # the final model in eval mode on the whole test set (never the best one)
    test_loss: float
    val_error: float | None
    val_loss: float | None
    params: int
    macs: int
    wall_time: float  # seconds of training, summed over resumes
    images_per_sec: float  # training throughput over the whole run
    device: str
    precision: str
    test_samples: int = 0  # test images the final evaluation counted (each exactly once, also under DDP)


def run_dir_for(cfg: RunConfig, runs_dir: Path) -> Path:
    return runs_dir / cfg.run.name / f"seed{cfg.run.seed}"


# --------------------------------------------------------------------------------------------
# Opening a run directory


class RunLock:
    """An exclusive `flock` on `<run>/.lock`. The kernel drops it when its process dies, so a lock
    file left behind by a killed run is stale by construction and never blocks `--resume`."""

    def __init__(self, run_dir: Path, wait: bool = False) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK
        self._file: IO[str] | None = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunDirError(
                f"{run_dir} is in use by {holder}; two trainings never write one run directory. "
                "Wait for it to finish, or stop it first."
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def run_state(run_dir: Path) -> str:
    """'empty', 'finished' (summary.json), 'unfinished' (a checkpoint) or 'started' (files, no checkpoint)."""
    if (run_dir / SUMMARY).exists():
        return "finished"
    if (run_dir / CHECKPOINT).exists():
        return "unfinished"
    if run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        return "started"
    return "empty"


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> bool:
    """Check what `run_dir` holds against what was asked; returns True if training resumes from last.pt.

    Call it holding the run's lock. `force` wipes the directory and starts over.
    """
    state = run_state(run_dir)
    if force and state != "empty":
        for path in run_dir.iterdir():
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        state = "empty"
    if state == "finished":
        raise RunDirError(
            f"{run_dir} already holds a finished run (summary.json).\n"
            "Use --force to train it again from scratch, or change run.name, run.seed or --runs-dir."
        )
    if state in ("unfinished", "started") and not resume:
        what = (
            "an unfinished run with a checkpoint"
            if state == "unfinished"
            else "files of a run that stopped early"
        )
        raise RunDirError(
            f"{run_dir} already holds {what}.\n"
            "Use --resume to continue it, or --force to start it again from scratch."
        )
    if state == "started":  # killed before its first checkpoint: nothing to continue from
        return prepare_run_dir(run_dir, resume=False, force=True)
    return state == "unfinished"


def check_same_config(run_dir: Path, cfg: RunConfig, saved: dict[str, Any] | None = None) -> None:
    """Refuse to continue or reuse a run trained with another config; name the keys that differ."""
    # Through today's schema: keys added since the run was made take their defaults.
    saved_cfg = load(run_dir / "config.yaml") if saved is None else validate(saved, str(run_dir))
    if changed := changed_keys(saved_cfg.to_dict(), cfg.to_dict()):
        raise ConfigError(
            f"{run_dir} was trained with another config: it differs in {', '.join(changed)}. "
            "Restore those values, or start the run again with --force."
        )


def write_run_files(run_dir: Path, cfg: RunConfig, env: Mapping[str, Any]) -> None:
    """config.yaml, and env.json with one entry per start or resume."""
    atomic_write(run_dir / "config.yaml", cfg.to_yaml())
    env_path = run_dir / "env.json"
    history: list[Any] = json.loads(env_path.read_text()).get("starts", []) if env_path.exists() else []
    atomic_write(env_path, json.dumps({**env, "starts": [*history, dict(env)]}, indent=2) + "\n")


def environment(device: torch.device, precision: str) -> dict[str, Any]:
    """What reproducing this run needs to know beyond its config."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "resbench": resbench.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the resbench checkout that runs, with '-dirty' for uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # an installed wheel: resbench's version identifies the code
    return commit + ("-dirty" if dirty else "")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> Summary:
    return Summary(**json.loads((run_dir / SUMMARY).read_text()))


# --------------------------------------------------------------------------------------------
# Trackers


class Tracker:
    """Where the loop sends its side effects. This base class is the null tracker: it does nothing."""

    def start(self, cfg: RunConfig, start_iteration: int, env: Mapping[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        """A one-off message for the user, such as a warning about the data."""

    def step(self, iteration: int) -> None:
        """Called after every training step; must be cheap."""

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        """Scalars at a log or eval point; keys are TensorBoard tags (error/train, loss/test, lr, ...)."""

    def histograms(self, iteration: int, values: Mapping[str, Any]) -> None:
        """Per-layer vectors (tensors) at an analysis point, e.g. analysis/responses."""

    def finish(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        pass


class Trackers(Tracker):
    """Several trackers as one."""

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    def start(self, cfg: RunConfig, start_iteration: int, env: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.start(cfg, start_iteration, env)

    def note(self, message: str) -> None:
        for t in self.trackers:
            t.note(message)

    def step(self, iteration: int) -> None:
        for t in self.trackers:
            t.step(iteration)

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.log(iteration, metrics)

    def histograms(self, iteration: int, values: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.histograms(iteration, values)

    def finish(self, summary: Summary) -> None:
        for t in self.trackers:
            t.finish(summary)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


class RunFiles(Tracker):
    """TensorBoard events, metrics.jsonl and summary.json in the run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer: Any = None
        self.metrics: IO[str] | None = None

    def start(self, cfg: RunConfig, start_iteration: int, env: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in TensorBoard

        _truncate_metrics(self.run_dir / METRICS, start_iteration)
        if start_iteration:
            _wait_for_a_later_second(self.run_dir)
        # purge_step drops events logged after the checkpoint, so a resumed curve has no duplicate tail
        self.writer = SummaryWriter(
            str(self.run_dir), purge_step=start_iteration + 1 if start_iteration else None
        )
        if start_iteration == 0:
            self._write_hparams(cfg)
        self.metrics = open(self.run_dir / METRICS, "a")

    def _write_hparams(self, cfg: RunConfig) -> None:
        """HParams in this run's own directory (SummaryWriter.add_hparams would make a sub-run)."""
        from torch.utils.tensorboard.summary import hparams

        flat = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(cfg.to_dict()).items()
        }
        for summary in hparams(flat, {"error/test": 100.0, "error/train": 100.0}):
            self.writer.file_writer.add_summary(summary)

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, iteration)
        self.metrics.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if any(tag.startswith(("error/test", "error/val")) for tag in metrics):  # flush at every eval
            self.flush()

    def histograms(self, iteration: int, values: Mapping[str, Any]) -> None:
        for tag, value in values.items():
            self.writer.add_histogram(tag, value, iteration)

    def flush(self) -> None:
        self.writer.flush()
        self.metrics.flush()
        os.fsync(self.metrics.fileno())

    def finish(self, summary: Summary) -> None:
        atomic_write(self.run_dir / SUMMARY, json.dumps(asdict(summary), indent=2) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()
            self.metrics.close()
            self.writer = self.metrics = None


def _wait_for_a_later_second(run_dir: Path) -> None:
    """TensorBoard reads event files in name order, and names start with the creation second. The
    resumed file must sort after the earlier ones, or its purge would apply to the wrong events."""
    seconds = [
        int(p.name.split(".")[3])
        for p in run_dir.glob("events.out.tfevents.*")
        if p.name.split(".")[3].isdigit()
    ]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def _truncate_metrics(path: Path, start_iteration: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["iteration"] <= start_iteration]
    if len(kept) != len(lines):
        atomic_write(path, "".join(kept))
