"""Running many trainings at once: a local pool of worker processes, or Ray, one run per task.

    run_all(tasks, jobs, on_event)                            -> list[Outcome]   --backend local
    run_all_ray(tasks, address, gpus, cpus, retries, on_event) -> list[Outcome]  --backend ray

Each task is `train.train(cfg, run_dir, resume=True, wait=True)`: a finished run with the same
config is reused, an unfinished one resumed, a missing one trained, the same code path as
`resbench train`. The run lock makes a second sweep over the same runs wait and then reuse them.
Workers split the CPU cores between them, or take one GPU each (round robin). A failed run is
reported in its `Outcome` and does not stop the others. Progress comes back as `Event`s.

Ray is optional (`pip install "resbench[ray]"`) and imported here alone, inside `run_all_ray`.
Each run is a Ray task with its own resource request; a failed task is submitted again, up to
`retries` times, and `train(resume=True)` continues it from its last checkpoint. Run directories
must be on storage that every node reaches (`--runs-dir` on a shared filesystem).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resbench.config import ConfigError, ResbenchError, RunConfig, validate
from resbench.tracking import Summary, Tracker


@dataclass(frozen=True)
class Event:
    """What a sweep reports: kind is start, step, log or note (from a worker), or done."""

    run_dir: Path
    kind: str
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


_worker_events: Any = None


def _init_worker(events: Any, threads: int, gpus: Any) -> None:
    """Runs once in each worker process, before torch touches a device."""
    global _worker_events
    _worker_events = events
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    import torch

    torch.set_num_threads(threads)


def _train_one(cfg_dict: dict[str, Any], run_dir: str) -> Summary:
    from resbench.train import train

    path = Path(run_dir)
    return train(validate(cfg_dict), path, QueueTracker(_worker_events, path), resume=True, wait=True)


def worker_layout(jobs: int) -> tuple[int, list[int] | None]:
    """Threads per worker, and which GPU each worker takes (None on a machine without CUDA)."""
    import torch

    if torch.cuda.is_available():  # one run per GPU, or several per GPU when jobs > GPUs
        return 1, [i % torch.cuda.device_count() for i in range(jobs)]
    return max(1, (os.cpu_count() or 1) // jobs), None


def run_all(
    tasks: list[tuple[RunConfig, Path]],
    jobs: int = 1,
    on_event: Callable[[Event], None] = lambda event: None,
) -> list[Outcome]:
    """Train (or reuse, or resume) every task with `jobs` worker processes; outcomes in task order."""
    if not tasks:
        return []
    jobs = max(1, min(jobs, len(tasks)))
    threads, gpus = worker_layout(jobs)
    ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA state or threads inherited by fork
    events = ctx.Queue()
    gpu_queue = None
    if gpus is not None:
        gpu_queue = ctx.Queue()
        for gpu in gpus:
            gpu_queue.put(gpu)
    with ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker, initargs=(events, threads, gpu_queue)
    ) as pool:
        futures: list[Future[Summary]] = [pool.submit(_train_one, cfg.to_dict(), str(d)) for cfg, d in tasks]
        reported: set[int] = set()
        try:
            while len(reported) < len(futures):
                _drain(events, on_event, timeout=0.2)
                for i, f in enumerate(futures):
                    if f.done() and i not in reported:
                        _drain(events, on_event, timeout=0)  # the run's last events come first
                        reported.add(i)
                        outcome = _outcome(f, tasks[i][1])
                        on_event(outcome.event())
        except KeyboardInterrupt:  # workers got the signal too: let them write their checkpoints
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            _drain(events, on_event, timeout=0)
            raise
        _drain(events, on_event, timeout=0)
    return [_outcome(f, d) for f, (_, d) in zip(futures, tasks, strict=True)]


def _drain(events: Any, on_event: Callable[[Event], None], timeout: float) -> None:
    try:
        on_event(events.get(timeout=timeout) if timeout else events.get_nowait())
        while True:
            on_event(events.get_nowait())
    except queue.Empty:
        pass


def _outcome(future: Future[Summary], run_dir: Path) -> Outcome:
    if future.cancelled():
        return Outcome(run_dir, None, "cancelled before it started")
    err = future.exception()
    if err is None:
        return Outcome(run_dir, future.result(), None)
    if isinstance(err, ResbenchError):
        return Outcome(run_dir, None, str(err))
    return Outcome(run_dir, None, f"{type(err).__name__}: {err}")


# --------------------------------------------------------------------------------------------
# Ray


def _ray_train(cfg_dict: dict[str, Any], run_dir: str, cwd: str, events: Any, threads: int) -> Summary:
    """One run inside a Ray worker, from the driver's working directory (relative data paths)."""
    import socket

    import torch

    from resbench.train import train

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
    return train(validate(cfg_dict), path, QueueTracker(events, path), resume=True, wait=True)


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
                    retriable = not isinstance(cause, ConfigError)
                    if retriable and attempts[i] <= retries:
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
                outcome = outcomes[i]
                on_event(outcome.event())
        _drain_ray(events, on_event)
        return [o for o in outcomes if o is not None]
    finally:
        if started_here:
            ray.shutdown()


def _drain_ray(events: Any, on_event: Callable[[Event], None]) -> None:
    while not events.empty():
        on_event(events.get())


def _reason(err: BaseException) -> str:
    return str(err) if isinstance(err, ResbenchError) else f"{type(err).__name__}: {err}"
