"""What the commands print: every rich table, progress bar, note and error message of resbench.
(One exception: __main__.py writes the plain `stopped: ... while starting` before rich is loaded.)

    out, err                             the consoles of stdout and stderr
    print_error(message, label)          `error: ...` on stderr: one short message, no traceback
    print_note(message, to)              `note: ...`: every note, from a run, a report or an evaluation
    ConsoleTracker                       one training: a progress bar in a terminal, else a line per eval
    SweepProgress                        compare's runs: done / running / queued, and a bar per run
    print_models, print_config, print_trained, print_comparison, print_analysis, print_evaluations

Each takes the data a library call returned and renders it; nothing here loads, trains or writes a
file. cli.py decides what to call; this module decides how it looks.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from resbench.analysis.evaluate import Evaluation
from resbench.analysis.responses import AnalysisReport
from resbench.compare import Planned, Report, Status
from resbench.config import ModelConfig, RunConfig
from resbench.experiment import Analysis, Comparison, SweepWatcher
from resbench.models import Architecture, describe
from resbench.rundir import Summary
from resbench.sweep import Event, Outcome
from resbench.tracking import Tracker

# Rich assumes 80 columns where stdout is not a terminal; logs are read on wide screens.
_WIDTH = int(os.environ.get("COLUMNS", "0")) or (None if sys.stdout.isatty() else 120)
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
                TimeRemainingColumn(),
                console=self.out,
            )
            self.task = self.progress.add_task(
                cfg.run.name, total=self.total, completed=start_iteration, loss="-", err="-", speed="-"
            )
            self.progress.start()

    def note(self, message: str) -> None:
        print_note(message)

    def step(self, iteration: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration)

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


class SweepProgress(SweepWatcher):
    """Progress of a set of runs: done / running / queued, and each running run's iteration and ETA.
    In a terminal, bars; elsewhere, one plain line per start, evaluation and end."""

    def __init__(self, to: Console = out) -> None:
        self.out = to
        self.total = self.done = 0
        self.names: dict[Path, str] = {}
        self.running: dict[Path, TaskID | None] = {}
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
        self.names = {p.run_dir: f"{p.cfg.run.name} seed {p.cfg.run.seed}" for p in runs}
        if todo and self.out.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.out,
            )
            self.overall = self.progress.add_task(
                "[bold]runs", total=self.total, completed=self.done, info=""
            )
            self.progress.start()
            self._update_overall()

    def _update_overall(self) -> None:
        queued = self.total - self.done - len(self.running)
        if self.progress is not None:
            self.progress.update(
                self.overall,
                completed=self.done,
                info=f"{self.done} done, {len(self.running)} running, {queued} queued",
            )

    def __call__(self, event: Event) -> None:
        name = self.names.get(event.run_dir, str(event.run_dir))
        if event.kind == "note":
            if event.message not in self.notes:  # every worker loads the same data: say it once
                self.notes.add(event.message)
                print_note(event.message)
        elif event.kind == "start":
            what = f"resuming at {event.iteration}" if event.iteration else "training"
            if self.progress is not None:
                self.running[event.run_dir] = self.progress.add_task(
                    f"  {name}", total=event.total, completed=event.iteration, info=what
                )
            else:
                self.running[event.run_dir] = None
                self.out.print(f"{name}: {what} ({event.total} iterations)", highlight=False)
        elif event.kind == "step" and self.progress is not None and event.run_dir in self.running:
            self.progress.update(self.running[event.run_dir], completed=event.iteration)
        elif event.kind == "done":
            task = self.running.pop(event.run_dir, None)
            if self.progress is not None and task is not None:
                self.progress.remove_task(task)
            elif self.progress is None:
                self.out.print(f"{name}: {event.message}", highlight=False)
            self.done += 1
        elif event.kind == "log" and event.metrics and "error/test" in event.metrics:
            info = f"test err {event.metrics['error/test']:.1f}%"
            if self.progress is not None and event.run_dir in self.running:
                self.progress.update(self.running[event.run_dir], info=info)
            elif self.progress is None:
                self.out.print(f"{name}: iter {event.iteration}  {info}", highlight=False)
        self._update_overall()

    def failed(self, outcome: Outcome) -> None:
        print_error(f"{outcome.run_dir}: {outcome.error}", "run failed")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


_STATUS_COLOURS: dict[Status, str] = {"shown": "green", "not shown": "red", "inconclusive": "yellow"}


def print_comparison(result: Comparison) -> None:
    """The table, the verdict and its notes, the files written and the TensorBoard overlay command."""
    report, files = result.report, result.files
    out.print(_report_table(report))
    for f in report.findings:
        out.print(f"[bold {_STATUS_COLOURS[f.status]}]{f.status:>12}[/]  {escape(f.text)}", highlight=False)
    for note in report.notes:
        print_note(note, to=out)
    out.print(
        f"\nreport: {files.figure_png}, {files.figure_svg}, {files.summary_md}, {files.summary_csv}",
        highlight=False,
        soft_wrap=True,
    )
    if result.analysis is not None:
        _print_responses(result.analysis.responses)
    out.print(f"overlay: {files.tensorboard_command}", highlight=False, soft_wrap=True, markup=False)


def _report_table(report: Report) -> Table:
    table = Table(title="Final error (%), mean ± std over seeds: final model, never the best epoch")
    for column in ("model", "params", "train err", "test err", "paper (Δ)", "seeds", "time"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for r in report.rows:
        paper = f"{r.paper_text} ({r.delta_to_paper:+.1f})" if r.paper_text else ""
        table.add_row(
            r.name,
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
    out.print(f"\nreport: {files.figure_png}, {files.figure_svg}, {files.layers_csv}", highlight=False)


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
