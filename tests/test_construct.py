"""analysis/construct.py and `resbench deepen`: the deeper twin of a trained net computes what the net
computes (exactly, in eval mode, fp32 on CPU), in train mode too for a residual net with identity
shortcuts and not for a plain one, has the layers and parameters of the config it claims, and is
written as a finished run directory that `resbench evaluate` (and `--split train`) accepts. Bad
input exits with one message and writes nothing."""

import copy
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from resbench import checkpoint, config
from resbench.analysis.construct import deepen_model, deepen_run, unit_variance
from resbench.analysis.evaluate import EXACT, evaluate_run
from resbench.config import ModelConfig
from resbench.errors import ConfigError, RunDirError
from resbench.models import CifarResNet, build_model, count_macs, count_params, weighted_layers
from resbench.rundir import read_env, read_summary, run_dir_for, run_state
from resbench.train import train

VARIANTS = [(False, None), (True, "A"), (True, "B"), (True, "C")]
IDS = ["plain", "A", "B", "C"]


def trained_like(cfg: ModelConfig) -> CifarResNet:
    """A net of `cfg` with weights and BN statistics away from their init, as training leaves them:
    an identity block that only held at init (unit BN statistics) would not show."""
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def logits(model: nn.Module, x: torch.Tensor, train_mode: bool) -> torch.Tensor:
    net = copy.deepcopy(model).train(train_mode)  # a copy: train mode updates the running statistics
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("residual,shortcut", VARIANTS, ids=IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_deepened_net_computes_the_source_in_eval_mode(
    residual: bool, shortcut: str | None, channels_last: bool
) -> None:
    cfg = ModelConfig(depth=8, residual=residual, shortcut=shortcut, width=4)
    source = trained_like(cfg)
    deeper = deepen_model(source, cfg, 20)
    x = torch.randn(32, 3, 32, 32)
    if channels_last:  # how training and evaluation run them
        source, deeper = (m.to(memory_format=torch.channels_last) for m in (source, deeper))
        x = x.contiguous(memory_format=torch.channels_last)
    # exact, not close: every appended layer adds zeros or multiplies by one
    assert torch.equal(logits(deeper, x, train_mode=False), logits(source, x, train_mode=False))
    # with batch statistics, only a residual block with an identity shortcut stays the identity
    same_in_train_mode = torch.equal(logits(deeper, x, train_mode=True), logits(source, x, train_mode=True))
    assert same_in_train_mode is (shortcut in ("A", "B"))


def test_the_plain_twin_differs_in_train_mode_by_its_appended_blocks_batch_statistics() -> None:
    """In train mode the plain twin's trained blocks compute what the source's do; only the appended
    blocks, normalised by the batch's statistics instead of their running ones, change the output."""
    cfg = ModelConfig(depth=8, residual=False, width=4)
    source = trained_like(cfg)
    deeper = deepen_model(source, cfg, 14).train()
    appended = [stage[1] for stage in (deeper.stage1, deeper.stage2, deeper.stage3)]
    assert all(b.bn1.running_var.unique().tolist() == [unit_variance(b.bn1.eps)] for b in appended)
    x = torch.randn(32, 3, 32, 32)
    in_train_mode = logits(source, x, train_mode=True)
    assert not torch.allclose(logits(deeper, x, train_mode=True), in_train_mode, atol=1e-3)
    for block in appended:
        block.eval()  # running statistics in the appended blocks, batch statistics everywhere else
    with torch.no_grad():
        assert torch.equal(deeper(x), in_train_mode)


def test_unit_variance_makes_bn_pass_its_input_through_exactly() -> None:
    bn = nn.BatchNorm2d(8).eval()
    var = unit_variance(bn.eps)
    assert torch.tensor(var, dtype=torch.float32) + torch.tensor(bn.eps, dtype=torch.float32) == 1.0
    bn.running_var.fill_(var)
    x = torch.randn(4, 8, 5, 5) * 100
    assert torch.equal(bn(x), x) and torch.equal(bn(x.contiguous(memory_format=torch.channels_last)), x)
    bn.running_var.fill_(1.0)  # the naive choice is off by eps/2, relatively
    assert not torch.equal(bn(x), x)


@pytest.mark.parametrize("residual,shortcut", VARIANTS, ids=IDS)
def test_the_deepened_net_is_the_net_of_its_depth(residual: bool, shortcut: str | None) -> None:
    cfg = ModelConfig(depth=8, residual=residual, shortcut=shortcut, width=4)
    deeper = deepen_model(trained_like(cfg), cfg, 20)
    reference = build_model(cfg.model_copy(update={"depth": 20}))
    assert [len(s) for s in (deeper.stage1, deeper.stage2, deeper.stage3)] == [3, 3, 3]
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in deeper.state_dict().items()} == shapes
    assert count_params(deeper) == count_params(reference) and weighted_layers(deeper) == 20


@pytest.mark.parametrize(
    "shallow,deep", [("plain20", "plain56"), ("resnet20", "resnet56"), ("resnet20_C", "resnet56_C")]
)
def test_deepened_to_a_bundled_depth_it_counts_as_that_config(shallow: str, deep: str) -> None:
    source, target = config.load(shallow).model, config.load(deep).model
    deeper = deepen_model(build_model(source), source, target.depth)
    reference = build_model(target)
    assert count_params(deeper) == count_params(reference) and count_macs(deeper) == count_macs(reference)
    assert weighted_layers(deeper) == weighted_layers(reference) == 56
    assert [len(s) for s in (deeper.stage1, deeper.stage2, deeper.stage3)] == [target.n] * 3


def test_the_trained_blocks_are_copied_whole_with_their_bn_buffers() -> None:
    cfg = ModelConfig(depth=8, residual=True, width=4)
    source = trained_like(cfg)
    deeper = deepen_model(source, cfg, 14)
    copied = deeper.state_dict()
    for key, value in source.state_dict().items():  # num_batches_tracked included
        assert torch.equal(copied[key], value), key
    assert int(copied["stage1.0.bn1.num_batches_tracked"]) == 3
    assert (copied["stage2.1.bn2.weight"] == 0).all() and (copied["stage2.1.bn2.bias"] == 0).all()


@pytest.mark.parametrize(
    "model,depth,message",
    [
        (ModelConfig(depth=20), 20, "deepen only adds layers"),
        (ModelConfig(depth=20), 14, "give a depth above 20 (6n+2: 26, 32, 38"),
        (ModelConfig(depth=20), 52, "52 is not 6n+2 for basic blocks"),
        (ModelConfig(depth=11, block="bottleneck"), 20, "basic blocks only"),
    ],
    ids=["equal", "smaller", "not-6n+2", "bottleneck"],
)
def test_what_cannot_be_deepened_is_a_config_error(model: ModelConfig, depth: int, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        deepen_model(build_model(model), model, depth)


# --------------------------------------------------------------------------------------------
# Runs: tiny real trainings, fp32 on CPU

TINY = [
    "model.depth=8",
    "model.width=4",
    "optim.batch_size=16",
    "schedule.iterations=20",
    "schedule.milestones=[]",
    "run.log_every=5",
    "run.eval_every=10",
    "run.device=cpu",
    "run.precision=fp32",
]


@pytest.fixture(scope="module")
def runs(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished tiny runs in one runs folder: a plain net, a ResNet (A) with a validation split, and
    a bottleneck ResNet."""
    runs_dir = tmp_path_factory.mktemp("runs")
    made = {}
    for key, name, extra in [
        ("plain", "plain20", []),
        ("residual", "resnet20", ["data.val_size=20"]),
        ("bottleneck", "resnet20", ["model.block=bottleneck", "model.depth=11"]),
    ]:
        cfg = config.load(name, [*TINY, f"data.root={learnable_root}", *extra])
        made[key] = run_dir_for(cfg, runs_dir)
        train(cfg, made[key])
    return made


@pytest.fixture
def runs_dir(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the runs folder that a test may write into."""
    return Path(shutil.copytree(runs["plain"].parents[2], tmp_path / "runs"))


def moved(run: Path, runs_dir: Path) -> Path:
    return runs_dir / run.relative_to(run.parents[2])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["plain", "residual"])
def test_deepen_writes_a_run_that_evaluate_accepts_with_the_sources_errors(
    runs: dict[str, Path], runs_dir: Path, cli, kind: str
) -> None:
    source = moved(runs[kind], runs_dir)
    out = cli("deepen", source, "--depth", 20, "--runs-dir", runs_dir)
    assert out.exit_code == 0, out.output
    name = f"{'plain20' if kind == 'plain' else 'resnet20'}-deepened20"
    (target,) = [p.parent for p in (runs_dir / name).rglob("summary.json")]
    assert run_state(target) == "finished" and str(target) in out.stdout
    assert ("ONLY IN EVAL MODE" in out.stdout) is (kind == "plain")

    cfg = config.load(target / "config.yaml")
    assert (cfg.model.depth, cfg.run.name, cfg.model.residual) == (20, name, kind == "residual")
    assert "model.depth=20" in cfg.run.overrides  # the source's overrides, at the new depth
    assert run_dir_for(cfg, runs_dir) == target
    saved = checkpoint.load(target / "last.pt")
    assert saved["iteration"] == cfg.schedule.iterations and saved["optimizer"]["state"] == {}
    summary, env = read_summary(target), read_env(target)
    assert summary.constructed_from == env["constructed_from"] == str(source.resolve())
    assert env["source_iteration"] == 20 and summary.wall_time == 0.0

    for split in ("test", "train"):
        deepened, original = evaluate_run(target, split=split), evaluate_run(source, split=split)
        # compared with summary.json, exactly: for a constructed run the train numbers too
        assert deepened.tolerance == EXACT and deepened.agrees
        assert [(s.split, s.error, s.loss) for s in deepened.splits] == [
            (s.split, s.error, s.loss) for s in original.splits
        ]
        assert (original.tolerance is None) is (
            split == "train"
        )  # a trained run's train_error is another number
        shown = cli("evaluate", target, "--split", split)
        assert shown.exit_code == 0 and "agrees (exact)" in shown.stdout, shown.output
    assert [s.split for s in evaluate_run(target).splits] == (
        ["test", "val"] if kind == "residual" else ["test"]
    )
    # it reads as finished: train --resume has nothing to do
    again = cli("train", "-c", target / "config.yaml", "--resume", "--runs-dir", runs_dir, "--quiet")
    assert again.exit_code == 0, again.output
    assert checkpoint.load(target / "last.pt")["iteration"] == saved["iteration"]


@pytest.mark.parametrize("kind", ["plain", "residual"])
def test_with_batch_statistics_only_the_residual_twin_stays_the_source(
    runs: dict[str, Path], runs_dir: Path, kind: str
) -> None:
    made = deepen_run(moved(runs[kind], runs_dir), 14, runs_dir, name="twin")
    assert made.identity_in_train_mode is (kind == "residual") and made.appended == 1
    assert [(m.split, m.mode) for m in made.measures][-2:] == [("train", "eval"), ("train", "batch")]
    assert all(m.same for m in made.measures if m.mode == "eval")
    batch = made.measures[-1]
    # whole batches of 16 of the training split (160 images, 140 where 20 are held out for val)
    assert batch.images == (160 if kind == "plain" else 128) and batch.same is (kind == "residual")


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--depth", "8"], 2, "deepen only adds layers"),
        (["--depth", "2"], 2, "deepen only adds layers"),
        (["--depth", "15"], 2, "15 is not 6n+2"),
        (["--name", "a/b", "--depth", "14"], 2, "must be a plain directory name"),
        ([], 2, "Missing option '--depth'"),
    ],
    ids=["equal", "smaller", "not-6n+2", "bad-name", "no-depth"],
)
def test_bad_input_exits_with_one_message_and_writes_nothing(
    runs: dict[str, Path], runs_dir: Path, cli, args: list[str], code: int, message: str
) -> None:
    before = snapshot(runs_dir)
    out = cli("deepen", moved(runs["plain"], runs_dir), "--runs-dir", runs_dir, *args)
    assert out.exit_code == code and message in out.stderr, out.output
    assert "Traceback" not in out.output and snapshot(runs_dir) == before


def test_a_bottleneck_run_a_missing_run_and_an_unfinished_run_are_refused(
    runs: dict[str, Path], runs_dir: Path, cli
) -> None:
    before = snapshot(runs_dir)
    bottleneck = cli("deepen", moved(runs["bottleneck"], runs_dir), "--depth", 20, "--runs-dir", runs_dir)
    assert bottleneck.exit_code == 2 and "basic blocks only" in bottleneck.stderr, bottleneck.output
    missing = cli("deepen", runs_dir / "nothing" / "seed0", "--depth", 20, "--runs-dir", runs_dir)
    assert missing.exit_code == 2 and "not a run directory" in missing.stderr, missing.output
    assert snapshot(runs_dir) == before
    unfinished = moved(runs["plain"], runs_dir)
    (unfinished / "summary.json").unlink()
    out = cli("deepen", unfinished, "--depth", 20, "--runs-dir", runs_dir)
    assert out.exit_code == 1 and "is not finished" in out.stderr, out.output
    other_data = moved(runs["residual"], runs_dir)  # its last.pt says it was trained on other images
    saved = checkpoint.load(other_data / "last.pt")
    checkpoint.save(saved | {"data_fingerprint": "0" * 16}, other_data / "last.pt")
    before = snapshot(runs_dir)
    out = cli("deepen", other_data, "--depth", 20, "--runs-dir", runs_dir)
    assert out.exit_code == 1 and "was trained on other data" in out.stderr, out.output
    assert snapshot(runs_dir) == before


def test_a_failed_write_leaves_no_run_and_no_temporary_folder(
    runs: dict[str, Path], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(state: dict, path: Path) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("resbench.analysis.construct.checkpoint.save", full)
    with pytest.raises(RunDirError, match="No space left on device"):
        deepen_run(moved(runs["plain"], runs_dir), 14, runs_dir)
    assert not (runs_dir / "plain20-deepened14").exists()


def test_an_existing_target_is_refused_and_left_as_it_was(runs: dict[str, Path], runs_dir: Path, cli) -> None:
    source = moved(runs["residual"], runs_dir)
    assert cli("deepen", source, "--depth", 14, "--runs-dir", runs_dir).exit_code == 0
    before = snapshot(runs_dir)
    out = cli("deepen", source, "--depth", 14, "--runs-dir", runs_dir)
    assert out.exit_code == 1 and "already exists" in out.stderr and "--name" in out.stderr, out.output
    assert snapshot(runs_dir) == before
    renamed = cli("deepen", source, "--depth", 14, "--runs-dir", runs_dir, "--name", "resnet14-built")
    assert renamed.exit_code == 0, renamed.output
    assert not list(runs_dir.rglob("*.tmp"))  # no temporary folder left behind


def test_batch_statistics_mixes_the_classes_of_a_copy_stored_class_by_class() -> None:
    """An image-folder copy lists the training images class by class; batches in that order would be
    of one class each, and every net scores near chance on them (seen on the real copy: 87% for a
    plain-20 at 29%). The batches must be a shuffle, as training's are."""
    import contextlib

    from resbench.analysis.construct import batch_statistics
    from resbench.data import Data, Split

    labels = torch.arange(10).repeat_interleave(20)  # 200 images, sorted by class
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).to(torch.uint8).contiguous()
    split = Split(images, labels)
    data = Data(split, split, None, torch.zeros(3, 1, 1), torch.ones(3, 1, 1) / 255, 10, "", False, (), "")
    seen: list[int] = []

    class Classes(nn.Module):  # each image's pixels are its label: count the classes per batch
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x[:, 0, 0, 0].unique()))
            return torch.zeros(len(x), 10)

    batch_statistics(Classes(), data, split, 50, contextlib.nullcontext())
    assert len(seen) == 4 and min(seen) >= 5
