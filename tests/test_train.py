"""train.py through its real code path: tiny nets on tiny CIFAR pickles, a few dozen iterations on CPU."""

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import resbench.train as train_module
from resbench import checkpoint, config, distributed
from resbench.distributed import Dist
from resbench.errors import ConfigError, Diverged, Interrupted, RunDirError
from resbench.hardware import set_kernels
from resbench.rundir import RESUMABLE_CHANGES, RunLock, read_metrics, read_probes, read_summary, run_dir_for
from resbench.tracking import Tracker
from resbench.train import (
    LrSchedule,
    build_optimizer,
    train,
)

TINY_NET = ["model.depth=8", "model.width=4", "optim.batch_size=16"]
SCHEDULE = [
    "schedule.iterations=40",
    "schedule.milestones=[30]",
    "run.log_every=5",
    "run.eval_every=10",
    "run.checkpoint_every=20",
]


def load(root: Path, *extra: str, name: str = "resnet20") -> config.RunConfig:
    return config.load(name, [*TINY_NET, *SCHEDULE, f"data.root={root}", "run.device=cpu", *extra])


class InterruptAt(Tracker):
    """Sends this process SIGINT after a given iteration, as a user pressing Ctrl-C would."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def step(self, iteration: int) -> None:
        if iteration == self.iteration:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_run_learns_and_writes_its_files(learnable_root: Path, tmp_path: Path) -> None:
    summary = train(load(learnable_root), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "last.pt", "summary.json"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    metrics = read_metrics(run)
    train_losses = [m["loss/train"] for m in metrics if "loss/train" in m]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert summary.test_error < 75 and summary.iterations == 40 and summary.params > 0
    assert json.loads((run / "summary.json").read_text())["test_error"] == summary.test_error
    env = json.loads((run / "env.json").read_text())
    assert {"torch", "git_commit", "command", "device", "precision", "resbench"} <= env.keys()
    assert config.load(run / "config.yaml") == load(learnable_root)
    assert oct((run / "config.yaml").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_evaluates_the_final_model_at_eval_points_and_the_end(learnable_root: Path, tmp_path: Path) -> None:
    cfg = load(learnable_root, "schedule.iterations=25", "schedule.milestones=[]", "data.val_size=20")
    summary = train(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert [m["iteration"] for m in metrics if "error/test" in m] == [10, 20, 25]
    assert [m["iteration"] for m in metrics if "error/val" in m] == [10, 20, 25]
    last = [m for m in metrics if "error/test" in m][-1]
    assert summary.test_error == last["error/test"] and summary.val_error == last["error/val"]


def test_tensorboard_tags_and_hparams_in_the_run_directory(learnable_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(load(learnable_root, "data.val_size=20"), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {
        "error/train",
        "loss/train",
        "error/test",
        "loss/test",
        "error/val",
        "loss/val",
        "lr",
        "perf/images_per_sec",
    }
    assert [e.step for e in events.Scalars("error/test")] == [10, 20, 30, 40]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.1] * 6 + [0.01] * 2)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    # no experiment summary: TensorBoard builds the columns from every run's session start (tracking.py)
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= content.keys()
    assert "_hparams_/experiment" not in content
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.depth"].number_value == 8
    assert start.session_start_info.hparams["model.shortcut"].string_value == "A"
    assert not [p for p in (tmp_path / "run").iterdir() if p.is_dir()]  # no stray sub-runs


# --------------------------------------------------------------------------------------------
# Exact resume: a run stopped anywhere and resumed ends as the run done in one go

# 140 training images (20 held out for val) in batches of 20: an epoch is 7 steps. Warm-up at lr
# 0.01 through iteration 11 (ended at the log point 12), the lr drops after 13.
RESUME = [
    "optim.batch_size=20",
    "data.val_size=20",
    "schedule.iterations=30",
    "schedule.milestones=[13]",
    "schedule.warmup={lr: 0.01, until_train_error: 1, max_iterations: 11}",
    "run.log_every=4",
    "run.eval_every=6",
    "run.checkpoint_every=8",
    # probes at 3, 6, ...: on eval points (6, 12), a checkpoint (24) and the last iteration (30)
    "analysis.every=3",
    "analysis.images=16",
]
TIMING = {"wall_time", "window_time", "step_time", "images_per_sec", "perf/images_per_sec"}


def untimed(x: object) -> object:
    """`x` without its timing entries and with tensors as (dtype, values): `==` is then bit-exact."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, (list, tuple)):
        return [untimed(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.dtype, x.tolist()
    return x


def assert_same_run(a: Path, b: Path) -> None:
    """The same weights, buffers, optimiser and RNG states, metrics.jsonl, probes.jsonl and
    summary.json, timings aside."""
    assert untimed(checkpoint.load(a / "last.pt")) == untimed(checkpoint.load(b / "last.pt"))
    assert untimed(read_metrics(a)) == untimed(read_metrics(b))
    assert read_probes(a) == read_probes(b)
    summary = lambda run: untimed(json.loads((run / "summary.json").read_text()))  # noqa: E731
    assert summary(a) == summary(b)


@contextlib.contextmanager
def kill_after_checkpoints(run_dir: Path, *iterations: int) -> Iterator[dict[int, Path]]:
    """Copies `run_dir` right after the checkpoint at each of `iterations`: what a kill -9 at that
    moment leaves on disk (only what reached the kernel; Python's buffers are lost)."""
    killed: dict[int, Path] = {}
    save = checkpoint.save

    def save_and_copy(state: dict, path: Path) -> None:
        save(state, path)
        if (it := state["iteration"]) in iterations:
            copy = run_dir.with_name(f"{run_dir.name}-killed-at-{it}")
            killed[it] = shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", save_and_copy)
        yield killed


def stopped_at(cfg: config.RunConfig, stop: int, how: str, killed: dict[int, Path], run: Path) -> Path:
    """`run` as a stop at iteration `stop` leaves it: a signal (the checkpoint is written), or a kill
    -9 right after the checkpoint there (a copy taken by kill_after_checkpoints)."""
    if how == "kill":
        return shutil.copytree(killed[stop], run)
    with pytest.raises(Interrupted, match="--resume"):
        train(cfg, run, InterruptAt(stop))
    return run


def in_one_go(
    cfg: config.RunConfig, run: Path, *kill_at: int
) -> tuple[config.RunConfig, Path, dict[int, Path]]:
    """Train `run` without a stop; also keep copies of it as a kill -9 after each checkpoint in `kill_at`
    would leave it."""
    with kill_after_checkpoints(run, *kill_at) as killed:
        train(cfg, run)
    return cfg, run, killed


KILLED_AT = (8, 30)  # after the periodic checkpoint at a log point, and after the last one


@pytest.fixture(scope="module", params=["fp32", "bf16"])  # bf16 autocast runs on any CPU, if slowly
def one_go(request: pytest.FixtureRequest, learnable_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The run done in one go, and copies of its directory as kill -9 left them at KILLED_AT."""
    cfg = load(learnable_root, *RESUME, f"run.precision={request.param}")
    return in_one_go(cfg, tmp_path_factory.mktemp(request.param) / "one-go", *KILLED_AT)


@pytest.mark.parametrize(
    "stop, how",
    [
        pytest.param(5, "signal", id="mid-window"),
        pytest.param(4, "signal", id="log-point"),
        pytest.param(8, "signal", id="checkpoint-at-a-log-point"),
        pytest.param(8, "kill", id="killed-after-a-checkpoint-at-a-log-point"),
        pytest.param(6, "signal", id="eval-point"),
        pytest.param(12, "signal", id="eval-and-log-point-where-the-warm-up-ends"),
        pytest.param(7, "signal", id="epoch-end"),
        pytest.param(11, "signal", id="last-warm-up-iteration"),
        pytest.param(13, "signal", id="lr-milestone"),
        pytest.param(30, "signal", id="last-iteration"),
        pytest.param(30, "kill", id="killed-after-the-last-checkpoint"),
    ],
)
def test_stopped_anywhere_and_resumed_equals_one_go(one_go, stop: int, how: str, tmp_path: Path) -> None:
    """Bit-exact resume on CPU, fp32 and bf16: the same weights, metrics.jsonl and summary.json."""
    cfg, done, killed = one_go
    run = stopped_at(cfg, stop, how, killed, tmp_path / "run")
    assert checkpoint.load(run / "last.pt")["iteration"] == stop
    assert not (run / "summary.json").exists()
    train(cfg, run, resume=True)
    assert_same_run(done, run)


# The same run with a warm-up that ends by train error: the running error is 96% at the log points
# 4 and 8 and 82% at 12, so the warm-up (lr 0.01) ends at 12, well before max_iterations, and the
# lr is 0.1 from 13 to the milestone at 24. A checkpoint at 12 or at 11 must carry that over exactly.
WARMUP_BY_ERROR = [
    *(o for o in RESUME if not o.startswith(("schedule.warmup", "schedule.milestones", "run.checkpoint"))),
    "schedule.milestones=[24]",
    "run.checkpoint_every=12",
    "schedule.warmup={lr: 0.01, until_train_error: 90, max_iterations: 20}",
]


@pytest.fixture(scope="module")
def warmed_up_in_one_go(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return in_one_go(
        load(learnable_root, *WARMUP_BY_ERROR), tmp_path_factory.mktemp("warm-up") / "one-go", 12
    )


@pytest.mark.parametrize(
    "stop, how",
    [
        pytest.param(11, "signal", id="just-before-the-log-point-that-ends-it"),
        pytest.param(12, "signal", id="at-the-log-point-that-ends-it"),
        pytest.param(12, "kill", id="killed-after-a-checkpoint-at-that-log-point"),
        pytest.param(13, "signal", id="first-step-at-the-base-lr"),
    ],
)
def test_a_warm_up_ended_by_train_error_resumes_exactly(
    warmed_up_in_one_go, stop: int, how: str, tmp_path: Path
) -> None:
    """Defect 1's path: a stop at or just before the log point where the warm-up ends by error must
    neither delay nor advance its end."""
    cfg, done, killed = warmed_up_in_one_go
    logged = {m["iteration"]: m for m in read_metrics(done) if "lr" in m}
    assert [logged[i]["error/train"] >= 90 for i in (4, 8, 12)] == [True, True, False]
    assert [logged[i]["lr"] for i in (12, 16, 20, 24, 28)] == pytest.approx([0.01, 0.1, 0.1, 0.1, 0.01])
    run = stopped_at(cfg, stop, how, killed, tmp_path / "run")
    assert checkpoint.load(run / "last.pt")["warming_up"] is (stop < 12)
    train(cfg, run, resume=True)
    assert_same_run(done, run)


@pytest.fixture
def fixed_step(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The loop with run.cuda_graph's fixed-buffer step, run eagerly on CPU, where the config itself
    refuses run.cuda_graph (capture is CUDA's); `.undo()` goes back to the eager step."""
    build = train_module.build_setup
    monkeypatch.setattr(
        train_module, "build_setup", lambda *args: dataclasses.replace(build(*args), fixed=True)
    )
    return monkeypatch


@pytest.mark.parametrize(
    "stop, how, resume_with",
    [
        pytest.param(None, None, None, id="in-one-go"),
        pytest.param(7, "signal", "fixed", id="epoch-end"),
        pytest.param(11, "signal", "fixed", id="last-warm-up-iteration"),
        pytest.param(12, "signal", "fixed", id="log-point-where-the-warm-up-ends"),
        pytest.param(13, "signal", "fixed", id="lr-milestone"),
        pytest.param(8, "kill", "fixed", id="eager-run-killed-resumed-fixed"),
        pytest.param(6, "signal", "eager", id="fixed-run-stopped-resumed-eager"),
    ],
)
def test_the_fixed_buffer_step_is_the_same_run(
    one_go,
    fixed_step: pytest.MonkeyPatch,
    stop: int | None,
    how: str | None,
    resume_with: str,
    tmp_path: Path,
) -> None:
    """run.cuda_graph's step, run eagerly on CPU, trains the eager loop's run to the bit (fp32 and
    bf16): the same last.pt, metrics.jsonl and summary.json, in one go or stopped at an epoch end,
    the warm-up's end or a milestone and resumed, and with the step switched at the resume."""
    cfg, done, killed = one_go
    run = tmp_path / "run"
    if stop is None:
        train(cfg, run)
    else:
        stopped_at(cfg, stop, how, killed, run)
        if resume_with == "eager":
            fixed_step.undo()
        train(cfg, run, resume=True)
    assert_same_run(done, run)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine run.device auto is CUDA")
def test_cuda_graph_where_auto_is_not_cuda_exits_2_naming_the_key(
    cli, learnable_root: Path, tmp_path: Path
) -> None:
    sets = ["--set", "run.cuda_graph=true", "--set", f"data.root={learnable_root}"]
    result = cli("train", "-c", "resnet20", *sets, "--runs-dir", tmp_path)
    assert result.exit_code == 2, result.output
    assert "run.cuda_graph captures the step on one CUDA device and cannot run on cpu" in result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # refused before the run directory and its .lock


def test_cuda_graph_under_torchrun_is_refused(learnable_root: Path) -> None:
    """Checked before any CUDA call, so it runs here: a CUDA graph holds one process's step."""
    cfg = load(learnable_root, "run.cuda_graph=true", "run.device=cuda")
    with pytest.raises(ConfigError, match=r"cannot run under torchrun \(2 processes\)"):
        train_module.check_start(cfg, Dist(rank=0, world_size=2), torch.device("cuda"), fresh=True)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["run.sync_bn=true"], "run.sync_bn needs CUDA devices"),
        (["optim.batch_size=15"], "optim.batch_size 15 is the global batch and must divide by the 2"),
    ],
)
def test_a_config_torchrun_cannot_train_is_refused_before_anything_is_written(
    learnable_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sets: list[str], message: str
) -> None:
    """Under torchrun on CPU (a 2-process Dist, refused before the process group would start)."""
    monkeypatch.setattr(distributed, "from_env", lambda: Dist(rank=0, world_size=2))
    monkeypatch.setattr(distributed, "setup", lambda *_: pytest.fail("the process group started"))
    with pytest.raises(ConfigError, match=message):
        train(load(learnable_root, *sets), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


class Notes(Tracker):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def note(self, message: str) -> None:
        self.messages.append(message)


@pytest.mark.cuda
def test_cuda_graph_trains_the_eager_run_and_resumes_exactly(learnable_root: Path, tmp_path: Path) -> None:
    """On a GPU, with deterministic kernels: run.cuda_graph's run equals the eager run, and one
    stopped at a milestone and resumed (captured again) equals both."""
    cuda = ["run.device=cuda", "run.precision=fp32", "run.deterministic=true"]
    try:
        eager = in_one_go(load(learnable_root, *RESUME, *cuda), tmp_path / "eager")[1]
        cfg = load(learnable_root, *RESUME, *cuda, "run.cuda_graph=true")
        notes = Notes()
        train(cfg, tmp_path / "graphed", notes)
        stopped = stopped_at(cfg, 13, "signal", {}, tmp_path / "stopped")
        train(cfg, stopped, notes, resume=True)
    finally:
        set_kernels(torch.device("cpu"), deterministic=False)
    assert not [n for n in notes.messages if "capture failed" in n]
    graphed = tmp_path / "graphed"
    for run in (graphed, stopped):
        a, b = (untimed(checkpoint.load(r / "last.pt") | {"config": None}) for r in (eager, run))
        assert a == b
        assert untimed(read_metrics(run)) == untimed(read_metrics(eager))


def test_killed_after_a_checkpoint_at_a_log_point_resumes_to_the_same_train_error(
    learnable_root: Path, tmp_path: Path
) -> None:
    """Issue 9's report: checkpoints at log points, killed after 60, resumed: error/train read 143.7%."""
    cfg = load(
        learnable_root,
        "schedule.iterations=80",
        "schedule.milestones=[]",
        "run.log_every=10",
        "run.checkpoint_every=10",
        "run.eval_every=40",
    )
    with kill_after_checkpoints(tmp_path / "run", 60) as killed:
        train(cfg, tmp_path / "run")
    train(cfg, killed[60], resume=True)
    one_go, resumed = (
        [m["error/train"] for m in read_metrics(r) if "error/train" in m]
        for r in (tmp_path / "run", killed[60])
    )
    assert resumed == one_go and max(resumed) <= 100
    assert_same_run(tmp_path / "run", killed[60])


def test_a_checkpoint_keeps_its_keys_and_types(one_go) -> None:
    """last.pt is a file format: checkpoints written by earlier versions must still resume."""
    _, done, _ = one_go
    saved = checkpoint.load(done / "last.pt")
    assert {k: type(v).__name__ for k, v in saved.items()} == {
        "iteration": "int",
        "config": "dict",
        "device_type": "str",
        "precision": "str",
        "data_fingerprint": "str",
        "model": "OrderedDict",
        "optimizer": "dict",
        "batches": "dict",
        "torch_rng": "Tensor",
        "cuda_rng": "NoneType",
        "warming_up": "bool",
        "window_loss": "Tensor",
        "window_wrong": "Tensor",
        "window_steps": "int",
        "window_time": "float",
        "step_time": "float",
        "wall_time": "float",
        "train_metrics": "dict",
        "eval_metrics": "dict",
        "evaluated_images": "dict",
    }
    assert (saved["window_loss"].dtype, saved["window_wrong"].dtype) == (torch.float32, torch.int64)


def test_a_checkpoint_from_before_issue_9_resumes_exactly(one_go, tmp_path: Path) -> None:
    """Without evaluated_images and device_type, as before issue 9: the next evaluation sets the count."""
    cfg, done, _ = one_go
    run = stopped_at(cfg, 7, "signal", {}, tmp_path / "run")  # after the evaluation at 6
    saved = dict(checkpoint.load(run / "last.pt"))
    assert saved.pop("evaluated_images") and saved.pop("device_type") == "cpu"
    checkpoint.save(saved, run / "last.pt")
    train(cfg, run, resume=True)
    assert_same_run(done, run)


def test_a_kill_after_a_checkpoint_loses_no_record_before_it(one_go) -> None:
    """metrics.jsonl, probes.jsonl and the TensorBoard events are on disk before each checkpoint is
    written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, killed = one_go
    run = killed[8]  # logged at 4 and 8, evaluated (and flushed) at 6: unflushed, 8 would be lost
    records = read_metrics(run)
    assert [m["iteration"] for m in records if "analysis/responses/first" not in m] == [4, 6, 8]
    assert [m["iteration"] for m in records if "analysis/responses/first" in m] == [3, 6]
    assert [p["iteration"] for p in read_probes(run)] == [3, 6]
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("error/train")] == [4, 8]


def test_resume_purges_tensorboard_events_after_the_checkpoint(learnable_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load(learnable_root)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "run", InterruptAt(33))  # logged up to 30, checkpoint at 33
    train(cfg, tmp_path / "run", resume=True)
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    steps = [e.step for e in events.Scalars("error/train")]
    assert steps == sorted(set(steps)) == list(range(5, 41, 5))


def test_warmup_runs_at_low_lr_until_the_error_threshold() -> None:
    cfg = config.load(
        "resnet110",
        ["schedule.iterations=100", "schedule.milestones=[50, 75]", "schedule.warmup.max_iterations=40"],
    ).schedule
    schedule = LrSchedule(0.1, cfg)
    assert [schedule.lr(i) for i in (1, 10)] == [0.01, 0.01]
    schedule.observe(10, 85.0)
    assert schedule.lr(11) == 0.01
    schedule.observe(20, 79.0)  # below 80%: warm-up over
    assert [schedule.lr(i) for i in (21, 50, 51, 75, 76)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_warmup_ends_at_its_cap_even_if_the_error_stays_high() -> None:
    cfg = config.load("resnet110", ["schedule.warmup.max_iterations=40"]).schedule
    schedule = LrSchedule(0.1, cfg)
    assert schedule.lr(40) == 0.01 and schedule.lr(41) == 0.1
    schedule.observe(40, 95.0)
    assert not schedule.warming_up


def test_weight_decay_scope() -> None:
    from resbench.models import build_model

    model = build_model(config.load("resnet20").model)
    everything = build_optimizer(model, config.load("resnet20").optim)
    assert len(everything.param_groups) == 1 and everything.param_groups[0]["weight_decay"] == 1e-4
    weights = build_optimizer(model, config.load("resnet20", ["optim.weight_decay_on=weights"]).optim)
    decayed, free = weights.param_groups
    assert all(p.ndim == 4 or p.ndim == 2 for p in decayed["params"]) and free["weight_decay"] == 0
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(learnable_root: Path, tmp_path: Path) -> None:
    cfg = load(
        learnable_root, "optim.lr=1e12", "optim.momentum=0", "run.checkpoint_every=1", "run.log_every=1"
    )
    with pytest.raises(Diverged, match=r"last good checkpoint \(iteration (\d+)\)") as err:
        train(cfg, tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    assert f"(iteration {saved['iteration']})" in str(err.value)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "summary.json").exists()


def test_nan_loss_before_the_first_checkpoint_says_there_is_none(
    learnable_root: Path, tmp_path: Path
) -> None:
    cfg = load(
        learnable_root, "optim.lr=1e12", "optim.momentum=0", "run.checkpoint_every=0", "run.log_every=1"
    )
    with pytest.raises(Diverged, match="No checkpoint was written") as err:
        train(cfg, tmp_path / "run")
    assert "last good checkpoint" not in str(err.value) and not (tmp_path / "run" / "last.pt").exists()


def test_the_readme_lists_the_keys_that_may_change_on_resume() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    allowed = re.search(r"Only (`.*?) may change\.", readme, re.S)
    assert allowed is not None, "README: the sentence 'Only `KEY`, ... may change.' is gone"
    assert set(re.findall(r"`([\w.]+)`", allowed.group(1))) == RESUMABLE_CHANGES


def test_what_may_change_on_resume_changes_nothing_computed(one_go, tmp_path: Path) -> None:
    """The keys of RESUMABLE_CHANGES (torch.compile aside: slow here) leave weights and numbers alone."""
    cfg, done, _ = one_go
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(cfg, run, InterruptAt(5))
    changes = ["run.checkpoint_every=3", "run.deterministic=true", "analysis.every=2", "analysis.images=8"]
    try:
        train(config.load(run / "config.yaml", [*changes, "analysis.per_channel=true"]), run, resume=True)
    finally:
        set_kernels(torch.device("cpu"), deterministic=False)
    a, b = (untimed(checkpoint.load(r / "last.pt") | {"config": None}) for r in (done, run))
    assert a == b
    metrics = [
        [m for m in untimed(read_metrics(r)) if not any(k.startswith("analysis/") for k in m)]
        for r in (run, done)
    ]
    assert metrics[0] == metrics[1]
    assert untimed(read_summary(run).__dict__) == untimed(read_summary(done).__dict__)


@pytest.mark.parametrize("saved_before_issue_9", [False, True])
def test_a_run_started_on_cuda_is_not_resumed_on_the_cpu(
    cli, learnable_root: Path, tmp_path: Path, saved_before_issue_9: bool
) -> None:
    """The batch generator's state cannot move between device types with the same draws: refused."""
    run = run_dir_for(load(learnable_root), tmp_path)  # where `train -c its/config.yaml` finds it
    with pytest.raises(Interrupted):
        train(load(learnable_root), run, InterruptAt(5))
    saved = dict(checkpoint.load(run / "last.pt"))
    # What a CUDA run saves: a CUDA RNG state, and a Philox generator state of 16 bytes, not 5056.
    cuda_state = torch.zeros(16, dtype=torch.uint8)
    saved |= {
        "device_type": "cuda",
        "cuda_rng": cuda_state,
        "batches": saved["batches"] | {"generator": cuda_state},
    }
    if saved_before_issue_9:
        del saved["device_type"]
    checkpoint.save(saved, run / "last.pt")
    result = cli("train", "-c", run / "config.yaml", "--runs-dir", tmp_path, "--resume", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "run.device: this run was trained on cuda" in result.stderr and "--device cuda" in result.stderr
    assert checkpoint.load(run / "last.pt")["iteration"] == 5  # nothing good overwritten


def test_a_run_does_not_switch_precision_halfway(
    learnable_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    monkeypatch.setattr("resbench.hardware.native_bf16", lambda device: True)
    with pytest.raises(Interrupted):
        train(load(learnable_root), run, InterruptAt(5))  # run.precision auto gives bf16 here
    assert checkpoint.load(run / "last.pt")["precision"] == "bf16"
    monkeypatch.setattr("resbench.hardware.native_bf16", lambda device: False)  # where auto gives fp32
    with pytest.raises(ConfigError, match=r"run\.precision: this run was trained in bf16.*gives fp32"):
        train(load(learnable_root), run, resume=True)
    with pytest.raises(ConfigError, match=r"run\.precision"):
        train(load(learnable_root, "run.precision=fp32"), run, resume=True)
    train(load(learnable_root, "run.precision=bf16"), run, force=True)  # a fresh run may choose


def test_kernel_settings_tf32_off_deterministic_on_request(
    learnable_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # recorded, so the value set below is undone
    cuda = torch.device("cuda", 0)  # setting the flags needs no GPU
    try:
        assert set_kernels(cuda, deterministic=False) == {
            "tf32_matmul": False,
            "tf32_cudnn": False,
            "cudnn_benchmark": True,
            "deterministic": False,
        }
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert set_kernels(cuda, deterministic=True) == {
            "tf32_matmul": False,
            "tf32_cudnn": False,
            "cudnn_benchmark": False,
            "deterministic": True,
        }
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        train(
            load(
                learnable_root, "schedule.iterations=10", "schedule.milestones=[]", "run.deterministic=true"
            ),
            tmp_path / "run",
        )
        env = json.loads((tmp_path / "run" / "env.json").read_text())
        assert (env["tf32_matmul"], env["tf32_cudnn"], env["deterministic"]) == (False, False, True)
    finally:
        set_kernels(torch.device("cpu"), deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark


def test_sigterm_during_start_up_stops_with_a_message_and_130(learnable_root: Path, tmp_path: Path) -> None:
    """Before the loop installs its handler, SIGTERM stops like Ctrl-C: here while the data loads."""
    slow_start = (
        "import sys, time\n"
        "import resbench.train as train\n"
        "build_data = train.build_data\n"
        "def slow(*args):\n"
        "    print('loading data', flush=True)\n"
        "    time.sleep(120)\n"
        "    return build_data(*args)\n"
        "train.build_data = slow\n"
        "from resbench.cli import main\n"
        "main()\n"
    )
    args = [
        "train",
        "-c",
        "resnet20",
        "--runs-dir",
        str(tmp_path),
        "--device",
        "cpu",
        "--set",
        f"data.root={learnable_root}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", slow_start, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    while (line := proc.stdout.readline()) and line != "loading data\n":
        pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped" in err and "Traceback" not in err
    assert not (tmp_path / "resnet20" / "seed0" / "last.pt").exists()


def test_refusals_resume_on_finished_and_force(learnable_root: Path, tmp_path: Path) -> None:
    cfg = load(learnable_root, "schedule.iterations=10", "schedule.milestones=[]")
    first = train(cfg, tmp_path / "run")
    with pytest.raises(RunDirError, match="finished run"):
        train(cfg, tmp_path / "run")
    assert train(cfg, tmp_path / "run", resume=True) == first  # nothing left to do
    assert train(cfg, tmp_path / "run", force=True).iterations == 10


def test_resume_refuses_a_changed_config_and_names_the_keys(learnable_root: Path, tmp_path: Path) -> None:
    cfg = load(learnable_root)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "run", InterruptAt(5))
    changed = load(learnable_root, "optim.lr=0.05", "optim.momentum=0.5")
    with pytest.raises(ConfigError, match=r"differs in optim\.lr, optim\.momentum"):
        train(changed, tmp_path / "run", resume=True)
    train(load(learnable_root, "run.checkpoint_every=7"), tmp_path / "run", resume=True)  # harmless change


def test_a_locked_run_directory_is_refused(learnable_root: Path, tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "run")
    try:
        with pytest.raises(RunDirError, match="in use"):
            train(load(learnable_root), tmp_path / "run")
    finally:
        lock.release()


def test_sigint_to_a_real_process_checkpoints_and_exits_130(
    learnable_root: Path, tmp_path: Path, resbench_command
) -> None:
    sets = [
        f"data.root={learnable_root}",
        *TINY_NET,
        "schedule.iterations=100000",
        "schedule.milestones=[]",
        "run.log_every=10",
        "run.eval_every=100000",
        "run.checkpoint_every=0",
    ]
    args = resbench_command("train", "-c", "resnet20", "--runs-dir", tmp_path, "--device", "cpu", sets=sets)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = run_dir_for(config.load("resnet20", sets), tmp_path)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    saved = checkpoint.load(run / "last.pt")
    assert saved["iteration"] >= 20 and not (run / "summary.json").exists()


def test_cli_train_seeds_and_missing_data(cli, learnable_root: Path, tmp_path: Path) -> None:
    sets = [
        a
        for s in [
            *TINY_NET,
            "schedule.iterations=10",
            "schedule.milestones=[]",
            f"data.root={learnable_root}",
        ]
        for a in ("--set", s)
    ]
    result = cli(
        "train", "-c", "resnet20", *sets, "--seeds", "0,1", "--runs-dir", tmp_path, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert "do not match the official checksums" in result.stderr
    for seed in (0, 1):
        run = run_dir_for(config.load("resnet20", [*sets[1::2], f"run.seed={seed}"]), tmp_path)
        assert run.parent.parent == tmp_path / "resnet20" and run.name == f"seed{seed}"  # a folder for --set
        assert (run / "summary.json").exists()
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    assert result.stdout.count("iter 10/10") == 2  # one plain line per eval where stdout is no terminal
    again = cli("train", "-c", "resnet20", *sets, "--seed", "0", "--runs-dir", tmp_path)
    assert again.exit_code == 1 and "--force" in again.stderr
    missing = cli(
        "train",
        "-c",
        "resnet20",
        "--set",
        f"data.root={tmp_path / 'nowhere'}",
        "--runs-dir",
        tmp_path / "new",
    )
    assert missing.exit_code == 1 and "data.download" in missing.stderr and "Traceback" not in missing.output
    both = cli("train", "-c", "resnet20", "--seed", "1", "--seeds", "1,2")
    assert both.exit_code == 2


def test_a_corrupt_checkpoint_is_named_on_resume(cli, learnable_root: Path, tmp_path: Path) -> None:
    cfg = load(learnable_root)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "resnet20" / "seed0", InterruptAt(5))
    (tmp_path / "resnet20" / "seed0" / "last.pt").write_bytes(b"garbage")
    result = cli(
        "train", "-c", tmp_path / "resnet20" / "seed0" / "config.yaml", "--runs-dir", tmp_path, "--resume"
    )
    assert result.exit_code == 1 and "corrupt" in result.stderr and "Traceback" not in result.output


@pytest.mark.real_data
@pytest.mark.slow
def test_resnet20_learns_real_cifar10(real_cifar10_root: Path, tmp_path: Path) -> None:
    cfg = config.load(
        "resnet20",
        [
            f"data.root={real_cifar10_root}",
            "schedule.iterations=300",
            "schedule.milestones=[200]",
            "run.eval_every=300",
            "run.device=cpu",
        ],
    )
    summary = train(cfg, tmp_path / "run")
    assert summary.test_error < 65, summary  # chance is 90%
    assert math.isfinite(summary.train_loss)


class StopAtStart(Tracker):
    """Sends this process a signal when the run starts: its files are written, no step taken yet."""

    def __init__(self, sig: signal.Signals) -> None:
        self.sig = sig

    def start(self, cfg: config.RunConfig, start_iteration: int, env: object) -> None:
        os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_after_the_run_files_are_written_still_leaves_a_resumable_run(
    learnable_root: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """Before: a Ctrl-C between config.yaml and the first step (TensorBoard's import takes seconds)
    left files without last.pt, which --resume refuses and only --force starts over."""
    cfg = load(learnable_root, "schedule.iterations=10", "schedule.milestones=[]")
    with pytest.raises(Interrupted, match=f"stopped by {sig.name} at iteration 1"):
        train(cfg, tmp_path / "run", StopAtStart(sig))
    assert checkpoint.load(tmp_path / "run" / "last.pt")["iteration"] == 1
    assert train(cfg, tmp_path / "run", resume=True).iterations == 10
