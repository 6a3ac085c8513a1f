"""analysis/evaluate.py and `resbench evaluate`: a run's last.pt re-evaluated in one process agrees with its
summary.json (exactly, for fp32 on CPU), a disagreement exits 1, and bad input is refused cleanly;
`--split train` evaluates the training images in eval mode.
`resbench --version` is here too. The torchrun case is in test_distributed.py."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from resbench import checkpoint, config
from resbench.analysis.evaluate import EXACT, ROUNDING, evaluate_run
from resbench.errors import Interrupted
from resbench.rundir import read_summary
from resbench.tracking import Tracker
from resbench.train import train

# A tiny net that trains in about a second: 20 steps of 16 images, a log every 5, an eval every 10.
TINY_RUN = [
    "model.width=4",
    "optim.batch_size=16",
    "schedule.iterations=20",
    "schedule.milestones=[]",
    "run.log_every=5",
    "run.eval_every=10",
]
TINY = ["model.depth=8", *TINY_RUN, "run.device=cpu"]


def tiny(root: Path, *extra: str) -> config.RunConfig:
    return config.load("resnet20", [*TINY, f"data.root={root}", *extra])


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def finished(
    request: pytest.FixtureRequest, learnable_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A finished tiny run with a validation split, in fp32 or bf16 autocast."""
    run = tmp_path_factory.mktemp(f"finished-{request.param}") / "resnet20" / "seed0"
    train(tiny(learnable_root, "data.val_size=20", f"run.precision={request.param}"), run)
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a test may damage."""
    return Path(shutil.copytree(finished, tmp_path / "resnet20" / "seed0"))


def test_the_saved_model_gives_the_recorded_numbers(finished: Path, cli) -> None:
    result = evaluate_run(finished)
    summary = read_summary(finished)
    assert [s.split for s in result.splits] == ["test", "val"]
    test, val = result.splits
    if summary.precision == "fp32":  # one process on CPU: the very same computation, to the bit
        assert result.tolerance == EXACT
        assert (test.error, test.loss, val.error, val.loss) == (
            summary.test_error,
            summary.test_loss,
            summary.val_error,
            summary.val_loss,
        )
    else:
        assert result.tolerance == ROUNDING
    assert (
        result.agrees and result.iteration == result.iterations == 20 and test.images == summary.test_samples
    )
    out = cli("evaluate", finished)
    assert out.exit_code == 0, out.output
    assert (
        "agrees (exact)" in out.stdout if summary.precision == "fp32" else "agrees (±0.5 pts)" in out.stdout
    )
    assert "not the official files" in out.stdout and str(result.data_root) in out.stdout


@pytest.mark.parametrize(
    "key,shift,within_rounding",
    [
        ("test_error", 4.0, False),  # one image of 40 is 2.5 points
        ("val_loss", 0.05, False),
        ("test_error", 1e-9, True),  # within rounding, which only bf16 allows: fp32 on CPU is exact
        ("test_loss", 1e-5, True),
    ],
)
def test_a_number_that_is_not_the_saved_models_exits_1(
    run: Path, cli, key: str, shift: float, within_rounding: bool
) -> None:
    path = run / "summary.json"
    recorded = json.loads(path.read_text())
    path.write_text(json.dumps(recorded | {key: recorded[key] + shift}))
    expected = within_rounding and recorded["precision"] == "bf16"
    assert evaluate_run(run).agrees is expected
    out = cli("evaluate", run)
    assert out.exit_code == (0 if expected else 1), out.output
    assert ("beyond rounding" in out.stderr) is not expected and "Traceback" not in out.output


def test_the_training_split_is_evaluated_in_eval_mode_and_shown_not_compared(finished: Path, cli) -> None:
    """summary.json's train_error is the running train-mode error on augmented batches: another number
    (a run built by `resbench deepen` records this one, and is compared: test_construct.py)."""
    result = evaluate_run(finished, split="train")
    (train_split,) = result.splits
    assert train_split.split == "train" and train_split.images == 160 - 20  # the val images held out
    assert train_split.recorded_error is None and result.tolerance is None and result.agrees
    assert "running error on augmented batches" in result.unchecked
    out = cli("evaluate", finished, "--split", "train")
    assert out.exit_code == 0 and "not compared" in out.stdout and "train" in out.stdout, out.output
    assert cli("evaluate", finished, "--split", "val").exit_code == 2  # test or train only


def test_an_unfinished_run_is_evaluated_and_says_so(learnable_root: Path, tmp_path: Path, cli) -> None:
    class StopAt(Tracker):
        def step(self, iteration: int) -> None:
            if iteration == 10:
                raise Interrupted("stopped")  # before iteration 10's checkpoint: last.pt holds 5

    run = tmp_path / "resnet20" / "seed0"
    cfg = tiny(learnable_root, "run.checkpoint_every=5", "run.precision=fp32")
    with pytest.raises(Interrupted):
        train(cfg, run, StopAt())
    result = evaluate_run(run)
    assert result.tolerance is None and result.agrees and result.iteration == 5
    assert "unfinished" in result.unchecked and all(s.recorded_error is None for s in result.splits)
    out = cli("evaluate", run)
    assert out.exit_code == 0 and "not compared" in out.stdout and "iteration 5 of 20" in out.stdout


def test_another_copy_of_the_data_is_shown_not_compared(
    finished: Path, tmp_path: Path, tiny_cifar10_root: Path, cli
) -> None:
    out = cli("evaluate", finished, "--set", f"data.root={tiny_cifar10_root}")
    assert out.exit_code == 0, out.output
    assert "other images than the run was trained on" in out.stdout
    assert str(tiny_cifar10_root.resolve()) in out.stdout


def test_the_images_decide_what_is_compared_not_the_path(
    finished: Path, learnable_root: Path, tmp_path: Path
) -> None:
    """The same images under another root are compared; other images under the run's own root are
    shown, not compared (they used to be compared and reported as a disagreement)."""
    copy = tmp_path / "copy"
    shutil.copytree(learnable_root, copy)
    moved = evaluate_run(finished, [f"data.root={copy}"])
    assert moved.unchecked is None and moved.tolerance is not None and moved.agrees
    run = tmp_path / "run"  # a copy of the run, pointed at a root whose images then change
    shutil.copytree(finished, run)
    (run / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace(str(learnable_root), str(copy))
    )
    saved = checkpoint.load(run / "last.pt")  # as if trained there: config.yaml alone would be refused
    moved_config = saved["config"] | {"data": saved["config"]["data"] | {"root": str(copy)}}
    checkpoint.save(saved | {"config": moved_config}, run / "last.pt")
    batch = copy / "cifar-10-batches-py" / "test_batch"
    raw = pickle.loads(batch.read_bytes())
    raw["labels"] = [(y + 1) % 10 for y in raw["labels"]]
    batch.write_bytes(pickle.dumps(raw, protocol=2))
    for cache in copy.glob("*.npz"):  # built by the first evaluation; it would still hold the old labels
        cache.unlink()
    result = evaluate_run(run)
    assert result.tolerance is None and "other images" in result.unchecked


@pytest.mark.parametrize(
    "damage,args,code,message",
    [
        (lambda run: shutil.rmtree(run), [], 2, "not a run directory"),  # a bad argument, as in compare
        (lambda run: (run / "last.pt").unlink(), [], 1, "no last.pt"),
        (lambda run: None, ["--set", "model.depth=14"], 2, "may only set data.root"),
        # Typer checks --device (a Literal) before the config: its message, no longer "run.device"
        (lambda run: None, ["--device", "gpu"], 2, "'gpu' is not one of 'auto', 'cuda', 'mps', 'cpu'"),
        (
            lambda run: checkpoint.save(
                checkpoint.load(run / "last.pt") | {"model": {"w": torch.zeros(1)}}, run / "last.pt"
            ),
            [],
            1,
            "does not hold the model",
        ),
        (
            lambda run: checkpoint.save(
                checkpoint.load(run / "last.pt") | {"iteration": 15}, run / "last.pt"
            ),
            [],
            1,
            "not one model",
        ),
    ],
    ids=["no-run-dir", "no-last-pt", "set-model-key", "bad-device", "other-model", "other-iteration"],
)
def test_bad_input_is_refused_with_one_message(
    run: Path, cli, damage, args: list[str], code: int, message: str
) -> None:
    damage(run)
    out = cli("evaluate", run, *args)
    assert out.exit_code == code and message in out.stderr, out.output
    assert "Traceback" not in out.output


def test_version_names_resbench_torch_and_cuda(cli) -> None:
    import resbench

    out = cli("--version")
    assert out.exit_code == 0
    assert f"resbench {resbench.__version__}" in out.stdout and f"torch {torch.__version__}" in out.stdout
    assert f"CUDA {torch.version.cuda or 'none'}" in out.stdout
