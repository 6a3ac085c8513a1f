"""checkpoint.py: atomic writes that survive a crash, and safe loading."""

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from resbench import checkpoint, config
from resbench.errors import CheckpointError
from resbench.rundir import run_dir_for


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    state = {"iteration": 7, "rng": gen.get_state(), "w": torch.randn(3), "config": {"a": [1, 2], "b": None}}
    checkpoint.save(state, tmp_path / "last.pt")
    loaded = checkpoint.load(tmp_path / "last.pt")
    assert (
        loaded["iteration"] == 7
        and torch.equal(loaded["w"], state["w"])
        and loaded["config"] == state["config"]
    )
    assert torch.equal(torch.Generator().set_state(loaded["rng"]).get_state(), gen.get_state())


def test_a_crash_mid_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save({"iteration": 1}, path)

    def dies_halfway(obj: object, f) -> None:
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # as if the process were killed while writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"iteration": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save({"iteration": 1, "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value) and "--force" in str(err.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_pickle_is_refused_by_weights_only(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume"):
        checkpoint.load(tmp_path / "last.pt")


def test_a_loaded_checkpoint_names_its_file_for_a_missing_key(tmp_path: Path) -> None:
    checkpoint.save({"iteration": 1}, tmp_path / "last.pt")
    saved = checkpoint.load(tmp_path / "last.pt")
    assert saved["iteration"] == 1
    with pytest.raises(CheckpointError, match="lacks 'model'") as err:
        saved["model"]
    assert str(tmp_path / "last.pt") in str(err.value) and "--force" in str(err.value)


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def _corrupt(kind: str, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "bare-tensor":
        torch.save(torch.ones(3), path)
    elif kind == "missing-key":
        torch.save({k: v for k, v in checkpoint.load(path).items() if k != "precision"}, path)
    elif kind == "unsafe-pickle":
        path.write_bytes(pickle.dumps(_Evil()))


@pytest.fixture(scope="module")
def finished_run(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resbench import config
    from resbench.train import train

    sets = ["model.depth=8", "model.width=4", "optim.batch_size=16", "schedule.iterations=10"]
    sets += ["schedule.milestones=[]", "run.eval_every=10", "run.device=cpu", f"data.root={learnable_root}"]
    run = tmp_path_factory.mktemp("runs") / "resnet20" / "seed0"
    train(config.load("resnet20", sets), run)
    return run


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("command", ["train --resume", "evaluate"])
@pytest.mark.parametrize("kind", ["empty", "truncated", "bare-tensor", "missing-key", "unsafe-pickle"])
def test_a_damaged_last_pt_is_one_message_and_exit_1(
    cli, finished_run: Path, tmp_path: Path, kind: str, command: str, capfd: pytest.CaptureFixture[str]
) -> None:
    where = run_dir_for(config.load(finished_run / "config.yaml"), tmp_path)  # as `train -c` finds it
    run = Path(shutil.copytree(finished_run, where))
    if command == "train --resume":
        (run / "summary.json").unlink()  # an unfinished run: --resume loads last.pt
        args = ["train", "-c", run / "config.yaml", "--runs-dir", tmp_path, "--resume"]
    else:
        args = ["evaluate", run]
    _corrupt(kind, run / "last.pt")
    result = cli(*args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    message = result.stderr
    assert f"checkpoint {run / 'last.pt'} is corrupt" in message and "--force" in message
    assert "weights_only" not in message and "Traceback" not in result.output
    assert "executed" not in result.output + capfd.readouterr().out  # the pickle's code never ran
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()  # nothing deleted
