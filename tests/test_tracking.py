"""tracking.py: run-directory states and refusals, the lock, env.json and metrics truncation."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resbench import config
from resbench.tracking import RunDirError, RunLock, prepare_run_dir, run_dir_for, run_state, write_run_files


@pytest.fixture
def cfg() -> config.RunConfig:
    return config.load("resnet20")


def test_run_dir_layout(cfg: config.RunConfig) -> None:
    assert run_dir_for(cfg, Path("runs")) == Path("runs/resnet20/seed0")
    assert run_dir_for(config.load("resnet20", ["run.seed=2"], "quick"), Path("x")) == Path(
        "x/resnet20-quick/seed2"
    )


def test_states_and_refusals(tmp_path: Path, cfg: config.RunConfig) -> None:
    run = tmp_path / "run"
    assert run_state(run) == "empty" and prepare_run_dir(run, resume=False, force=False) is False
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert run_state(run) == "started"
    with pytest.raises(RunDirError, match=r"(?s)--resume.*--force"):
        prepare_run_dir(run, resume=False, force=False)
    assert prepare_run_dir(run, resume=True, force=False) is False  # nothing to resume: start over
    assert run_state(run) == "empty"
    (run / "last.pt").write_bytes(b"x")
    assert run_state(run) == "unfinished"
    with pytest.raises(RunDirError, match=r"(?s)unfinished run.*--resume.*--force"):
        prepare_run_dir(run, resume=False, force=False)
    assert prepare_run_dir(run, resume=True, force=False) is True
    (run / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"(?s)finished run.*--force"):
        prepare_run_dir(run, resume=False, force=False)
    assert prepare_run_dir(run, resume=False, force=True) is False
    assert run_state(run) == "empty"


def test_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    with pytest.raises(RunDirError, match="in use by pid"):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()


def test_lock_held_by_another_process_then_left_stale(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from resbench.tracking import RunLock; "
                f"lock = RunLock(Path({str(tmp_path)!r})); print('locked', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            RunLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert (tmp_path / ".lock").exists()  # the killed process left its lock file behind ...
    RunLock(tmp_path).release()  # ... and it does not block the next run


def test_env_json_keeps_every_start(tmp_path: Path, cfg: config.RunConfig) -> None:
    write_run_files(tmp_path, cfg, {"torch": "1", "command": "first"})
    write_run_files(tmp_path, cfg, {"torch": "1", "command": "second"})
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["command"] == "second" and [s["command"] for s in env["starts"]] == ["first", "second"]
    assert config.load(tmp_path / "config.yaml") == cfg
