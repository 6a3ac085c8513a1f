"""What the commands print: every rich table, progress bar, note and error message of resbench.
(One exception: __main__.py writes the plain `stopped: ... while starting` before rich is loaded.)

    out, err                             the consoles of stdout and stderr
    print_error(message, label)          `error: ...` on stderr: one short message, no traceback
    print_note(message, to)              `note: ...`: every note, from a run, a report or an evaluation
    ConsoleTracker                       one training: a progress bar in a terminal, else a line per eval
    SweepProgress                        compare's runs: done / running / queued, and a bar per run
    print_models, print_config, print_trained, print_comparison, print_analysis, print_evaluations
    print_construction                   deepen: the source and its deeper twin, and where it is the identity
    print_plan                           compare --dry-run: what each run would do, and how long
    print_runs, print_exported

Each takes the data a library call returned and renders it; nothing here loads, trains or writes a
file. cli.py decides what to call; this module decides how it looks.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from resbench.analysis.construct import Construction
from resbench.analysis.evaluate import Evaluation
from resbench.analysis.landscape import Landscape
from resbench.analysis.lesion import Lesion, lesion_labels
from resbench.analysis.responses import AnalysisReport
from resbench.analysis.training import NEAR_IDENTITY, RunProbes
from resbench.compare import Action, Planned, Report, Status, overrides_label
from resbench.config import ModelConfig, RunConfig
from resbench.experiment import Analysis, CompareDryRun, Comparison, SweepWatcher
from resbench.models import Architecture, describe
from resbench.rundir import Summary
from resbench.runs import Exported, RunRow, RunStatus
from resbench.sweep import Event, Outcome
from resbench.tracking import Tracker

# Rich assumes 80 columns where stdout is not a terminal; logs are read on wide screens.
_WIDTH = int(os.environ.get("COLUMNS", "0")) or (None if sys.stdout.isatty() else 120)
if TYPE_CHECKING:  # report.py imports matplotlib
    from resbench.report import LandscapeFiles

out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)


def print_error(message: str, label: str = "error", stop: bool = False) -> None:
    """One message on stderr: red for a failure, yellow for a stop (Ctrl-C, SIGTERM)."""
    style = "yellow" if stop else "red"
    err.print(f"[bold {style}]{label}:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_note(message: str, to: Console = err, indent: str = "") -> None:
    """A note: something true of the numbers that the user should know, but not an error. Notes
    during a run go to stderr, beside the progress; notes that belong to a result go with it."""
    to.print(f"{indent}[bold yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
# models, show, train


def print_models(models: Mapping[str, ModelConfig]) -> None:
    table = Table(title="Bundled configs (resbench show NAME for details)")
    for column in ("name", "depth", "block", "net", "shortcut", "params", "MACs"):
        right = column in ("depth", "params", "MACs")
        table.add_column(column, justify="right" if right else "left", no_wrap=column == "name")
    for name, m in models.items():
        arch = describe(m)
        table.add_row(
            name,
            str(m.depth),
            m.block,
            "residual" if m.residual else "plain",
            m.shortcut or "-",
            f"{arch.params:,}",
            f"{arch.macs / 1e6:,.2f}M",
        )
    out.print(table)


def print_config(cfg: RunConfig, arch: Architecture) -> None:
    """The resolved config as YAML that `--config` accepts back, then the architecture it builds."""
    out.print(f"# resolved config: {cfg.run.name}", style="dim", highlight=False)
    out.print(cfg.to_yaml(), highlight=False, markup=False)
    kind = f"residual, shortcut {cfg.model.shortcut}" if cfg.model.residual else "plain (no shortcuts)"
    table = Table(title=f"{cfg.run.name}: {cfg.model.block} blocks, {kind}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "depth": f"{arch.depth} (n = {cfg.model.n})",
        "weighted layers": str(arch.weighted_layers),
        "blocks per stage": " / ".join(map(str, arch.blocks_per_stage)),
        "planes per stage": " / ".join(str(cfg.model.width * 2**i) for i in range(3)),
        "shortcut at stage 1→2, 2→3": ", ".join(arch.shortcuts),
        "parameters": f"{arch.params:,}",
        "MACs per image": f"{arch.macs:,} ({arch.macs / 1e6:.2f}M multiply-accumulates)",
        "output shape": f"(N, {', '.join(map(str, arch.output_shape))})",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


class _Remaining(TimeRemainingColumn):
    """rich's time remaining, or a task's own `eta` field where it has one: the runs bar's estimate
    from the work left, or "evaluating" once a run's last step is done (rich would show 0:00:00)."""

    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        return super().render(task) if eta is None else Text(eta, style="progress.remaining")


def run_labels(cfgs: list[RunConfig]) -> list[str]:
    """The runs as progress lines name them: name and seed, and where runs of one name and seed
    differ (a sweep), their values of the keys that any of them overrides."""
    plain = [f"{c.run.name} seed {c.run.seed}" for c in cfgs]
    keys = sorted({e.partition("=")[0] for c in cfgs for e in c.run.overrides})
    return [
        f"{c.run.name} [{overrides_label(c, keys)}] seed {c.run.seed}" if plain.count(label) > 1 else label
        for c, label in zip(cfgs, plain, strict=True)
    ]


def _clock(seconds: float) -> str:
    """0:04:18: elapsed or remaining wall time, as rich shows it."""
    return str(timedelta(seconds=round(max(seconds, 0))))


class ConsoleTracker(Tracker):
    """A progress bar in a terminal; elsewhere one plain line per evaluation."""

    def __init__(self, to: Console = out) -> None:
        self.out = to
        self.progress: Progress | None = None
        self.train: Mapping[str, float] = {}
        self.total = 0

    def start(self, cfg: RunConfig, start_iteration: int, env: Mapping[str, Any]) -> None:
        self.total = cfg.schedule.iterations
        what = "resuming at iteration " + str(start_iteration) if start_iteration else "training"
        self.out.print(
            f"{what} {cfg.run.name} seed {cfg.run.seed} on {env['device']} ({env['device_name']}), "
            f"{env['precision']}",
            highlight=False,
        )
        if self.out.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  train err {task.fields[err]}  {task.fields[speed]} img/s"
                ),
                _Remaining(),
                console=self.out,
            )
            self.task = self.progress.add_task(
                cfg.run.name, total=self.total, completed=start_iteration, loss="-", err="-", speed="-"
            )
            self.progress.start()

    def note(self, message: str) -> None:
        # above the live bar: printed beside it, the note would glue onto a stale frame of the bar
        print_note(message, to=self.progress.console if self.progress else err)

    def step(self, iteration: int) -> None:
        if self.progress is not None:
            done = iteration == self.total  # the final evaluation runs next
            self.progress.update(self.task, completed=iteration, **({"eta": "evaluating"} if done else {}))

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        if "error/train" in metrics:
            self.train = metrics
            if self.progress is not None:
                self.progress.update(
                    self.task,
                    loss=f"{metrics['loss/train']:.3f}",
                    err=f"{metrics['error/train']:.1f}%",
                    speed=f"{metrics['perf/images_per_sec']:,.0f}",
                )
        if "error/test" in metrics:
            # "-" until the first log window has closed (an eval before it, or right after a resume)
            train = (
                f"train err {self.train['error/train']:5.2f}%  loss {self.train['loss/train']:.3f}"
                if self.train
                else "train err     -   loss     -"
            )
            line = (
                f"iter {iteration:>{len(str(self.total))}}/{self.total}  {train}  "
                f"test err {metrics['error/test']:5.2f}%"
            )
            if "error/val" in metrics:
                line += f"  val err {metrics['error/val']:5.2f}%"
            if self.train:
                line += f"  {self.train['perf/images_per_sec']:,.0f} img/s"
            (self.progress.console if self.progress else self.out).print(line, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def print_trained(run_dir: Path, summary: Summary) -> None:
    """The line that ends each run of `resbench train`."""
    val = f", val error {summary.val_error:.2f}%" if summary.val_error is not None else ""
    out.print(
        f"[bold green]done[/] {summary.name} seed {summary.seed}: test error {summary.test_error:.2f}%{val}, "
        f"train error {summary.train_error:.2f}% (running), {summary.iterations} iterations in "
        f"{time.strftime('%H:%M:%S', time.gmtime(summary.wall_time))}, {summary.images_per_sec:,.0f} img/s "
        f"-> {run_dir}",
        highlight=False,
    )


# --------------------------------------------------------------------------------------------
# compare


@dataclass
class _Run:
    """A run of the sweep that trains: where it is, since when, and its latest errors."""

    task: TaskID | None  # its bar, in a terminal
    started: float  # SweepProgress.clock() at its start event
    first: int  # the iteration it started (or resumed) at
    iteration: int
    total: int
    train: float | None = None  # error/train of its latest log window
    test: float | None = None  # error/test of its latest evaluation


class SweepProgress(SweepWatcher):
    """Progress of a set of runs: done / running / queued with an overall ETA, and each running run's
    iteration, errors and ETA. In a terminal, bars, and a `done` line for each run that finishes;
    elsewhere, one plain line per start, evaluation and end. Lines name a run's place, [k/N]."""

    def __init__(self, to: Console = out, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.clock = to, clock
        self.total = self.done = 0
        self.names: dict[Path, str] = {}
        self.index: dict[Path, int] = {}
        self.depth: dict[Path, int] = {}  # a step's time grows with the layers: work = iterations x depth
        self.queued: dict[Path, int] = {}  # iterations of the runs still to start
        self.running: dict[Path, _Run] = {}
        self.finished: list[tuple[Path, _Run]] = []  # runs finished in this sweep
        self.began: float | None = None  # when the first run started
        self.notes: set[str] = set()
        self.progress: Progress | None = None

    def planned(self, runs: list[Planned], where: str) -> None:
        states = [p.state for p in runs]
        todo = len(runs) - states.count("finished")
        self.out.print(
            f"{len(runs)} runs: {states.count('finished')} reused, {states.count('unfinished')} "
            f"to resume, {todo - states.count('unfinished')} to train ({where})",
            highlight=False,
        )
        self.total, self.done = len(runs), states.count("finished")
        self.names = dict(zip([p.run_dir for p in runs], run_labels([p.cfg for p in runs]), strict=True))
        self.index = {p.run_dir: k for k, p in enumerate(runs, 1)}
        self.depth = {p.run_dir: p.cfg.model.depth for p in runs}
        self.queued = {p.run_dir: p.cfg.schedule.iterations for p in runs if p.state != "finished"}
        if todo and self.out.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                _Remaining(),
                console=self.out,
            )
            self.overall = self.progress.add_task(
                "[bold]runs", total=self.total, completed=self.done, info="", eta="-:--:--"
            )
            self.progress.start()
            self._update_overall()

    def eta(self) -> float | None:
        """Seconds until every run is done: the work left at the rate this sweep has worked so far
        (iterations x depth per second, all jobs together). None until a run has finished in this
        sweep: before, the rate would be mostly start-up."""
        if not self.finished or self.began is None:
            return None
        done = sum((r.total - r.first) * self.depth.get(d, 1) for d, r in self.finished)
        done += sum((r.iteration - r.first) * self.depth.get(d, 1) for d, r in self.running.items())
        left = sum((r.total - r.iteration) * self.depth.get(d, 1) for d, r in self.running.items())
        left += sum(iterations * self.depth.get(d, 1) for d, iterations in self.queued.items())
        elapsed = self.clock() - self.began
        return left * elapsed / done if done > 0 else None

    def _update_overall(self) -> None:
        queued = self.total - self.done - len(self.running)
        if self.progress is not None:
            eta = self.eta()
            self.progress.update(
                self.overall,
                completed=self.done,
                info=f"{self.done} done, {len(self.running)} running, {queued} queued",
                eta="-:--:--" if eta is None else _clock(eta),
            )

    def _print(self, line: str) -> None:
        """A line that stays: above the bars in a terminal (beside them it would glue onto a stale
        frame of the live display)."""
        to = self.progress.console if self.progress else self.out
        to.print(line, highlight=False, markup=False, soft_wrap=True)  # one line, for grep

    def __call__(self, event: Event) -> None:
        name = self.names.get(event.run_dir, str(event.run_dir))
        k = f"[{self.index.get(event.run_dir, '?')}/{self.total}]"
        run = self.running.get(event.run_dir)
        if event.kind == "note":
            if event.message not in self.notes:  # every worker loads the same data: say it once
                self.notes.add(event.message)
                print_note(event.message, to=self.progress.console if self.progress else err)
        elif event.kind == "start":
            self._start(event, name, k)
        elif event.kind in ("step", "log") and run is not None:
            self._advance(run, event, name, k)
        elif event.kind == "done":
            self._done(run, event, name, k)
        self._update_overall()

    def _start(self, event: Event, name: str, k: str) -> None:
        now = self.clock()
        self.began = now if self.began is None else self.began
        self.queued.pop(event.run_dir, None)
        what = f"resuming at {event.iteration:,}" if event.iteration else "training"
        task = None
        if self.progress is not None:
            task = self.progress.add_task(
                f"  {name}", total=event.total, completed=event.iteration, info=what
            )
        else:
            self._print(f"{k} {name}: {what} ({event.total:,} iterations)")
        self.running[event.run_dir] = _Run(task, now, event.iteration, event.iteration, event.total)

    def _advance(self, run: _Run, event: Event, name: str, k: str) -> None:
        run.iteration = max(run.iteration, event.iteration)
        metrics = event.metrics or {}
        run.train = metrics.get("error/train", run.train)
        run.test = metrics.get("error/test", run.test)
        if self.progress is not None and run.task is not None:
            fields: dict[str, Any] = {}
            if run.iteration >= run.total and "error/test" not in metrics:
                fields["eta"] = "evaluating"  # the last step is done; the final evaluation runs
            if "error/train" in metrics or "error/test" in metrics:
                fields["info"] = f"train err {_percent(run.train)}  test err {_percent(run.test)}"
            self.progress.update(run.task, completed=run.iteration, **fields)
        elif self.progress is None and "error/test" in metrics:
            self._print(
                f"{k} {name}  iter {event.iteration:,}/{run.total:,}  "
                f"elapsed {_clock(self.clock() - run.started)}  "
                f"train err {_percent(run.train)}  test err {_percent(run.test)}"
            )

    def _done(self, run: _Run | None, event: Event, name: str, k: str) -> None:
        """A run that finished leaves a line with its final errors. A failed one says so; in a
        terminal, why follows when the sweep is over (`failed`), below the bars."""
        self.running.pop(event.run_dir, None)
        self.queued.pop(event.run_dir, None)
        self.done += 1
        if self.progress is not None and run is not None and run.task is not None:
            self.progress.remove_task(run.task)
        if event.message.startswith("failed") and self.progress is not None:
            self._print(f"{k} failed {name}: why follows when the other runs are done")
            return
        if run is None or event.message.startswith("failed"):  # without a start: finished elsewhere
            self._print(f"{k} {name}: {event.message}")
            return
        self.finished.append((event.run_dir, run))
        eta = self.eta()
        left = f", about {_clock(eta)} left" if eta is not None and self.done < self.total else ""
        self._print(
            f"{k} done {name}: train {_percent(run.train)} test {_percent(run.test)} "
            f"({_clock(self.clock() - run.started)}); {self.done}/{self.total} runs done{left}"
        )

    def failed(self, outcome: Outcome) -> None:
        print_error(f"{outcome.run_dir}: {outcome.error}", "run failed")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _percent(error: float | None) -> str:
    return "-" if error is None else f"{error:.2f}%"


_STATUS_COLOURS: dict[Status, str] = {"shown": "green", "not shown": "red", "inconclusive": "yellow"}


def print_comparison(result: Comparison) -> None:
    """The table, the verdict and its notes, the files written, and the TensorBoard overlay: the
    command and the address that shows it."""
    report, files = result.report, result.files
    out.print(_report_table(report))
    for f in report.findings:
        out.print(f"[bold {_STATUS_COLOURS[f.status]}]{f.status:>12}[/]  {escape(f.text)}", highlight=False)
    for note in report.notes:
        print_note(note, to=out)
    figures = [files.figure_png, files.figure_svg, files.depth_png, files.depth_svg]
    written = [*filter(None, figures), files.summary_md, files.summary_csv]
    out.print(f"\nreport: {', '.join(map(str, written))}", highlight=False, soft_wrap=True, markup=False)
    if result.analysis is not None:
        _print_responses(result.analysis.responses)
        if result.analysis.lesions:
            _print_lesions(result.analysis.lesions)
    out.print(f"overlay: {files.tensorboard_command}", highlight=False, soft_wrap=True, markup=False)
    if files.tensorboard_url:
        out.print(
            f"then open {files.tensorboard_url} (one colour per model, the error curves only)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


_ACTION_COLOURS: dict[Action, str] = {"reuse": "green", "resume": "cyan", "train": "yellow", "refuse": "red"}


def print_plan(dry: CompareDryRun) -> None:
    """`compare --dry-run`: each run's directory, what compare would do with it, the iterations it
    has left and their estimated time, then the total and whether the plan can be carried out."""
    actions = [r.run.action for r in dry.runs]
    counts = ", ".join(f"{actions.count(a)} {a}" for a in _ACTION_COLOURS if a in actions)
    table = Table(title=f"Plan: {len(dry.runs)} runs ({counts}); --dry-run trains nothing")
    for column in ("run directory", "action", "iterations left", "estimated time"):
        right = column in ("iterations left", "estimated time")
        table.add_column(column, justify="right" if right else "left")
    for r in dry.runs:
        p = r.run
        action = f"resume at {p.start_iteration:,}" if p.action == "resume" else p.action
        if p.refusal is not None:
            action += " (why: below)"
        busy = p.action in ("train", "resume")
        table.add_row(
            escape(str(p.run_dir)),
            f"[{_ACTION_COLOURS[p.action]}]{escape(action)}[/]",
            f"{p.iterations_left:,}" if busy else "-",
            (_duration(r.seconds) if r.seconds is not None else "unknown") if busy else "-",
        )
    out.print(table)
    for r in dry.runs:
        if r.run.refusal is not None:  # in full, below the table: a reason often holds a command to paste
            reason = f"refuse {r.run.run_dir}: {r.run.refusal}"
            out.print(reason, highlight=False, markup=False, soft_wrap=True)
    left = sum(r.run.iterations_left for r in dry.runs)
    total = "unknown" if dry.seconds is None else _duration(dry.seconds)
    summary = f"total: {left:,} iterations left on {dry.device}; time, one run at a time: {total}"
    out.print(summary, highlight=False)
    if any(r.seconds is None for r in dry.runs if r.run.action in ("train", "resume")):
        print_note(
            "unknown: no finished run of that net (block, depth, width) on this device and host under "
            "the runs directory has recorded its images/s yet",
            to=out,
        )
    if not dry.valid:
        refused = actions.count("refuse")
        print_error(f"{refused} run{'s' * (refused > 1)} refused: compare would stop before it trains")


def _report_table(report: Report) -> Table:
    table = Table(title="Final error (%), mean ± std over seeds: final model, never the best epoch")
    with_overrides = any(r.overrides for r in report.rows)  # a sweep: one row per model and values
    columns = ["model", *(["overrides"] * with_overrides), "params", "train err", "test err", "paper (Δ)"]
    for column in [*columns, "seeds", "mean time/run"]:
        left = column in ("model", "overrides")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for r in report.rows:
        paper = f"{r.paper_text} ({r.delta_to_paper:+.1f})" if r.paper_text else ""
        table.add_row(
            r.name,
            *([escape(r.overrides)] * with_overrides),
            f"{r.params / 1e3:,.0f}k",
            str(r.train_error),
            str(r.test_error),
            paper,
            str(len(r.seeds)),
            f"{r.wall_time.mean / 60:.1f} min",
        )
    return table


# --------------------------------------------------------------------------------------------
# analyze, evaluate


def print_analysis(analysis: Analysis) -> None:
    _print_responses(analysis.responses)
    files = analysis.files
    written = [files.figure_png, files.figure_svg, files.layers_csv]
    if analysis.lesions:
        _print_lesions(analysis.lesions)
    if lf := analysis.lesion_files:
        written += [lf.figure_png, lf.figure_svg, lf.lesion_csv]
    if analysis.probes:
        _print_block_drift(analysis.probes)
    if tf := analysis.training_files:
        made = (tf.gradients_png, tf.gradients_svg, tf.blocks_png, tf.blocks_svg, tf.blocks_csv)
        written += [f for f in made if f is not None]
    if analysis.unprobed:
        names = ", ".join(map(str, analysis.unprobed))
        print_note(f"no probes.jsonl (trained without analysis.every), not in gradients.png: {names}", to=out)
    out.print(f"\nreport: {', '.join(map(str, written))}", highlight=False, soft_wrap=True, markup=False)


def _print_block_drift(runs: tuple[RunProbes, ...]) -> None:
    """A row per run that logged probes: at its last analysis point, the median block ratio and the
    share of blocks near the identity, beside its final errors and the gradient flow's end."""
    table = Table(title="Over training (probes.jsonl): residual branches and gradient flow at the end")
    columns = ("run", "iteration", "median ||F(x)||/||shortcut(x)||", f"blocks < {NEAR_IDENTITY:g}",
               "first/last layer grad", "train error", "test error")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=column == "run")
    for r in runs:
        median, near = r.final_median_ratio, r.final_near_identity
        table.add_row(
            escape(r.label),
            f"{int(r.iterations[-1]):,}",
            f"{median:.3f}" if median is not None else "-",
            f"{near:.0%}" if near is not None else "-",
            f"{r.first_to_last_gradient[-1]:.3g}",
            f"{r.train_error:.2f}%" if r.train_error is not None else "-",
            f"{r.test_error:.2f}%" if r.test_error is not None else "-",
        )
    out.print(table)


def _print_lesions(lesions: tuple[Lesion, ...]) -> None:
    """A row per run: the error with nothing deleted, with the single block that costs most deleted,
    and with k = 1 and k = K random blocks deleted (mean over the draws)."""
    table = Table(title="Lesions (Veit et al. 2016): test error (%) with blocks deleted at test time")
    for column in ("run", "images", "baseline", "worst single deletion", "k = 1", "k = K", "not deletable"):
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=True)
    for x, label in zip(lesions, lesion_labels(lesions), strict=True):
        worst = x.worst
        last = x.random[-1] if x.random else None
        table.add_row(
            escape(label),
            f"{x.images:,}",
            f"{x.baseline:.2f}",
            f"{worst.error:.2f} ({worst.name})" if worst and worst.error is not None else "-",
            f"{x.random[0].mean:.2f}" if x.random else "-",
            f"{last.mean:.2f} ± {last.std:.2f} (K = {last.k})" if last else "-",
            str(len(x.blocks) - len(x.deletable)),
        )
    out.print(table)
    if any(len(x.deletable) < len(x.blocks) for x in lesions):
        print_note(
            "not deletable: a plain block that changes the shape (stride 2, more planes) has no shortcut "
            "to stand in for it; lesion.csv names each with the reason",
            to=out,
        )


def _print_responses(summary: AnalysisReport) -> None:
    table = Table(title="Layer responses: std of each 3x3 layer's output after BN (Figure 7)")
    for column in ("model", "seeds", "3x3 layers", "mean std", "max std", "median ||F(x)||/||shortcut(x)||"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for m in summary.models:
        table.add_row(
            m.name, str(m.seeds), str(len(m.stds)), f"{m.mean_std:.3f}", f"{max(m.stds):.3f}", m.ratio_text
        )
    out.print(table)
    for finding in summary.findings:
        out.print(f"  {escape(finding)}", highlight=False)


def print_evaluations(results: list[Evaluation]) -> None:
    """Each run's errors and losses now beside what summary.json recorded, then the data it used."""
    table = Table(title="Final model (last.pt) evaluated now | as summary.json recorded it")
    for column in ("run", "split", "images", "error now", "recorded", "loss now", "recorded", "check"):
        table.add_column(column, justify="left" if column in ("run", "split", "check") else "right")
    for r in results:
        check = "not compared" if r.tolerance is None else "agrees" if r.agrees else "[red]differs[/]"
        if r.tolerance is not None and r.agrees:
            check += " (exact)" if r.tolerance.error == 0 else f" (±{r.tolerance.error:g} pts)"
        for s in r.splits:
            recorded = s.recorded_error is not None and s.recorded_loss is not None
            table.add_row(
                str(r.run_dir),
                s.split,
                f"{s.images:,}",
                f"{s.error:.2f}%",
                f"{s.recorded_error:.2f}%" if recorded else "-",
                f"{s.loss:.4f}",
                f"{s.recorded_loss:.4f}" if recorded else "-",
                check,
            )
    out.print(table)
    for r in results:
        copy = "the official files" if r.official else "not the official files"
        out.print(
            f"{r.run_dir}: {r.name} seed {r.seed}, last.pt at iteration {r.iteration}/{r.iterations}, "
            f"{r.device}, {r.precision}; data in {r.data_root} ({copy}, fingerprint {r.data_fingerprint}): "
            f"{r.data_source}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        for note in ([r.unchecked] if r.unchecked else []) + list(r.notes):
            print_note(note, to=out, indent="  ")


def print_construction(c: Construction) -> None:
    """`resbench deepen`: the source and its deeper twin side by side, and where the twin is the identity."""
    table = Table(title=f"{c.name} seed {c.seed}: depth {c.source_depth} deepened to {c.depth}")
    for column in ("split", "BN", "images", "source error", "deepened error", "source loss", "deepened loss"):
        table.add_column(column, justify="left" if column in ("split", "BN") else "right")
    for m in c.measures:
        table.add_row(
            m.split,
            "running statistics (eval)" if m.mode == "eval" else "batch statistics (train mode)",
            f"{m.images:,}",
            f"{m.source_error:.2f}%",
            f"{m.constructed_error:.2f}%",
            f"{m.source_loss:.4f}",
            f"{m.constructed_loss:.4f}",
        )
    out.print(table)
    twin = f"residual, shortcut {c.shortcut}" if c.kind == "residual" else "plain"
    lines = [
        f"{c.appended} identity block{'s' * (c.appended > 1)} appended to each stage ({twin}); parameters "
        f"{c.source_params:,} -> {c.params:,}; {c.device}, {c.precision}",
        "The appended blocks are the identity in eval mode and in train mode: their branch's last BN "
        "has gamma = beta = 0, so F(x) = 0 and relu(0 + x) = x."
        if c.identity_in_train_mode
        else "The appended blocks are the identity ONLY IN EVAL MODE, with BN's running statistics "
        "(mean 0, var + eps = 1). With batch statistics, as in training, each BN on their path "
        f"({'convs and BN' if c.kind == 'plain' else 'the option C projection'}) normalises by the "
        "batch's own mean and variance, and they are not the identity: see the batch statistics row.",
        f"written: {c.target} (summary.json: the deepened model's numbers; its train_error is the "
        "eval-mode error on the un-augmented training split, not a running train-mode error)",
    ]
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    for note in c.notes:
        print_note(note, to=out, indent="  ")


# --------------------------------------------------------------------------------------------
# runs, export

_STATE_COLOURS: dict[RunStatus, str] = {
    "running": "cyan",
    "finished": "green",
    "failed": "red",
    "unfinished": "yellow",
    "damaged": "red",
}


def print_runs(rows: list[RunRow], fmt: str, runs_dir: Path) -> None:
    """The runs as a table, then what each failed, damaged or running run's row cannot hold (the
    reason, the lock's holder); with `fmt` csv or json, plain text on stdout for scripts (no
    markup, wall time in seconds, the full commit)."""
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=[f.name for f in fields(RunRow)], lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.record() for r in rows)
        return
    if fmt == "json":
        sys.stdout.write(json.dumps([r.record() for r in rows], indent=2) + "\n")
        return
    if not rows:
        print_note(f"no runs in {runs_dir}", to=out)
        return
    states = {s: sum(r.state == s for r in rows) for s in _STATE_COLOURS}
    counts = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    table = Table(title=f"{len(rows)} runs in {escape(str(runs_dir))}: {counts}")
    with_overrides = any(r.overrides for r in rows)
    columns = ["name", *(["overrides"] * with_overrides), "seed", "state", "iteration", "train err"]
    for column in [*columns, "test err", "time", "device", "commit"]:
        right = column in ("seed", "iteration", "train err", "test err", "time")
        wrap = dict(overflow="fold") if column == "overrides" else dict(no_wrap=True)
        table.add_column(column, justify="right" if right else "left", **wrap)
    for r in rows:
        table.add_row(
            escape(r.name),
            *([escape(r.overrides.replace(",", ", ")) or "-"] * with_overrides),  # wraps between entries
            "-" if r.seed is None else str(r.seed),
            f"[{_STATE_COLOURS[r.state]}]{r.state}[/]",
            f"{r.iteration or 0:,}/{r.iterations:,}" if r.iterations else "-",
            "-" if r.train_error is None else f"{r.train_error:.2f}%",
            "-" if r.test_error is None else f"{r.test_error:.2f}%",
            "-" if r.wall_time is None else _duration(r.wall_time),
            escape(r.device),
            escape(_short_commit(r.git_commit)),
        )
    out.print(table)
    for r in rows:
        if r.detail:
            where = " ".join([r.name, *[r.overrides] * bool(r.overrides), f"seed {r.seed}"])
            out.print(f"{where} ({r.state}): {r.detail}", highlight=False, markup=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    """12s, 3m05s, 2h04m: a wall time at a glance."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _short_commit(commit: str) -> str:
    """The first 8 hex digits, keeping a '-dirty' mark: enough to find the commit."""
    head, dirty, _ = commit.partition("-dirty")
    return head[:8] + dirty


def print_exported(result: Exported) -> None:
    out.print(
        f"wrote {result.rows:,} rows from {result.runs} runs to {result.path}: run, name, seed, "
        f"iteration, tag, value and {result.config_keys} config keys",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@contextlib.contextmanager
def point_progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A bar of grid points in a terminal (one line per 10% in a log), as a (done, total) callback."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=err, transient=True)  # fmt: skip
    task: TaskID | None = None
    shown = -1

    def update(done: int, total: int) -> None:
        nonlocal task, shown
        if err.is_terminal:
            if task is None:
                task = bar.add_task(what, total=total)
            bar.update(task, completed=done)
        elif (tenth := 10 * done // total) != shown:
            shown = tenth
            err.print(f"{what}: {done}/{total} points", highlight=False)

    with bar if err.is_terminal else contextlib.nullcontext():
        yield update


def print_landscapes(landscapes: list[Landscape], files: LandscapeFiles) -> None:
    table = Table(title="Loss landscapes (Li et al. 2018): training loss along filter-normalised directions")
    for column in ("run", "grid", "images", "loss at the trained point", "min loss", "max loss", "s / point"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for x in landscapes:
        grid = f"{len(x.alphas)}" if x.betas is None else f"{len(x.alphas)} x {len(x.betas)}"
        table.add_row(
            escape(f"{x.title} ({x.name}, seed {x.seed})"), grid, f"{x.images:,}", f"{x.centre_loss:.4f}",
            f"{x.loss.min():.4f}", f"{x.loss.max():.4g}", f"{x.seconds_per_point:.2f}",
        )  # fmt: skip
    out.print(table)
    written = [files.figure_png, files.figure_svg, files.landscape_csv]
    out.print(f"\nreport: {', '.join(map(str, written))}", highlight=False, soft_wrap=True, markup=False)
