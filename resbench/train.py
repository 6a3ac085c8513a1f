"""Training: the §4.2 recipe as one short loop in reading order. Nothing here prints.

    train(cfg, run_dir, tracker, resume=False, force=False) -> Summary

SGD with momentum and weight decay; the learning rate is divided by 10 at iteration milestones,
with an optional warm-up (the ResNet-110 rule). The loop keeps losses and errors on the device and
reads them only at log points, so the step itself never waits for the host.

`train` reads like nanoGPT's train.py: `build_setup` builds the pieces (device, precision, data,
model, optimiser, schedule, batch order, probe) into a `Setup`, the loop runs the steps (step.py:
`train_step`, or under run.cuda_graph a `FixedStep` replayed as one CUDA graph) and, at log, eval
and checkpoint points, `side_effects`, and the summary is written. The loop's
accumulators live in one `TrainState`. A checkpoint is `Setup.state_dict(state, lr)`: every piece of
state the next step depends on, so a resumed run is bit-identical on CPU, and
`Setup.load_state_dict` restores exactly that, after `check_same_hardware` has refused a resume on
another device type or in another precision. Which device and precision `auto` means is
hardware.py's; where the run directory's files live and how it is opened, rundir.py's; how last.pt
is written and read, checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from resbench import checkpoint, distributed
from resbench.config import OptimConfig, RunConfig, ScheduleConfig
from resbench.data import Batches, Data, Split, build_data
from resbench.distributed import Dist
from resbench.errors import ConfigError, Diverged, Interrupted, ResbenchError
from resbench.hardware import autocast, resolve_device, resolve_precision, set_kernels
from resbench.models import build_model, count_macs, count_params
from resbench.probe import TrainingProbe, fixed_test_images
from resbench.rundir import (
    CHECKPOINT,
    RunLock,
    Summary,
    check_same_config,
    check_same_data,
    is_run_dir,
    prepare_run_dir,
    read_env,
    read_run_config,
    read_summary,
    require_finished,
    rerun_command,
    run_state,
    write_failure,
    write_run_files,
)
from resbench.step import FixedStep, train_step
from resbench.tracking import RunFiles, Tracker, Trackers, environment

# --------------------------------------------------------------------------------------------
# Optimiser and schedule


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device | None = None
) -> torch.optim.SGD:
    """SGD over the model's parameters, on `device` (default: where the parameters are).

    On CUDA the update is fused: one kernel per parameter group instead of foreach's few per chunk of
    tensors, and, unlike foreach, it takes a device-tensor lr without reading it on the host, which
    a captured CUDA graph needs (issue 11). Elsewhere torch picks as before (a loop on CPU), so CPU
    numerics stay bit-identical to earlier runs and their checkpoints.
    """
    device = device if device is not None else next(model.parameters()).device
    if cfg.weight_decay_on == "all":  # as Caffe and the paper's era: decay every parameter
        groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    else:  # conv and linear weights only; BN affine parameters and biases are not decayed
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        fused=True if device.type == "cuda" else None,  # None, not False: False would also turn foreach off
    )


class LrSchedule:
    """Step decay at milestones (§4.2), after an optional warm-up at a small lr.

    The warm-up ends at the first log point where the running training error is below its
    threshold, or at `max_iterations`, whichever comes first.
    """

    def __init__(self, base_lr: float, cfg: ScheduleConfig) -> None:
        self.base_lr = base_lr
        self.cfg = cfg
        self.warming_up = cfg.warmup is not None

    def lr(self, iteration: int) -> float:
        """The learning rate of the step that completes `iteration` (1-based)."""
        warmup = self.cfg.warmup
        if self.warming_up and warmup is not None and iteration <= warmup.max_iterations:
            return warmup.lr
        drops = sum(iteration > m for m in self.cfg.milestones)
        return self.base_lr * self.cfg.gamma**drops

    def observe(self, iteration: int, train_error: float) -> None:
        warmup = self.cfg.warmup
        if (
            self.warming_up
            and warmup is not None
            and (train_error < warmup.until_train_error or iteration >= warmup.max_iterations)
        ):
            self.warming_up = False


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    split: Split,
    amp: contextlib.AbstractContextManager[Any],
    d: Dist = distributed.SINGLE,
    batch_size: int = 1000,
) -> tuple[float, float, int]:
    """Mean loss, error (%) and image count of the model in eval mode over a whole split, one view
    per image. Under DDP every rank holds rank 0's model and takes a share of the whole batches;
    the per-batch sums are added in one fixed order, so the numbers are, to the bit, those of one
    process evaluating that model (`resbench evaluate` checks it)."""
    model.eval()
    device = split.labels.device
    starts = range(0, len(split), batch_size)
    losses = torch.zeros(len(starts), device=device)
    wrong = torch.zeros(len(starts), dtype=torch.long, device=device)
    for i in range(len(starts))[distributed.shard(len(starts), d)]:
        batch = slice(starts[i], starts[i] + batch_size)
        images = data.normalize(split.images[batch]).contiguous(memory_format=torch.channels_last)
        labels = split.labels[batch]
        with amp:
            logits = model(images)
        losses[i] = F.cross_entropy(logits.float(), labels, reduction="sum")
        wrong[i] = (logits.argmax(dim=1) != labels).sum()
    distributed.all_sum(losses, wrong)  # each batch is non-zero on one rank only: the sum is exact
    model.train()
    n = len(split)
    return losses.sum().item() / n, 100.0 * wrong.sum().item() / n, n


# --------------------------------------------------------------------------------------------
# The run's state: what a checkpoint holds


@dataclass
class TrainState:
    """The loop's accumulators: the iteration, the running window of training loss and error, the
    timings and the latest metrics. With the pieces of `Setup` it is all a checkpoint holds.

    The window sums the loss and errors of the steps since the last log point. It stays on the
    device, so a step never waits for the host; `sum_window` reads it at side-effect points only.
    """

    window_loss: Tensor  # this rank's summed loss over the window
    window_wrong: Tensor  # this rank's count of errors over the window
    summed_loss: Tensor  # the window as the last side-effect point read it, summed over every rank
    summed_wrong: Tensor  # at log and checkpoint points: what a checkpoint saves
    iteration: int = 0  # the last iteration done
    window_steps: int = 0
    window_time: float = 0.0  # seconds of steps in the window, side effects left out
    step_time: float = 0.0  # seconds of steps over the whole run, for images/sec
    wall_time: float = 0.0  # seconds of training before this process took the run on
    checkpointed: int | None = None  # the iteration of the last checkpoint written
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    evaluated_images: dict[str, int] = field(default_factory=dict)  # per split, for summary.json
    started: float = 0.0  # time.perf_counter() when this process's loop began; not saved
    marked: float = 0.0  # time.perf_counter() when the window's latest run of steps began; not saved

    @classmethod
    def zeros(cls, device: torch.device) -> TrainState:
        loss, wrong = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        return cls(loss, wrong, loss.clone(), wrong.clone())

    def add(self, iteration: int, loss: Tensor, wrong: Tensor) -> None:
        """Count the step that completed `iteration` into the window, on the device."""
        self.window_loss += loss
        self.window_wrong += wrong
        self.count(iteration)

    def count(self, iteration: int) -> None:
        """Count a step whose loss and errors are already in the window (a `FixedStep` adds them)."""
        self.window_steps += 1
        self.iteration = iteration

    def sum_window(self, all_ranks: bool) -> float:
        """Sum the window over the ranks where `all_ranks` (a collective: every rank calls it at the
        same step) and add the time of its steps so far. Returns the summed loss: a host sync."""
        self.summed_loss, self.summed_wrong = self.window_loss.clone(), self.window_wrong.clone()
        if all_ranks:
            distributed.all_sum(self.summed_loss, self.summed_wrong)
        loss = self.summed_loss.item()
        self.window_time += time.perf_counter() - self.marked
        return loss

    def new_window(self) -> None:
        """Start a new window. The summed window is what a checkpoint saves, so it starts anew too."""
        for t in (self.window_loss, self.window_wrong, self.summed_loss, self.summed_wrong):
            t.zero_()
        self.window_steps, self.window_time = 0, 0.0

    def elapsed(self) -> float:
        """Seconds of training, summed over resumes."""
        return self.wall_time + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so `torch.load(weights_only=True)` reads it back."""
        return {
            "iteration": self.iteration,
            "window_loss": self.summed_loss,  # the window the next step continues: every rank's share
            "window_wrong": self.summed_wrong,
            "window_steps": self.window_steps,
            "window_time": self.window_time,
            "step_time": self.step_time,
            "wall_time": self.elapsed(),
            "train_metrics": self.train_metrics,
            "eval_metrics": self.eval_metrics,
            "evaluated_images": self.evaluated_images,
        }

    def load_state_dict(self, state: dict[str, Any], window: bool) -> None:
        """Continue where `state_dict()` was taken. The saved window holds every rank's share, so
        under DDP one rank alone restores it (`window`); the others start it from zero."""
        if window:
            self.window_loss.copy_(state["window_loss"])
            self.window_wrong.copy_(state["window_wrong"])
        self.iteration = self.checkpointed = state["iteration"]
        self.window_steps, self.window_time = state["window_steps"], state["window_time"]
        self.wall_time, self.step_time = state["wall_time"], state["step_time"]
        self.train_metrics, self.eval_metrics = state["train_metrics"], state["eval_metrics"]
        # absent before issue 9; the next evaluation sets it
        self.evaluated_images = state.get("evaluated_images", {})


# --------------------------------------------------------------------------------------------
# The pieces the loop runs on


def finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (BN running stats can overflow while the loss
    stays finite). One host sync: call it at checkpoints only."""
    values = [t.detach().flatten() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.isfinite(torch.cat(values)).all())


def check_same_hardware(saved: dict[str, Any], cfg: RunConfig, device: torch.device, precision: str) -> None:
    """A run resumes on the device type and in the precision it started with, whatever `auto`
    resolves to on this machine."""
    # Checkpoints from before device_type was saved hold a cuda_rng exactly when they ran on CUDA.
    was = saved.get("device_type") or ("cpu" if saved["cuda_rng"] is None else "cuda")
    if was != device.type:
        raise ConfigError(
            f"run.device: this run was trained on {was} and would resume on {device.type}. Its batch "
            f"order and augmentation come from a {was} random generator, which a {device.type} "
            f"generator cannot continue with the same draws. Resume with --device {was}, or start "
            "the run again with --force."
        )
    if saved["precision"] != precision:  # the key is the same, so it is `auto` on other hardware
        raise ConfigError(
            f"run.precision: this run was trained in {saved['precision']}, and run.precision "
            f"{cfg.run.precision} gives {precision} on this {device.type}; a run must not switch "
            f"precision halfway. Resume it where {cfg.run.precision} gives {saved['precision']}, or "
            "start the run again with --force."
        )


def optimizer_state(optimizer: torch.optim.Optimizer, lr: float) -> dict[str, Any]:
    """The optimizer's state_dict with the last step's `lr`, as eager steps leave it: a `FixedStep`'s
    lr is a float32 device tensor, but which step ran must not show in last.pt."""
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:  # new dicts: the optimizer's own groups are not touched
        group["lr"] = lr
    return saved


@dataclass
class Setup:
    """What one process trains with, built once by `build_setup`: the device and precision, the data,
    the model and how it is run, the optimiser, schedule and batch order, and the probe."""

    cfg: RunConfig
    run_dir: Path
    d: Dist
    device: torch.device
    precision: str
    amp: contextlib.AbstractContextManager[Any]
    kernels: dict[str, bool]  # for env.json
    data: Data
    model: nn.Module  # what is saved and probed, and evaluated under DDP
    forward: nn.Module  # what trains: the model, wrapped in DDP and compiled where asked
    evaluated: nn.Module  # no DDP collectives in evaluation: shards may differ in size
    params: int
    macs: int
    optimizer: torch.optim.SGD
    schedule: LrSchedule
    batches: Batches
    probe: TrainingProbe | None
    eval_every: int
    log_every: int
    fixed: bool  # run.cuda_graph: the step in fixed buffers (step.FixedStep), captured on CUDA
    init_from: dict[str, Any] | None = None  # for env.json: the weights a fresh run started from

    def state_dict(self, state: TrainState, lr: float) -> dict[str, Any]:
        """The checkpoint after a step at `lr`: every piece of state the next step depends on, and
        what it was trained with (config, device type, precision and data), which `build_setup`
        checks on resume."""
        return {
            "iteration": state.iteration,  # first, as in every last.pt before; state_dict() repeats it
            "config": self.cfg.to_dict(),
            "device_type": self.device.type,
            "precision": self.precision,
            "data_fingerprint": self.data.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": optimizer_state(self.optimizer, lr),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "warming_up": self.schedule.warming_up,
            **state.state_dict(),
        }

    def load_state_dict(self, saved: dict[str, Any], state: TrainState) -> None:
        """Continue exactly where `state_dict(state, lr)` was taken: the pieces here, and `state`."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.batches.load_state_dict(saved["batches"])
        torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.schedule.warming_up = saved["warming_up"]
        state.load_state_dict(saved, window=self.d.main)


# What makes two nets one architecture: the weights of one load into the other and compute the same
# function. init_mode and zero_init_residual only decide an init that init_from replaces.
ARCHITECTURE = ("block", "depth", "residual", "shortcut", "width", "num_classes")


@dataclass(frozen=True)
class InitSource:
    """The weights `model.init_from` starts a fresh run from, and what env.json keeps of them."""

    run_dir: Path  # resolved
    iteration: int  # of the source's last.pt
    sha256: str  # of the source's last.pt file
    model: dict[str, Tensor]  # its weights only: the optimiser state is not carried over

    def record(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "iteration": self.iteration, "sha256": self.sha256}


def init_source(cfg: RunConfig) -> InitSource | None:
    """The run `model.init_from` names and its last.pt's weights, checked to hold this run's net;
    None without init_from. A ConfigError (exit 2) for a path that is no run directory or another net; a
    RunDirError (exit 1) for a run that is not finished, has no last.pt or does not read back."""
    if cfg.model.init_from is None:
        return None
    path = Path(cfg.model.init_from).expanduser()
    if not is_run_dir(path):
        raise ConfigError(
            f"model.init_from: {cfg.model.init_from} is not a run directory (no config.yaml); give the "
            "RUNS_DIR/NAME/seedK of a trained run, e.g. one written by `resbench deepen`"
        )
    source, saved = read_run_config(path, need_checkpoint=True)
    assert saved is not None
    why = "model.init_from starts from a run's final weights"
    require_finished(path, saved["iteration"], source.schedule.iterations, why)
    if differ := [k for k in ARCHITECTURE if getattr(source.model, k) != getattr(cfg.model, k)]:
        values = "; ".join(
            f"model.{k}: {getattr(cfg.model, k)} in {cfg.run.name}, {getattr(source.model, k)} in {path}"
            for k in differ
        )
        raise ConfigError(
            f"model.init_from: {path} ({source.run.name}) holds another net than {cfg.run.name} ({values}). "
            "Start from a run of the same net, or build one with `resbench deepen RUN_DIR --depth D`"
        )
    digest = hashlib.sha256(path.joinpath(CHECKPOINT).read_bytes()).hexdigest()
    return InitSource(path.resolve(), saved["iteration"], digest, saved["model"])


def check_start(cfg: RunConfig, d: Dist, device: torch.device, fresh: bool) -> InitSource | None:
    """Refuse, before the run directory is touched (on every rank), a config this process cannot
    train; on a `fresh` start also check model.init_from's source, and return it (`init_source`)."""
    if cfg.optim.batch_size % d.world_size:
        raise ConfigError(
            f"optim.batch_size {cfg.optim.batch_size} is the global batch and must divide by the "
            f"{d.world_size} processes of torchrun; each takes batch_size / world_size"
        )
    if cfg.run.cuda_graph and (device.type != "cuda" or d.enabled):
        where = f"on {device.type}" if device.type != "cuda" else f"under torchrun ({d.world_size} processes)"
        raise ConfigError(
            f"run.cuda_graph captures the step on one CUDA device and cannot run {where}; set "
            "run.cuda_graph to false"
        )
    if cfg.run.sync_bn and d.enabled and device.type != "cuda":
        raise ConfigError("run.sync_bn needs CUDA devices; leave it off on CPU (BN statistics per process)")
    return init_source(cfg) if fresh else None  # a resume's last.pt holds the weights: no source read


def build_setup(
    cfg: RunConfig,
    run_dir: Path,
    d: Dist,
    device: torch.device,
    saved: dict[str, Any] | None,
    init: InitSource | None = None,
) -> Setup:
    """Build the pieces after one seed, in the order their random draws are taken, once
    `check_start` has passed; `init` (a fresh start's only) gives the weights. With `saved`, refuse
    what would not continue it exactly."""
    if saved is not None:
        check_same_config(run_dir, cfg, saved["config"])
    precision = resolve_precision(cfg.run.precision, device)
    if saved is not None:
        check_same_hardware(saved, cfg, device, precision)
    amp = autocast(device, precision)
    kernels = set_kernels(device, cfg.run.deterministic)
    torch.manual_seed(cfg.run.seed)

    data = build_data(cfg.data, device)
    check_same_data(run_dir, cfg, saved, data.fingerprint)  # the same data.root may hold other images now
    model = build_model(cfg.model)
    if init is not None:  # after the init's draws: every later draw is as without it
        model.load_state_dict(init.model)
    model = model.to(device, memory_format=torch.channels_last)  # NHWC convs are faster
    params, macs = count_params(model), count_macs(model)
    if cfg.run.sync_bn and d.enabled:  # off by default: the paper's BN statistics are per device
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    forward = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if d.enabled
        else model
    )
    if cfg.run.compile:  # on CUDA, autotuned kernels; graph capture is run.cuda_graph's, not inductor's
        forward = torch.compile(forward, mode="max-autotune-no-cudagraphs" if device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg.optim, device)
    batches = Batches(
        data,
        cfg.optim.batch_size,
        cfg.run.seed,
        cfg.data.augment,
        cfg.data.pad,
        channels_last=True,
        rank=d.rank,
        world_size=d.world_size,
    )
    eval_every = cfg.run.eval_every or batches.steps_per_epoch  # default: once per epoch
    return Setup(
        cfg,
        run_dir,
        d,
        device,
        precision,
        amp,
        kernels,
        data,
        model,
        forward,
        evaluated=model if d.enabled else forward,
        params=params,
        macs=macs,
        optimizer=optimizer,
        schedule=LrSchedule(cfg.optim.lr, cfg.schedule),
        batches=batches,
        probe=(
            TrainingProbe(model, fixed_test_images(data, cfg.analysis.images))
            if cfg.analysis.every and d.main
            else None
        ),
        eval_every=eval_every,
        log_every=cfg.run.log_every or eval_every,
        fixed=cfg.run.cuda_graph,
        init_from=init.record() if init is not None else None,
    )


# --------------------------------------------------------------------------------------------
# The loop's side effects, between two steps


@dataclass(frozen=True)
class Due:
    """What happens after a step, besides the next step."""

    log: bool
    eval: bool
    probe: bool
    save: bool
    stop: bool

    @classmethod
    def after(cls, s: Setup, iteration: int, stop: list[str]) -> Due:
        last = iteration == s.cfg.schedule.iterations
        log = iteration % s.log_every == 0 or last
        # Under DDP the ranks agree on a stop at log points, so that all stop at the same step.
        stopping = (log and distributed.any_rank(bool(stop), s.device)) if s.d.enabled else bool(stop)
        every = s.cfg.run.checkpoint_every
        return cls(
            log=log,
            eval=iteration % s.eval_every == 0 or last,
            probe=s.probe is not None and (iteration % s.cfg.analysis.every == 0 or last),
            save=last or stopping or bool(every and iteration % every == 0),
            stop=stopping,
        )

    def __bool__(self) -> bool:
        return self.log or self.eval or self.probe or self.save


def side_effects(s: Setup, state: TrainState, due: Due, lr: float, tracker: Tracker, stop: list[str]) -> None:
    """Everything between two steps, in this order; the only host syncs of the loop happen here."""
    loss = state.sum_window(all_ranks=due.log or due.save)  # the same steps on every rank: a safe collective
    if due.eval or due.save:  # every rank evaluates and checks the model that rank 0 saves
        distributed.broadcast_buffers(s.model)
    check_diverged(s, state, due, loss, lr)
    if due.log and state.window_steps:  # a window of no steps has no mean
        log_window(s, state, loss, lr, tracker)
    if due.probe and s.probe is not None:  # right after the step, while the gradients are this step's
        scalars, vectors = s.probe()
        tracker.log(state.iteration, {f"analysis/{k}": v for k, v in scalars.items()})
        tracker.histograms(state.iteration, {f"analysis/{k}": v for k, v in vectors.items()})
    if due.eval:
        evaluate_splits(s, state, tracker)
    if due.save:
        if s.d.main:
            tracker.flush()  # a kill after the checkpoint must not lose what was logged before it
            checkpoint.save(s.state_dict(state, lr), s.run_dir / CHECKPOINT)
        state.checkpointed = state.iteration
    if due.stop:
        raise Interrupted(
            f"stopped by {stop[0]} at iteration {state.iteration}; the checkpoint is saved. "
            f"Continue with: {rerun_command(s.run_dir, '--resume')}"
        )
    state.marked = time.perf_counter()


def check_diverged(s: Setup, state: TrainState, due: Due, loss: float, lr: float) -> None:
    """Judge the loss only where every rank summed it (a lone rank must not stop the others). The
    loss is computed before the update, so also check the weights about to be saved."""
    summed = due.log or due.save or not s.d.enabled
    if (summed and not math.isfinite(loss)) or (
        due.save and distributed.any_rank(not finite(s.model), s.device)
    ):
        kept = (
            f"The last good checkpoint (iteration {state.checkpointed}) is kept in {s.run_dir}"
            if state.checkpointed is not None
            else "No checkpoint was written yet, so there is none to resume: start again with --force"
        )
        raise Diverged(
            f"training diverged (loss {loss}) by iteration {state.iteration} (lr {lr:g}). "
            f"{kept}. Try a smaller optim.lr or schedule.warmup."
        )


def log_window(s: Setup, state: TrainState, loss: float, lr: float, tracker: Tracker) -> None:
    """The running training loss and error over the window (every rank's share), then a new window."""
    seen = state.window_steps * s.cfg.optim.batch_size
    state.train_metrics = {
        "error/train": 100.0 * state.summed_wrong.item() / seen,
        "loss/train": loss / seen,
        "lr": lr,
        "perf/images_per_sec": seen / state.window_time,
    }
    tracker.log(state.iteration, state.train_metrics)
    s.schedule.observe(state.iteration, state.train_metrics["error/train"])
    state.step_time += state.window_time
    state.new_window()


def evaluate_splits(s: Setup, state: TrainState, tracker: Tracker) -> None:
    splits = {"test": s.data.test, **({"val": s.data.val} if s.data.val is not None else {})}
    for name, split in splits.items():
        loss, error, count = evaluate(s.evaluated, s.data, split, s.amp, s.d)
        state.eval_metrics |= {f"error/{name}": error, f"loss/{name}": loss}
        state.evaluated_images[name] = count
    tracker.log(state.iteration, state.eval_metrics)


# --------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def stop_requests() -> Iterator[list[str]]:
    """While inside, SIGINT and SIGTERM append their name to the yielded list instead of killing us."""
    requested: list[str] = []
    handler = lambda signum, frame: requested.append(signal.Signals(signum).name)  # noqa: E731
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be caught here, the default applies
        yield requested
        return
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Start(IntEnum):
    """How rank 0 opened the run directory. Every rank follows it: torchrun broadcasts it as an int."""

    FRESH = 0
    RESUME = 1
    FINISHED = 2  # resumed with nothing left to do
    REFUSED = 3  # rank 0 raised the reason


def train(
    cfg: RunConfig,
    run_dir: Path,
    tracker: Tracker | None = None,
    resume: bool = False,
    force: bool = False,
    wait: bool = False,
) -> Summary:
    """Train one run in `run_dir`, or continue it from its checkpoint with `resume`.

    With `resume`, a finished run with the same config is returned as it is. The run's files are
    always written; `tracker` receives the same events (e.g. for a console). `wait` waits for a run
    directory that another process holds, instead of refusing it. Under torchrun, rank 0 alone
    opens the run directory and writes to it; the other ranks train in step and stay quiet.
    """
    d = distributed.from_env()
    device = resolve_device(cfg.run.device, d)
    # refused before anything is written: no run directory, no lock, no process group
    init = check_start(cfg, d, device, fresh=force or not (resume and (run_dir / CHECKPOINT).is_file()))
    created = distributed.setup(d, device)
    lock, error, start = None, None, Start.FRESH
    tracker = Trackers([RunFiles(run_dir), tracker or Tracker()]) if d.main else Tracker()
    try:
        if d.main:
            try:
                lock = RunLock(run_dir, wait=wait)
                if resume and run_state(run_dir) == "finished" and not force:
                    check_same_config(run_dir, cfg)
                    start = Start.FINISHED
                else:
                    start = Start.RESUME if prepare_run_dir(run_dir, resume, force) else Start.FRESH
            except ResbenchError as err:
                error, start = err, Start.REFUSED
        start = Start(distributed.broadcast_int(start, device))
        if error is not None:
            raise error
        if start == Start.REFUSED:
            raise ResbenchError(f"rank 0 refused {run_dir}; its message says why")
        if start == Start.FINISHED:
            return read_summary(run_dir)
        try:
            return _train(cfg, run_dir, tracker, start == Start.RESUME, d, device, init)
        except Diverged as err:
            if d.main:  # a mark on disk for `resbench runs`; a disk that refuses it must not hide why
                with contextlib.suppress(ResbenchError):
                    write_failure(run_dir, str(err))
            raise
    finally:
        tracker.close()
        if lock is not None:
            lock.release()
        if created:
            distributed.teardown()


def _train(
    cfg: RunConfig,
    run_dir: Path,
    tracker: Tracker,
    resuming: bool,
    d: Dist,
    device: torch.device,
    init: InitSource | None,
) -> Summary:
    saved = checkpoint.load(run_dir / CHECKPOINT) if resuming else None
    # a resume's last.pt holds the weights; a fresh start whose source check_start skipped (last.pt
    # went meanwhile) reads it now
    init = None if resuming else init or init_source(cfg)
    s = build_setup(cfg, run_dir, d, device, saved, init)
    state = TrainState.zeros(device)
    if saved is not None:
        s.load_state_dict(saved, state)

    # Signals are noted from the first file written: a stop before the first step then still ends
    # with a checkpoint (at iteration 1), since a run directory with files but no last.pt could only
    # be started over. Loading the data and building the model, before, stop at once: nothing written.
    with stop_requests() as stop:
        env = environment(device, s.precision) | s.kernels
        env |= {"world_size": d.world_size, "data_fingerprint": s.data.fingerprint, "params": s.params}
        if init_from := s.init_from or (read_env(run_dir).get("init_from") if resuming else None):
            env["init_from"] = init_from  # a resume keeps the record of the start's source
        if d.main:
            write_run_files(run_dir, cfg, env)
        for message in s.data.notes:
            tracker.note(message)
        tracker.start(cfg, state.iteration, env)
        s.model.train()
        state.started = state.marked = time.perf_counter()
        fixed = None
        if s.fixed:  # after a resume's restore: the step captures the tensors it was restored into
            window, capture = (state.window_loss, state.window_wrong), s.device.type == "cuda"
            fixed = FixedStep(s.forward, s.optimizer, s.batches, window, s.amp, capture)
        for it in range(state.iteration + 1, cfg.schedule.iterations + 1):
            lr = s.schedule.lr(it)
            if fixed is not None:  # the step in the same tensors, captured once and replayed
                fixed(lr)
                state.count(it)
            else:
                for group in s.optimizer.param_groups:
                    group["lr"] = lr
                images, labels = s.batches.next()
                state.add(it, *train_step(s.forward, s.optimizer, images, labels, s.amp))
            tracker.step(it)
            if due := Due.after(s, it, stop):
                side_effects(s, state, due, lr, tracker, stop)
    summary = final_summary(s, state)
    tracker.finish(summary)
    return summary


def final_summary(s: Setup, state: TrainState) -> Summary:
    """summary.json: the last log window's training numbers and the final model's evaluation."""
    cfg = s.cfg
    return Summary(
        name=cfg.run.name,
        seed=cfg.run.seed,
        iterations=cfg.schedule.iterations,
        train_error=state.train_metrics["error/train"],
        train_loss=state.train_metrics["loss/train"],
        test_error=state.eval_metrics["error/test"],
        test_loss=state.eval_metrics["loss/test"],
        val_error=state.eval_metrics.get("error/val"),
        val_loss=state.eval_metrics.get("loss/val"),
        params=s.params,
        macs=s.macs,
        wall_time=state.elapsed(),
        images_per_sec=cfg.schedule.iterations * cfg.optim.batch_size / max(state.step_time, 1e-9),
        device=str(s.device),
        precision=s.precision,
        test_samples=state.evaluated_images.get("test", 0),
    )
