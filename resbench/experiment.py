"""The jobs behind `train`, `compare` and `analyze`, one library call each: they train, measure and
write, and return data. (`evaluate` and `data prepare` call analysis.evaluate and cifar.prepare.)

    train_seeds(config, seeds, overrides, preset, runs_dir, grid=)  -> (run_dir, Summary) per run  train
    compare(names, seeds, overrides, preset, runs_dir, grid=, ...)  -> Comparison           compare
    plan_compare(names, seeds, overrides, preset, runs_dir, grid=)  -> CompareDryRun  compare --dry-run
    analyze(run_dirs, out, images, per_channel, device, lesion=)    -> Analysis             analyze

`compare` is the experiment this project exists for: plan the runs (compare.plan, over every
combination of a `--sweep` grid), train what is missing (a `Sweep`: a local pool or Ray), load and
summarise the runs, measure Figure 7 and the lesion study with `analyze`, and write the report.
`plan_compare` is the same plan with every refusal kept and the time left estimated; it trains and
writes nothing.
Nothing here prints: progress goes to the `Tracker` or `SweepWatcher` the caller passes in, and
console.py renders what comes back. A script or a notebook gets the same runs and files as the
command line.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from resbench.analysis.lesion import Lesion, LesionOptions, lesion_run
from resbench.analysis.responses import AnalysisReport, analyze_run, summarise_analyses
from resbench.analysis.training import RunProbes, training_probes
from resbench.compare import (
    NO_SWEEP,
    Grid,
    Planned,
    Report,
    estimate,
    load_run,
    measured_speeds,
    plan,
    plan_runs,
    raise_config_problems,
    resolve_configs,
    resolved_value,
    summarise,
)
from resbench.config import Device, RunConfig, render_value
from resbench.errors import ConfigError, Interrupted, ResbenchError
from resbench.hardware import resolve_device
from resbench.rundir import Summary, overrides_dirname, refuse_named_twice, run_dir_for
from resbench.sweep import Event, Outcome, run_all, run_all_ray
from resbench.tracking import Tracker
from resbench.train import train as train_run

if TYPE_CHECKING:  # report.py imports matplotlib (a second): only the commands that draw load it
    from resbench.report import AnalysisFiles, LesionFiles, ReportFiles, TrainingFiles

Backend = Literal["local", "ray"]


def train_seeds(
    config: str,
    seeds: list[int | None],
    overrides: list[str],
    preset: str | None,
    runs_dir: Path,
    resume: bool = False,
    force: bool = False,
    tracker: Callable[[], Tracker] = Tracker,
    grid: Grid = NO_SWEEP,
) -> Iterator[tuple[Path, Summary]]:
    """One run per sweep combination and seed (None: the config's own run.seed), in turn, each with
    a fresh `tracker()`. Every config is resolved before the first run trains, and all their errors
    come as one ConfigError, so a bad value stops nothing midway."""
    problems: dict[str, ConfigError] = {}
    resolved = resolve_configs(config, overrides, preset, grid, seeds, problems)
    raise_config_problems(problems)
    runs = [(label, cfg, run_dir_for(cfg, runs_dir)) for label, cfg in resolved]
    refuse_named_twice((label, run_dir) for label, _, run_dir in runs)
    for _, cfg, run_dir in runs:
        yield run_dir, train_run(cfg, run_dir, tracker(), resume=resume, force=force)


# --------------------------------------------------------------------------------------------
# compare


@dataclass(frozen=True)
class Sweep:
    """How compare trains the runs it needs: `jobs` local processes, or one Ray task per run.
    The Ray fields are None where not given: with the local pool, a given one is refused rather
    than ignored."""

    backend: Backend = "local"
    jobs: int = 1
    address: str | None = None  # an existing Ray cluster (auto, HOST:PORT); None: a local instance
    gpus_per_run: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_run: float | None = None  # None: 1
    retries: int | None = None  # resubmissions of a failed run, from its checkpoint; None: 2

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs}: must be at least 1")
        ray_only = {"--address": self.address, "--gpus-per-run": self.gpus_per_run}
        ray_only |= {"--cpus-per-run": self.cpus_per_run, "--retries": self.retries}
        if self.backend == "local" and (given := [k for k, v in ray_only.items() if v is not None]):
            raise ConfigError(f"{', '.join(given)} need --backend ray (--jobs sets the local pool)")
        # Ray would take a negative request or retry count without a word, or fail with its own traceback.
        for option, value in [("--gpus-per-run", self.gpus_per_run), ("--retries", self.retries)]:
            if value is not None and value < 0:
                raise ConfigError(f"{option} {value:g}: must be 0 or more")
        if self.cpus_per_run is not None and not self.cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run:g}: must be more than 0")

    @property
    def where(self) -> str:
        if self.backend == "ray":
            return f"on Ray at {self.address or 'a local instance'}"
        return f"{self.jobs} at a time"

    def run(self, tasks: list[tuple[RunConfig, Path]], on_event: Callable[[Event], None]) -> list[Outcome]:
        if self.backend == "local":
            return run_all(tasks, self.jobs, on_event)
        retries = 2 if self.retries is None else self.retries
        return run_all_ray(
            tasks, self.address, self.gpus_per_run, self.cpus_per_run or 1.0, retries, on_event
        )


class SweepWatcher:
    """What compare reports while it works; this one says nothing (console.SweepProgress shows it)."""

    def planned(self, runs: list[Planned], where: str) -> None:
        """The runs compare needs, before any trains; `where` says how the missing ones will."""

    def __call__(self, event: Event) -> None:
        """A training run's progress, from the sweep."""

    def close(self) -> None:
        """The sweep is over, or stopped."""

    def failed(self, outcome: Outcome) -> None:
        """A run that failed (`outcome.error` says why); the report is made from the others."""


@dataclass(frozen=True)
class Analysis:
    """Figure 7's data (layer responses and block ratios, seeds averaged) and the files written;
    with `lesion`, each run's lesion study and its files too."""

    responses: AnalysisReport
    files: AnalysisFiles
    lesions: tuple[Lesion, ...] = ()
    lesion_files: LesionFiles | None = None
    probes: tuple[RunProbes, ...] = ()  # the runs that logged probes.jsonl (`analysis.every`)
    training_files: TrainingFiles | None = None
    unprobed: tuple[Path, ...] = ()  # the runs that did not


@dataclass(frozen=True)
class Comparison:
    """What compare found and wrote: the report's data and files, Figure 7 with `analyze`, and the
    runs that failed (the report holds the others)."""

    report: Report
    files: ReportFiles
    analysis: Analysis | None
    failed: list[Outcome]


def compare(
    names: list[str],
    seeds: list[int],
    overrides: list[str],
    preset: str | None,
    runs_dir: Path,
    out: Path | None = None,
    train_missing: bool = True,
    with_analysis: bool = False,
    sweep: Sweep | None = None,
    watch: SweepWatcher | None = None,
    grid: Grid = NO_SWEEP,
) -> Comparison:
    """Plain vs residual side by side, for every combination of `grid`: reuse the finished runs,
    train or resume the others, then summarise and judge them, and write the report to `out`
    (default reports/<names>/, and below it a folder named by the overrides where there are any)."""
    from resbench.report import write_report

    sweep, watch = sweep or Sweep(), watch or SweepWatcher()
    planned = plan(names, seeds, overrides, preset, runs_dir, grid)
    todo = [p for p in planned if p.state != "finished"]
    if todo and not train_missing:
        why = {"empty": "not trained", "unfinished": "unfinished"}
        raise ConfigError(
            "--no-train, but these runs are not finished: "
            + ", ".join(f"{p.run_dir} ({why[p.state]})" for p in todo)
            + ". Run compare without --no-train to train or resume them."
        )
    watch.planned(planned, sweep.where)
    failed = [o for o in _train(todo, sweep, watch) if o.error is not None]
    for o in failed:
        watch.failed(o)
    records = [load_run(p.run_dir) for p in planned if p.run_dir not in {o.run_dir for o in failed}]
    if not records:
        raise ResbenchError("no run finished; nothing to report")
    report = summarise(records)
    out = out or default_out(planned)
    analysis = None
    if with_analysis:  # Figure 7 and the lesion study, on the same analysis.images test images
        images = records[0].cfg.analysis.images
        analysis = analyze([r.run_dir for r in records], out, images, lesion=LesionOptions(images=images))
    responses, lesions = (analysis.responses, analysis.lesions) if analysis else (None, ())
    files = write_report(report, out, responses, lesions)
    return Comparison(report, files, analysis, failed)


def default_out(planned: list[Planned]) -> Path:
    """reports/<names>/, or reports/<names>/<overrides>/ where the runs have overrides, so that a
    sweep or a --set never overwrites the report of the configs as they are: the overrides every run
    shares as they are (`optim.lr=0.05`), and each swept key with its values (`optim.wd={0,0.001}`)."""
    names = Path("reports") / "_".join(dict.fromkeys(p.cfg.run.name for p in planned))
    parts = []
    for key in sorted({e.partition("=")[0] for p in planned for e in p.cfg.run.overrides}):
        values = list(dict.fromkeys(render_value(resolved_value(p.cfg, key)) for p in planned))
        parts.append(f"{key}={values[0]}" if len(values) == 1 else f"{key}={{{','.join(values)}}}")
    return names / overrides_dirname(parts) if parts else names


@dataclass(frozen=True)
class PlannedRun:
    """What compare would do with one run, and how long its iterations left would take."""

    run: Planned
    seconds: float | None  # from finished runs' images/s on this machine; None: no such run


@dataclass(frozen=True)
class CompareDryRun:
    """`compare --dry-run`: the plan, and whether the real command could carry it out."""

    runs: list[PlannedRun]
    device: str  # where the runs would train, e.g. cpu

    @property
    def valid(self) -> bool:
        return all(r.run.refusal is None for r in self.runs)

    @property
    def seconds(self) -> float | None:
        """The estimate for every run left, one at a time; None where one of them has none."""
        times = [r.seconds for r in self.runs if r.run.action in ("train", "resume")]
        return None if None in times else sum(t for t in times if t is not None)


def plan_compare(
    names: list[str],
    seeds: list[int],
    overrides: list[str],
    preset: str | None,
    runs_dir: Path,
    grid: Grid = NO_SWEEP,
    train_missing: bool = True,
) -> CompareDryRun:
    """What `compare` with these arguments would do with each run: reuse it, resume it at its
    iteration, train it, or refuse it (and why), with the iterations left and an estimate of their
    time from the images/s that finished runs under `runs_dir` recorded on this host, for the same
    net and device type. It reads run directories and writes nothing. A bad config is a
    ConfigError, as it is for the real command."""
    planned = plan_runs(names, seeds, overrides, preset, runs_dir, grid)
    if not train_missing:
        planned = [
            p
            if p.refusal is not None or p.state == "finished"
            else dataclasses.replace(
                p, refusal=ConfigError(f"{p.run_dir} is not finished, and --no-train trains nothing")
            )
            for p in planned
        ]
    speeds = measured_speeds(runs_dir, socket.gethostname())
    devices = {d: _device_type(d) for d in dict.fromkeys(p.cfg.run.device for p in planned)}
    runs = [PlannedRun(p, estimate(p, speeds, devices[p.cfg.run.device])) for p in planned]
    return CompareDryRun(runs, ", ".join(dict.fromkeys(devices.values())))


def _device_type(device: Device) -> str:
    """The device type a run asking for `device` would train on here. A device this machine lacks
    may be on a Ray cluster's nodes: it is named as asked, and nothing has measured it here."""
    try:
        return resolve_device(device).type
    except ConfigError:
        return device


def _train(todo: list[Planned], sweep: Sweep, watch: SweepWatcher) -> list[Outcome]:
    if not todo:
        return []
    try:
        return sweep.run([(p.cfg, p.run_dir) for p in todo], watch)
    except KeyboardInterrupt:
        raise Interrupted(
            "compare stopped: each running run wrote its checkpoint and no queued run started. "
            "Run the same command again to resume."
        ) from None
    finally:
        watch.close()


# --------------------------------------------------------------------------------------------
# analyze


def analyze(
    run_dirs: list[Path],
    out: Path,
    images: int = 1000,
    per_channel: bool = False,
    device: Device = "auto",
    lesion: LesionOptions | None = None,
) -> Analysis:
    """Figure 7: each run's layer responses and block ratios on `images` fixed test images, written
    to `out` (figure7.png/.svg, layers.csv); with `lesion`, each run's lesion study too (lesion.png/
    .svg, lesion.csv). Everything is measured before the first file is written."""
    if images < 1:
        raise ConfigError(f"--images {images}: must be at least 1")
    from resbench.report import write_analysis, write_lesion, write_training_figures

    where = resolve_device(device)
    analyses = [analyze_run(d, images, per_channel, where) for d in run_dirs]
    responses = summarise_analyses(analyses)
    lesions: tuple[Lesion, ...] = ()
    if lesion is not None:
        lesions = tuple(
            lesion_run(d, lesion.images, lesion.k_max, lesion.draws, lesion.seed, where) for d in run_dirs
        )
    probed = {d: training_probes(d) for d in run_dirs}
    probes = tuple(p for p in probed.values() if p is not None)
    files = write_analysis(analyses, responses, out)
    return Analysis(
        responses,
        files,
        lesions,
        write_lesion(lesions, out) if lesion else None,
        probes,
        write_training_figures(probes, out) if probes else None,
        tuple(d for d, p in probed.items() if p is None),
    )
