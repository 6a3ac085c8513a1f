"""Training: the §4.2 recipe as one short loop in reading order. Nothing here prints.

    train(cfg, run_dir, tracker, resume=False, force=False) -> Summary

SGD with momentum and weight decay; the learning rate is divided by 10 at iteration milestones,
with an optional warm-up (the ResNet-110 rule). The loop keeps losses and errors on the device and
reads them only at log points, so the step itself never waits for the host. A checkpoint holds
every piece of state the next step depends on, so a resumed run is bit-identical on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from resbench import checkpoint, distributed
from resbench.analysis.probe import TrainingProbe
from resbench.analysis.responses import fixed_test_images
from resbench.config import OptimConfig, RunConfig, ScheduleConfig
from resbench.data import Batches, Data, Split, build_data
from resbench.distributed import Dist
from resbench.errors import ConfigError, Diverged, Interrupted, ResbenchError
from resbench.models import build_model, count_macs, count_params
from resbench.rundir import (
    CHECKPOINT,
    SUMMARY,
    RunLock,
    Summary,
    check_same_config,
    check_same_data,
    prepare_run_dir,
    read_summary,
    rerun_command,
    write_run_files,
)
from resbench.tracking import RunFiles, Tracker, Trackers, environment

# --------------------------------------------------------------------------------------------
# Device and precision


def resolve_device(name: str, d: Dist = distributed.SINGLE) -> torch.device:
    """`auto` picks cuda, then mps, then cpu. Asking for a device that is not there is an error.
    Under torchrun, each rank takes the GPU of its LOCAL_RANK."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(n for n in ("cuda", "mps", "cpu") if available[n])
    if name == "cuda" and available["cuda"] and d.enabled:
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    if not available[name]:
        raise ConfigError(
            f"run.device is {name!r} but this machine has no {name.upper()} device "
            "that torch can use; use --device cpu or --device auto"
        )
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":  # Ampere (8.0) and later; is_bf16_supported() also counts emulation
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":  # AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower than fp32
        cpu = getattr(torch, "cpu", None)
        return bool(
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "mps":
        raise ConfigError("run.precision bf16 is not supported on mps; use fp32 or auto")
    return precision


def set_kernels(device: torch.device, deterministic: bool) -> dict[str, bool]:
    """Choose the CUDA kernels; returns the settings for env.json.

    TF32 is off: a run that says fp32 computes in fp32 (cuDNN would otherwise use TF32 convs on
    Ampere and later), and bf16 autocast is the fast path. `deterministic` trades cudnn.benchmark's
    fastest kernels for reproducible ones, so that a resumed GPU run can match one done in one go.
    """
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic  # fixed shapes: pick once
    if deterministic:  # cuBLAS reads this when it starts, i.e. before the first matmul of the process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for convs and matmuls; weights, BN statistics and the loss stay in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Optimiser and schedule


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    if cfg.weight_decay_on == "all":  # as Caffe and the paper's era: decay every parameter
        groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    else:  # conv and linear weights only; BN affine parameters and biases are not decayed
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
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
# Step and evaluation


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    amp: contextlib.AbstractContextManager[Any],
) -> tuple[Tensor, Tensor]:
    """One SGD step. Returns the batch's summed loss and number of errors, still on the device."""
    with amp:
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * labels.numel(), (logits.argmax(dim=1) != labels).sum()


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
# The run


def finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (BN running stats can overflow while the loss
    stays finite). One host sync: call it at checkpoints only."""
    values = [t.detach().flatten() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.isfinite(torch.cat(values)).all())


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


FRESH, RESUME, FINISHED, REFUSED = 0, 1, 2, 3


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
    created = distributed.setup(d, device)
    lock, error, status = None, None, FRESH
    tracker = Trackers([RunFiles(run_dir), tracker or Tracker()]) if d.main else Tracker()
    try:
        if d.main:
            try:
                lock = RunLock(run_dir, wait=wait)
                if resume and (run_dir / SUMMARY).exists() and not force:
                    check_same_config(run_dir, cfg)
                    status = FINISHED  # nothing left to do
                else:
                    status = RESUME if prepare_run_dir(run_dir, resume, force) else FRESH
            except ResbenchError as err:
                error, status = err, REFUSED
        status = distributed.broadcast_int(status, device)  # every rank follows rank 0's decision
        if error is not None:
            raise error
        if status == REFUSED:
            raise ResbenchError(f"rank 0 refused {run_dir}; its message says why")
        if status == FINISHED:
            return read_summary(run_dir)
        return _train(cfg, run_dir, tracker, status == RESUME, d, device)
    finally:
        tracker.close()
        if lock is not None:
            lock.release()
        if created:
            distributed.teardown()


def _train(
    cfg: RunConfig, run_dir: Path, tracker: Tracker, resuming: bool, d: Dist, device: torch.device
) -> Summary:
    saved = checkpoint.load(run_dir / CHECKPOINT) if resuming else None
    if saved is not None:
        check_same_config(run_dir, cfg, saved["config"])
    if cfg.optim.batch_size % d.world_size:
        raise ConfigError(
            f"optim.batch_size {cfg.optim.batch_size} is the global batch and must divide by the "
            f"{d.world_size} processes of torchrun; each takes batch_size / world_size"
        )
    if cfg.run.sync_bn and d.enabled and device.type != "cuda":
        raise ConfigError("run.sync_bn needs CUDA devices; leave it off on CPU (BN statistics per process)")

    precision = resolve_precision(cfg.run.precision, device)
    if saved is not None:
        check_same_hardware(saved, cfg, device, precision)
    amp = autocast(device, precision)
    kernels = set_kernels(device, cfg.run.deterministic)
    torch.manual_seed(cfg.run.seed)

    data = build_data(cfg.data, device)
    check_same_data(run_dir, cfg, saved, data.fingerprint)  # the same data.root may hold other images now
    model = build_model(cfg.model).to(device, memory_format=torch.channels_last)  # NHWC convs are faster
    params, macs = count_params(model), count_macs(model)
    if cfg.run.sync_bn and d.enabled:  # off by default: the paper's BN statistics are per device
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    forward = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if d.enabled
        else model
    )
    forward = torch.compile(forward) if cfg.run.compile else forward
    evaluated = model if d.enabled else forward  # no DDP collectives in evaluation: shards may differ in size
    optimizer = build_optimizer(model, cfg.optim)
    schedule = LrSchedule(cfg.optim.lr, cfg.schedule)
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
    probe = (
        TrainingProbe(model, fixed_test_images(data, cfg.analysis.images))
        if cfg.analysis.every and d.main
        else None
    )
    eval_every = cfg.run.eval_every or batches.steps_per_epoch  # default: once per epoch
    log_every = cfg.run.log_every or eval_every
    window_loss = torch.zeros((), device=device)
    window_wrong = torch.zeros((), dtype=torch.long, device=device)
    window_steps, window_time, start, wall_time, step_time = 0, 0.0, 0, 0.0, 0.0
    checkpointed: int | None = None  # the iteration of the last checkpoint written
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    evaluated_images: dict[str, int] = {}

    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        batches.load_state_dict(saved["batches"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        schedule.warming_up = saved["warming_up"]
        if d.main:  # the saved window holds every rank's share: restore it once
            window_loss.copy_(saved["window_loss"])
            window_wrong.copy_(saved["window_wrong"])
        window_steps, window_time, start = saved["window_steps"], saved["window_time"], saved["iteration"]
        wall_time, step_time, checkpointed = saved["wall_time"], saved["step_time"], start
        train_metrics, eval_metrics = saved["train_metrics"], saved["eval_metrics"]
        evaluated_images = saved.get("evaluated_images", {})  # absent before issue 9; the next eval sets it

    def state(iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "config": cfg.to_dict(),
            "device_type": device.type,
            "precision": precision,
            "data_fingerprint": data.fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "batches": batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "warming_up": schedule.warming_up,
            "window_loss": total_loss,  # the window the next step continues: every rank's share
            "window_wrong": total_wrong,
            "window_steps": window_steps,
            "window_time": window_time,
            "step_time": step_time,
            "wall_time": wall_time + time.perf_counter() - t_start,
            "train_metrics": train_metrics,
            "eval_metrics": eval_metrics,
            "evaluated_images": evaluated_images,
        }

    # Signals are noted from the first file written: a stop before the first step then still ends
    # with a checkpoint (at iteration 1), since a run directory with files but no last.pt could only
    # be started over. Loading the data and building the model, before, stop at once: nothing written.
    with stop_requests() as stop:
        env = environment(device, precision) | kernels
        env |= {"world_size": d.world_size, "data_fingerprint": data.fingerprint}
        if d.main:
            write_run_files(run_dir, cfg, env)
        for message in data.notes:
            tracker.note(message)
        tracker.start(cfg, start, env)
        model.train()
        t_start = t_mark = time.perf_counter()
        for it in range(start + 1, cfg.schedule.iterations + 1):
            lr = schedule.lr(it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = batches.next()
            loss, wrong = train_step(forward, optimizer, images, labels, amp)
            window_loss += loss
            window_wrong += wrong
            window_steps += 1
            tracker.step(it)

            last = it == cfg.schedule.iterations
            log_now, eval_now = it % log_every == 0 or last, it % eval_every == 0 or last
            probe_now = probe is not None and (it % cfg.analysis.every == 0 or last)
            # Under DDP the ranks agree on a stop at log points, so that all stop at the same step.
            if d.enabled:
                stop_now = log_now and distributed.any_rank(bool(stop), device)
            else:
                stop_now = bool(stop)
            save_now = last or stop_now or (cfg.run.checkpoint_every and it % cfg.run.checkpoint_every == 0)
            if not (log_now or eval_now or save_now or probe_now):
                continue

            # Side effects below this line; the only host syncs of the loop happen here.
            seen = window_steps * cfg.optim.batch_size
            total_loss, total_wrong = window_loss.clone(), window_wrong.clone()
            if log_now or save_now:  # the same steps on every rank: a safe place for a collective
                distributed.all_sum(total_loss, total_wrong)
            window_loss_value = total_loss.item()
            now = time.perf_counter()
            window_time += now - t_mark
            if eval_now or save_now:  # every rank evaluates and checks the model that rank 0 saves
                distributed.broadcast_buffers(model)
            # Judge the loss only where every rank summed it (a lone rank must not stop the others).
            # The loss is computed before the update, so also check the weights about to be saved.
            summed = log_now or save_now or not d.enabled
            if (summed and not math.isfinite(window_loss_value)) or (
                save_now and distributed.any_rank(not finite(model), device)
            ):
                kept = (
                    f"The last good checkpoint (iteration {checkpointed}) is kept in {run_dir}"
                    if checkpointed is not None
                    else "No checkpoint was written yet, so there is none to resume: start again with --force"
                )
                raise Diverged(
                    f"training diverged (loss {window_loss_value}) by iteration {it} (lr {lr:g}). "
                    f"{kept}. Try a smaller optim.lr or schedule.warmup."
                )
            if log_now and window_steps:
                train_metrics = {
                    "error/train": 100.0 * total_wrong.item() / seen,
                    "loss/train": window_loss_value / seen,
                    "lr": lr,
                    "perf/images_per_sec": seen / window_time,
                }
                tracker.log(it, train_metrics)
                schedule.observe(it, train_metrics["error/train"])
                step_time += window_time
                # A new window; total_* is what a checkpoint saves, so it starts the new window too.
                for t in (window_loss, window_wrong, total_loss, total_wrong):
                    t.zero_()
                window_steps, window_time = 0, 0.0
            if probe_now:  # right after the step, while the gradients are this step's
                scalars, vectors = probe()
                tracker.log(it, {f"analysis/{k}": v for k, v in scalars.items()})
                tracker.histograms(it, {f"analysis/{k}": v for k, v in vectors.items()})
            if eval_now:
                evals = {"test": data.test, **({"val": data.val} if data.val is not None else {})}
                for split_name, split in evals.items():
                    loss_value, error, count = evaluate(evaluated, data, split, amp, d)
                    eval_metrics |= {f"error/{split_name}": error, f"loss/{split_name}": loss_value}
                    evaluated_images[split_name] = count
                tracker.log(it, eval_metrics)
            if save_now:
                if d.main:
                    tracker.flush()  # a kill after the checkpoint must not lose what was logged before it
                    checkpoint.save(state(it), run_dir / CHECKPOINT)
                checkpointed = it
            if stop_now:
                raise Interrupted(
                    f"stopped by {stop[0]} at iteration {it}; the checkpoint is saved. "
                    f"Continue with: {rerun_command(run_dir, '--resume')}"
                )
            t_mark = time.perf_counter()

    summary = Summary(
        name=cfg.run.name,
        seed=cfg.run.seed,
        iterations=cfg.schedule.iterations,
        train_error=train_metrics["error/train"],
        train_loss=train_metrics["loss/train"],
        test_error=eval_metrics["error/test"],
        test_loss=eval_metrics["loss/test"],
        val_error=eval_metrics.get("error/val"),
        val_loss=eval_metrics.get("loss/val"),
        params=params,
        macs=macs,
        wall_time=wall_time + time.perf_counter() - t_start,
        images_per_sec=cfg.schedule.iterations * cfg.optim.batch_size / max(step_time, 1e-9),
        device=str(device),
        precision=precision,
        test_samples=evaluated_images.get("test", 0),
    )
    tracker.finish(summary)
    return summary
