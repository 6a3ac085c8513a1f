"""Comparing runs: final numbers over seeds, aligned curves, and a verdict computed from the data.

    plan(names, seeds, overrides, preset, runs_dir) -> list[Planned]    which runs a compare needs
    load_run(run_dir)                               -> RunRecord        a finished run from disk
    summarise(records)                              -> Report           rows, curves, findings

Pure: nothing here prints, trains or draws. experiment.py has sweep.py train what `plan` finds
missing; console.py renders a `Report`, and report.py writes its figure and files.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from resbench import config
from resbench.config import RunConfig
from resbench.errors import CompareError, RunDirError
from resbench.rundir import (
    CONFIG,
    RunState,
    Summary,
    changed_keys,
    check_same_config,
    is_run_dir,
    load_config,
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


@dataclass(frozen=True)
class Planned:
    cfg: RunConfig
    run_dir: Path
    state: RunState  # finished (reused), unfinished (resumed), empty (trained)


def plan(
    names: list[str], seeds: list[int], overrides: list[str], preset: str | None, runs_dir: Path
) -> list[Planned]:
    """One run per (name, seed); a run directory given as a name stands for itself. A run named
    twice (`runs/resnet20/seed0` and `resnet20`, or two spellings of one path) is refused: it would
    count as two seeds."""
    spelled: list[tuple[str, Planned]] = []  # how each run was named, and the run
    for name in names:
        path = Path(name)
        if is_run_dir(path):
            trained, _ = read_run_config(path)
            asked = config.load(path / CONFIG, overrides, preset)
            if changed := changed_keys(trained.to_dict(), asked.to_dict()):
                # a run directory is compared as it was trained: ignoring --set would report other numbers
                raise CompareError(
                    f"{name} is a run directory, compared as it was trained, but --set/--preset would change "
                    f"{', '.join(changed)} for it. Drop those, or name its config ({trained.run.name}) "
                    "instead to train a run with them."
                )
            spelled.append((name, Planned(asked, path, run_state(path))))  # asked: only --device differs
        else:
            for seed in seeds:
                cfg = load_config(name, [*overrides, f"run.seed={seed}"], preset)
                run_dir = run_dir_for(cfg, runs_dir)
                state = run_state(run_dir)
                if state == "finished":  # reused only if it is the run asked for
                    check_same_config(run_dir, cfg)
                spelled.append((f"{name} seed {seed}", Planned(cfg, run_dir, state)))
    refuse_named_twice((spelling, p.run_dir) for spelling, p in spelled)
    planned = [p for _, p in spelled]
    if started := [p.run_dir for p in planned if p.state == "started"]:
        # Metrics without a checkpoint describe weights that were never saved; only --force deletes them.
        raise RunDirError(
            "these runs stopped before their first checkpoint, so there is nothing to resume: "
            + ", ".join(map(str, started))
            + ". Start each again from scratch (this deletes its metrics and events), then compare: "
            + "; ".join(rerun_command(d, "--force") for d in started)
        )
    return planned


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
    test_iterations: np.ndarray
    test_mean: np.ndarray
    test_std: np.ndarray


FindingKind = Literal["degradation", "residual fix", "deeper resnet"]
Status = Literal["shown", "not shown", "inconclusive"]  # what the data say of a finding's claim


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    status: Status
    text: str
    threshold: float  # points of train error a difference had to exceed to count
    reason: str = ""  # why it is inconclusive regardless of the difference, e.g. "not trained yet"


@dataclass(frozen=True)
class Report:
    rows: list[Row]
    curves: list[Curve]
    findings: list[Finding]
    notes: list[str]
    records: list[RunRecord]


def summarise(records: list[RunRecord]) -> Report:
    """Group runs by model (seeds together), then compute rows, curves and the verdict."""
    if not records:
        raise CompareError("nothing to compare")
    _check_alike(records)
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[r.cfg.run.name].append(r)
    for name, group in groups.items():
        digests = {r.cfg.digest(exclude_run=True) for r in group}
        if len(digests) > 1:
            raise CompareError(
                f"runs named {name} were trained with different configs: "
                + ", ".join(str(r.run_dir) for r in group)
            )
    order = sorted(groups, key=lambda n: (groups[n][0].cfg.model.residual, groups[n][0].cfg.model.depth, n))
    rows = [_row(name, groups[name]) for name in order]
    curves = [_curve(name, groups[name]) for name in order]
    return Report(rows, curves, verdict(rows), _notes(rows), records)


def _check_alike(records: list[RunRecord]) -> None:
    first = records[0]
    a = config.flatten(first.cfg.to_dict())
    for r in records[1:]:
        b = config.flatten(r.cfg.to_dict())
        differ = [k for k in SHARED_KEYS if a.get(k) != b.get(k)]
        if differ:
            detail = ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in differ)
            raise CompareError(
                f"{first.run_dir} and {r.run_dir} were not trained alike ({detail}); "
                "compare runs on the same data and schedule"
            )


def _row(name: str, group: list[RunRecord]) -> Row:
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


def _curve(name: str, group: list[RunRecord]) -> Curve:
    train = aligned([_series(r.metrics, "error/train") for r in group])
    test = aligned([_series(r.metrics, "error/test") for r in group])
    m = group[0].cfg.model
    return Curve(name, m.depth, m.residual, len(group), *train, *test)


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
    """Pair plain and residual twins by depth and read off what the data show."""
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
    iterations = rows[0].iterations
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
