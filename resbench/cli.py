"""The `resbench` command line: a thin Typer layer over experiment.py, rendered by console.py.

Each command parses its options, calls one library function and renders what it returns. Options
with a fixed set of values are `Literal`s or an `Enum`, so Typer checks them and `--help` lists
them. A `ResbenchError` becomes one short message on stderr and its exit code (2: bad config or
parameter, 1: the run failed, 130: stopped), never a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from resbench import config as config_mod
from resbench import console, experiment
from resbench import runs as runs_mod
from resbench.analysis import landscape as landscape_mod
from resbench.analysis.construct import deepen_run
from resbench.analysis.evaluate import evaluate_run
from resbench.analysis.lesion import DRAWS, IMAGES, K_MAX, SEED, LesionOptions
from resbench.cifar import prepare
from resbench.compare import Grid
from resbench.config import Dataset, Device, clip
from resbench.distributed import from_env
from resbench.errors import ConfigError, Interrupted, ResbenchError
from resbench.experiment import Backend
from resbench.models import describe
from resbench.rundir import is_run_dir
from resbench.tracking import Tracker


class Commands(TyperGroup):
    """Typer's help gives every option the type of its value, `--resume <bool>` too, though a flag
    takes none; an empty metavar shows none. Set here on the flags of every command (and on --help),
    so that a new flag reads as one too."""

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_read_as_flags(command.get_params(ctx))
        return command

    def get_params(self, ctx: typer.Context) -> Any:
        return _flags_read_as_flags(super().get_params(ctx))  # the group's own: --version, --help


def _flags_read_as_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


app = typer.Typer(
    cls=Commands,
    help="Reproduce the degradation experiment of He et al. 2015 (§4.2): plain vs residual CIFAR nets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Preset = Enum("Preset", {name: name for name in config_mod.preset_names()})  # configs/presets/*.yaml
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set optim.lr=0.05 (repeatable)."),
]
PresetOption = Annotated[
    Preset | None, typer.Option("--preset", help="Overlay a bundled preset: quick (CPU-sized) or paper.")
]
DeviceOption = Annotated[
    Device | None, typer.Option(help="Sets run.device; auto picks cuda, then mps, then cpu.")
]
SEEDS_HELP = "a count (3 means 0,1,2) or a list (0,4)."


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `ResbenchError`, or a stop before a run installed its own handler, into a message on
    stderr and its exit code."""
    try:
        yield
    except (ResbenchError, KeyboardInterrupt) as caught:
        err = caught if isinstance(caught, ResbenchError) else Interrupted("interrupted")
        if from_env().main:  # under torchrun, rank 0 speaks for all
            console.print_error(str(err), err.label, stop=isinstance(err, Interrupted))
        raise typer.Exit(err.exit_code) from None


def _print_version(value: bool) -> None:
    if value:
        import torch

        import resbench

        cuda = torch.version.cuda or "none"
        if torch.version.cuda and not torch.cuda.is_available():
            cuda += " (no GPU found)"
        versions = f"resbench {resbench.__version__}, torch {torch.__version__}, CUDA {cuda}"
        console.out.print(versions, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print versions and exit."),
    ] = False,
) -> None:
    pass


MAX_SEEDS = 1000  # a typo like --seeds 1000000 should not queue a million runs


def parse_seeds(seeds: str) -> list[int]:
    """`3` means seeds 0, 1, 2; `0,4,7` means those seeds. Duplicates and negatives are refused."""
    what = f"--seeds {clip(seeds)}"
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected a count (3) or a list (0,1,2)") from None
    if "," not in seeds and len(values) == 1:
        if not 1 <= values[0] <= MAX_SEEDS:
            raise ConfigError(f"{what}: a count must be between 1 and {MAX_SEEDS}")
        return list(range(values[0]))
    if not values or len(values) > MAX_SEEDS:
        raise ConfigError(f"{what}: expected 1 to {MAX_SEEDS} seeds, e.g. --seeds 0,1,2")
    if min(values) < 0:
        raise ConfigError(f"{what}: seeds are 0 or more")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        seeds_text = "s" * (len(repeated) > 1) + " " + ", ".join(map(str, repeated))
        raise ConfigError(f"{what}: repeats seed{seeds_text}; give each seed once")
    return values


def _overrides(set_: list[str] | None, device: Device | None) -> list[str]:
    """`--set` values, then `--device` as the override it stands for."""
    return list(set_ or []) + ([f"run.device={device}"] if device else [])


def _preset(preset: Preset | None) -> str | None:
    return preset.value if preset else None


@app.command()
def models() -> None:
    """List the bundled configs: depth, block, shortcut, parameters and MACs."""
    with user_errors():
        console.print_models({name: config_mod.load(name).model for name in config_mod.bundled_names()})


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
        cfg = config_mod.load(config, set_ or [], _preset(preset))
        console.print_config(cfg, describe(cfg.model))


@app.command(context_settings={"allow_extra_args": True})  # a config given without -c: say so
def train(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Required: config name (resnet56), YAML path or run dir."),
    ] = None,
    set_: SetOption = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="KEY=V1,V2,...: one run per value, each combination if repeated (YAML, as --set)."),
    ] = None,
    preset: PresetOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run (sets run.seed).")] = None,
    seeds: Annotated[str | None, typer.Option(help=f"One run per seed: {SEEDS_HELP}")] = None,
    device: DeviceOption = None,
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
        if ctx.args:  # `resbench train resnet56`, as `show` and `compare` take the name
            extra = " ".join(ctx.args)
            if config:
                raise ConfigError(f"train takes one config, with -c/--config ({config}); drop {extra}")
            raise ConfigError(
                f"train takes its config with -c/--config: did you mean resbench train -c {extra}?"
            )
        if config is None:
            raise ConfigError("give the config to train: resbench train -c NAME|PATH, e.g. -c resnet20")
        if seed is not None and seeds:
            raise ConfigError("give --seed or --seeds, not both")
        speak = not quiet and from_env().main  # under torchrun, rank 0 alone prints
        runs = experiment.train_seeds(
            config,
            parse_seeds(seeds) if seeds else [seed],
            _overrides(set_, device),
            _preset(preset),
            runs_dir,
            resume=resume,
            force=force,
            tracker=console.ConsoleTracker if speak else Tracker,
            grid=Grid.parse(sweep or [], set_ or []),
        )
        for run_dir, summary in runs:
            if speak:
                console.print_trained(run_dir, summary)


@app.command()
def compare(
    names: Annotated[
        list[str], typer.Argument(help="Config names (plain20), YAML paths or run directories.")
    ],
    seeds: Annotated[str, typer.Option(help=f"Seeds per model: {SEEDS_HELP}")] = "1",
    set_: SetOption = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="KEY=V1,V2,...: every model at each value, and each combination if repeated."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what each run would do (reuse, resume, train); train nothing."),
    ] = False,
    preset: PresetOption = None,
    jobs: Annotated[int, typer.Option(help="Trainings at once, each in its own process.")] = 1,
    no_train: Annotated[bool, typer.Option("--no-train", help="Report on existing runs only.")] = False,
    device: DeviceOption = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories are: RUNS_DIR/NAME/seedK.")] = Path(
        "runs"
    ),
    out: Annotated[Path | None, typer.Option(help="Report folder (default: reports/<names>/).")] = None,
    analyze: Annotated[
        bool,
        typer.Option(
            "--analyze",
            help="Add Figure 7 (layer responses) and the lesion study (analyze --lesion) to the report.",
        ),
    ] = False,
    backend: Annotated[
        Backend, typer.Option(help="local: a process pool (--jobs); ray: Ray tasks.")
    ] = "local",
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
    with user_errors():
        pool = experiment.Sweep(backend, jobs, address, gpus_per_run, cpus_per_run, retries)  # checked first
        grid = Grid.parse(sweep or [], set_ or [])
        if dry_run:
            dry = experiment.plan_compare(
                names,
                parse_seeds(seeds),
                _overrides(set_, device),
                _preset(preset),
                runs_dir,
                grid,
                not no_train,
            )
            console.print_plan(dry)
            if not dry.valid:
                raise typer.Exit(2)
            return
        result = experiment.compare(
            names,
            parse_seeds(seeds),
            _overrides(set_, device),
            _preset(preset),
            runs_dir,
            out,
            train_missing=not no_train,
            with_analysis=analyze,
            sweep=pool,
            watch=console.SweepProgress(),
            grid=grid,
        )
        console.print_comparison(result)
    if result.failed:
        raise typer.Exit(1)


@app.command()
def analyze(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (runs/NAME/seedK) with a last.pt.")],
    out: Annotated[
        Path,
        typer.Option(help="Where figure7.png/.svg, layers.csv and with --lesion lesion.png/.svg/.csv go."),
    ] = Path("reports/analysis"),
    images: Annotated[int, typer.Option(help="Fixed, seeded test images to measure on.")] = 1000,
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="Also take each layer's std per channel, then the mean.")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] = "auto",
    lesion: Annotated[
        bool,
        typer.Option("--lesion", help="Also delete blocks at test time (Veit et al. 2016): lesion.png/.csv."),
    ] = False,
    lesion_k: Annotated[
        int | None, typer.Option(help=f"With --lesion: delete k = 1..K random blocks (default {K_MAX}).")
    ] = None,
    lesion_draws: Annotated[
        int | None, typer.Option(help=f"With --lesion: seeded draws per k (default {DRAWS}).")
    ] = None,
    lesion_images: Annotated[
        int | None, typer.Option(help=f"With --lesion: fixed, seeded test images (default {IMAGES:,}).")
    ] = None,
    lesion_seed: Annotated[
        int | None, typer.Option(help=f"With --lesion: seed of the random draws (default {SEED}).")
    ] = None,
) -> None:
    """Layer responses (Figure 7) and how close each residual block is to the identity; with --lesion,
    the test error with blocks deleted (Veit et al. 2016)."""
    with user_errors():
        values = {"k_max": lesion_k, "draws": lesion_draws, "images": lesion_images, "seed": lesion_seed}
        given = {field: value for field, value in values.items() if value is not None}
        if given and not lesion:
            raise ConfigError("--lesion-k, --lesion-draws, --lesion-images and --lesion-seed need --lesion")
        options = LesionOptions(**given) if lesion else None  # checks them: exit 2 before any run is read
        refuse_non_run_dirs(run_dirs)
        console.print_analysis(experiment.analyze(run_dirs, out, images, per_channel, device, options))


def refuse_non_run_dirs(paths: list[Path]) -> None:
    """A path that is no run directory at all is a bad argument, exit 2, as compare's unknown name is.
    (rundir.read_run_config says RunDirError, exit 1, which stays right for a damaged run directory:
    one that holds a run's files but lacks its config.yaml.)"""
    for path in paths:
        if not is_run_dir(path):
            raise ConfigError(f"{path} is not a run directory (no config.yaml); give RUNS_DIR/NAME/seedK")


@app.command()
def landscape(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (runs/NAME/seedK) with a last.pt.")],
    dim: Annotated[int, typer.Option(help="1: a curve along one direction; 2: a surface.")] = (
        landscape_mod.DIM
    ),
    points: Annotated[int, typer.Option(help="Grid points per direction (odd: the centre is the model).")] = (
        landscape_mod.POINTS
    ),
    span: Annotated[float, typer.Option(help="The grid runs over [-span, span].")] = landscape_mod.SPAN,
    images: Annotated[int, typer.Option(help="Fixed, seeded training images (no augmentation).")] = (
        landscape_mod.IMAGES
    ),
    seed: Annotated[int, typer.Option(help="Seed of the random directions.")] = landscape_mod.SEED,
    out: Annotated[Path, typer.Option(help="Where landscape_{1d,2d}.png/.svg and landscape.csv go.")] = Path(
        "reports/landscape"
    ),
    device: Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")] = "auto",
) -> None:
    """Loss landscapes (Li et al. 2018): loss and error along random filter-normalised directions."""
    with user_errors():
        refuse_non_run_dirs(run_dirs)
        landscape_mod.check_options(dim, points, span, images)
        from resbench.report import write_landscapes

        results = []
        for run_dir in run_dirs:
            with console.point_progress(str(run_dir)) as progress:
                results.append(
                    landscape_mod.landscape_run(run_dir, dim, points, span, images, seed, device, progress)
                )
        console.print_landscapes(results, write_landscapes(results, out))


@app.command("evaluate")
def evaluate_runs(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (runs/NAME/seedK) with a last.pt.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="data.root=DIR: evaluate on another copy of the data (repeatable)."),
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Default: the run's run.device.")] = None,
    split: Annotated[
        Literal["test", "train"],
        typer.Option(help="test (and val), or train: eval mode on the un-augmented training split."),
    ] = "test",
) -> None:
    """Evaluate each run's final model (last.pt) in one process, beside what summary.json recorded."""
    with user_errors():
        refuse_non_run_dirs(run_dirs)
        results = [evaluate_run(d, set_ or [], device, split) for d in run_dirs]
        console.print_evaluations(results)
        if differ := [str(r.run_dir) for r in results if not r.agrees]:
            raise ResbenchError(
                f"{', '.join(differ)}: the saved model's errors differ from summary.json beyond rounding, "
                "so the reported numbers are not this last.pt's. Check that data.root holds the images "
                "the run was trained on and that last.pt is the run's own."
            )


@app.command()
def deepen(
    run_dir: Annotated[Path, typer.Argument(help="A finished run (runs/NAME/seedK) of basic blocks.")],
    depth: Annotated[int, typer.Option(help="Depth of the deeper twin: 6n+2, above the run's.")],
    runs_dir: Annotated[Path, typer.Option(help="Where the new run directory goes.")] = Path("runs"),
    name: Annotated[
        str | None, typer.Option(help="run.name of the new run (default: the run's name + -deepenedD).")
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Default: the run's run.device.")] = None,
) -> None:
    """Build the deeper twin of a trained run whose added blocks compute the identity (He et al. §1),
    write it as a new run, and evaluate both."""
    with user_errors():
        refuse_non_run_dirs([run_dir])
        console.print_construction(deepen_run(run_dir, depth, runs_dir, name, device))


data_app = typer.Typer(cls=Commands, help="Get CIFAR onto this machine.", no_args_is_help=True)
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
    dataset: Annotated[Dataset, typer.Option(help="Which CIFAR.")] = "cifar10",
) -> None:
    """Put a CIFAR copy into ROOT and build resbench's cache, so every training starts at once."""
    with user_errors():
        console.out.print(prepare(source, root, dataset), highlight=False)


RunsFormat = Literal["table", "csv", "json"]


@app.command("runs")
def list_runs(
    runs_dir: Annotated[
        Path, typer.Argument(help="The folder of runs (train's --runs-dir), searched at any depth.")
    ] = Path("runs"),
    format_: Annotated[
        RunsFormat, typer.Option("--format", help="table, or csv / json on stdout for scripts.")
    ] = "table",
) -> None:
    """One row per run: state (finished, unfinished, failed, running), last errors, time, device, commit."""
    with user_errors():
        console.print_runs(runs_mod.list_runs(runs_dir), format_, runs_dir)


@app.command("export")
def export_runs(
    paths: Annotated[list[Path], typer.Argument(help="Run directories and folders of runs, mixed.")],
    out: Annotated[Path, typer.Option(help="FILE.csv, or FILE.parquet (needs pyarrow).")],
) -> None:
    """Every logged value as a long table (run, iteration, tag, value) with the run's config keys as
    columns, for pandas or polars."""
    with user_errors():
        console.print_exported(runs_mod.export(paths, out))


def main() -> None:
    # SIGTERM stops like Ctrl-C (a message, exit 130), also before a run installs its own handler.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app()
