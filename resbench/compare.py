"""Comparing runs: which runs a compare needs, their final numbers over seeds, aligned curves, and a
verdict computed from the data.

    Grid.parse(["optim.lr=0.1,0.05"])                     -> Grid           `--sweep`: values per key
    plan(names, seeds, overrides, preset, runs_dir, grid) -> list[Planned]  the runs, or why not
    plan_runs(...)                                        -> list[Planned]  every run, refusals kept
    estimate(planned, speeds, device)                     -> seconds        `--dry-run`'s estimates
    load_run(run_dir)                                     -> RunRecord      a finished run from disk
    summarise(records)                                    -> Report         rows, curves, findings

Runs group by model and the values of their overrides (`run.overrides`, which name their
directories): a sweep's values each get a row, a curve and their own verdict, which pairs twins
within the same values only. Pure: nothing here prints, trains or draws. experiment.py has sweep.py
train what `plan` finds missing; console.py renders a `Report`, and report.py writes its files.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from resbench import config
from resbench.config import RunConfig, clip, names_a_directory, render_value
from resbench.errors import CheckpointError, CompareError, ConfigError, ResbenchError, RunDirError
from resbench.rundir import (
    CONFIG,
    SUMMARY,
    RunState,
    Summary,
    changed_keys,
    check_same_config,
    is_run_dir,
    load_config,
    read_env,
    read_metrics,
    read_run_config,
    read_summary,
    refuse_named_twice,
    rerun_command,
    run_dir_for,
    run_state,
)

# Table 6 (ResNets, option A) and readings of Figure 6 (plain nets; approximate), test error in %.
PAPER_RESNET = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_PLAIN_APPROX = {20: 9.5, 32: 10.0, 44: 12.0, 56: 13.5}
PAPER_ITERATIONS = 64_000
# Seed-to-seed spread of final errors over the full 64k schedule in public reproductions (paper.md):
# no difference smaller than this is read as real, however alike the seeds look.
SEED_SPREAD = 0.5
# A model whose train error is within this many points of chance (100 - 100/classes) has not started
# to learn, so comparing it says nothing about depth or shortcuts.
CHANCE_MARGIN = 5.0
# Keys that must agree across every run of a compare, or the comparison is not like for like.
SHARED_KEYS = (
    "data.dataset",
    "data.root",
    "data.val_size",
    "data.normalize",
    "data.augment",
    "data.pad",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "optim.batch_size",
    "schedule.iterations",
    "schedule.milestones",
    "schedule.gamma",
)


# --------------------------------------------------------------------------------------------
# Which runs

MAX_COMBINATIONS = 1000  # a typo in a --sweep should not queue a million runs


@dataclass(frozen=True)
class Grid:
    """`--sweep KEY=V1,V2,...`, repeatable: the values of each swept key, as text that is parsed as
    YAML like a `--set` value. A compare or train takes every combination (the cartesian product,
    in the order given), with `--set` for fixed values and `--seeds` on top."""

    axes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, sweeps: Iterable[str], fixed: Iterable[str] = ()) -> Grid:
        """Every problem with the options at once, as one ConfigError. `fixed` are the --set values."""
        set_keys = {o.partition("=")[0].strip() for o in fixed}
        axes: dict[str, tuple[str, ...]] = {}
        problems: list[str] = []
        for text in sweeps:
            key, sep, listed = text.partition("=")
            key, what = key.strip(), f"--sweep {clip(text)}"
            values = _split_values(listed)
            if not sep or not key:
                problems.append(f"{what}: expected KEY=V1,V2,..., e.g. --sweep optim.weight_decay=0,1e-4")
            elif not names_a_directory(key):
                problems.append(
                    f"{what}: {key} does not name a run directory (no analysis.* key, nor run.* but "
                    "run.precision and run.sync_bn, nor data.root, does), so every value would train one "
                    f"run; set it with --set {key}=VALUE (and seeds with --seeds)"
                )
            elif key in axes:
                problems.append(f"{what}: {key} is swept twice; give all its values in one --sweep")
            elif key in set_keys:
                problems.append(f"{what}: {key} is also given by --set; sweep it or set it, not both")
            elif values is None:
                problems.append(
                    f"{what}: a bracket or quote is not closed; values are YAML, e.g. [1000,1500]"
                )
            elif any(not v.strip() for v in values):
                problems.append(f"{what}: an empty value; give each value, e.g. {key}=0,1e-4 (null for none)")
            elif repeated := sorted({v for v in (v.strip() for v in values) if listed_twice(v, values)}):
                problems.append(f"{what}: repeats {', '.join(repeated)}; give each value once")
            else:
                axes[key] = tuple(v.strip() for v in values)
        if not problems and math.prod(len(v) for v in axes.values()) > MAX_COMBINATIONS:
            sizes = " x ".join(str(len(v)) for v in axes.values())
            problems.append(
                f"--sweep: {sizes} combinations is more than {MAX_COMBINATIONS}; sweep fewer values"
            )
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(tuple(axes.items()))

    def combinations(self) -> list[tuple[str, ...]]:
        """Each combination as `--set` overrides (`KEY=VALUE`); one empty one without a sweep."""
        keys = [k for k, _ in self.axes]
        return [
            tuple(f"{k}={v}" for k, v in zip(keys, vs, strict=True))
            for vs in itertools.product(*(v for _, v in self.axes))
        ]


NO_SWEEP = Grid()  # one combination: the configs as they are (with --set)


def listed_twice(value: str, values: list[str]) -> bool:
    return [v.strip() for v in values].count(value) > 1


def _split_values(text: str) -> list[str] | None:
    """`0,1e-4` -> ['0', '1e-4']; `[1000,1500],[500,800]` -> ['[1000,1500]', '[500,800]']: commas
    inside brackets, braces or quotes do not split. None where a bracket or quote is left open."""
    values, depth, quote, current = [], 0, "", ""
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += c
        if depth < 0:
            return None
    return None if depth or quote else [*values, current]


Action = Literal["reuse", "resume", "train", "refuse"]


@dataclass(frozen=True)
class Planned:
    cfg: RunConfig
    run_dir: Path
    state: RunState  # finished (reused), unfinished (resumed), empty (trained), started (refused)
    start_iteration: int = 0  # where an unfinished run resumes (its last.pt)
    refusal: ResbenchError | None = None  # why the command cannot go on with this run

    @property
    def action(self) -> Action:
        if self.refusal is not None:
            return "refuse"
        if self.state == "finished":
            return "reuse"
        return "resume" if self.state == "unfinished" else "train"

    @property
    def iterations_left(self) -> int:
        if self.action in ("reuse", "refuse"):
            return 0
        return self.cfg.schedule.iterations - self.start_iteration


def plan(
    names: list[str],
    seeds: list[int],
    overrides: list[str],
    preset: str | None,
    runs_dir: Path,
    grid: Grid = NO_SWEEP,
) -> list[Planned]:
    """One run per (name, sweep combination, seed), or the first reason the command cannot go on
    (`--dry-run` takes `plan_runs`: every run with its refusal)."""
    planned = plan_runs(names, seeds, overrides, preset, runs_dir, grid)
    if refused := [p.refusal for p in planned if p.refusal is not None and p.state != "started"]:
        raise refused[0]
    if started := [p.run_dir for p in planned if p.state == "started"]:
        # Metrics without a checkpoint describe weights that were never saved; only --force deletes them.
        raise RunDirError(
            "these runs stopped before their first checkpoint, so there is nothing to resume: "
            + ", ".join(map(str, started))
            + ". Start each again from scratch (this deletes its metrics and events), then compare: "
            + "; ".join(rerun_command(d, "--force") for d in started)
        )
    return planned


def resolve_configs(
    name: str,
    overrides: list[str],
    preset: str | None,
    grid: Grid,
    seeds: Iterable[int | None],
    problems: dict[str, ConfigError],
) -> list[tuple[str, RunConfig]]:
    """`name`'s config at each sweep combination and seed (None: the config's own run.seed), with a
    label for messages. Errors go to `problems`, by message: every seed of a bad combination says
    the same, and `raise_config_problems` then reports each once."""
    resolved = []
    for combination in grid.combinations():
        label = f"{name} with {', '.join(combination)}" if combination else name
        for seed in seeds:
            try:  # a run directory's config.yaml is first checked against its last.pt
                at_seed = [f"run.seed={seed}"] if seed is not None else []
                cfg = load_config(name, [*overrides, *combination, *at_seed], preset)
            except ConfigError as err:
                problems.setdefault(f"{label}: {err}", err)
                continue
            resolved.append((f"{label} seed {cfg.run.seed}", cfg))
    return resolved


def raise_config_problems(problems: dict[str, ConfigError]) -> None:
    """One ConfigError for all of them, before anything trains."""
    if len(problems) == 1:
        raise next(iter(problems.values()))
    if problems:
        raise ConfigError(
            f"{len(problems)} configs of this command are not valid; nothing was trained:\n- "
            + "\n- ".join(problems)
        )


def plan_runs(
    names: list[str],
    seeds: list[int],
    overrides: list[str],
    preset: str | None,
    runs_dir: Path,
    grid: Grid = NO_SWEEP,
) -> list[Planned]:
    """Every run a compare needs and what it would do with it, without writing anything: one run
    per (name, sweep combination, seed); a run directory given as a name stands for itself. Every
    config is resolved first, and all config errors come as one ConfigError. A run the command
    cannot go on with carries its `refusal`: a finished or unfinished run trained with another
    config, a run stopped before its first checkpoint, a run named twice (`runs/resnet20/seed0` and
    `resnet20`, or two spellings of one path: it would count as two seeds)."""
    spelled: list[tuple[str, Planned]] = []  # how each run was named, and the run
    problems: dict[str, ConfigError] = {}  # by message: every seed of a bad combination says the same
    for name in names:
        path = Path(name)
        if is_run_dir(path):
            if grid.axes:
                raise ConfigError(
                    f"{name} is a run directory, compared as it was trained, so --sweep cannot apply to "
                    f"it. Name its config ({read_run_config(path)[0].run.name}) instead to sweep it."
                )
            trained, _ = read_run_config(path)
            asked = config.load(path / CONFIG, overrides, preset)
            refusal = None
            if changed := changed_keys(trained.to_dict(), asked.to_dict()):
                # a run directory is compared as it was trained: ignoring --set would report other numbers
                refusal = CompareError(
                    f"{name} is a run directory, compared as it was trained, but --set/--preset would change "
                    f"{', '.join(changed)} for it. Drop those, or name its config ({trained.run.name}) "
                    "instead to train a run with them."
                )
            spelled.append((name, _planned(asked, path, refusal)))  # asked: only --device differs
            continue
        for label, cfg in resolve_configs(name, overrides, preset, grid, seeds, problems):
            spelled.append((label, _planned(cfg, run_dir_for(cfg, runs_dir))))
    raise_config_problems(problems)
    seen: dict[Path, str] = {}
    planned = []
    for spelling, p in spelled:
        if (key := p.run_dir.resolve()) in seen and p.refusal is None:
            try:
                refuse_named_twice([(seen[key], p.run_dir), (spelling, p.run_dir)])
            except ConfigError as err:
                p = Planned(p.cfg, p.run_dir, p.state, p.start_iteration, err)
        seen.setdefault(key, spelling)
        planned.append(p)
    return planned


def _planned(cfg: RunConfig, run_dir: Path, refusal: ResbenchError | None = None) -> Planned:
    """What training `cfg` in `run_dir` would do. A finished run is reused, and an unfinished one
    resumed, only if it is the run asked for; both are checked here, before anything trains."""
    state = run_state(run_dir)
    start = 0
    if state == "started":
        refusal = refusal or RunDirError(
            f"{run_dir} stopped before its first checkpoint, so there is nothing to resume. Start it "
            f"again from scratch (this deletes its metrics and events): {rerun_command(run_dir, '--force')}"
        )
    elif state in ("finished", "unfinished") and refusal is None:
        try:
            trained, saved = read_run_config(run_dir)
            check_same_config(run_dir, cfg, trained.to_dict())
            start = int(saved["iteration"]) if saved is not None and state == "unfinished" else 0
        except (ConfigError, RunDirError, CheckpointError) as err:
            refusal = err
    return Planned(cfg, run_dir, state, start, refusal)


# --------------------------------------------------------------------------------------------
# How long the runs left would take: images/s that finished runs on this machine recorded


# What sets a run's speed: the net (block, depth, width), the device type and the precision it ran
# in, the batch size, and run.compile and run.cuda_graph (a graph replay is several times faster).
SpeedKey = tuple[str, int, int, str, str, int, bool, bool]


def _speed_key(cfg: RunConfig, device: str, precision: str) -> SpeedKey:
    m = cfg.model
    return (
        m.block,
        m.depth,
        m.width,
        device,
        precision,
        cfg.optim.batch_size,
        cfg.run.compile,
        cfg.run.cuda_graph,
    )


def measured_speeds(runs_dir: Path, host: str) -> dict[SpeedKey, float]:
    """The median images/s of the finished runs under `runs_dir` that trained on `host`, by what
    sets the speed (`SpeedKey`). A run whose files cannot be read is left out: it only informs an
    estimate."""
    speeds: dict[SpeedKey, list[float]] = defaultdict(list)
    for path in sorted(runs_dir.rglob(SUMMARY)) if runs_dir.is_dir() else []:
        run_dir = path.parent
        try:
            summary, cfg = read_summary(run_dir), config.load(run_dir / CONFIG)
            recorded_host = read_env(run_dir).get("host")
        except (ResbenchError, OSError):
            continue
        if recorded_host == host and summary.images_per_sec > 0:
            key = _speed_key(cfg, summary.device.split(":")[0], summary.precision)
            speeds[key].append(summary.images_per_sec)
    return {key: statistics.median(values) for key, values in speeds.items()}


def estimate(p: Planned, speeds: dict[SpeedKey, float], device: str) -> float | None:
    """Seconds the run's iterations left take at the measured speed of runs like it on `device` (a
    device type); None where no finished run measured one."""
    import torch

    from resbench.hardware import resolve_precision

    if not p.iterations_left:
        return 0.0
    try:
        precision = resolve_precision(p.cfg.run.precision, torch.device(device))
    except ConfigError:  # bf16 on mps: the run itself will say so
        return None
    speed = speeds.get(_speed_key(p.cfg, device, precision))
    return None if speed is None else p.iterations_left * p.cfg.optim.batch_size / speed


# --------------------------------------------------------------------------------------------
# Finished runs


@dataclass(frozen=True)
class RunRecord:
    run_dir: Path
    cfg: RunConfig
    summary: Summary
    metrics: list[dict]


def load_run(run_dir: Path) -> RunRecord:
    cfg, _ = read_run_config(run_dir)  # RunDirError: not a run directory, or config.yaml edited
    metrics = read_metrics(run_dir)
    if not metrics:
        raise CompareError(f"{run_dir} has no metrics.jsonl: the run never logged. Train it first.")
    if run_state(run_dir) != "finished":
        raise CompareError(
            f"{run_dir} is unfinished (no summary.json). Resume it, or compare without --no-train."
        )
    return RunRecord(run_dir, cfg, read_summary(run_dir), metrics)


# --------------------------------------------------------------------------------------------
# Statistics, rows and curves


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std 0 for a single seed)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        a = np.asarray(values, dtype=np.float64)
        return cls(float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a))

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.n > 1 else f"{self.mean:.2f}"


@dataclass(frozen=True)
class Row:
    """One model: its final numbers over seeds. Errors in %."""

    name: str
    depth: int
    block: str
    residual: bool
    shortcut: str | None
    params: int
    seeds: tuple[int, ...]
    train_error: Stat  # running error on augmented batches over the last log window
    test_error: Stat  # final model, eval mode
    paper_test_error: float | None
    paper_approximate: bool  # read off Figure 6 rather than taken from Table 6
    wall_time: Stat  # seconds
    iterations: int
    num_classes: int
    overrides: str = (
        ""  # the values this row's runs differ in from other rows' (a sweep's), e.g. optim.lr=0.05
    )

    @property
    def chance_error(self) -> float:
        """The error (%) of a guess: what a net that has learned nothing scores."""
        return 100 - 100 / self.num_classes

    @property
    def near_chance(self) -> bool:
        return self.train_error.mean >= self.chance_error - CHANCE_MARGIN

    @property
    def delta_to_paper(self) -> float | None:
        return None if self.paper_test_error is None else self.test_error.mean - self.paper_test_error

    @property
    def paper_text(self) -> str:
        """The paper's test error as printed: '≈' marks a reading off Figure 6; empty if none."""
        if self.paper_test_error is None:
            return ""
        return f"{'≈' if self.paper_approximate else ''}{self.paper_test_error:.2f}"


@dataclass(frozen=True)
class Curve:
    """Error (%) against iteration, averaged over seeds on a common grid."""

    name: str
    depth: int
    residual: bool
    n: int
    train_iterations: np.ndarray
    train_mean: np.ndarray
    train_std: np.ndarray
    test_iterations: np.ndarray  # the evaluations
    test_mean: np.ndarray
    test_std: np.ndarray
    overrides: str = ""  # as Row.overrides
    milestones: tuple[int, ...] = ()  # where the lr drops
    gamma: float = 0.1  # by how much it drops there


FindingKind = Literal["degradation", "residual fix", "deeper resnet"]
Status = Literal["shown", "not shown", "inconclusive"]  # what the data say of a finding's claim


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    status: Status
    text: str
    threshold: float  # points of train error a difference had to exceed to count
    reason: str = ""  # why it is inconclusive regardless of the difference, e.g. "not trained yet"
    overrides: str = ""  # the sweep values its rows share (Row.overrides)


@dataclass(frozen=True)
class Report:
    rows: list[Row]
    curves: list[Curve]
    findings: list[Finding]
    notes: list[str]
    records: list[RunRecord]
    swept: list[str] = field(default_factory=list)  # the override keys whose values differ between runs


def summarise(records: list[RunRecord]) -> Report:
    """Group runs by model and swept values (seeds together), then compute rows, curves and the
    verdict, which pairs twins within the same swept values only."""
    if not records:
        raise CompareError("nothing to compare")
    swept = swept_keys(records)
    _check_alike(records, swept)
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[(r.cfg.run.name, overrides_label(r.cfg, swept))].append(r)
    for (name, label), group in groups.items():
        digests = {r.cfg.digest(exclude_run=True) for r in group}
        if len(digests) > 1:
            raise CompareError(
                f"runs named {name}{f' ({label})' if label else ''} were trained with different configs: "
                + ", ".join(str(r.run_dir) for r in group)
            )

    def order(key: tuple[str, str]) -> tuple[Any, ...]:
        m, values = groups[key][0].cfg.model, [resolved_value(groups[key][0].cfg, k) for k in swept]
        return (m.residual, m.depth, key[0], [(0, v, "") if _number(v) else (1, 0, str(v)) for v in values])

    keys = sorted(groups, key=order)
    rows = [_row(name, groups[(name, label)], label) for name, label in keys]
    curves = [_curve(name, groups[(name, label)], label) for name, label in keys]
    return Report(rows, curves, verdict(rows), _notes(rows), records, swept)


def swept_keys(records: list[RunRecord]) -> list[str]:
    """The keys named in runs' overrides (`run.overrides`) that take several values among the runs
    of one model: what a sweep varies. A key every run sets alike (`--set`) is not swept, and nor
    is one in which models differ but each has one value: those runs were not trained alike."""
    named = sorted({e.partition("=")[0] for r in records for e in r.cfg.run.overrides})
    models = {r.cfg.run.name for r in records}
    return [
        k
        for k in named
        if any(
            len({render_value(resolved_value(r.cfg, k)) for r in records if r.cfg.run.name == m}) > 1
            for m in models
        )
    ]


def overrides_label(cfg: RunConfig, swept: list[str]) -> str:
    """`optim.lr=0.05, optim.weight_decay=0`: this config's values of the swept keys."""
    return ", ".join(f"{k}={render_value(resolved_value(cfg, k))}" for k in swept)


def resolved_value(cfg: RunConfig, key: str) -> Any:
    """The value at a dotted key of the resolved config (None where there is none)."""
    value: Any = cfg.to_dict()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_alike(records: list[RunRecord], swept: list[str]) -> None:
    """Runs compared side by side must be trained alike, but in what a sweep varies."""
    first = records[0]
    a = config.flatten(first.cfg.to_dict())
    shared = [k for k in SHARED_KEYS if not any(k == s or k.startswith(s + ".") for s in swept)]
    for r in records[1:]:
        b = config.flatten(r.cfg.to_dict())
        differ = [k for k in shared if a.get(k) != b.get(k)]
        if differ:
            detail = ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in differ)
            raise CompareError(
                f"{first.run_dir} and {r.run_dir} were not trained alike ({detail}); "
                "compare runs on the same data and schedule"
            )


def _row(name: str, group: list[RunRecord], overrides: str = "") -> Row:
    m = group[0].cfg.model
    paper = (PAPER_RESNET if m.residual else PAPER_PLAIN_APPROX).get(m.depth) if m.block == "basic" else None
    if m.residual and m.shortcut != "A":
        paper = None  # Table 6 is option A
    return Row(
        name=name,
        depth=m.depth,
        block=m.block,
        residual=m.residual,
        shortcut=m.shortcut,
        params=group[0].summary.params,
        seeds=tuple(sorted(r.cfg.run.seed for r in group)),
        train_error=Stat.of([r.summary.train_error for r in group]),
        test_error=Stat.of([r.summary.test_error for r in group]),
        paper_test_error=paper,
        paper_approximate=paper is not None and not m.residual,
        wall_time=Stat.of([r.summary.wall_time for r in group]),
        iterations=group[0].summary.iterations,
        num_classes=m.num_classes,
        overrides=overrides,
    )


def aligned(points: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves logged at different iterations, interpolated onto the union of their iterations
    within the range every curve covers; returns (iterations, mean, std over curves)."""
    lo = max(x[0] for x, _ in points)
    hi = min(x[-1] for x, _ in points)
    grid = np.unique(np.concatenate([x for x, _ in points]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    values = np.stack([np.interp(grid, x, y) for x, y in points])
    std = values.std(axis=0, ddof=1) if len(points) > 1 else np.zeros(len(grid))
    return grid, values.mean(axis=0), std


def _series(metrics: list[dict], tag: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(m["iteration"], m[tag]) for m in metrics if tag in m]
    return np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs])


def _curve(name: str, group: list[RunRecord], overrides: str = "") -> Curve:
    train = aligned([_series(r.metrics, "error/train") for r in group])
    test = aligned([_series(r.metrics, "error/test") for r in group])
    m, schedule = group[0].cfg.model, group[0].cfg.schedule
    return Curve(
        name,
        m.depth,
        m.residual,
        len(group),
        *train,
        *test,
        overrides=overrides,
        milestones=schedule.milestones,
        gamma=schedule.gamma,
    )


# --------------------------------------------------------------------------------------------
# The verdict


def single_seed_threshold(iterations: int) -> float:
    """The difference (points) that one seed per model must exceed: the full schedule's seed spread,
    grown by sqrt(64k / iterations) for shorter runs, as SGD noise shrinks with the square root of
    the steps averaged over (0.5 at 64k, 2.8 at 2,000, 10 at 150 iterations)."""
    return SEED_SPREAD * math.sqrt(max(PAPER_ITERATIONS / iterations, 1.0))


def pooled_std(stats: list[Stat]) -> float | None:
    """The seed-to-seed std pooled over the models that have several seeds; None if none has."""
    several = [s for s in stats if s.n > 1]
    if not several:
        return None
    return math.sqrt(sum((s.n - 1) * s.std**2 for s in several) / sum(s.n - 1 for s in several))


def threshold(a: Stat, b: Stat, pooled: float | None, iterations: int) -> tuple[float, str]:
    """How large a difference of means must be to count, and how that was decided.

    With seeds, two standard errors of the difference (~95%), never below a floor: seeds that
    happen to agree exactly do not make every difference real. The floor is the single-seed
    threshold for the run length, scaled to the seed counts as a standard error is (the factor is 1
    with one seed each), and never below SEED_SPREAD. A model with one seed borrows the spread
    pooled over the models that have several. Without any seeds, the single-seed threshold.
    """
    sa = a.std if a.n > 1 else pooled
    sb = b.std if b.n > 1 else pooled
    if sa is None or sb is None:
        return single_seed_threshold(iterations), f"the expected one-seed spread at {iterations:,} iterations"
    noise = 2 * math.sqrt(sa**2 / a.n + sb**2 / b.n)
    floor = max(single_seed_threshold(iterations) * math.sqrt((1 / a.n + 1 / b.n) / 2), SEED_SPREAD)
    if noise < floor:
        if floor == SEED_SPREAD:
            return floor, "the floor: the seed spread of full runs"
        scaled = f"the expected one-seed spread at {iterations:,} iterations, for {_seeds(a, b)}"
        return floor, f"the floor: {scaled}"
    if min(a.n, b.n) == 1:
        return noise, "2 standard errors, with the seed spread pooled over the models that have several"
    return noise, "2 standard errors over seeds"


def _seeds(a: Stat, b: Stat) -> str:
    if a.n != b.n:
        return f"{a.n} and {b.n} seeds"
    return f"{a.n} seeds" if a.n > 1 else "1 seed each"


LABELS: dict[FindingKind, str] = {
    "degradation": "Degradation",
    "residual fix": "Residual fix",
    "deeper resnet": "Deeper ResNet",
}


def verdict(rows: list[Row]) -> list[Finding]:
    """Pair plain and residual twins by depth, within the same swept values, and read off what the
    data show."""
    findings: list[Finding] = []
    for overrides in dict.fromkeys(r.overrides for r in rows):
        group = [r for r in rows if r.overrides == overrides]
        findings += [
            Finding(
                f.kind,
                f.status,
                f"[{overrides}] {f.text}" if overrides else f.text,
                f.threshold,
                f.reason,
                overrides,
            )
            for f in _verdict(group)
        ]
    return findings


def _verdict(rows: list[Row]) -> list[Finding]:
    """The verdict over rows of one sweep value (or of no sweep)."""
    pooled = pooled_std([r.train_error for r in rows])
    findings: list[Finding] = []
    for block in sorted({r.block for r in rows}):
        plain = sorted((r for r in rows if r.block == block and not r.residual), key=lambda r: r.depth)
        residual = [r for r in rows if r.block == block and r.residual and r.shortcut == "A"] or [
            r for r in rows if r.block == block and r.residual
        ]
        residual = sorted({r.depth: r for r in residual}.values(), key=lambda r: r.depth)
        for deep in plain[1:]:
            findings.append(_compare("degradation", deep, plain[0], +1, pooled))
        for r in residual:
            twin = next((p for p in plain if p.depth == r.depth), None)
            if twin is not None:
                findings.append(_compare("residual fix", r, twin, -1, pooled))
        for deep in residual[1:]:
            findings.append(_compare("deeper resnet", deep, residual[0], -1, pooled))
    return findings


def _compare(kind: FindingKind, a: Row, b: Row, expected_sign: int, pooled: float | None) -> Finding:
    """`a` against `b` in train error, where `expected_sign` is the sign the paper predicts for a - b."""
    diff = a.train_error.mean - b.train_error.mean
    limit, basis = threshold(a.train_error, b.train_error, pooled, a.iterations)
    numbers = (
        f"train error {a.train_error.mean:.1f}% vs {b.train_error.mean:.1f}%, {diff:+.1f} pts, "
        f"{_seeds(a.train_error, b.train_error)}; "
        f"test error {a.test_error.mean:.1f}% vs {b.test_error.mean:.1f}%"
    )
    untrained = [r for r in (a, b) if r.near_chance]
    if untrained:
        who = " and ".join(r.name for r in untrained)
        return Finding(
            kind,
            "inconclusive",
            f"{LABELS[kind]}: not trained yet. {who} {'is' if len(untrained) == 1 else 'are'} "
            f"within {CHANCE_MARGIN:g} pts of chance ({a.chance_error:.1f}% for {a.num_classes} classes), "
            f"so nothing about depth or shortcuts is shown ({numbers}).",
            limit,
            "not trained yet",
        )
    status: Status
    if abs(diff) < limit:
        status = "inconclusive"
    else:
        status = "shown" if diff * expected_sign > 0 else "not shown"
    phrases = {
        ("degradation", "shown"): f"Degradation: {a.name} trains worse than {b.name}",
        ("degradation", "not shown"): f"No degradation: {a.name} trains better than {b.name}",
        ("residual fix", "shown"): f"Residual fix: {a.name} trains better than its plain twin {b.name}",
        ("residual fix", "not shown"): f"No residual fix: {a.name} trains worse than its plain twin {b.name}",
        ("deeper resnet", "shown"): f"Deeper ResNet: {a.name} trains better than {b.name}",
        ("deeper resnet", "not shown"): f"Deeper ResNet not better: {a.name} trains worse than {b.name}",
    }
    text = phrases.get((kind, status), f"{LABELS[kind]} unclear: {a.name} vs {b.name} is within seed noise")
    return Finding(kind, status, f"{text} ({numbers}). Threshold {limit:.1f} pts: {basis}.", limit)


def _notes(rows: list[Row]) -> list[str]:
    notes = []
    iterations = min(r.iterations for r in rows)
    if iterations < PAPER_ITERATIONS:
        notes.append(
            f"These runs are {iterations:,} iterations long, "
            f"{iterations / PAPER_ITERATIONS:.1%} of the paper's 64k. A short schedule shows the ordering "
            "of plain nets (the degradation) and the gap between a plain net and its residual twin. It "
            "does not reach the paper's errors (the reference column is far away), and deeper ResNets "
            "need the long schedule to overtake shallower ones."
        )
    if all(r.train_error.n == 1 for r in rows):
        notes.append(
            f"Every model has a single seed, so the seed spread cannot be measured. A difference must "
            f"exceed {single_seed_threshold(iterations):.1f} points: the {SEED_SPREAD}-point spread of full "
            f"runs, times sqrt(64k / {iterations:,}) for this length. Use --seeds 3 or more for error bars."
        )
    elif any(r.train_error.n == 1 for r in rows):
        notes.append(
            "Some models have a single seed; their seed spread is taken from the models that have several."
        )
    if untrained := [r.name for r in rows if r.near_chance]:
        verb = "is" if len(untrained) == 1 else "are"
        notes.append(
            f"{', '.join(untrained)} {verb} within {CHANCE_MARGIN:g} points "
            f"of chance ({rows[0].chance_error:.1f}% train error): not trained yet, so every verdict "
            "involving them is inconclusive. Train longer."
        )
    return notes
