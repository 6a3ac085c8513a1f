"""Running many trainings at once: a local pool of worker processes, or Ray, one run per task.

    run_all(tasks, jobs, on_event)                            -> list[Outcome]   --backend local
    run_all_ray(tasks, address, gpus, cpus, retries, on_event) -> list[Outcome]  --backend ray

Each task is `train.train(cfg, run_dir, resume=True, wait=True)`, in one place (`_train_task`): a
finished run with the same config is reused, an unfinished one resumed, a missing one trained, the
same code path as `resbench train`. The run lock makes a second sweep over the same runs wait and
then reuse them. Workers split the CPU cores between them, or take one GPU each (round robin over
the GPUs this process may use). A failed run is reported in its `Outcome` and does not stop the
others. Progress comes back as `Event`s.

A stop (Ctrl-C or SIGTERM to the parent) reaches every worker: each running run writes its
checkpoint at its next step, no queued run starts, and `run_all` raises KeyboardInterrupt once the
workers are gone. A worker whose parent dies stops the same way, so no orphan trains on.

Ray is optional (`pip install "resbench[ray]"`) and imported here alone, inside `run_all_ray`.
Each run is a Ray task with its own resource request; a failed task is submitted again, up to
`retries` times, and `train(resume=True)` continues it from its last checkpoint. Failures that
would only recur (a config error, a divergence, out of memory) are not retried. Run directories
must be on storage that every node reaches (`--runs-dir` on a shared filesystem).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from resbench.config import RunConfig, validate
from resbench.errors import ConfigError, Diverged, Interrupted, ResbenchError
from resbench.rundir import RunLock, Summary
from resbench.tracking import Tracker

# start, step, log and note come from a run as it trains; done carries its Outcome
EventKind = Literal["start", "step", "log", "note", "done"]


@dataclass(frozen=True)
class Event:
    """What a sweep reports about one run."""

    run_dir: Path
    kind: EventKind
    iteration: int = 0
    total: int = 0
    metrics: Mapping[str, float] | None = None
    message: str = ""


@dataclass(frozen=True)
class Outcome:
    run_dir: Path
    summary: Summary | None
    error: str | None  # why the run failed, for the user

    def event(self) -> Event:
        """The `done` event that reports this outcome."""
        text = f"failed: {self.error}" if self.error else f"done, test error {self.summary.test_error:.2f}%"
        return Event(self.run_dir, "done", message=text)


def _train_task(cfg: dict[str, Any], run_dir: Path, tracker: Tracker) -> Summary:
    """One task, in a local worker process or a Ray task: `resbench train --resume` that waits on the
    run's lock instead of refusing a run another sweep holds."""
    from resbench.train import train  # in the worker, after it has chosen its GPU

    return train(validate(cfg), run_dir, tracker, resume=True, wait=True)


class QueueTracker(Tracker):
    """Sends a worker's progress to the parent, about a hundred steps per run."""

    def __init__(self, events: Any, run_dir: Path) -> None:
        self.events, self.run_dir, self.every = events, run_dir, 1

    def start(self, cfg: RunConfig, start_iteration: int, env: Mapping[str, Any]) -> None:
        self.every = max(1, cfg.schedule.iterations // 100)
        self.events.put(Event(self.run_dir, "start", start_iteration, cfg.schedule.iterations))

    def note(self, message: str) -> None:
        self.events.put(Event(self.run_dir, "note", message=message))

    def step(self, iteration: int) -> None:
        if iteration % self.every == 0:
            self.events.put(Event(self.run_dir, "step", iteration))

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self.events.put(Event(self.run_dir, "log", iteration, metrics=dict(metrics)))


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM (a scheduler, `kill`) stops a sweep the way Ctrl-C does: as a
    KeyboardInterrupt, so that the runs write their checkpoints, instead of killing the parent alone."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals cannot be caught here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------
# Where the workers run


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA names them: the entries of CUDA_VISIBLE_DEVICES
    (indices, GPU-<uuid> or MIG-<uuid>) where it is set, else 0..n-1. A worker given one of these
    in its own CUDA_VISIBLE_DEVICES lands on that GPU, not on the machine's GPU of that number."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    # CUDA drops every entry from the first invalid one on: the device count says how many it kept
    return [entry.strip() for entry in listed.split(",")][:count]


def worker_layout(jobs: int, devices: Iterable[str] = ("auto",)) -> tuple[int, list[str] | None]:
    """Threads per worker, and each worker's CUDA_VISIBLE_DEVICES (None where no run uses CUDA).
    `devices` are the runs' `run.device` values."""
    import torch

    if torch.cuda.is_available() and {"auto", "cuda"} & set(devices):
        gpus = visible_gpus()  # one run per GPU, or several per GPU when jobs > GPUs
        return 1, [gpus[k % len(gpus)] for k in range(jobs)]
    return max(1, (os.cpu_count() or 1) // jobs), None


# --------------------------------------------------------------------------------------------
# The local pool: `jobs` worker processes take the next task from a shared counter until none is
# left. A worker takes a task only when it can start it, so a stop leaves every later task untouched.

_stop_asked = False  # in a worker: a SIGINT or SIGTERM arrived outside a training loop


def _on_signal(signum: int, frame: Any) -> None:
    """A worker's handler outside the training loop (the loop installs its own, which checkpoints).
    It only takes note: a run that is starting stops at its first step, with a checkpoint, since a
    run directory left with files but no checkpoint could not be resumed."""
    global _stop_asked
    _stop_asked = True
    if frame is not None and frame.f_code is RunLock.__init__.__code__:
        raise KeyboardInterrupt  # waiting on the lock of a run another sweep trains: nothing written yet


class _WorkerTracker(QueueTracker):
    """Also stops the run at its next step, through the loop's own handler (checkpoint, then
    `Interrupted`), when a stop came before the loop began or the parent process is gone."""

    def __init__(self, events: Any, run_dir: Path, parent: int) -> None:
        super().__init__(events, run_dir)
        self.parent, self.stopping = parent, False

    def step(self, iteration: int) -> None:
        if not self.stopping and (_stop_asked or os.getppid() != self.parent):
            self.stopping = True
            signal.raise_signal(signal.SIGINT)
        super().step(iteration)


def _worker(
    tasks: list[tuple[dict[str, Any], str]],
    taken: Any,
    events: Any,
    threads: int,
    gpu: str | None,
    parent: int,
) -> None:
    """One worker process: trains the next task until none is left, a stop came or the parent died.
    Sends each task's `(index, Outcome)` after its events."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _on_signal)
    if sys.platform.startswith("linux"):  # the kernel sends SIGTERM when the parent dies, even by -9
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch looks at CUDA
    import torch

    import resbench.train  # noqa: F401  (here, not in the first task: a stop while it loads is no run's)

    torch.set_num_threads(threads)
    stopped = False
    while not (stopped or _stop_asked or os.getppid() != parent):
        with taken.get_lock():
            i = taken.value
            taken.value = i + 1
        if i >= len(tasks):
            break
        cfg, run_dir = tasks[i]
        path = Path(run_dir)
        try:
            outcome = Outcome(path, _train_task(cfg, path, _WorkerTracker(events, path, parent)), None)
        except (Interrupted, KeyboardInterrupt) as err:
            outcome, stopped = Outcome(path, None, str(err) or "stopped while waiting for its lock"), True
        except Exception as err:
            outcome = Outcome(path, None, _reason(err))
        events.put((i, outcome))
    if os.getppid() != parent:  # nobody reads the queue any more: exit without flushing it
        events.cancel_join_thread()


def run_all(
    tasks: list[tuple[RunConfig, Path]],
    jobs: int = 1,
    on_event: Callable[[Event], None] = lambda event: None,
) -> list[Outcome]:
    """Train (or reuse, or resume) every task with `jobs` worker processes; outcomes in task order.

    On Ctrl-C or SIGTERM, no further task starts, every running run writes its checkpoint at its
    next step, and KeyboardInterrupt is raised once all workers have exited."""
    if not tasks:
        return []
    jobs = max(1, min(jobs, len(tasks)))
    threads, gpus = worker_layout(jobs, {cfg.run.device for cfg, _ in tasks})
    ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA state or threads inherited by fork
    events, taken = ctx.Queue(), ctx.Value("i", 0)
    work = [(cfg.to_dict(), str(run_dir)) for cfg, run_dir in tasks]
    outcomes: list[Outcome | None] = [None] * len(tasks)

    def receive(message: Event | tuple[int, Outcome]) -> None:
        if isinstance(message, Event):
            on_event(message)
        else:
            outcomes[message[0]] = message[1]
            on_event(message[1].event())

    workers = [
        ctx.Process(target=_worker, args=(work, taken, events, threads, gpu, os.getpid()))
        for gpu in (gpus or [None] * jobs)
    ]
    with stop_on_sigterm():
        try:
            # Workers start with SIGINT and SIGTERM ignored (inherited through exec) until they install
            # their handlers: a stop that reaches a worker in between is dropped, not queued. The
            # parent, which gets it too, nudges every worker once a second (below) until it exits. A
            # stop in the few milliseconds the parent spends here is dropped by the parent as well.
            with _ignoring_signals():
                for w in workers:
                    w.start()
            _serve(workers, events, receive)
        except KeyboardInterrupt:
            with taken.get_lock():
                taken.value = len(tasks)  # no further task starts
            _serve(workers, events, receive, nudge=True)  # each running run checkpoints at its next step
            raise
    died = "its worker process died without a result (killed, or out of memory?)"
    return [
        o or Outcome(d, None, died if i < taken.value else "not started: every worker process had died")
        for i, (o, (_, d)) in enumerate(zip(outcomes, tasks, strict=True))
    ]


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while inside (a few milliseconds): child processes started here
    begin with them ignored, until they install their own handlers."""
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: nothing to change
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve(workers: list[Any], events: Any, receive: Callable[[Any], None], nudge: bool = False) -> None:
    """Pass on what the workers send until every worker has exited. With `nudge`, send SIGINT to
    every live worker each second: one that went into a lock wait just after a signal leaves it."""
    nudged = 0.0
    while alive := [w for w in workers if w.is_alive()]:
        if nudge and time.monotonic() > nudged + 1:
            nudged = time.monotonic()
            for w in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGINT)
        _drain(events, receive, timeout=0.2)
    _drain(events, receive, timeout=0)  # a worker's last messages are in the pipe before it exits
    for w in workers:
        w.join()


def _drain(events: Any, on_event: Callable[[Any], None], timeout: float) -> None:
    try:
        on_event(events.get(timeout=timeout) if timeout else events.get_nowait())
        while True:
            on_event(events.get_nowait())
    except queue.Empty:
        pass


# --------------------------------------------------------------------------------------------
# Ray


def _ray_train(cfg_dict: dict[str, Any], run_dir: str, cwd: str, events: Any, threads: int) -> Summary:
    """One run inside a Ray worker, from the driver's working directory (relative data paths)."""
    import socket

    import torch

    host = socket.gethostname()
    try:
        os.chdir(cwd)
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / ".writable").touch()
        (path / ".writable").unlink()
    except OSError as err:
        raise ResbenchError(
            f"a Ray worker on {host} cannot use {run_dir} from {cwd} ({err.strerror}). With Ray, --runs-dir "
            "and the working directory must be on storage every node can reach (a shared filesystem)."
        ) from None
    torch.set_num_threads(threads)
    return _train_task(cfg_dict, path, QueueTracker(events, path))


def run_all_ray(
    tasks: list[tuple[RunConfig, Path]],
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: float = 1,
    retries: int = 2,
    on_event: Callable[[Event], None] = lambda event: None,
) -> list[Outcome]:
    """Each task as a Ray task on a local instance (address None) or the cluster at `address`."""
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError:
        raise ResbenchError(
            '--backend ray needs Ray: pip install "resbench[ray]" (or pip install ray)'
        ) from None
    if not tasks:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning")
        except (ConnectionError, RuntimeError) as err:
            raise ResbenchError(
                f"cannot start or reach Ray at {address or 'a new local instance'}: {err}"
            ) from None
    try:
        if gpus_per_run is None:  # one GPU per run where the cluster has GPUs, none elsewhere
            gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
        # An actor needs a CPU to be placed; with every CPU held by runs, their progress would wait.
        events = Queue(actor_options={"num_cpus": 0})
        remote = ray.remote(_ray_train).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        threads = max(1, int(cpus_per_run))

        def submit(i: int) -> Any:
            cfg, run_dir = tasks[i]
            return remote.remote(cfg.to_dict(), str(run_dir), os.getcwd(), events, threads)  # relative to cwd

        pending = {submit(i): i for i in range(len(tasks))}
        attempts = [1] * len(tasks)
        outcomes: list[Outcome | None] = [None] * len(tasks)
        with stop_on_sigterm(), _cancelled_on_interrupt(ray, pending):
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
                _drain_ray(events, on_event)
                for ref in done:
                    i = pending.pop(ref)
                    run_dir = tasks[i][1]
                    try:
                        outcomes[i] = Outcome(run_dir, ray.get(ref), None)
                    except Exception as err:  # RayTaskError wraps what the worker raised
                        cause = getattr(err, "cause", None) or err
                        if retriable(cause) and attempts[i] <= retries:
                            attempts[i] += 1
                            on_event(
                                Event(
                                    run_dir,
                                    "note",
                                    message=f"{run_dir} failed ({_reason(cause)}); retry "
                                    f"{attempts[i] - 1} of {retries} from its checkpoint",
                                )
                            )
                            pending[submit(i)] = i
                            continue
                        tried = f" after {attempts[i]} attempts" if attempts[i] > 1 else ""
                        outcomes[i] = Outcome(run_dir, None, f"failed{tried}: {_reason(cause)}")
                    on_event(outcomes[i].event())
        _drain_ray(events, on_event)
        return [o for o in outcomes if o is not None]
    finally:
        if started_here:
            ray.shutdown()


@contextlib.contextmanager
def _cancelled_on_interrupt(ray: Any, pending: Mapping[Any, int]) -> Iterator[None]:
    """On Ctrl-C, a queued task is dropped, and a running one gets a KeyboardInterrupt through its
    SIGINT handler, the training loop's, which writes the checkpoint at the next step."""
    try:
        yield
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=60)
        raise


def _drain_ray(events: Any, on_event: Callable[[Event], None]) -> None:
    while not events.empty():
        on_event(events.get())


def retriable(err: BaseException) -> bool:
    """Whether a failed run may succeed when tried again from its checkpoint. A config error, a
    divergence or running out of memory would only happen again."""
    if isinstance(err, (ConfigError, Diverged, MemoryError)):
        return False
    # torch.OutOfMemoryError (older torch: a RuntimeError "CUDA out of memory"), and Ray's own
    # OutOfMemoryError when its memory monitor kills a worker
    return type(err).__name__ != "OutOfMemoryError" and "out of memory" not in str(err).lower()


def _reason(err: BaseException) -> str:
    return str(err) if isinstance(err, ResbenchError) else f"{type(err).__name__}: {err}"
