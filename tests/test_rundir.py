"""rundir.py: run-directory states and refusals, the lock, env.json and metrics truncation, damaged
or unwritable run files, the config and data fingerprint checked on resume."""

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from data_fixtures import tiny_set, write_pickles

from resbench import config
from resbench.errors import ConfigError, RunDirError, WriteError
from resbench.files import atomic_write
from resbench.rundir import (
    RunLock,
    changed_keys,
    prepare_run_dir,
    read_env,
    read_metrics,
    read_summary,
    refuse_named_twice,
    rerun_command,
    run_dir_for,
    run_state,
    write_run_files,
)
from resbench.tracking import Tracker
from resbench.train import train


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
    for resume in (False, True):  # killed before its first checkpoint: nothing to resume, nothing deleted
        with pytest.raises(RunDirError, match=r"(?s)before its first checkpoint.*nothing to resume.*--force"):
            prepare_run_dir(run, resume=resume, force=False)
        assert (run / "metrics.jsonl").exists()
    assert prepare_run_dir(run, resume=True, force=True) is False
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
                "import sys, time; from pathlib import Path; from resbench.rundir import RunLock; "
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


# --------------------------------------------------------------------------------------------
# Through `resbench train`: a tiny run stopped after its checkpoint at iteration 4 of 8

TINY = [
    "model.depth=8",
    "model.width=4",
    "optim.batch_size=16",
    "schedule.iterations=8",
    "schedule.milestones=[6]",
    "run.log_every=2",
    "run.eval_every=4",
    "run.checkpoint_every=4",
    "run.device=cpu",
    "data.root=data",  # relative: each test works in its own copy of the stopped run
]
RUN = run_dir_for(config.load("resnet20", TINY), Path("runs"))  # runs/resnet20/<its overrides>/seed0


class Killed(Exception):
    pass


class KillAfter(Tracker):
    """Ends the process's training after an iteration, as a kill would: last.pt is the checkpoint before."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def step(self, iteration: int) -> None:
        if iteration == self.iteration:
            raise Killed


@contextmanager
def inside(folder: Path) -> Iterator[Path]:
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding data/ (tiny CIFAR-10 pickles) and runs/resnet20/seed0 stopped at iteration 5."""
    base = tmp_path_factory.mktemp("stopped")
    write_pickles(base / "data", tiny_set())
    with inside(base), pytest.raises(Killed):
        train(config.load("resnet20", TINY), RUN, KillAfter(5))
    return base


@pytest.fixture(scope="module")
def finished_run(stopped_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stopped run, resumed to its end."""
    base = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(stopped_run, base)
    with inside(base):
        train(config.load("resnet20", TINY), RUN, resume=True)
    return base


@pytest.fixture
def work(stopped_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the stopped run, as the current directory."""
    shutil.copytree(stopped_run, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def resume(cli: Callable[..., Any], *extra: str) -> Any:
    return cli("train", "-c", "resnet20", *[a for s in TINY for a in ("--set", s)], "--quiet", *extra)


def snapshot(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"
    }


def refused(result: Any, *words: str) -> None:
    """Exit 1 with one message holding `words`, not a traceback."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_resume_on_other_data_under_the_same_root_is_refused(cli: Callable[..., Any], work: Path) -> None:
    saved = torch.load(RUN / "last.pt", weights_only=True)
    assert read_env(RUN)["data_fingerprint"] == saved["data_fingerprint"]  # recorded in both places
    before = snapshot(RUN)
    original = Path("data").rename("original")
    write_pickles(Path("data"), tiny_set(seed=1))  # the same data.root, other images
    refused(resume(cli, "--resume"), "trained on other data", "data.root=data", "--force")
    assert snapshot(RUN) == before
    shutil.rmtree("data")
    original.rename("data")
    result = resume(cli, "--resume")
    assert result.exit_code == 0, result.output
    assert read_summary(RUN).iterations == 8


def test_resume_without_a_checkpoint_is_refused_and_deletes_nothing(
    cli: Callable[..., Any], work: Path
) -> None:
    (RUN / "last.pt").unlink()
    before = snapshot(RUN)
    assert {"metrics.jsonl", "env.json", "config.yaml"} <= before.keys()
    result = resume(cli, "--resume")
    refused(
        result,
        "before its first checkpoint",
        "nothing to resume",
        f"--config {shlex.quote(str(RUN / 'config.yaml'))} --force",
    )
    assert snapshot(RUN) == before


def _garbage_line(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([*lines[:2], "{not json\n", *lines[2:]]))


def _binary(path: Path) -> Callable[[Path], None]:
    return lambda run: (run / path).write_bytes(b"\x80\xff\x00 binary")


DAMAGED = {  # a damage done to the stopped run -> what the refusal of --resume says
    "metrics-garbage-line": (_garbage_line, "metrics.jsonl is damaged: line 3 is not a metrics record"),
    "metrics-binary": (_binary(Path("metrics.jsonl")), "metrics.jsonl is damaged: line 1"),
    "metrics-not-an-object": (
        lambda run: (run / "metrics.jsonl").write_text("[1, 2]\n"),
        "metrics.jsonl is damaged: line 1",
    ),
    "env-not-json": (lambda run: (run / "env.json").write_text("{"), "env.json is damaged: not JSON"),
    "env-binary": (_binary(Path("env.json")), "env.json is damaged: not JSON"),
    "env-a-list": (lambda run: (run / "env.json").write_text("[]"), "env.json is damaged: a JSON list"),
    "env-starts": (
        lambda run: (run / "env.json").write_text('{"starts": 3}'),
        "env.json is damaged: 'starts' is not a list",
    ),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_run_file_refuses_resume_and_is_kept(
    cli: Callable[..., Any], work: Path, damage: str
) -> None:
    do, message = DAMAGED[damage]
    do(RUN)
    before = snapshot(RUN)
    refused(resume(cli, "--resume"), message, "Restore it")
    after = snapshot(RUN)
    if not damage.startswith("env"):  # env.json may have recorded the start that was then refused
        starts = json.loads(before["env.json"])["starts"]
        assert json.loads(after.pop("env.json"))["starts"][: len(starts)] == starts
        before.pop("env.json")
    assert after == before


def test_a_torn_last_metrics_line_is_dropped_on_resume(cli: Callable[..., Any], work: Path) -> None:
    whole = read_metrics(RUN)
    with open(RUN / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 6, "error/tr')  # a kill -9 mid-write, after the checkpoint
    with pytest.raises(RunDirError, match=f"line {len(whole) + 1} is not a metrics record"):
        read_metrics(RUN)  # outside a resume, a torn line is damage
    assert resume(cli, "--resume").exit_code == 0
    metrics = read_metrics(RUN)
    assert metrics[: len(whole)] == whole
    assert [m["iteration"] for m in metrics if "error/train" in m] == [2, 4, 6, 8]


SUMMARIES = {  # summary.json as found -> what the message says
    "not-json": ("{", "not JSON"),
    "a-list": ("[]", "a JSON list, not an object"),
    "missing": ('{"name": "resnet20"}', "missing seed, iterations, train_error"),
    "wrong-type": (None, "wrong type for test_error"),
}


@pytest.mark.parametrize("case", SUMMARIES)
def test_a_damaged_summary_is_named_and_the_final_checkpoint_writes_it_again(
    cli: Callable[..., Any], finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    shutil.copytree(finished_run, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    good = json.loads((RUN / "summary.json").read_text())
    text, message = SUMMARIES[case]
    (RUN / "summary.json").write_text(text if text is not None else json.dumps(good | {"test_error": "12%"}))
    with pytest.raises(RunDirError, match=message):
        read_summary(RUN)
    refused(resume(cli, "--resume"), "summary.json is damaged", message, "delete it and run with --resume")
    (RUN / "summary.json").unlink()
    assert resume(cli, "--resume").exit_code == 0
    again = json.loads((RUN / "summary.json").read_text())
    assert {k: v for k, v in again.items() if k != "wall_time"} == {
        k: v for k, v in good.items() if k != "wall_time"
    }


def test_a_summary_from_a_newer_resbench_with_extra_keys_still_reads(tmp_path: Path) -> None:
    fields = {"name": "r", "seed": 0, "iterations": 1, "train_error": 1, "train_loss": 1.0, "test_error": 2.0}
    fields |= {
        "test_loss": 1.0,
        "val_error": None,
        "val_loss": None,
        "params": 1,
        "macs": 1,
        "wall_time": 1.0,
    }
    fields |= {"images_per_sec": 1.0, "device": "cpu", "precision": "fp32", "added_later": [1]}
    (tmp_path / "summary.json").write_text(json.dumps(fields))
    assert read_summary(tmp_path).test_error == 2.0 and read_summary(tmp_path).test_samples == 0


def test_summary_fields_are_typed_by_their_resolved_annotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Types were looked up by annotation string, so a later `str | None` field raised KeyError."""
    import dataclasses

    from resbench import rundir

    later = dataclasses.make_dataclass(
        "Summary",
        [("note", "str | None", dataclasses.field(default=None))],
        bases=(rundir.Summary,),
        frozen=True,
    )
    monkeypatch.setattr(rundir, "Summary", later)
    base = {"name": "r", "seed": 0, "iterations": 1, "train_error": 1, "train_loss": 1.0, "test_error": 2.0}
    base |= {"test_loss": 1.0, "val_error": None, "val_loss": 0.5, "params": 1, "macs": 1, "wall_time": 1.0}
    base |= {"images_per_sec": 1.0, "device": "cpu", "precision": "fp32"}
    for note in ("kept", None):
        (tmp_path / "summary.json").write_text(json.dumps(base | {"note": note}))
        assert read_summary(tmp_path).note == note
    (tmp_path / "summary.json").write_text(json.dumps(base | {"note": 3, "params": True, "val_error": "x"}))
    with pytest.raises(RunDirError, match="wrong type for val_error, params, note"):
        read_summary(tmp_path)


def _fail_with(errno_: int) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, os.strerror(errno_))

    return fail


UNWRITABLE = {  # what is wrong -> (how to make it so, extra arguments, what the message says)
    "runs-dir-is-a-file": (
        lambda m: Path("runs-file").write_text("mine"),
        ["--runs-dir", "runs-file"],
        "Not a directory",
    ),
    "read-only": (
        lambda m: m.setattr(os, "mkdir", _fail_with(errno.EROFS)),
        ["--runs-dir", "fresh"],
        "Read-only file system",
    ),
    "disk-full-at-start": (
        lambda m: m.setattr(os, "fsync", _fail_with(errno.ENOSPC)),
        ["--resume"],
        "config.yaml: No space left",
    ),
    "disk-full-at-checkpoint": (
        lambda m: m.setattr(torch, "save", _fail_with(errno.ENOSPC)),
        ["--resume"],
        "last.pt: No space left",
    ),
}


@pytest.mark.parametrize("case", UNWRITABLE)
def test_an_unwritable_run_directory_fails_cleanly_and_deletes_nothing(
    cli: Callable[..., Any], work: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    make, extra, reason = UNWRITABLE[case]
    before = snapshot(work)
    with monkeypatch.context() as m:
        make(m)
        result = resume(cli, *extra)
    refused(result, "cannot write", reason, "--runs-dir")
    after = snapshot(work)
    kept = {k: v for k, v in after.items() if k in before and not k.endswith(("metrics.jsonl", "env.json"))}
    assert before.keys() <= after.keys() and kept == {k: before[k] for k in kept}  # last.pt above all
    if case == "disk-full-at-checkpoint":  # the run went on to its end, then could not save it
        assert "runs/resnet20/seed0/summary.json" not in after


# --------------------------------------------------------------------------------------------
# Opening a run directory: config.yaml is checked against the config saved in last.pt


def test_changed_keys_names_what_differs_and_ignores_harmless_keys() -> None:
    saved = {
        "optim": {"lr": 0.1, "momentum": 0.9},
        "schedule": {"milestones": [1, 2]},
        "run": {"device": "cuda"},
    }
    current = {
        "optim": {"lr": 0.2, "momentum": 0.9},
        "schedule": {"milestones": (1, 2)},
        "run": {"device": "cpu"},
    }
    assert changed_keys(saved, current) == ["optim.lr"]
    assert changed_keys(saved, saved) == []


def _edit_config(run: Path, key: str, value: Any) -> None:
    """Change one dotted key of a run's config.yaml, as a hand edit would."""
    raw = yaml.safe_load((run / "config.yaml").read_text())
    section, name = key.split(".")
    raw[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


OPENS = {  # how each command opens the finished run at RUN
    "train-run-dir": ["train", "-c", str(RUN), "--resume", "--quiet"],
    "train-config-yaml": ["train", "-c", str(RUN / "config.yaml"), "--resume", "--quiet"],
    "train-by-name": ["train", "-c", "resnet20", *[a for s in TINY for a in ("--set", s)], "--resume", "-q"],
    "compare-run-dir": ["compare", str(RUN), "--no-train", "--out", "report"],
    "compare-by-name": ["compare", "resnet20", *[a for s in TINY for a in ("--set", s)], "--out", "report"],
    "evaluate": ["evaluate", str(RUN)],
    "analyze": ["analyze", str(RUN), "--images", "8", "--device", "cpu", "--out", "report"],
}


@pytest.mark.parametrize(("key", "value"), [("optim.lr", 0.05), ("run.seed", 5)])
@pytest.mark.parametrize("command", OPENS)
def test_a_hand_edited_config_yaml_of_a_finished_run_is_refused(
    cli: Callable[..., Any],
    finished_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    key: str,
    value: Any,
) -> None:
    """Adversarial rows 27-28: `train --resume` said "done" with the lr-0.1 numbers as if they were
    lr 0.05's, compare called runs "not trained alike" for a difference that was never trained, and
    an edited run.seed trained a fresh run in seed5/. last.pt holds the config that was trained."""
    shutil.copytree(finished_run, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    _edit_config(RUN, key, value)
    before = snapshot(Path("runs"))
    result = cli(*OPENS[command])
    refused(result, f"{RUN / 'config.yaml'} is not the config this run was trained with", key)
    assert "Restore those values in config.yaml" in result.output and "--set run.name" in result.output
    assert "done" not in result.stdout and not Path("report").exists()
    assert snapshot(Path("runs")) == before  # no seed5/, nothing retrained


def test_a_key_that_may_change_on_resume_may_differ_in_config_yaml(
    cli: Callable[..., Any], finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(finished_run, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    _edit_config(RUN, "run.checkpoint_every", 2)  # rundir.RESUMABLE_CHANGES
    result = cli(*OPENS["train-run-dir"])
    assert result.exit_code == 0 and read_summary(RUN).iterations == 8, result.output
    assert cli(*OPENS["compare-run-dir"]).exit_code == 0


@pytest.mark.parametrize("command", OPENS)
def test_a_run_directory_without_config_yaml_is_named_incomplete(
    cli: Callable[..., Any], finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Adversarial row 26: summary.json alone said "no config named .../config.yaml ... not a bundled
    config", exit 2, as if the user had mistyped a name."""
    shutil.copytree(finished_run, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "env.json"):
        (RUN / name).unlink()
    before = snapshot(RUN)
    result = cli(*OPENS[command])
    refused(result, f"{RUN} is a damaged or incomplete run directory", "no config.yaml", "summary.json")
    assert "not a bundled config" not in result.output and "Traceback" not in result.output
    assert snapshot(RUN) == before


def test_the_force_command_for_a_run_dir_holding_another_nets_config_trains_into_it(
    cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adversarial row 24: plain20's config.yaml in resnet20/seed0 got `--config that/config.yaml
    --force`, which trains plain20 into plain20/seed0 and leaves this directory as it was."""
    monkeypatch.chdir(tmp_path)
    RUN.mkdir(parents=True)
    (RUN / "config.yaml").write_text(config.load("plain20", TINY).to_yaml())
    result = resume(cli, "--resume")
    refused(result, "before its first checkpoint")
    message = result.output.replace("\n", "")
    assert f"--config {RUN / 'config.yaml'}" not in message
    assert f"--config CONFIG --force, with CONFIG the config of {RUN}" in message
    assert f"its config.yaml trains into {run_dir_for(config.load('plain20', TINY), Path('runs'))}" in message
    assert rerun_command(RUN, "--force").startswith("resbench train --config CONFIG --force")
    (RUN / "config.yaml").write_text(config.load("resnet20", TINY).to_yaml())  # its own: named as it is
    assert (
        rerun_command(RUN, "--force")
        == f"resbench train --config {shlex.quote(str(RUN / 'config.yaml'))} --force"
    )
    assert rerun_command(Path("x/resnet20/seed0"), "--resume") == (
        "resbench train --config CONFIG --runs-dir x --resume, with CONFIG the config of x/resnet20/seed0 "
        "(it has no readable config.yaml)"
    )


def test_a_run_directory_opened_for_its_model_is_one_error_and_one_load(
    cli: Callable[..., Any], finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path that is no run directory is a bad argument (exit 2) in analyze and evaluate, as in
    compare; a damaged one (no last.pt) is RunDirError (exit 1). One function opens a run for its
    final model, and evaluate reads last.pt once."""
    from resbench.analysis.evaluate import evaluate_run
    from resbench.compare import load_run

    shutil.copytree(finished_run, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    Path("empty").mkdir()
    for command in ("analyze", "evaluate"):  # a bad argument, exit 2, as compare's unknown name
        result = cli(command, "empty")
        assert result.exit_code == 2 and "empty is not a run directory (no config.yaml)" in result.output
    with pytest.raises(RunDirError, match="empty is not a run directory"):
        load_run(Path("empty"))
    loads: list[str] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(str(f)) or real_load(f, *a, **k))
    assert evaluate_run(RUN).agrees
    assert loads == [str(RUN / "last.pt")]
    shutil.copytree(RUN, "nockpt")
    (Path("nockpt") / "last.pt").unlink()
    for command in ("analyze", "evaluate"):
        refused(cli(command, "nockpt"), "nockpt has no last.pt")


def test_one_run_named_twice_is_one_refusal_for_compare_and_analyze() -> None:
    named = [
        ("runs/plain20/seed0", Path("runs/plain20/seed0")),
        ("plain20 seed 0", Path("runs/../runs/plain20/seed0")),
    ]
    with pytest.raises(ConfigError, match=r"runs/plain20/seed0 and plain20 seed 0 both name the run"):
        refuse_named_twice(named)
    refuse_named_twice(named[:1])


def test_a_full_disk_reads_the_same_whichever_file_it_stops(
    tmp_path: Path, cfg: config.RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: tracking._writing (now rundir.writing) replaced the WriteError of config.yaml with a
    message of its own, while last.pt's WriteError reached the user as it was."""
    from resbench import checkpoint
    from resbench.report import writable

    monkeypatch.setattr(os, "fsync", _fail_with(errno.ENOSPC))
    failures = {}
    with pytest.raises(WriteError) as failures["config.yaml"]:
        write_run_files(tmp_path, cfg, {})
    with pytest.raises(WriteError) as failures["last.pt"]:
        checkpoint.save({}, tmp_path / "last.pt")
    with pytest.raises(WriteError) as failures["summary.md"], writable(tmp_path):
        atomic_write(tmp_path / "summary.md", "x")
    messages = {str(f.value).replace(str(tmp_path / name), "FILE") for name, f in failures.items()}
    assert len(messages) == 1 and messages.pop().startswith("cannot write FILE: No space left on device.")
