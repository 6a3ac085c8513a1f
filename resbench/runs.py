"""What a folder of runs holds, read back: `resbench runs` (one row per run) and `resbench export` (one
long table of every logged value). Nothing here trains or prints; every function returns data.

    find_runs(root)           every run directory at or under root, at any depth
    list_runs(runs_dir)       a `RunRow` per run: state, last errors, wall time, device, git commit
    export(paths, out)        metrics.jsonl of the runs, one row per (run, iteration, tag, value),
                              with the run's resolved config keys as columns, to FILE.csv or .parquet

`list_runs` stays fast on hundreds of runs: it reads config.yaml, env.json, summary.json, failed.json
and the last few KB of metrics.jsonl, never a checkpoint, and it lists a damaged run as `damaged`
with the reason instead of stopping. `export` reads every line of metrics.jsonl, and the config
checked against last.pt (rundir.read_run_config), since its columns label the numbers. The file
names and what they hold are rundir.py's.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from resbench import config
from resbench.errors import ConfigError, ResbenchError, WriteError
from resbench.files import atomic_open
from resbench.rundir import (
    CHECKPOINT,
    CONFIG,
    LOCK,
    METRICS,
    SUMMARY,
    is_run_dir,
    read_env,
    read_failure,
    read_metrics,
    read_run_config,
    read_summary,
)

RunStatus = Literal["running", "finished", "failed", "unfinished", "damaged"]
UNKNOWN = "unknown"  # a device or commit that env.json does not record (or there is no env.json)

T = TypeVar("T")


@dataclass(frozen=True)
class RunRow:
    """One run directory as `resbench runs` shows it. Errors are in %, as in metrics.jsonl."""

    run_dir: Path
    name: str  # run.name, or the folder it is in where config.yaml cannot be read
    overrides: str  # run.overrides joined by commas; else the folders between NAME and seedK
    seed: int | None
    state: RunStatus  # running: a live process holds its lock; failed: it diverged (failed.json)
    detail: str  # why it failed, who holds the lock, what is damaged or missing; '' otherwise
    iteration: int | None  # the last iteration logged (a finished run: its last)
    iterations: int | None  # schedule.iterations
    train_error: float | None  # the running train error of the last log window
    test_error: float | None  # the last evaluation's (a finished run: the final model's)
    wall_time: float | None  # seconds of training (summary.json: finished runs only)
    device: str  # as the latest start recorded it in env.json
    git_commit: str

    def record(self) -> dict[str, Any]:
        """Plain values for csv and json: the path as text, and no NaN (JSON has none)."""
        values = asdict(self) | {"run_dir": str(self.run_dir)}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


@dataclass(frozen=True)
class Tail:
    """The latest values at the end of metrics.jsonl."""

    iteration: int | None = None
    train_error: float | None = None
    test_error: float | None = None


# --------------------------------------------------------------------------------------------
# Finding runs and reading each one cheaply


def find_runs(root: Path, busy: bool = False) -> list[Path]:
    """Every run directory at or under `root` (a folder holding a run's files), at any depth:
    RUNS_DIR/NAME/seedK, or with folders for overrides in between. A run directory's own
    subfolders and hidden folders are not searched. `busy` adds folders whose lock a live process
    holds before it has written any file (a run still loading its data)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        path = Path(folder)
        if is_run_dir(path) or (busy and LOCK in files and lock_holder(path) is not None):
            found.append(path)
            subdirs.clear()
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return found


def lock_holder(run_dir: Path) -> str | None:
    """Who trains in `run_dir` now ('pid 123 on host', as RunLock records it), or None.

    The probe is a shared, non-blocking flock released at once. It never waits, never takes the lock
    from the process that holds it, and does not create or change `.lock`. A training that starts in
    the microseconds it is held is refused as busy, as it would be by a running training.
    """
    try:
        file = open(run_dir / LOCK)  # read-only: opening it must not create it or write to it
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return file.read().strip() or "another process"
        except OSError:  # a file system without flock: nothing can hold it there
            return None
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


TAIL_BLOCK = 16 * 1024  # a few log points of a run; most runs need one block


def read_tail(path: Path) -> Tail:
    """The last iteration, train error and test error in metrics.jsonl, read backwards in blocks until
    all three are found: a run of any length costs a block or two. A line that is not a record (cut
    short by a kill, or still being written) is skipped: a listing reports, it does not judge."""
    if not path.exists():
        return Tail()
    iteration = train_error = test_error = None
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        carry = b""  # the start of the earliest line read so far, which may begin in the block before
        while end > 0 and (iteration is None or train_error is None or test_error is None):
            start = max(0, end - TAIL_BLOCK)
            f.seek(start)
            lines = (f.read(end - start) + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""
            end = start
            for line in reversed(lines):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or type(record.get("iteration")) is not int:
                    continue
                iteration = record["iteration"] if iteration is None else iteration
                if train_error is None and isinstance(record.get("error/train"), (int, float)):
                    train_error = float(record["error/train"])
                if test_error is None and isinstance(record.get("error/test"), (int, float)):
                    test_error = float(record["error/test"])
    return Tail(iteration, train_error, test_error)


def _attempt(problems: list[str], read: Callable[[], T], default: T) -> T:
    """`read()`, or `default` with the reason added to `problems` where a file cannot be read."""
    try:
        return read()
    except ResbenchError as err:
        problems.append(str(err))
    except OSError as err:
        problems.append(f"cannot read {err.filename or ''}: {err.strerror or err}")
    return default


_SEED = re.compile(r"seed(\d+)$")


def read_run(run_dir: Path, runs_dir: Path) -> RunRow:
    """One run's row, from its small files and the tail of metrics.jsonl (never last.pt)."""
    where = run_dir.relative_to(runs_dir).parts
    holder = lock_holder(run_dir)
    problems: list[str] = []
    cfg = None
    if (run_dir / CONFIG).is_file():
        cfg = _attempt(problems, lambda: config.load(run_dir / CONFIG), None)
    elif holder is None:
        problems.append(f"no {CONFIG}: restore it, or train the run again with --force")
    env = _attempt(problems, lambda: read_env(run_dir), {})
    summary = None
    if (run_dir / SUMMARY).exists():
        summary = _attempt(problems, lambda: read_summary(run_dir), None)
    failure = _attempt(problems, lambda: read_failure(run_dir), None)
    tail = Tail() if summary is not None else _attempt(problems, lambda: read_tail(run_dir / METRICS), Tail())

    state: RunStatus
    if holder is not None:  # a run that is starting may not have written its files yet
        state, detail = "running", holder
    elif problems:
        state, detail = "damaged", problems[0]
    elif summary is not None:
        state, detail = "finished", ""
    elif failure is not None:
        state, detail = "failed", failure
    else:
        state = "unfinished"
        has_checkpoint = (run_dir / CHECKPOINT).exists()
        detail = "" if has_checkpoint else "stopped before its first checkpoint: --force starts it again"

    seed = _SEED.search(run_dir.name)
    fallback_name = where[0] if len(where) >= 2 else run_dir.parent.name
    return RunRow(
        run_dir=run_dir,
        name=cfg.run.name if cfg is not None else fallback_name,
        overrides=",".join(cfg.run.overrides if cfg is not None else ()) or "/".join(where[1:-1]),
        seed=cfg.run.seed if cfg is not None else int(seed[1]) if seed else None,
        state=state,
        detail=detail,
        iteration=summary.iterations if summary is not None else tail.iteration,
        iterations=cfg.schedule.iterations if cfg is not None else None,
        train_error=summary.train_error if summary is not None else tail.train_error,
        test_error=summary.test_error if summary is not None else tail.test_error,
        wall_time=summary.wall_time if summary is not None else None,
        device=str(env.get("device") or (summary.device if summary is not None else UNKNOWN)),
        git_commit=str(env.get("git_commit") or UNKNOWN),
    )


def list_runs(runs_dir: Path) -> list[RunRow]:
    """A row per run directory at any depth under `runs_dir`, sorted by name, overrides and seed."""
    if not runs_dir.is_dir():
        what = "is a file" if runs_dir.exists() else "does not exist"
        raise ConfigError(
            f"{runs_dir} {what}: give the folder that holds your runs (resbench runs RUNS_DIR, where "
            "RUNS_DIR is train's --runs-dir, default runs)"
        )
    rows = [read_run(d, runs_dir) for d in find_runs(runs_dir, busy=True)]
    return sorted(rows, key=lambda r: (r.name, r.overrides, -1 if r.seed is None else r.seed, str(r.run_dir)))


# --------------------------------------------------------------------------------------------
# export: a long table of every logged value, labelled with the run's config

FIXED_COLUMNS = ("run", "name", "seed", "iteration", "tag", "value")
ColumnType = Literal["bool", "int", "float", "str"]


@dataclass(frozen=True)
class Exported:
    """What `export` wrote."""

    path: Path
    runs: int
    rows: int
    config_keys: int  # the config columns after the fixed ones


def collect_runs(paths: Iterable[Path]) -> list[Path]:
    """The run directories in `paths`, each a run directory or a folder of runs (at any depth), in
    the order given, each once: a run named directly and inside a folder is exported once."""
    found: dict[Path, Path] = {}
    for path in paths:
        run_dirs = [path] if is_run_dir(path) else find_runs(path) if path.is_dir() else []
        if not run_dirs:
            what = (
                "does not exist"
                if not path.exists()
                else "is a file"
                if not path.is_dir()
                else "holds no run directory (no folder with a run's files at any depth)"
            )
            raise ConfigError(
                f"{path} {what}: give run directories (RUNS_DIR/NAME/seedK) or folders of runs (RUNS_DIR)"
            )
        for run_dir in run_dirs:
            found.setdefault(run_dir.resolve(), run_dir)
    return list(found.values())


def export(paths: Sequence[Path], out: Path) -> Exported:
    """Every value in the runs' metrics.jsonl, one row per (run, iteration, tag, value), with one
    column per resolved config key (`model.depth`, `optim.lr`, ...), written to `out` (.csv or
    .parquet) atomically. Lists are written as JSON (`[32000, 48000]`), a key a run lacks is empty."""
    fmt = out.suffix.lower()
    if fmt not in (".csv", ".parquet"):
        raise ConfigError(
            f"--out {out}: unknown format {fmt or '(no extension)'}; give FILE.csv or FILE.parquet"
        )
    pyarrow = _pyarrow() if fmt == ".parquet" else None  # before reading any run
    run_dirs = collect_runs(paths)
    configs = [config.flatten(read_run_config(d)[0].to_dict()) for d in run_dirs]
    keys = sorted(set().union(*configs))
    types = {k: _column_type([c.get(k) for c in configs]) for k in keys}
    columns = [*FIXED_COLUMNS, *keys]

    def tables() -> Iterator[list[tuple[Any, ...]]]:
        for run_dir, flat in zip(run_dirs, configs, strict=True):
            # a torn last line (a kill mid-write, or a run still writing) is not a record yet
            records = read_metrics(run_dir, torn_tail_ok=True)
            labels = tuple(_cell(flat.get(k), types[k]) for k in keys)
            name, seed = flat["run.name"], flat["run.seed"]
            yield [
                (str(run_dir), name, seed, r["iteration"], tag, value, *labels)
                for r in records
                for tag, value in r.items()
                if tag != "iteration"
            ]

    _make_parent(out)
    if pyarrow is None:
        rows = _write_csv(out, columns, tables())
    else:
        rows = _write_parquet(out, columns, types, tables(), pyarrow)
    return Exported(out, len(run_dirs), rows, len(keys))


def _column_type(values: list[Any]) -> ColumnType:
    """One type per config column: where runs differ in kind (a number and a list), text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in present):
        return "str"
    return "int" if all(isinstance(v, int) for v in present) else "float"


def _cell(value: Any, kind: ColumnType) -> Any:
    if value is None:
        return None
    if kind == "float":
        return float(value)
    if kind == "str":
        return json.dumps(list(value)) if isinstance(value, tuple) else str(value)
    return value


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(err.errno, err.strerror or str(err), str(out)) from None


def _write_csv(out: Path, columns: list[str], tables: Iterator[list[tuple[Any, ...]]]) -> int:
    """The standard library's csv, a run at a time: str(float) is the shortest text that reads back
    as the same float, so every value round-trips."""
    rows = 0
    with atomic_open(out) as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for table in tables:
            writer.writerows(table)
            rows += len(table)
    return rows


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # the submodule, loaded onto `pyarrow`
    except ImportError:
        raise ConfigError("--out *.parquet needs pyarrow: pip install 'resbench[parquet]'") from None
    return pyarrow


def _write_parquet(
    out: Path,
    columns: list[str],
    types: dict[str, ColumnType],
    tables: Iterator[list[tuple[Any, ...]]],
    pa: Any,
) -> int:
    """One Parquet file with a fixed schema, a row group per run, built in memory and then written
    atomically like every other file."""
    arrow = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    fixed = {"run": "str", "name": "str", "seed": "int", "iteration": "int", "tag": "str", "value": "float"}
    schema = pa.schema([(c, arrow[fixed.get(c) or types[c]]) for c in columns])
    sink = pa.BufferOutputStream()
    writer = pa.parquet.ParquetWriter(sink, schema)
    rows = 0
    try:
        for table in tables:
            if table:
                data = {c: list(v) for c, v in zip(columns, zip(*table, strict=True), strict=True)}
                data["value"] = [float(v) for v in data["value"]]  # an integer-valued record too
                writer.write_table(pa.Table.from_pydict(data, schema=schema))
                rows += len(table)
    finally:
        writer.close()
    with atomic_open(out, "wb") as f:
        f.write(sink.getvalue().to_pybytes())
    return rows
