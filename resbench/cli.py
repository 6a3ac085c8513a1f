"""The `resbench` command line: a thin Typer layer, and the only module that prints rich output.

Each command loads a config, calls one function of the library and renders its result. A
`ResbenchError` becomes one short message on stderr and its exit code (2: bad config or parameter,
1: the run failed), never a traceback.
"""

from __future__ import annotations

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
from resbench.config import ResbenchError, RunConfig
from resbench.models import describe
from resbench.tracking import Summary, Tracker, run_dir_for

app = typer.Typer(
    help="Reproduce the degradation experiment of He et al. 2015 (§4.2): plain vs residual CIFAR nets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

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
        style = "yellow" if err.exit_code == 130 else "red"
        err_console.print(
            f"[bold {style}]{err.label}:[/] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(err.exit_code) from None


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
            line = (
                f"iter {iteration:>{len(str(self.total))}}/{self.total}  "
                f"train err {self.train.get('error/train', float('nan')):5.2f}%  "
                f"loss {self.train.get('loss/train', float('nan')):.3f}  "
                f"test err {metrics['error/test']:5.2f}%"
            )
            if "error/val" in metrics:
                line += f"  val err {metrics['error/val']:5.2f}%"
            line += f"  {self.train.get('perf/images_per_sec', 0):,.0f} img/s"
            (self.progress.console if self.progress else self.out).print(line, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _parse_seeds(seed: int | None, seeds: str | None) -> list[int | None]:
    if seed is not None and seeds:
        raise config_mod.ConfigError("give --seed or --seeds, not both")
    if not seeds:
        return [seed]
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise config_mod.ConfigError(
            f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None


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
    seeds: Annotated[str | None, typer.Option(help="Several runs, one per seed: --seeds 0,1,2.")] = None,
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
    from resbench.train import train as train_run  # imported here: `resbench show` stays quick

    with user_errors():
        overrides = list(set_ or []) + ([f"run.device={device}"] if device else [])
        cfgs = [
            config_mod.load(config, overrides + ([f"run.seed={s}"] if s is not None else []), preset)
            for s in _parse_seeds(seed, seeds)
        ]
        for cfg in cfgs:
            run_dir = run_dir_for(cfg, runs_dir)
            tracker = Tracker() if quiet else ConsoleTracker(console)
            summary = train_run(cfg, run_dir, tracker, resume=resume, force=force)
            _report(summary, run_dir)


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
    from resbench.data import prepare

    with user_errors():
        if dataset not in ("cifar10", "cifar100"):
            raise config_mod.ConfigError(f"--dataset {dataset!r}: expected cifar10 or cifar100")
        console.print(prepare(source, root, dataset), highlight=False)


def main() -> None:
    app()
