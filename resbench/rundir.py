"""The run directory: its layout, its lock and state, and every check and read of what it holds.

A run lives in `runs/<name>/seed<k>/`, or `runs/<name>/<overrides>/seed<k>/` where `--set` values
that differ from the config file name it (`run_dir_for`, e.g. `runs/resnet20/optim.lr=0.05/seed0`):

    config.yaml     the resolved config (`--config` accepts it back); only a copy of last.pt's
    env.json        versions, device, git commit, command line (one entry per start or resume)
    events.out...   TensorBoard scalars, step = iteration; hparams in the same directory
    metrics.jsonl   one JSON line per log point: the canonical record
    last.pt         the checkpoint
    summary.json    written at the end: final errors, parameters, MACs, wall time, images/s
    failed.json     why the run stopped for good (it diverged); removed when it starts again
    .lock           the flock that keeps a second training out

This module owns those names, the lock, the run's state (`RunState`), preparing or refusing a
directory for a training (writing config.yaml and env.json when a run starts, and cutting
metrics.jsonl back to the checkpoint on resume), the same-config and same-data checks of a resume
(they read a checkpoint's `config` and `data_fingerprint`), and reading config.yaml, env.json,
metrics.jsonl and summary.json back. The records written while a run trains are tracking.py's;
what a checkpoint holds is train.py's, and how it is stored checkpoint.py's.

Every failure to read or write these files is a `RunDirError` naming the file and the fix, and never
deletes anything: a damaged file is refused, not replaced, and a full disk keeps the last checkpoint.
Only `--force` (prepare_run_dir) deletes a run's files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import IO, Any, Literal, get_args, get_type_hints

from resbench.checkpoint import Saved
from resbench.checkpoint import load as load_checkpoint
from resbench.config import RunConfig, flatten, load, validate
from resbench.errors import ConfigError, DataError, ResbenchError, RunDirError, WriteError
from resbench.files import atomic_write, describe

CONFIG = "config.yaml"
CHECKPOINT = "last.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
PROBES = "probes.jsonl"  # per-layer and per-block vectors at each `analysis.every` point
ENV = "env.json"
LOCK = ".lock"
FAILED = "failed.json"  # written by train() when a run diverges, for `resbench runs`
RUN_FILES = (CONFIG, CHECKPOINT, SUMMARY, METRICS, ENV)  # any of them makes a folder a run directory

RunState = Literal["empty", "finished", "unfinished", "started"]


@contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """Turn an OSError (a full disk, a read-only folder, a file in the way) into one message. A
    WriteError already names the file that failed and the fix: it passes unchanged, so a full disk
    reads the same whichever file it stopped."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise RunDirError(
            f"cannot write the run directory {run_dir} ({describe(err)}). Free some space or make it "
            "writable, or choose another --runs-dir. Nothing in it was deleted: --resume continues from "
            "its last checkpoint, if it has one."
        ) from None


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
    # `resbench deepen`: the run directory this run was built from (its train_error and train_loss
    # are then the eval-mode numbers on the un-augmented training split); None for a trained run
    constructed_from: str | None = None


# A longer list of overrides is cut to its first entries and a hash of all of them (hashed at 100
# bytes, well under the 255 a file name may have, so a path stays readable in a terminal).
MAX_OVERRIDES_NAME = 100


def run_dir_for(cfg: RunConfig, runs_dir: Path) -> Path:
    """`RUNS_DIR/<run.name>/seed<k>`, or `RUNS_DIR/<run.name>/<overrides>/seed<k>` where overrides
    that differ from the config file name the run (`run.overrides`, e.g. `optim.lr=0.05`)."""
    seed = f"seed{cfg.run.seed}"
    overrides = overrides_dirname(cfg.run.overrides)
    return runs_dir / cfg.run.name / overrides / seed if overrides else runs_dir / cfg.run.name / seed


def overrides_dirname(entries: Iterable[str]) -> str:
    """Sorted `key=value` entries joined by commas, as Hydra's `override_dirname`; a name over
    MAX_OVERRIDES_NAME bytes keeps the entries that fit in 80 and ends in a hash of the whole list.
    The entries are ASCII without `/` (config.render_value escapes strings)."""
    entries = list(entries)
    full = ",".join(entries)
    if len(full.encode()) <= MAX_OVERRIDES_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    kept: list[str] = []
    for entry in entries:
        if len(",".join([*kept, entry]).encode()) > 80:
            break
        kept.append(entry)
    head = ",".join(kept) if kept else entries[0].partition("=")[0][:80] + "=..."
    return f"{head}-and-{len(entries) - max(len(kept), 1)}-more-{digest}"


def runs_dir_of(run_dir: Path, cfg: RunConfig) -> Path:
    """The RUNS_DIR that `run_dir` lies in, were it where `cfg` trains (run_dir_for's inverse)."""
    runs_dir = run_dir.parent.parent
    return runs_dir.parent if cfg.run.overrides else runs_dir


# --------------------------------------------------------------------------------------------
# Opening a run directory


class RunLock:
    """An exclusive `flock` on `<run>/.lock`. The kernel drops it when its process dies, so a lock
    file left behind by a killed run is stale by construction and never blocks `--resume`."""

    def __init__(self, run_dir: Path, wait: bool = False) -> None:
        self.path = run_dir / LOCK
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
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


def require_finished(run_dir: Path, iteration: int, iterations: int, why: str) -> None:
    """A RunDirError (exit 1) unless the run finished: its summary.json written and its last.pt (at
    `iteration`) at the schedule's end. `why` says what needs the final model."""
    if run_state(run_dir) != "finished" or iteration != iterations:
        raise RunDirError(
            f"{run_dir} is not finished (last.pt at iteration {iteration} of {iterations}, or no "
            f"summary.json): {why}. Finish it first with `resbench train --config {run_dir} --resume`"
        )


def run_state(run_dir: Path) -> RunState:
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

    Call it holding the run's lock. `force` wipes the directory and starts over; nothing else deletes.
    """
    state: RunState = run_state(run_dir)
    if force and state != "empty":
        with writing(run_dir):
            for path in run_dir.iterdir():
                if path.name != LOCK:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        state = "empty"
    if state == "finished":
        raise RunDirError(
            f"{run_dir} already holds a finished run (summary.json).\n"
            "Use --force to train it again from scratch, or change run.name, run.seed or --runs-dir."
        )
    if state == "started":  # its metrics describe weights that were never saved
        raise RunDirError(
            f"{run_dir} holds a run that stopped before its first checkpoint ({CHECKPOINT}): there is "
            "nothing to resume.\nStart it again from scratch, which deletes its metrics and events, with: "
            f"{rerun_command(run_dir, '--force')}"
        )
    if state == "unfinished" and not resume:
        raise RunDirError(
            f"{run_dir} already holds an unfinished run with a checkpoint.\n"
            "Use --resume to continue it, or --force to start it again from scratch."
        )
    with writing(run_dir):  # it trains again: an earlier failure no longer describes it
        (run_dir / FAILED).unlink(missing_ok=True)
    return state == "unfinished"


def rerun_command(run_dir: Path, flag: str) -> str:
    """The command that trains this run directory again with `flag` (--resume or --force). It names
    the run's config.yaml where that trains into this directory; where it does not (another run's
    config.yaml, or none), CONFIG stands for the config that does, and the command says so."""
    try:
        cfg: RunConfig | None = load(run_dir / CONFIG)
    except ResbenchError:
        cfg = None
    # run_dir is RUNS_DIR/NAME/seedK, or RUNS_DIR/NAME/OVERRIDES/seedK for a run named by its
    # overrides; without a config to say which, a folder named `key=value` is taken for overrides
    nested = run_dir.parent.parent.parent if "=" in run_dir.parent.name else run_dir.parent.parent
    runs_dir = runs_dir_of(run_dir, cfg) if cfg is not None else nested
    where = "" if runs_dir == Path("runs") else f" --runs-dir {shlex.quote(str(runs_dir))}"
    goes_to = run_dir_for(cfg, runs_dir) if cfg is not None else None
    if goes_to is not None and goes_to.resolve() == run_dir.resolve():
        return f"resbench train --config {shlex.quote(str(run_dir / CONFIG))}{where} {flag}"
    why = f"its config.yaml trains into {goes_to}" if goes_to else "it has no readable config.yaml"
    return f"resbench train --config CONFIG{where} {flag}, with CONFIG the config of {run_dir} ({why})"


def is_run_dir(path: Path) -> bool:
    """A folder holding any of a run's files: a damaged or incomplete run lacks some of them."""
    try:
        return path.is_dir() and any((path / name).exists() for name in RUN_FILES)
    except OSError:  # a name too long for the file system: config.load says so
        return False


def write_run_files(run_dir: Path, cfg: RunConfig, env: Mapping[str, Any]) -> None:
    """config.yaml, and env.json with one entry per start or resume."""
    history = read_env(run_dir).get("starts", [])
    with writing(run_dir):
        atomic_write(run_dir / CONFIG, cfg.to_yaml())
        atomic_write(run_dir / ENV, json.dumps({**env, "starts": [*history, dict(env)]}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Is it the same run? config.yaml against last.pt, a config against the run, the data against last.pt

# Keys that may change between a run and its resume without changing what is computed. run.device
# only where it resolves to the same device type (auto -> cuda): train.check_same_hardware checks it.
RESUMABLE_CHANGES = frozenset(
    {
        "run.device",
        "run.compile",
        "run.cuda_graph",  # the same math and data order, eager or replayed
        "run.deterministic",
        "run.checkpoint_every",
        "analysis.every",
        "analysis.images",
        "analysis.per_channel",
    }
)


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring harmless ones."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def read_run_config(run_dir: Path, need_checkpoint: bool = False) -> tuple[RunConfig, Saved | None]:
    """A run directory's config.yaml and its last.pt (None where there is none yet), checked to belong
    together: last.pt holds the config the run was trained with, and config.yaml is only a copy of it.

    Every command that opens a run directory reads its config here. A config.yaml edited after
    training would pass the run's numbers off as the edited config's, or point at another seed's
    directory; it is refused, naming the keys (those a resume may change aside). Every problem is a
    RunDirError (exit 1); `need_checkpoint` refuses a run without last.pt too.
    """
    yaml, path = run_dir / CONFIG, run_dir / CHECKPOINT
    if not yaml.is_file():
        if is_run_dir(run_dir):
            held = ", ".join(sorted(p.name for p in run_dir.iterdir() if p.name != LOCK))
            raise RunDirError(
                f"{run_dir} is a damaged or incomplete run directory: it has no config.yaml (it holds "
                f"{held}). Restore its config.yaml from a copy, or train the run again from scratch "
                "with `resbench train --config NAME --force` (this deletes what the directory holds)."
            )
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml); give RUNS_DIR/NAME/seedK")
    cfg = load(yaml)
    if not path.is_file():
        if need_checkpoint:
            raise RunDirError(
                f"{run_dir} has no {CHECKPOINT}: there is no model to read. Train or resume the run first."
            )
        return cfg, None
    saved = load_checkpoint(path)
    # Through today's schema: keys added since the run was made take their defaults.
    trained = validate(saved["config"], str(path)).to_dict()
    if changed := changed_keys(trained, cfg.to_dict()):
        was, now = flatten(trained), flatten(cfg.to_dict())
        values = "; ".join(f"{k} {str(now.get(k))[:60]}, trained {str(was.get(k))[:60]}" for k in changed)
        raise RunDirError(
            f"{yaml} is not the config this run was trained with: it differs from the config saved in "
            f"{CHECKPOINT} in {', '.join(changed)} ({values}), and the run's numbers belong to the "
            f"saved one. Restore those values in config.yaml (or, if {CHECKPOINT} was replaced, this "
            "run's own last.pt). To train with the new values, train a new run: give it a name of its "
            "own (--set run.name=NAME) or another --runs-dir."
        )
    return cfg, saved


def load_config(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None
) -> RunConfig:
    """config.load, where a run directory (or its config.yaml) is first checked by read_run_config."""
    path = Path(name_or_path).expanduser()
    folder = path.parent if path.name == CONFIG else path
    if is_run_dir(folder):
        read_run_config(folder)
    return load(name_or_path, overrides, preset)


def refuse_named_twice(named: Iterable[tuple[str, Path]]) -> None:
    """Refuse a run directory named twice (`runs/resnet20/seed0` and `resnet20`, or two spellings of
    one path): it would count as two seeds. `named` holds (how it was named, its run directory)."""
    seen: dict[Path, str] = {}
    for spelling, run_dir in named:
        if (key := run_dir.resolve()) in seen:
            raise ConfigError(
                f"{seen[key]} and {spelling} both name the run directory {run_dir}, so one run would "
                "count twice. Name each run once (configs of their own need their own run.name)."
            )
        seen[key] = spelling


def check_same_config(run_dir: Path, cfg: RunConfig, saved: dict[str, Any] | None = None) -> None:
    """Refuse to continue or reuse a run trained with another config; name the keys that differ."""
    # Through today's schema: keys added since the run was made take their defaults.
    saved_cfg = read_run_config(run_dir)[0] if saved is None else validate(saved, str(run_dir))
    if changed := changed_keys(saved_cfg.to_dict(), cfg.to_dict()):
        raise ConfigError(
            f"{run_dir} was trained with another config: it differs in {', '.join(changed)}. "
            "Restore those values; or keep both runs by giving this config a directory of its own "
            "(--set run.name=NAME, or another --runs-dir); or train it again from scratch with "
            "`resbench train --force`."
        )


def check_same_data(run_dir: Path, cfg: RunConfig, saved: Mapping[str, Any] | None, fingerprint: str) -> None:
    """Refuse to continue a checkpoint (`saved`) on other images than it was trained on: the path
    data.root is compared as config, its contents by `Data.fingerprint`. A fresh start passes."""
    recorded = saved.get("data_fingerprint") if saved is not None else None  # None before it was saved
    if recorded is not None and recorded != fingerprint:
        raise DataError(
            f"{run_dir} was trained on other data: the {cfg.data.dataset} images and labels now under "
            f"data.root={cfg.data.root} (fingerprint {fingerprint}) are not those its checkpoint was "
            f"trained on ({recorded}). Put the original data back there, or start the run again on "
            "this data with --force."
        )


# --------------------------------------------------------------------------------------------
# Reading a run's records back: a damaged file is a RunDirError naming it, never a traceback


def _damaged(path: Path, problem: str, fix: str) -> RunDirError:
    return RunDirError(f"{path} is damaged: {problem}. {fix}")


_RETRAIN = "Restore it from a copy, or train the run again with --force."


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")  # binary garbage then fails as a bad record, by line
    except OSError as err:
        raise RunDirError(f"cannot read {describe(err)}") from None


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        value = json.loads(_read_text(path))
    except ValueError as err:
        raise _damaged(path, f"not JSON ({err})", fix) from None
    if not isinstance(value, dict):
        raise _damaged(path, f"a JSON {type(value).__name__}, not an object", fix)
    return value


def read_metrics(run_dir: Path, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """metrics.jsonl, one dict per log point; [] where there is none. `torn_tail_ok` drops a last
    record cut short, which a running or killed run can leave."""
    path = run_dir / METRICS
    return _parse_metrics(path, _read_text(path), torn_tail_ok) if path.exists() else []


def read_probes(run_dir: Path, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """probes.jsonl, one dict per analysis point: `analysis/<what>` -> a list of numbers, one per 3x3
    layer (responses, grad_norm) or per residual block (block_ratio, branch_gamma), in network order
    (probe.response_layers, probe.residual_blocks); [] where there is none."""
    path = run_dir / PROBES
    return _parse_metrics(path, _read_text(path), torn_tail_ok, vectors=True) if path.exists() else []


def truncate_metrics(run_dir: Path, start_iteration: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be logged again), in
    metrics.jsonl and probes.jsonl."""
    for name, vectors in ((METRICS, False), (PROBES, True)):
        path = run_dir / name
        if not path.exists():
            continue
        text = _read_text(path)
        records = _parse_metrics(path, text, torn_tail_ok=True, vectors=vectors)
        kept = "".join(json.dumps(r) + "\n" for r in records if r["iteration"] <= start_iteration)
        if kept != text:  # the same format RunFiles writes: unchanged lines stay byte-identical
            with writing(path.parent):
                atomic_write(path, kept)


_RECORD = '{"iteration": '  # how every line RunFiles writes begins


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_metrics(
    path: Path, text: str, torn_tail_ok: bool = False, vectors: bool = False
) -> list[dict[str, Any]]:
    """Each line a JSON object with an integer iteration and numbers (lists of numbers with
    `vectors`). `torn_tail_ok` drops the start of a record cut short by a kill mid-write (on resume it
    is logged again)."""
    records = []
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if (
            isinstance(record, dict)
            and type(record.get("iteration")) is int
            and all(
                k == "iteration" or (isinstance(v, list) and all(map(_number, v)) if vectors else _number(v))
                for k, v in record.items()
            )
        ):
            records.append(record)
        elif torn_tail_ok and number == len(lines) and not line.endswith("\n") and line.startswith(_RECORD):
            break
        else:
            what = "an analysis record" if vectors else "a metrics record"
            raise _damaged(path, f"line {number} is not {what}: {line.strip()[:80]!r}", _RETRAIN)
    return records


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON values that may stand for a field annotated `hint`: a union's members, an int for a float."""
    members = get_args(hint) or (hint,)
    return tuple(t for m in members for t in ((int, float) if m is float else (m,)))


def read_summary(run_dir: Path) -> Summary:
    """summary.json; keys a newer resbench added are ignored."""
    path = run_dir / SUMMARY
    fix = (
        "Restore it, or delete it and run with --resume: the final checkpoint writes it again "
        f"({rerun_command(run_dir, '--resume')})."
    )
    values = _read_json(path, fix)
    known = {f.name: f for f in fields(Summary)}
    types = {n: _json_types(hint) for n, hint in get_type_hints(Summary).items()}
    missing = [n for n, f in known.items() if n not in values and f.default is MISSING]
    wrong = [
        n
        for n, v in values.items()
        if n in known and ((isinstance(v, bool) and bool not in types[n]) or not isinstance(v, types[n]))
    ]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"wrong type for {', '.join(wrong)}"] if wrong else []
        )
        raise _damaged(path, "; ".join(problems), fix)
    return Summary(**{n: v for n, v in values.items() if n in known})


def write_failure(run_dir: Path, reason: str) -> None:
    """Record why the run stopped for good (failed.json): `resbench runs` shows it. A resume or
    --force removes it (prepare_run_dir)."""
    with writing(run_dir):
        atomic_write(run_dir / FAILED, json.dumps({"reason": reason}, indent=2) + "\n")


def read_failure(run_dir: Path) -> str | None:
    """Why the run failed (failed.json), or None where it has not."""
    path = run_dir / FAILED
    if not path.exists():
        return None
    fix = "Restore it, or delete it: it only records why the run stopped."
    reason = _read_json(path, fix).get("reason")
    if not isinstance(reason, str):
        raise _damaged(path, "'reason' is missing or not a string", fix)
    return reason


def read_env(run_dir: Path) -> dict[str, Any]:
    """env.json: the versions and command of the latest start, and every start in `starts`; {} if none."""
    path = run_dir / ENV
    if not path.exists():
        return {}
    fix = "Restore it, or delete it: it only records the versions and commands of the earlier starts."
    env = _read_json(path, fix)
    starts = env.get("starts", [])
    if not isinstance(starts, list) or not all(isinstance(s, dict) for s in starts):
        raise _damaged(path, "'starts' is not a list of objects", fix)
    return env
