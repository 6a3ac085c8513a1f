"""sweep.py's local pool: where workers run (GPUs, threads), which failures are retried, and how a
sweep stops: a real `python -m resbench compare` stopped by a signal while its queue is longer
than its pool."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_compare import TINY

from resbench.errors import ConfigError, Diverged, ResbenchError
from resbench.sweep import retriable, visible_gpus, worker_layout

# ------------------------------------------------------------------------------------------
# GPUs and threads, with CUDA mocked: nothing here needs a GPU


def fake_cuda(monkeypatch: pytest.MonkeyPatch, gpus: int, visible: str | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


@pytest.mark.parametrize(
    ("visible", "gpus", "expected"),
    [
        (None, 2, ["0", "1"]),
        ("4,5", 2, ["4", "5"]),  # set by a user or a scheduler: the workers must stay on 4 and 5
        ("GPU-8c1f0e2a-1b2c-3d4e-5f60-718293a4b5c6, GPU-1d2e3f40-5a6b-7c8d-9e0f-a1b2c3d4e5f6", 2, None),
        ("MIG-4b4d8f7e-2c3a-5e6f-8a9b-0c1d2e3f4a5b", 1, None),
        ("3,1,bogus,2", 2, ["3", "1"]),  # CUDA stops at the first invalid entry
    ],
)
def test_workers_take_the_parents_gpus(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, gpus: int, expected: list[str] | None
) -> None:
    fake_cuda(monkeypatch, gpus, visible)
    expected = expected or [entry.strip() for entry in visible.split(",")]
    assert visible_gpus() == expected
    threads, per_worker = worker_layout(2 * gpus + 1, ["cuda"])
    assert threads == 1
    assert per_worker == (expected * 3)[: 2 * gpus + 1]  # round robin over the parent's list


@pytest.mark.parametrize(("devices", "gpus"), [(["cpu"], 2), (["mps"], 2), (["auto"], 0), (["cuda"], 0)])
def test_runs_without_cuda_split_the_cores(
    monkeypatch: pytest.MonkeyPatch, devices: list[str], gpus: int
) -> None:
    fake_cuda(monkeypatch, gpus, None)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert worker_layout(2, devices) == (4, None)
    assert worker_layout(16, devices) == (1, None)


# ------------------------------------------------------------------------------------------
# Which failures Ray retries


class OutOfMemoryError(Exception):
    """Named as Ray's own, raised when its memory monitor kills a worker."""


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (ConfigError("run.device is 'cuda' but ..."), False),
        (Diverged("training diverged (loss nan) by iteration 5"), False),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),  # older torch
        (MemoryError(), False),
        (OutOfMemoryError("Task was killed due to the node running low on memory."), False),
        (ResbenchError("a Ray worker on node2 cannot use runs/x from /work"), True),
        (RuntimeError("NCCL error: unhandled system error"), True),
        (OSError(5, "Input/output error"), True),
    ],
)
def test_only_failures_that_may_pass_next_time_are_retried(err: BaseException, expected: bool) -> None:
    assert retriable(err) is expected


# ------------------------------------------------------------------------------------------
# Stopping a real sweep: three runs, one worker


STOP_TINY = [s for s in TINY if not s.startswith("schedule.")] + [
    "schedule.iterations=120",
    "schedule.milestones=[60]",
    "run.checkpoint_every=0",  # the only checkpoint of the stopped run is the one the stop writes
]
NAMES = ("plain32", "plain20", "resnet20")  # the first, deepest, runs longest


def run_of(runs: Path, name: str, root: Path) -> Path:
    """Where compare_command trains `name`: named by its --set values."""
    from resbench import config
    from resbench.rundir import run_dir_for

    return run_dir_for(config.load(name, [*STOP_TINY, f"data.root={root}"]), runs)


@pytest.fixture
def compare_command(
    resbench_command: Callable[..., list[str]], learnable_root: Path, tmp_path: Path
) -> list[str]:
    """`python -m resbench compare NAMES...` with one worker, its runs and report under `tmp_path`."""
    where = ["--runs-dir", tmp_path / "runs", "--out", tmp_path / "report"]
    return resbench_command(
        "compare", *NAMES, "--jobs", "1", *where, sets=[*STOP_TINY, f"data.root={learnable_root}"]
    )


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that nobody reaped is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def lock_is_free(run_dir: Path) -> bool:
    with open(run_dir / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stopped_sweep_checkpoints_starts_nothing_new_and_resumes(
    tmp_path: Path, signum: signal.Signals, compare_command: list[str], learnable_root: Path
) -> None:
    command = compare_command
    env = os.environ | {"COLUMNS": "200"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    first = run_of(tmp_path / "runs", NAMES[0], learnable_root)
    try:
        assert wait_for(lambda: any(": training (" in line for line in lines), 120), lines
        time.sleep(1.0)  # well inside the training loop of the first run
        worker = int((first / ".lock").read_text().split()[1])  # "pid N on HOST"
        proc.send_signal(signum)
        sent = time.monotonic()
        returncode = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert wait_for(lambda: not alive(worker), 30), f"worker {worker} trains on after the parent"
    stderr = proc.stderr.read()
    if signum == signal.SIGKILL:  # the parent cannot say anything: its worker stops by itself
        assert returncode == -signal.SIGKILL
    else:
        assert returncode == 130, stderr
        assert time.monotonic() - sent < 15
        assert "compare stopped" in stderr and "same command again to resume" in stderr
        assert "Traceback" not in stderr
    assert lock_is_free(first)
    assert (first / "last.pt").is_file() and not (first / "summary.json").exists()
    for name in NAMES[1:]:  # queued behind the running one: never started
        assert not (tmp_path / "runs" / name).exists()

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "3 runs: 0 reused, 1 to resume, 2 to train" in again.stdout
    assert f"{NAMES[0]} seed 0: resuming at " in again.stdout
    assert len(json.loads((first / "env.json").read_text())["starts"]) == 2
    for name in NAMES:
        summary = json.loads((run_of(tmp_path / "runs", name, learnable_root) / "summary.json").read_text())
        assert summary["iterations"] == 120


def blocked_flock_waiters() -> set[int]:
    """Pids waiting for a flock: /proc/locks lists them with '->'."""
    lines = Path("/proc/locks").read_text().splitlines()
    return {int(line.split()[5]) for line in lines if "->" in line and "FLOCK" in line}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_worker_waiting_for_another_sweeps_run_stops_too(
    tmp_path: Path, signum: signal.Signals, compare_command: list[str], learnable_root: Path
) -> None:
    from resbench.rundir import RunLock

    first = run_of(tmp_path / "runs", NAMES[0], learnable_root)
    held = RunLock(first)  # as if another compare trained this run right now
    proc = subprocess.Popen(compare_command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        waiting = lambda: bool(set(map(int, children.read_text().split())) & blocked_flock_waiters())  # noqa: E731
        assert wait_for(waiting, 120)
        proc.send_signal(signum)
        sent = time.monotonic()
        returncode = proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        held.release()
    assert returncode == 130, stderr
    assert time.monotonic() - sent < 15 and "compare stopped" in stderr and "Traceback" not in stderr
    assert [p.name for p in first.iterdir()] == [".lock"]  # the waiting run wrote nothing
    assert not any((tmp_path / "runs" / name).exists() for name in NAMES[1:])


@pytest.mark.slow
def test_a_worker_that_dies_is_reported(learnable_root: Path, tmp_path: Path) -> None:
    from resbench import config
    from resbench.sweep import run_all

    tasks = []
    for name in NAMES[:2]:
        cfg = config.load(name, [*STOP_TINY, f"data.root={learnable_root}"])
        tasks.append((cfg, tmp_path / name / "seed0"))

    def kill_the_worker(event: object) -> None:  # as the kernel's OOM killer would
        if event.kind == "start":  # type: ignore[attr-defined]
            os.kill(int((tasks[0][1] / ".lock").read_text().split()[1]), signal.SIGKILL)

    died, queued = run_all(tasks, jobs=1, on_event=kill_the_worker)
    assert died.error.startswith("its worker process died without a result")
    assert queued.error == "not started: every worker process had died"
