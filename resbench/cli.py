"""The `resbench` command line: a thin Typer layer, and the only module that prints rich output.

Each command loads a config, calls one function of the library and renders its result. A
`ResbenchError` becomes one short message on stderr and its exit code (2: bad config or parameter,
1: the run failed), never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from resbench import config as config_mod
from resbench.config import RunConfig
from resbench.distributed import from_env
from resbench.errors import ConfigError, Interrupted, ResbenchError
from resbench.models import describe
from resbench.tracking import Summary, Tracker, load_config, run_dir_for
from resbench.train import train as train_run

app = typer.Typer(
    help="Reproduce the degradation experiment of He et al. 2015 (§4.2): plain vs residual CIFAR nets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Rich assumes 80 columns where stdout is not a terminal; logs are read on wide screens.
_WIDTH = int(os.environ.get("COLUMNS", "0")) or (None if sys.stdout.isatty() else 120)
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set optim.lr=0.05 (repeatable)."),
]
PresetOption = Annotated[
    str | None, typer.Option("--preset", help="Overlay a bundled preset: quick (CPU-sized) or paper.")
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `ResbenchError` into a message on stderr and its exit code."""
    try:
        yield
    except ResbenchError as err:
        if not from_env().main:  # under torchrun, rank 0 speaks for all
            raise typer.Exit(err.exit_code) from None
        style = "yellow" if err.exit_code == 130 else "red"
        err_console.print(
            f"[bold {style}]{err.label}:[/] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:  # before a run installed its own handler: nothing to save yet
        err_console.print("[bold yellow]stopped:[/] interrupted", highlight=False)
        raise typer.Exit(130) from None


def _print_version(value: bool) -> None:
    if value:
        import torch

        import resbench

        cuda = torch.version.cuda or "none"
        if torch.version.cuda and not torch.cuda.is_available():
            cuda += " (no GPU found)"
        versions = f"resbench {resbench.__version__}, torch {torch.__version__}, CUDA {cuda}"
        console.print(versions, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print versions and exit."),
    ] = False,
) -> None:
    pass


@app.command()
def models() -> None:
    """List the bundled configs: depth, block, shortcut, parameters and MACs."""
    with user_errors():
        table = Table(title="Bundled configs (resbench show NAME for details)")
        for column in ("name", "depth", "block", "net", "shortcut", "params", "MACs"):
            right = column in ("depth", "params", "MACs")
            table.add_column(column, justify="right" if right else "left", no_wrap=column == "name")
        for name in config_mod.bundled_names():
            m = config_mod.load(name).model
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
        console.print(table)


@app.command()
def show(
    config: Annotated[
        str, typer.Argument(help="A bundled config name (resnet56), a YAML path or a run directory.")
    ],
    set_: SetOption = None,
    preset: PresetOption = None,
) -> None:
    """Print the resolved config as YAML, then a summary of the architecture it builds."""
    with user_errors():
        cfg = config_mod.load(config, set_ or [], preset)
        arch = describe(cfg.model)
    console.print(f"# resolved config: {cfg.run.name}", style="dim", highlight=False)
    console.print(cfg.to_yaml(), highlight=False, markup=False)
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
    console.print(table)


class ConsoleTracker(Tracker):
    """A progress bar in a terminal; elsewhere one plain line per evaluation."""

    def __init__(self, out: Console) -> None:
        self.out = out
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
        err_console.print(f"[bold yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)

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


def _seeds(seed: int | None, seeds: str | None) -> list[int | None]:
    if seed is not None and seeds:
        raise ConfigError("give --seed or --seeds, not both")
    return list(config_mod.parse_seeds(seeds)) if seeds else [seed]


def _report(summary: Summary, run_dir: Path) -> None:
    val = f", val error {summary.val_error:.2f}%" if summary.val_error is not None else ""
    console.print(
        f"[bold green]done[/] {summary.name} seed {summary.seed}: test error {summary.test_error:.2f}%{val}, "
        f"train error {summary.train_error:.2f}% (running), {summary.iterations} iterations in "
        f"{time.strftime('%H:%M:%S', time.gmtime(summary.wall_time))}, {summary.images_per_sec:,.0f} img/s "
        f"-> {run_dir}",
        highlight=False,
    )


@app.command()
def train(
    config: Annotated[
        str, typer.Option("--config", "-c", help="Config name (resnet56), YAML path or run dir.")
    ],
    set_: SetOption = None,
    preset: PresetOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run (sets run.seed).")] = None,
    seeds: Annotated[
        str | None, typer.Option(help="One run per seed: a count (3 means 0,1,2) or a list (0,4).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cuda, mps or cpu (sets run.device).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last.pt.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Delete what the run directory holds; start over.")
    ] = False,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go: RUNS_DIR/NAME/seedK.")] = Path(
        "runs"
    ),
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar and no per-eval lines.")
    ] = False,
) -> None:
    """Train a config on CIFAR: one run directory per seed, TensorBoard logs, exact resume."""
    with user_errors():
        overrides = list(set_ or []) + ([f"run.device={device}"] if device else [])
        cfgs = [  # a run directory's config.yaml is first checked against its last.pt
            load_config(config, overrides + ([f"run.seed={s}"] if s is not None else []), preset)
            for s in _seeds(seed, seeds)
        ]
        for cfg in cfgs:
            run_dir = run_dir_for(cfg, runs_dir)
            speak = not quiet and from_env().main  # under torchrun, rank 0 alone prints
            summary = train_run(
                cfg, run_dir, ConsoleTracker(console) if speak else Tracker(), resume=resume, force=force
            )
            if speak:
                _report(summary, run_dir)


class SweepProgress:
    """Progress of a set of runs: done / running / queued, and each running run's iteration and ETA."""

    def __init__(self, out: Console, planned: list[Any]) -> None:
        self.out, self.total = out, len(planned)
        self.names = {p.run_dir: f"{p.cfg.run.name} seed {p.cfg.run.seed}" for p in planned}
        self.done = sum(p.state == "finished" for p in planned)
        self.running: dict[Path, Any] = {}
        self.notes: set[str] = set()
        self.progress: Progress | None = None
        if out.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=out,
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

    def __call__(self, event: Any) -> None:
        name = self.names.get(event.run_dir, str(event.run_dir))
        if event.kind == "note":
            if event.message not in self.notes:  # every worker loads the same data: say it once
                self.notes.add(event.message)
                err_console.print(
                    f"[bold yellow]note:[/] {escape(event.message)}", highlight=False, soft_wrap=True
                )
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

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _report_table(report: Any) -> Table:
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


@app.command()
def compare(
    names: Annotated[
        list[str], typer.Argument(help="Config names (plain20), YAML paths or run directories.")
    ],
    seeds: Annotated[
        str, typer.Option(help="Seeds per model: a count (3 means 0,1,2) or a list (0,4).")
    ] = "1",
    set_: SetOption = None,
    preset: PresetOption = None,
    jobs: Annotated[int, typer.Option(help="Trainings at once, each in its own process.")] = 1,
    no_train: Annotated[bool, typer.Option("--no-train", help="Report on existing runs only.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cuda, mps or cpu (sets run.device).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories are: RUNS_DIR/NAME/seedK.")] = Path(
        "runs"
    ),
    out: Annotated[Path | None, typer.Option(help="Report folder (default: reports/<names>/).")] = None,
    analyze: Annotated[
        bool, typer.Option("--analyze", help="Add Figure 7 (layer responses) and their stats to the report.")
    ] = False,
    backend: Annotated[str, typer.Option(help="local: a process pool (--jobs); ray: Ray tasks.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="With --backend ray: an existing cluster (auto, or HOST:PORT).")
    ] = None,
    gpus_per_run: Annotated[
        float | None, typer.Option(help="With --backend ray: GPUs per run, e.g. 0.25 (default: 1 if any).")
    ] = None,
    cpus_per_run: Annotated[
        float | None, typer.Option(help="With --backend ray: CPUs per run (default 1).")
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(help="With --backend ray: retries of a failed run, from its checkpoint (default 2)."),
    ] = None,
) -> None:
    """Plain vs residual side by side: train what is missing, reuse what exists, report and judge."""
    with user_errors():  # the imports too: a Ctrl-C while matplotlib loads is a stop, not a traceback
        from resbench.compare import load_run, plan, summarise
        from resbench.report import write_report
        from resbench.sweep import run_all, run_all_ray

        if jobs < 1:
            raise ConfigError(f"--jobs {jobs}: must be at least 1")
        if backend not in ("local", "ray"):
            raise ConfigError(f"--backend {backend!r}: expected local or ray")
        ray_only = {"--address": address, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run}
        ray_only["--retries"] = retries  # None where not given: the local pool would ignore them silently
        if backend == "local" and (given := [k for k, v in ray_only.items() if v is not None]):
            raise ConfigError(
                f"{', '.join(given)} need --backend ray (--jobs sets the local pool)"
            )
        # Ray would take a negative request or retry count without a word, or fail with its own traceback.
        for option, value in [("--gpus-per-run", gpus_per_run), ("--retries", retries)]:
            if value is not None and value < 0:
                raise ConfigError(f"{option} {value:g}: must be 0 or more")
        if cpus_per_run is not None and not cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run {cpus_per_run:g}: must be more than 0")
        overrides = list(set_ or []) + ([f"run.device={device}"] if device else [])
        planned = plan(names, config_mod.parse_seeds(seeds), overrides, preset, runs_dir)
        todo = [p for p in planned if p.state != "finished"]
        if no_train and todo:
            why = {"empty": "not trained", "unfinished": "unfinished"}
            raise ConfigError(
                "--no-train, but these runs are not finished: "
                + ", ".join(f"{p.run_dir} ({why[p.state]})" for p in todo)
                + ". Run compare without --no-train to train or resume them."
            )
        states = [p.state for p in planned]
        how = f"{jobs} at a time" if backend == "local" else f"on Ray at {address or 'a local instance'}"
        console.print(
            f"{len(planned)} runs: {states.count('finished')} reused, {states.count('unfinished')} "
            f"to resume, {len(todo) - states.count('unfinished')} to train ({how})",
            highlight=False,
        )
        failed = []
        if todo:
            progress = SweepProgress(console, planned)
            try:
                tasks = [(p.cfg, p.run_dir) for p in todo]
                if backend == "ray":
                    outcomes = run_all_ray(
                        tasks,
                        address,
                        gpus_per_run,
                        cpus_per_run or 1.0,
                        2 if retries is None else retries,
                        progress,
                    )
                else:
                    outcomes = run_all(tasks, jobs, progress)
            except KeyboardInterrupt:
                raise Interrupted(
                    "compare stopped: each running run wrote its checkpoint and no queued run started. "
                    "Run the same command again to resume."
                ) from None
            finally:
                progress.close()
            failed = [o for o in outcomes if o.error is not None]
        for o in failed:
            err_console.print(
                f"[bold red]run failed:[/] {o.run_dir}: {escape(o.error)}", highlight=False, soft_wrap=True
            )
        records = [load_run(p.run_dir) for p in planned if p.run_dir not in {o.run_dir for o in failed}]
        if not records:
            raise ResbenchError("no run finished; nothing to report")
        report = summarise(records)
        out_dir = out or Path("reports") / "_".join(dict.fromkeys(p.cfg.run.name for p in planned))
        responses = (
            _analyze([r.run_dir for r in records], out_dir, records[0].cfg.analysis.images)
            if analyze
            else None
        )
        files = write_report(report, out_dir, responses)

    console.print(_report_table(report))
    colours = {"shown": "green", "not shown": "red", "inconclusive": "yellow"}
    for f in report.findings:
        console.print(f"[bold {colours[f.status]}]{f.status:>12}[/]  {escape(f.text)}", highlight=False)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    console.print(
        f"\nreport: {files.figure_png}, {files.figure_svg}, {files.summary_md}, {files.summary_csv}",
        highlight=False,
        soft_wrap=True,
    )
    if responses is not None:
        _print_responses(responses)
    console.print(f"overlay: {files.tensorboard_command}", highlight=False, soft_wrap=True, markup=False)
    if failed:
        raise typer.Exit(1)


def _analyze(
    run_dirs: list[Path], out: Path, images: int, per_channel: bool = False, device: str = "auto"
) -> Any:
    from resbench.analysis import analyze_run, summarise_analyses
    from resbench.report import write_analysis
    from resbench.train import resolve_device

    where = resolve_device(device)
    analyses = [analyze_run(d, images, per_channel, where) for d in run_dirs]
    summary = summarise_analyses(analyses)
    write_analysis(analyses, summary, out)
    return summary


def _print_responses(summary: Any) -> None:
    table = Table(title="Layer responses: std of each 3x3 layer's output after BN (Figure 7)")
    for column in ("model", "seeds", "3x3 layers", "mean std", "max std", "median ||F(x)||/||shortcut(x)||"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for m in summary.models:
        table.add_row(
            m.name, str(m.seeds), str(len(m.stds)), f"{m.mean_std:.3f}", f"{max(m.stds):.3f}", m.ratio_text
        )
    console.print(table)
    for finding in summary.findings:
        console.print(f"  {escape(finding)}", highlight=False)


@app.command()
def analyze(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (runs/NAME/seedK) with a last.pt.")],
    out: Annotated[Path, typer.Option(help="Where figure7.png/.svg and layers.csv go.")] = Path(
        "reports/analysis"
    ),
    images: Annotated[int, typer.Option(help="Fixed, seeded test images to measure on.")] = 1000,
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="Also take each layer's std per channel, then the mean.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cuda, mps or cpu.")] = "auto",
) -> None:
    """Layer responses (Figure 7) and how close each residual block is to the identity."""
    with user_errors():
        if images < 1:
            raise ConfigError(f"--images {images}: must be at least 1")
        if device not in ("auto", "cuda", "mps", "cpu"):
            raise ConfigError(f"--device {device!r}: expected auto, cuda, mps or cpu")
        summary = _analyze(run_dirs, out, images, per_channel, device)
    _print_responses(summary)
    console.print(
        f"\nreport: {out / 'figure7.png'}, {out / 'figure7.svg'}, {out / 'layers.csv'}", highlight=False
    )


@app.command("evaluate")
def evaluate_runs(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (runs/NAME/seedK) with a last.pt.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="data.root=DIR: evaluate on another copy of the data (repeatable)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cuda, mps or cpu (default: the run's run.device).")
    ] = None,
) -> None:
    """Evaluate each run's final model (last.pt) in one process, beside what summary.json recorded."""
    with user_errors():
        from resbench.evaluate import evaluate_run

        results = [evaluate_run(d, set_ or [], device) for d in run_dirs]
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
    console.print(table)
    for r in results:
        copy = "the official files" if r.official else "not the official files"
        console.print(
            f"{r.run_dir}: {r.name} seed {r.seed}, last.pt at iteration {r.iteration}/{r.iterations}, "
            f"{r.device}, {r.precision}; data in {r.data_root} ({copy}, fingerprint {r.data_fingerprint}): "
            f"{r.data_source}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        for note in ([r.unchecked] if r.unchecked else []) + list(r.notes):
            console.print(f"  note: {note}", highlight=False, soft_wrap=True, markup=False)
    if differ := [str(r.run_dir) for r in results if not r.agrees]:
        err_console.print(
            f"[bold red]error:[/] {escape(', '.join(differ))}: the saved model's errors differ from "
            "summary.json beyond rounding, so the reported numbers are not this last.pt's. Check that "
            "data.root holds the images the run was trained on and that last.pt is the run's own.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


data_app = typer.Typer(help="Get CIFAR onto this machine.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="cifar-10-python.tar.gz, a cifar-10-batches-py folder, or an image-folder tree "
            "(train/<class>/*, test/<class>/*) or its .tar.gz. Without it: download the official archive.",
        ),
    ] = None,
    root: Annotated[Path, typer.Option(help="Where configs look for data (data.root).")] = Path("data"),
    dataset: Annotated[str, typer.Option(help="cifar10 or cifar100.")] = "cifar10",
) -> None:
    """Put a CIFAR copy into ROOT and build resbench's cache, so every training starts at once."""
    with user_errors():
        from resbench.data import prepare

        if dataset not in ("cifar10", "cifar100"):
            raise ConfigError(f"--dataset {dataset!r}: expected cifar10 or cifar100")
        console.print(prepare(source, root, dataset), highlight=False)


def main() -> None:
    # SIGTERM stops like Ctrl-C (a message, exit 130), also before a run installs its own handler.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app()
