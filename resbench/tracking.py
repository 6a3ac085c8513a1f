"""What a run records while it trains: the `Tracker` interface, and `RunFiles`, its writer of the run
directory's TensorBoard events (with `hparams_of`, what the HParams tab shows), metrics.jsonl and
summary.json; `environment()`, what env.json records (rundir.write_run_files writes it).

The training loop sends every side effect through a `Tracker`. The base class does nothing (the
null twin), `RunFiles` writes the files, and console.ConsoleTracker shows progress in a terminal.

The run directory's layout, its lock and state, and reading its files back are in rundir.py; this
module asks it for every file name. Every failure to write is a `RunDirError` (rundir.writing).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import torch

import resbench
from resbench.config import RunConfig, flatten
from resbench.files import atomic_write
from resbench.models import build_model, count_params
from resbench.rundir import METRICS, PROBES, SUMMARY, Summary, truncate_metrics, writing

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

    def flush(self) -> None:
        """Make what was logged so far durable; called before each checkpoint is written."""

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

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def finish(self, summary: Summary) -> None:
        for t in self.trackers:
            t.finish(summary)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


class RunFiles(Tracker):
    """TensorBoard events, metrics.jsonl, probes.jsonl (with `analysis.every`) and summary.json in
    the run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer: Any = None
        self.metrics: IO[str] | None = None
        self.probes: IO[str] | None = None  # opened at the first analysis point

    def start(self, cfg: RunConfig, start_iteration: int, env: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in TensorBoard

        truncate_metrics(self.run_dir, start_iteration)
        if start_iteration:
            _wait_for_a_later_second(self.run_dir)
        with writing(self.run_dir):
            # purge_step drops events logged after the checkpoint, so a resumed curve has no duplicate tail
            self.writer = SummaryWriter(
                str(self.run_dir), purge_step=start_iteration + 1 if start_iteration else None
            )
            if start_iteration == 0:
                self._write_hparams(cfg, env.get("params"))
            self.metrics = open(self.run_dir / METRICS, "a")

    def _write_hparams(self, cfg: RunConfig, params: int | None) -> None:
        """The run's HParams (`hparams_of`) in its own directory (SummaryWriter.add_hparams would make a
        sub-run). Only the session start is written: TensorBoard then builds the table's columns from
        every run's values, so a key is marked as differing where it does, and its metrics from the
        scalars (error/train, error/test, ...), whose last values are the final errors. torch's
        experiment summary is left out: TensorBoard would take one run's at random for all of them,
        with every key marked as not differing."""
        from torch.utils.tensorboard.summary import hparams

        if params is None:  # a caller without a model at hand (env.json records it for train())
            with torch.random.fork_rng(devices=[]):  # building a net draws its init from the global RNG
                params = count_params(build_model(cfg.model))
        _, start, _ = hparams(hparams_of(cfg, params), {})
        self.writer.file_writer.add_summary(start)

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        with writing(self.run_dir):
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, iteration)
            self.metrics.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if any(tag.startswith(("error/test", "error/val")) for tag in metrics):  # flush at every eval
            self.flush()

    def histograms(self, iteration: int, values: Mapping[str, Any]) -> None:
        """TensorBoard histograms, and the vectors themselves in probes.jsonl: a histogram forgets
        which layer had which value, and the figures of layer x iteration need it."""
        with writing(self.run_dir):
            for tag, value in values.items():
                self.writer.add_histogram(tag, value, iteration)
            if self.probes is None:
                self.probes = open(self.run_dir / PROBES, "a")
            vectors = {tag: [float(v) for v in value] for tag, value in values.items()}
            self.probes.write(json.dumps({"iteration": iteration, **vectors}) + "\n")

    def flush(self) -> None:
        with writing(self.run_dir):
            self.writer.flush()
            for file in (self.metrics, self.probes):
                if file is not None:
                    file.flush()
                    os.fsync(file.fileno())

    def finish(self, summary: Summary) -> None:
        from torch.utils.tensorboard.summary import hparams

        with writing(self.run_dir):
            atomic_write(self.run_dir / SUMMARY, json.dumps(asdict(summary), indent=2) + "\n")
            self.writer.file_writer.add_summary(hparams({}, {})[2])  # HParams' status: success

    def close(self) -> None:
        """Flush and close; the files are closed even where the flush fails (a full disk)."""
        if self.writer is not None:
            try:
                self.flush()
            finally:
                files = [f for f in (self.metrics, self.probes) if f is not None]
                writer, self.writer, self.metrics, self.probes = self.writer, None, None, None
                with writing(self.run_dir):
                    writer.close()
                    for file in files:
                        file.close()


def hparams_of(cfg: RunConfig, params: int) -> dict[str, float | str]:
    """What tells runs apart, in reading order, under the config's own dotted keys: name, depth,
    block, plain or residual, shortcut, seed, length, lr, weight decay, the keys set with `--set`
    (run.overrides), and the parameter count. config.yaml holds the rest. Booleans and None are
    words ("true", "none"): TensorBoard would show a boolean as 1.0000."""
    m, flat = cfg.model, flatten(cfg.to_dict())
    values: dict[str, float | str] = {
        "run.name": cfg.run.name,
        "model.depth": m.depth,
        "model.block": m.block,
        "model.residual": _hparam(m.residual),
        "model.shortcut": _hparam(m.shortcut),
        "run.seed": cfg.run.seed,
        "schedule.iterations": cfg.schedule.iterations,
        "optim.lr": cfg.optim.lr,
        "optim.weight_decay": cfg.optim.weight_decay,
    }
    for entry in cfg.run.overrides:  # `key=value`; a whole section (schedule.warmup) keeps its text
        key, _, text = entry.partition("=")
        values.setdefault(key, _hparam(flat.get(key, text)))
    values["params"] = params
    return values


def _hparam(value: Any) -> float | str:
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, int | float | str):
        return value
    return str(list(value) if isinstance(value, tuple) else value)  # milestones: "[1000, 1500]"


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


# --------------------------------------------------------------------------------------------
# env.json: what reproducing a run needs beyond its config


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


UNKNOWN_COMMIT = "unknown"  # an installed package: resbench's version identifies the code


def _git_commit() -> str:
    """The commit of the resbench checkout that runs, with '-dirty' for uncommitted changes; "unknown"
    for an installed package, also one installed in a virtual environment inside another checkout
    (its files are not that checkout's: git does not track them)."""
    source = Path(__file__).resolve()

    def git(*args: str) -> str:
        command = ["git", "-C", str(source.parent), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", source.name)
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT
    return commit + ("-dirty" if dirty else "")
