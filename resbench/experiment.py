"""The jobs behind `train`, `compare` and `analyze`, one library call each: they train, measure and
write, and return data. (`evaluate` and `data prepare` call analysis.evaluate and cifar.prepare.)

    train_seeds(config, seeds, overrides, preset, runs_dir)  -> (run_dir, Summary) per seed   train
    compare(names, seeds, overrides, preset, runs_dir, ...)  -> Comparison                    compare
    analyze(run_dirs, out, images, per_channel, device)      -> Analysis                      analyze

`compare` is the experiment this project exists for: plan the runs (compare.plan), train what is
missing (a `Sweep`: a local pool or Ray), load and summarise the runs, measure Figure 7 with
`analyze`, and write the report. Nothing here prints: progress goes to the `Tracker` or
`SweepWatcher` the caller passes in, and console.py renders what comes back. A script or a notebook
gets the same runs and files as the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from resbench.analysis.responses import AnalysisReport, analyze_run, summarise_analyses
from resbench.compare import Planned, Report, load_run, plan, summarise
from resbench.config import Device, RunConfig
from resbench.errors import ConfigError, Interrupted, ResbenchError
from resbench.hardware import resolve_device
from resbench.rundir import Summary, load_config, run_dir_for
from resbench.sweep import Event, Outcome, run_all, run_all_ray
from resbench.tracking import Tracker
from resbench.train import train as train_run

if TYPE_CHECKING:  # report.py imports matplotlib (a second): only the commands that draw load it
    from resbench.report import AnalysisFiles, ReportFiles

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
) -> Iterator[tuple[Path, Summary]]:
    """One run per seed (None: the config's own run.seed), in turn, each with a fresh `tracker()`.
    Every seed's config is resolved before the first run trains, so a bad one stops nothing midway."""
    cfgs = [  # a run directory's config.yaml is first checked against its last.pt
        load_config(config, overrides + ([f"run.seed={s}"] if s is not None else []), preset) for s in seeds
    ]
    for cfg in cfgs:
        run_dir = run_dir_for(cfg, runs_dir)
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
    """Figure 7's data (layer responses and block ratios, seeds averaged) and the files written."""

    responses: AnalysisReport
    files: AnalysisFiles


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
) -> Comparison:
    """Plain vs residual side by side: reuse the finished runs, train or resume the others, then
    summarise and judge them, and write the report to `out` (default reports/<names>/)."""
    from resbench.report import write_report

    sweep, watch = sweep or Sweep(), watch or SweepWatcher()
    planned = plan(names, seeds, overrides, preset, runs_dir)
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
    out = out or Path("reports") / "_".join(dict.fromkeys(p.cfg.run.name for p in planned))
    analysis = (
        analyze([r.run_dir for r in records], out, records[0].cfg.analysis.images) if with_analysis else None
    )
    files = write_report(report, out, analysis.responses if analysis else None)
    return Comparison(report, files, analysis, failed)


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
    run_dirs: list[Path], out: Path, images: int = 1000, per_channel: bool = False, device: Device = "auto"
) -> Analysis:
    """Figure 7: each run's layer responses and block ratios on `images` fixed test images, written
    to `out` (figure7.png/.svg, layers.csv)."""
    if images < 1:
        raise ConfigError(f"--images {images}: must be at least 1")
    from resbench.report import write_analysis

    where = resolve_device(device)
    analyses = [analyze_run(d, images, per_channel, where) for d in run_dirs]
    responses = summarise_analyses(analyses)
    return Analysis(responses, write_analysis(analyses, responses, out))
