"""`model.init_from`: a new run that starts from another run's final weights (train.py's
init_source), with a fresh optimiser; refused before anything is written where the source is not a
trained run of the same net; a resume never reads the source again."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_train import TINY_NET, InterruptAt, assert_same_run, load

import resbench.train as train_module
from resbench import checkpoint, config
from resbench.errors import ConfigError, Interrupted, RunDirError
from resbench.rundir import read_env, run_dir_for
from resbench.train import train

SHORT = ["schedule.iterations=12", "schedule.milestones=[8]", "run.checkpoint_every=4"]


@pytest.fixture(scope="module")
def source(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("source") / "run"
    train(load(learnable_root, *SHORT, "run.seed=3"), run)
    return run


def test_a_run_starts_from_the_source_weights_with_a_fresh_optimiser(
    source: Path, learnable_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first: dict[str, object] = {}
    step = train_module.train_step

    def recording_step(model, optimizer, images, labels, amp):
        if not first:
            first["model"] = {k: v.clone() for k, v in model.state_dict().items()}
            first["momentum"] = [dict(optimizer.state[p]) for p in model.parameters()]
        return step(model, optimizer, images, labels, amp)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    run = tmp_path / "run"
    train(load(learnable_root, *SHORT, f"model.init_from={source}"), run)
    weights = checkpoint.load(source / "last.pt")["model"]
    assert all(torch.equal(first["model"][k], weights[k]) for k in weights)  # type: ignore[index]
    assert all(state == {} for state in first["momentum"])  # type: ignore[union-attr]
    record = read_env(run)["init_from"]
    assert record["run_dir"] == str(source.resolve()) and record["iteration"] == 12
    assert len(record["sha256"]) == 64


def test_without_init_from_the_run_is_unchanged(source: Path, learnable_root: Path, tmp_path: Path) -> None:
    train(load(learnable_root, *SHORT, "run.seed=3"), tmp_path / "again")
    assert_same_run(source, tmp_path / "again")
    assert "init_from" not in read_env(tmp_path / "again")


@pytest.mark.parametrize(
    "change, named",
    [
        ("model.depth=14", "model.depth: 14 in resnet20, 8 in"),
        ("model.residual=false", "model.residual: False in resnet20, True in"),
        ("model.width=8", "model.width: 8 in resnet20, 4 in"),
    ],
)
def test_another_net_is_refused_naming_both_and_nothing_is_written(
    cli, source: Path, learnable_root: Path, tmp_path: Path, change: str, named: str
) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"holds another net") as err:
        train(load(learnable_root, *SHORT, change, f"model.init_from={source}"), runs / "direct")
    assert named in str(err.value) and str(source) in str(err.value)
    sets = [*TINY_NET, *SHORT, change, f"model.init_from={source}", f"data.root={learnable_root}"]
    flags = [x for s in sets for x in ("--set", s)]
    result = cli("train", "-c", "resnet20", "--device", "cpu", "--runs-dir", runs, *flags)
    assert result.exit_code == 2 and "holds another net" in result.stderr
    assert "Traceback" not in result.output
    assert not runs.exists()


def test_init_only_keys_may_differ(source: Path, learnable_root: Path, tmp_path: Path) -> None:
    train(
        load(learnable_root, *SHORT, "model.zero_init_residual=true", f"model.init_from={source}"),
        tmp_path / "r",
    )
    assert (tmp_path / "r" / "summary.json").is_file()


def test_a_missing_source_or_one_without_last_pt_is_refused(
    cli, source: Path, learnable_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"model.init_from: .*nope is not a run directory"):
        train(load(learnable_root, f"model.init_from={tmp_path / 'nope'}"), tmp_path / "a")
    unfinished = shutil.copytree(source, tmp_path / "no-ckpt")
    (unfinished / "last.pt").unlink()
    with pytest.raises(RunDirError, match=r"no last\.pt"):
        train(load(learnable_root, f"model.init_from={unfinished}"), tmp_path / "b")
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        train(load(learnable_root, *SHORT, "run.seed=3"), stopped, InterruptAt(8))
    with pytest.raises(RunDirError, match=r"is not finished \(last\.pt at iteration 8 of 12"):
        train(load(learnable_root, f"model.init_from={stopped}"), tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")
    result = cli(
        "train", "-c", "resnet20", "--device", "cpu", "--runs-dir", tmp_path / "runs",
        "--set", f"data.root={learnable_root}", "--set", f"model.init_from={tmp_path / 'nope'}",
    )  # fmt: skip
    assert (
        result.exit_code == 2 and "not a run directory" in result.stderr and not (tmp_path / "runs").exists()
    )


def test_a_resume_is_exact_without_the_source(source: Path, learnable_root: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(source, tmp_path / "source")
    cfg = load(learnable_root, *SHORT, f"model.init_from={moved}")
    train(cfg, tmp_path / "one-go")
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "stopped", InterruptAt(6))
    shutil.rmtree(moved)
    train(cfg, tmp_path / "stopped", resume=True)
    assert_same_run(tmp_path / "one-go", tmp_path / "stopped")
    assert read_env(tmp_path / "stopped")["init_from"] == read_env(tmp_path / "one-go")["init_from"]


def test_the_run_directory_name_holds_the_path_escaped(tmp_path: Path) -> None:
    cfg = config.load("plain56", ["model.init_from=runs/plain20-quick-deepened56/seed0"], preset="quick")
    where = run_dir_for(cfg, tmp_path)
    assert where.parent.parent == tmp_path / "plain56-quick" and where.name == "seed0"
    assert "/" not in where.parent.name and "init_from" in where.parent.name
    assert json.dumps(cfg.to_dict()["model"]["init_from"]) == '"runs/plain20-quick-deepened56/seed0"'


def test_a_forced_restart_checks_the_source_before_it_wipes_the_run(
    source: Path, learnable_root: Path, tmp_path: Path
) -> None:
    moved = shutil.copytree(source, tmp_path / "source")
    cfg = load(learnable_root, *SHORT, f"model.init_from={moved}")
    train(cfg, tmp_path / "run")
    shutil.rmtree(moved)
    assert train(cfg, tmp_path / "run", resume=True).iterations == 12  # finished: the source is not read
    with pytest.raises(ConfigError, match=r"is not a run directory"):
        train(cfg, tmp_path / "run", resume=True, force=True)
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "last.pt").is_file()
