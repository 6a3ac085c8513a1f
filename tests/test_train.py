"""train.py through its real code path: tiny nets on tiny CIFAR pickles, a few dozen iterations on CPU."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resbench import checkpoint, config
from resbench.config import ConfigError
from resbench.tracking import RunDirError, RunLock, Tracker, read_metrics
from resbench.train import Diverged, Interrupted, LrSchedule, build_optimizer, resolve_device, train

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


def deterministic(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in metrics]


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
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= content.keys()
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.depth"].number_value == 8
    assert start.session_start_info.hparams["model.shortcut"].string_value == "A"
    assert not [p for p in (tmp_path / "run").iterdir() if p.is_dir()]  # no stray sub-runs


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stopped_and_resumed_equals_one_go(learnable_root: Path, tmp_path: Path, precision: str) -> None:
    """Bit-exact resume on CPU: same weights, same metrics.jsonl values, same final errors."""
    cfg = load(learnable_root, f"run.precision={precision}", "run.log_every=3", "run.checkpoint_every=0")
    one_go = train(cfg, tmp_path / "a")
    with pytest.raises(Interrupted, match="--resume"):
        train(cfg, tmp_path / "b", InterruptAt(17))  # mid log window, mid epoch, no scheduled checkpoint
    assert checkpoint.load(tmp_path / "b" / "last.pt")["iteration"] == 17
    resumed = train(cfg, tmp_path / "b", resume=True)
    a = checkpoint.load(tmp_path / "a" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert deterministic(read_metrics(tmp_path / "a")) == deterministic(read_metrics(tmp_path / "b"))
    assert (resumed.train_error, resumed.test_error, resumed.test_loss) == (
        one_go.train_error,
        one_go.test_error,
        one_go.test_loss,
    )


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(learnable_root: Path, tmp_path: Path) -> None:
    cfg = load(
        learnable_root, "optim.lr=1e12", "optim.momentum=0", "run.checkpoint_every=1", "run.log_every=1"
    )
    with pytest.raises(Diverged, match="last good checkpoint"):
        train(cfg, tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "summary.json").exists()


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


def test_sigint_to_a_real_process_checkpoints_and_exits_130(learnable_root: Path, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "resbench",
        "train",
        "-c",
        "resnet20",
        "--runs-dir",
        str(tmp_path),
        "--set",
        f"data.root={learnable_root}",
        "--device",
        "cpu",
        *(
            a
            for s in [
                *TINY_NET,
                "schedule.iterations=100000",
                "schedule.milestones=[]",
                "run.log_every=10",
                "run.eval_every=100000",
                "run.checkpoint_every=0",
            ]
            for a in ("--set", s)
        ),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "resnet20" / "seed0" / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    saved = checkpoint.load(tmp_path / "resnet20" / "seed0" / "last.pt")
    assert saved["iteration"] >= 20 and not (tmp_path / "resnet20" / "seed0" / "summary.json").exists()


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
        assert (tmp_path / "resnet20" / f"seed{seed}" / "summary.json").exists()
        assert f"seed: {seed}" in (tmp_path / "resnet20" / f"seed{seed}" / "config.yaml").read_text()
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
