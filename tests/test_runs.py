"""runs.py: `resbench runs` (each state, read from small files and the tail of metrics.jsonl) and
`resbench export` (the values of metrics.jsonl, round-tripped, with the config as columns)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from resbench import config
from resbench.errors import Diverged, RunDirError
from resbench.rundir import (
    FAILED,
    RunLock,
    prepare_run_dir,
    read_failure,
    read_metrics,
    run_dir_for,
    write_failure,
)
from resbench.runs import export, list_runs, lock_holder, read_tail
from resbench.train import train


def fake_run(runs_dir: Path, name: str, seed: int, *sets: str, upto: int = 400) -> Path:
    """A run's config.yaml and metrics.jsonl logged up to iteration `upto`, where training puts them
    (run_dir_for), as training writes them: train lines every 100 iterations, an evaluation every 200.
    The config file holds the short schedule, so only `sets` are the run's overrides."""
    short = runs_dir.parent / "configs" / f"{name}.yaml"
    short.parent.mkdir(exist_ok=True)
    base = config.configs_dir() / f"{name}.yaml"
    short.write_text(f"_base_: {base}\nschedule: {{iterations: 400, milestones: [200]}}\n")
    cfg = config.load(short, [f"run.seed={seed}", *sets])
    run_dir = run_dir_for(cfg, runs_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    lines = []
    for it in range(100, upto + 1, 100):
        lines.append({"iteration": it, "error/train": 90 - it / 10, "loss/train": 2.0, "lr": 0.1})
        if it % 200 == 0:
            lines.append({"iteration": it, "error/test": 95 - it / 10, "loss/test": 2.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run_dir


def finish(run_dir: Path, train_error: float, test_error: float, wall_time: float) -> None:
    cfg = config.load(run_dir / "config.yaml")
    summary = {
        "name": cfg.run.name,
        "seed": cfg.run.seed,
        "iterations": cfg.schedule.iterations,
        "train_error": train_error,
        "train_loss": 0.5,
        "test_error": test_error,
        "test_loss": 0.6,
        "val_error": None,
        "val_loss": None,
        "params": 1000,
        "macs": 1000,
        "wall_time": wall_time,
        "images_per_sec": 100.0,
        "device": "cpu",
        "precision": "fp32",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    env = {"device": "cuda:0", "git_commit": "0123456789abcdef0123456789abcdef01234567-dirty"}
    (run_dir / "env.json").write_text(json.dumps({**env, "starts": [env]}))


@pytest.fixture
def five_states(tmp_path: Path):
    """runs/ holding a finished, an unfinished, a failed, a running and a damaged run, and a run in an
    override folder; yields runs/ while the running run's lock is held."""
    runs = tmp_path / "runs"
    finish(fake_run(runs, "resnet20", 0), 7.5, 9.25, 3725.0)
    unfinished = fake_run(runs, "plain20", 1, upto=300)
    (unfinished / "last.pt").write_bytes(b"not a checkpoint: the listing never opens it")
    write_failure(fake_run(runs, "plain56", 0, upto=200), "training diverged (loss nan) by iteration 200")
    running = fake_run(runs, "resnet20", 1, upto=100)
    damaged = fake_run(runs, "plain20", 0)
    (damaged / "summary.json").write_text("{not json")
    fake_run(runs, "resnet20", 0, "optim.lr=0.05")  # in runs/resnet20/optim.lr=0.05/seed0
    lock = RunLock(running)
    yield runs
    lock.release()


def test_runs_shows_each_state(five_states: Path) -> None:
    runs = five_states
    rows = {(r.name, r.overrides, r.seed): r for r in list_runs(runs)}
    assert list(rows) == [  # sorted by name, overrides, seed
        ("plain20", "", 0),
        ("plain20", "", 1),
        ("plain56", "", 0),
        ("resnet20", "", 0),
        ("resnet20", "", 1),
        ("resnet20", "optim.lr=0.05", 0),
    ]
    finished = rows["resnet20", "", 0]
    assert (finished.state, finished.iteration, finished.iterations) == ("finished", 400, 400)
    assert (finished.train_error, finished.test_error, finished.wall_time) == (7.5, 9.25, 3725.0)
    assert finished.device == "cuda:0" and finished.git_commit.endswith("01234567-dirty")

    unfinished = rows["plain20", "", 1]
    assert (unfinished.state, unfinished.iteration, unfinished.iterations) == ("unfinished", 300, 400)
    assert (unfinished.train_error, unfinished.test_error) == (60.0, 75.0)  # test: the eval at 200
    assert unfinished.wall_time is None and unfinished.device == unfinished.git_commit == "unknown"

    failed = rows["plain56", "", 0]
    assert failed.state == "failed" and failed.detail == "training diverged (loss nan) by iteration 200"
    running = rows["resnet20", "", 1]
    assert running.state == "running" and running.detail.startswith("pid ") and running.iteration == 100
    damaged = rows["plain20", "", 0]
    assert damaged.state == "damaged" and "summary.json is damaged" in damaged.detail
    override = rows["resnet20", "optim.lr=0.05", 0]
    assert override.state == "unfinished" and "before its first checkpoint" in override.detail


def test_runs_cli_table_csv_and_json(cli, five_states: Path) -> None:
    runs = five_states
    table = cli("runs", runs)
    assert table.exit_code == 0, table.output
    assert "6 runs in" in table.stdout
    assert "1 running, 1 finished, 1 failed, 2 unfinished, 1 damaged" in " ".join(table.stdout.split())
    for text in ("1h02m", "01234567-dirty", "300/400", "optim.lr=0.05"):
        assert text in table.stdout, text
    lines = table.stdout.splitlines()
    assert "plain56 seed 0 (failed): training diverged (loss nan) by iteration 200" in lines
    assert any(line.startswith("resnet20 seed 1 (running): pid ") for line in lines)
    assert "resnet20 optim.lr=0.05 seed 0 (unfinished): stopped before its first checkpoint" in table.stdout

    as_csv = cli("runs", runs, "--format", "csv")
    assert as_csv.exit_code == 0 and as_csv.stdout.startswith("run_dir,name,overrides,seed,state,detail,")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["state"] for r in rows] == [
        "damaged",
        "unfinished",
        "failed",
        "finished",
        "running",
        "unfinished",
    ]
    assert rows[3]["wall_time"] == "3725.0" and rows[3]["git_commit"].startswith("0123456789abcdef")

    as_json = cli("runs", runs, "--format", "json")
    assert as_json.exit_code == 0
    records = json.loads(as_json.stdout)
    assert [r["state"] for r in records] == [r["state"] for r in rows]
    assert records[1]["iteration"] == 300 and records[1]["wall_time"] is None


def test_runs_on_a_missing_folder_or_an_empty_one(cli, tmp_path: Path) -> None:
    missing = cli("runs", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.output
    empty = cli("runs", tmp_path)
    assert empty.exit_code == 0 and "no runs in" in empty.stdout
    assert json.loads(cli("runs", tmp_path, "--format", "json").stdout) == []


def test_the_lock_probe_leaves_the_holder_its_lock(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    held = (tmp_path / ".lock").read_text()
    assert lock_holder(tmp_path) == held.strip()
    with pytest.raises(RunDirError, match="in use by pid"):  # still held after the probe
        RunLock(tmp_path)
    assert (tmp_path / ".lock").read_text() == held
    lock.release()
    assert lock_holder(tmp_path) is None
    assert lock_holder(tmp_path / "absent") is None and not (tmp_path / "absent").exists()


def test_a_run_held_by_another_process_is_running_until_it_dies(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs", "resnet20", 0, upto=200)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"f = open({str(run / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.write(f'pid {os.getpid()} on here'); f.flush(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (row,) = list_runs(tmp_path / "runs")
        assert row.state == "running" and row.detail == f"pid {holder.pid} on here"
    finally:
        holder.kill()
        holder.wait()
    (row,) = list_runs(tmp_path / "runs")
    assert row.state == "unfinished"  # the kernel dropped the dead process's lock


def test_a_run_that_holds_its_lock_before_writing_any_file_is_listed(tmp_path: Path) -> None:
    starting = tmp_path / "runs" / "resnet20" / "seed3"
    lock = RunLock(starting)  # what train() does first, before the data loads and config.yaml is written
    try:
        (row,) = list_runs(tmp_path / "runs")
        assert (row.name, row.seed, row.state, row.iterations) == ("resnet20", 3, "running", None)
    finally:
        lock.release()
    assert list_runs(tmp_path / "runs") == []  # a lock file alone is not a run


def test_the_tail_is_read_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    old_eval = json.dumps({"iteration": 10, "error/test": 42.5}) + "\n"
    train_lines = "".join(
        json.dumps({"iteration": i, "error/train": i / 1000}) + "\n" for i in range(11, 3000)
    )
    path.write_text("garbage that would make the file unreadable as a whole\n" + old_eval + train_lines)
    with open(path, "a") as f:
        f.write('{"iteration": 3000, "error/tr')  # torn: a run still writing, or killed mid-line
    tail = read_tail(path)
    assert (tail.iteration, tail.train_error, tail.test_error) == (2999, 2.999, 42.5)  # the eval, blocks back

    short = tmp_path / "short.jsonl"
    short.write_text(
        train_lines[-500:].partition("\n")[2] + json.dumps({"iteration": 3000, "error/test": 1.0})
    )
    tail = read_tail(short)
    assert (tail.iteration, tail.train_error, tail.test_error) == (3000, 2.999, 1.0)

    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + "\x00" * 10_000 + "".join(lines[2:]))
    assert (
        read_tail(path).train_error == 2.999
    )  # never reaches the bad block: it stops once all three are found


# --------------------------------------------------------------------------------------------
# Through the real training code: a diverged run leaves failed.json; a restart removes it

TINY = [
    "model.depth=8",
    "model.width=4",
    "optim.batch_size=16",
    "schedule.iterations=12",
    "schedule.milestones=[8]",
    "run.log_every=4",
    "run.eval_every=6",
    "run.device=cpu",
]


def test_a_diverged_run_is_listed_as_failed_with_the_reason(learnable_root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    diverging = ["optim.lr=1e12", "optim.momentum=0", "run.log_every=1"]
    cfg = config.load("plain20", [*TINY, f"data.root={learnable_root}", *diverging])
    run = runs / "plain20" / "seed0"
    with pytest.raises(Diverged) as err:
        train(cfg, run)
    assert read_failure(run) == str(err.value)
    (row,) = list_runs(runs)
    assert row.state == "failed" and row.detail.startswith("training diverged")
    assert row.iteration == read_metrics(run)[-1]["iteration"] < 12  # the last iteration logged
    assert row.device == "cpu" and row.git_commit != "unknown"

    good = config.load("plain20", [*TINY, f"data.root={learnable_root}"])
    train(good, run, force=True)  # started again: the failure no longer describes it
    assert not (run / FAILED).exists()
    (row,) = list_runs(runs)
    assert row.state == "finished" and row.iteration == 12 and row.wall_time is not None

    values = [(m["iteration"], k, v) for m in read_metrics(run) for k, v in m.items() if k != "iteration"]
    export([runs], tmp_path / "real.csv")
    with open(tmp_path / "real.csv", newline="") as f:
        exported = [(int(r["iteration"]), r["tag"], float(r["value"])) for r in csv.DictReader(f)]
    assert exported == values  # a real run's metrics.jsonl, value for value


def test_a_resume_removes_a_stale_failure(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs", "plain20", 0, upto=200)
    (run / "last.pt").write_bytes(b"resumed from, not read here")
    write_failure(run, "training diverged (loss inf)")
    assert prepare_run_dir(run, resume=True, force=False) and not (run / FAILED).exists()


# --------------------------------------------------------------------------------------------
# export


def test_export_round_trips_metrics_with_the_config_as_columns(cli, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a = fake_run(runs, "resnet20", 0)
    b = fake_run(runs, "plain56", 1, "optim.lr=0.05", "schedule.warmup={lr: 0.01, until_train_error: 80}")
    odd = [1 / 3, 1e-300, 123456789.12345679, 2.5e300, 0.1 + 0.2, 7, float("nan"), float("inf")]
    with open(a / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 401, **{f"odd/{i}": v for i, v in enumerate(odd)}}) + "\n")
        f.write('{"iteration": 402, "error/tr')  # torn by a kill: not a record yet
    result = cli("export", runs, a, "--out", tmp_path / "out" / "all.csv")  # a run named twice: once
    assert result.exit_code == 0, result.output
    assert "wrote 40 rows from 2 runs" in result.stdout  # 16 a run, and the 8 odd values

    with open(tmp_path / "out" / "all.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[:6] == ["run", "name", "seed", "iteration", "tag", "value"]
    assert header[6:] == sorted(header[6:]) and {"model.depth", "optim.lr", "schedule.warmup.lr"} <= set(
        header
    )
    for run in (a, b):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        if run == a:
            lines.pop()  # the torn line
        expected = [
            (m["iteration"], tag, v)
            for m in map(json.loads, lines)
            for tag, v in m.items()
            if tag != "iteration"
        ]
        got = [(int(r["iteration"]), r["tag"], float(r["value"])) for r in rows if r["run"] == str(run)]
        assert len(got) == len(expected)
        for (it, tag, v), (it2, tag2, v2) in zip(expected, got, strict=True):
            assert (it, tag) == (it2, tag2) and (v == v2 or (math.isnan(v) and math.isnan(v2)))
    first, second = next(r for r in rows if r["run"] == str(a)), next(r for r in rows if r["run"] == str(b))
    assert [first[k] for k in ("name", "seed", "model.depth", "optim.lr")] == ["resnet20", "0", "20", "0.1"]
    assert [second[k] for k in ("name", "seed", "optim.lr", "model.residual")] == [
        "plain56",
        "1",
        "0.05",
        "False",
    ]
    assert first["schedule.milestones"] == "[200]" and first["schedule.warmup.lr"] == ""
    assert (
        second["schedule.warmup.lr"] == "0.01"
        and first["model.shortcut"] == "A"
        and second["model.shortcut"] == ""
    )


def test_export_refuses_what_it_cannot_read_or_write(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    fake_run(runs, "resnet20", 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path, message in [
        (tmp_path / "nowhere", "does not exist"),
        (tmp_path / "file.txt", "is a file"),
        (tmp_path / "empty", "holds no run directory"),
    ]:
        result = cli("export", runs, path, "--out", tmp_path / "x.csv")
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    unknown = cli("export", runs, "--out", tmp_path / "x.xlsx")
    assert unknown.exit_code == 2 and "give FILE.csv or FILE.parquet" in unknown.stderr
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as where pyarrow is not installed
    parquet = cli("export", runs, "--out", tmp_path / "x.parquet")
    assert parquet.exit_code == 2
    assert "--out *.parquet needs pyarrow: pip install 'resbench[parquet]'" in parquet.stderr
    damaged = fake_run(runs, "plain20", 0)
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write("not a record\n" + json.dumps({"iteration": 500, "error/train": 1.0}) + "\n")
    result = cli("export", runs, "--out", tmp_path / "x.csv")
    assert result.exit_code == 1 and "metrics.jsonl is damaged: line 7" in result.stderr
    assert not list(tmp_path.glob("x.*"))  # nothing written, by any of these
