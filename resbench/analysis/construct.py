"""The solution by construction (He et al. 2015, §1): a trained run deepened into a twin whose added
blocks compute the identity, so the deeper net computes what the shallower one learned.

    deepen_model(model, cfg, depth)                    -> CifarResNet    the deeper twin of a net
    deepen_run(run_dir, depth, runs_dir, name, device) -> Construction   ... written as a new run

"The added layers are identity mapping, and the other layers are copied from the learned shallower
model" (§1; Net2DeeperNet, Chen et al. 2016, is the precedent). Each stage keeps its trained blocks
and gets (D - d) / 6 same-shape blocks appended, each made the identity on its input x, which is
>= 0 since it comes out of a ReLU:

- residual, shortcut A or B (an identity shortcut on a same-shape block): the branch's last BN has
  gamma = beta = 0, so F(x) = 0 and the block gives relu(0 + x) = x, in eval and in train mode.
  The branch's other layers keep their usual init.
- residual, shortcut C (a projection on every block): as above, and the projection is made the
  identity as a plain layer is (next item): the identity in eval mode only.
- plain: each conv is the identity kernel (nn.init.dirac_) and each BN passes its input through
  with its running statistics (mean 0, var + eps == 1 in float32, gamma 1, beta 0), so the ReLUs
  pass x through. In train mode, BN normalises by the batch's statistics instead: the plain block
  is then not the identity. That difference is the point of the experiment.

The constructed run is an ordinary run directory (config.yaml, env.json, last.pt, summary.json), so
`resbench evaluate` opens it and `model.init_from` starts a run from it. Nothing here prints or
trains; console.py renders the `Construction`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from resbench import checkpoint, config
from resbench.analysis.trained import final_model
from resbench.config import ModelConfig, RunConfig
from resbench.data import Data, Split, build_data
from resbench.errors import ConfigError, RunDirError
from resbench.files import atomic_write
from resbench.hardware import autocast, resolve_device, resolve_precision
from resbench.models import BasicBlock, CifarResNet, build_model, count_macs, count_params
from resbench.rundir import (
    CHECKPOINT,
    SUMMARY,
    Summary,
    check_same_data,
    require_finished,
    run_dir_for,
    write_run_files,
    writing,
)
from resbench.tracking import environment
from resbench.train import LrSchedule, build_optimizer, evaluate, optimizer_state

# --------------------------------------------------------------------------------------------
# The deeper model


def unit_variance(eps: float) -> float:
    """The BN running_var whose eval-mode scale 1 / sqrt(var + eps) is exactly 1 in float32, as BN
    computes it: 1 - eps rounded to float32, which adds back to 1.0 exactly (checked here)."""
    var = torch.tensor(1.0 - eps, dtype=torch.float32)
    assert (var + torch.tensor(eps, dtype=torch.float32)).item() == 1.0, (
        f"no float32 unit variance for eps {eps}"
    )
    return var.item()


@torch.no_grad()
def pass_through(bn: nn.BatchNorm2d) -> None:
    """BN that returns its input in eval mode: gamma 1, beta 0, running mean 0, var + eps = 1."""
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.running_mean.zero_()
    bn.running_var.fill_(unit_variance(bn.eps))


@torch.no_grad()
def make_identity(block: BasicBlock) -> None:
    """Make a same-shape basic block compute the identity on inputs >= 0 (see the module docstring)."""
    if block.shortcut is None:  # plain: every layer passes x through, in eval mode
        for conv in (block.conv1, block.conv2):
            nn.init.dirac_(conv.weight)  # a 1 at the centre of channel i -> i
        for bn in (block.bn1, block.bn2):
            pass_through(bn)
        return
    # residual: F(x) = 0 whatever BN normalises by, so relu(0 + shortcut(x)) = shortcut(x)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    if isinstance(block.shortcut, nn.Sequential):  # option C: a 1x1 conv + BN projection everywhere
        conv, bn = block.shortcut
        nn.init.dirac_(conv.weight)
        pass_through(bn)


def identity_in_train_mode(cfg: ModelConfig) -> bool:
    """Whether the appended blocks are the identity with batch statistics too: only where no BN
    lies on the path x takes through them (residual nets with an identity shortcut, A or B)."""
    return cfg.residual and cfg.shortcut in ("A", "B")


def deeper_config(cfg: ModelConfig, depth: int) -> ModelConfig:
    """`cfg` at `depth`, validated; a ConfigError for what cannot be deepened by appending identities."""
    if cfg.block != "basic":
        raise ConfigError(
            f"--depth {depth}: the run has {cfg.block} blocks, and deepen builds nets of basic blocks "
            "only (the 6n+2 nets of §4.2): a plain bottleneck block squeezes its 4p channels through "
            "p, so no choice of its weights passes its input through, and the plain twin could not be "
            "built. Deepen a run of basic blocks (e.g. plain20 or resnet20)"
        )
    if depth <= cfg.depth:
        deeper_ones = ", ".join(str(6 * n + 2) for n in range(cfg.n + 1, cfg.n + 4))
        raise ConfigError(
            f"--depth {depth}: the run is {cfg.depth} layers deep, and deepen only adds layers; give "
            f"a depth above {cfg.depth} (6n+2: {deeper_ones}, ...)"
        )
    try:
        return ModelConfig.model_validate({**cfg.model_dump(), "depth": depth})
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ConfigError(f"--depth {depth}: {problems}") from None


def deepen_model(model: CifarResNet, cfg: ModelConfig, depth: int, seed: int = 0) -> CifarResNet:
    """The net of `cfg` at `depth` computing what `model` computes: the stem, the fc and block j of
    each stage copied from `model` (weights and BN buffers), every block appended to a stage made the
    identity (`make_identity`). It is built on the CPU; the branch layers that `make_identity` leaves
    to their usual init are drawn from `seed` (the global RNG is left as it was)."""
    deeper_cfg = deeper_config(cfg, depth)
    assert len(model.stage1) == cfg.n, "model is not the net of cfg"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        deeper = build_model(deeper_cfg)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    missing, unexpected = deeper.load_state_dict(weights, strict=False)
    appended = [(s, j) for s in (1, 2, 3) for j in range(cfg.n, deeper_cfg.n)]
    blocks_missed = {tuple(k.split(".")[:2]) for k in missing}  # ("stage2", "3") for stage2.3.conv1.weight
    assert not unexpected and blocks_missed <= {(f"stage{s}", str(j)) for s, j in appended}, "not copied"
    for s, j in appended:
        make_identity(getattr(deeper, f"stage{s}")[j])
    return deeper


# --------------------------------------------------------------------------------------------
# Measuring source and twin


@dataclass(frozen=True)
class Measure:
    """The source's and the constructed model's loss and error on one split in one BN mode."""

    split: str  # test, val or train (the un-augmented training split; val images not in it)
    mode: Literal["eval", "batch"]  # eval: BN running statistics; batch: train-mode BN, each batch's own
    images: int
    source_error: float  # %
    source_loss: float
    constructed_error: float
    constructed_loss: float

    @property
    def same(self) -> bool:
        """Equal to the bit, as the construction promises in eval mode (fp32 on the CPU)."""
        return (self.source_error, self.source_loss) == (self.constructed_error, self.constructed_loss)


@dataclass(frozen=True)
class Construction:
    """A deepened run, written. Its summary.json's train_error and train_loss are the constructed
    model's eval-mode numbers on the un-augmented training split (the `train`/`eval` measure), not a
    running train-mode error as a trained run's are."""

    source: Path
    target: Path
    name: str  # the new run's run.name
    seed: int
    source_depth: int
    depth: int
    kind: Literal["plain", "residual"]
    shortcut: str | None  # A, B or C; None for a plain net
    appended: int  # blocks appended to each stage
    identity_in_train_mode: bool  # False: the appended blocks are the identity in eval mode only
    source_iteration: int
    params: int
    source_params: int
    device: str
    precision: str
    measures: tuple[Measure, ...]  # test (val) and train in eval mode, then train with batch statistics
    notes: tuple[str, ...] = ()  # what the data loader noted about this copy


@torch.no_grad()
def batch_statistics(
    model: nn.Module, data: Data, split: Split, batch_size: int, amp: contextlib.AbstractContextManager[Any]
) -> tuple[float, float, int]:
    """Mean loss, error (%) and image count with BN in train mode, each batch normalised by its own
    statistics as in training: whole batches of `batch_size` in a seeded shuffle, the last partial
    one dropped (as training drops it), no augmentation. On a copy: the model's running statistics
    stay as they are. The copy runs in NCHW: on the CPU, train-mode BN is 10-15x slower in
    channels_last, and this number is compared with no recorded one, only source with twin."""
    net = copy.deepcopy(model).to(memory_format=torch.contiguous_format).train()
    batch_size = min(batch_size, len(split))
    starts = range(0, len(split) // batch_size * batch_size, batch_size)
    device = split.labels.device
    # A seeded shuffle, as training's batches are: a copy stored class by class (image folders) would
    # otherwise give batches of one class, whose statistics no trained net has seen.
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).to(device)
    loss, wrong = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    for start in starts:
        pick = order[start : start + batch_size]
        images, labels = data.normalize(split.images[pick]), split.labels[pick]
        with amp:
            logits = net(images)
        loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        wrong += (logits.argmax(dim=1) != labels).sum()
    n = len(starts) * batch_size
    return loss.item() / n, 100.0 * wrong.item() / n, n


def measure(
    source: nn.Module,
    deeper: nn.Module,
    data: Data,
    batch_size: int,
    amp: contextlib.AbstractContextManager[Any],
) -> tuple[Measure, ...]:
    """Both models in eval mode on test (and val) and on the training split, by the training loop's
    `evaluate`, then on the training split with batch statistics."""
    splits = {"test": data.test, **({"val": data.val} if data.val is not None else {}), "train": data.train}
    measures = []
    for name, split in splits.items():
        (sl, se, n), (cl, ce, _) = (evaluate(m, data, split, amp) for m in (source, deeper))
        measures.append(Measure(name, "eval", n, se, sl, ce, cl))
    (sl, se, n), (cl, ce, _) = (
        batch_statistics(m, data, data.train, batch_size, amp) for m in (source, deeper)
    )
    measures.append(Measure("train", "batch", n, se, sl, ce, cl))
    return tuple(measures)


# --------------------------------------------------------------------------------------------
# The constructed run


def deepen_run(
    run_dir: Path, depth: int, runs_dir: Path, name: str | None = None, device: str | None = None
) -> Construction:
    """Deepen a finished run to `depth` and write the result as a new, finished run directory,
    `run_dir_for(its config, runs_dir)`, named `<run.name>-deepened<depth>` or `name`.

    Both models are evaluated in eval mode on test (and val) and on the un-augmented training split,
    and on the training split with batch statistics, with the run's precision on `device` (default:
    the run's run.device). Every refusal comes before anything is written, and the new directory
    appears whole or not at all: it is written beside its place and renamed into it.
    """
    trained, model, saved = final_model(run_dir)  # checked: a run directory, its last.pt, its config
    deeper_config(trained.model, depth)  # refuse a bad depth before anything slow
    iterations = trained.schedule.iterations
    require_finished(run_dir, saved["iteration"], iterations, "deepen builds on a run's final model")
    cfg = constructed_config(trained, depth, name)
    target = run_dir_for(cfg, runs_dir)
    refuse_occupied(target)

    where = resolve_device(device or trained.run.device)
    precision = resolve_precision(saved["precision"], where)
    amp = autocast(where, precision)
    deeper = deepen_model(model, trained.model, depth, seed=trained.run.seed)
    weights = {k: v.clone() for k, v in deeper.state_dict().items()}  # what last.pt holds (CPU)
    params, macs = count_params(deeper), count_macs(deeper)
    # channels_last as in training and `resbench evaluate`: the same kernels, so the same numbers
    model = model.to(where, memory_format=torch.channels_last)
    deeper = deeper.to(where, memory_format=torch.channels_last)
    data = build_data(trained.data, where)
    check_same_data(run_dir, trained, saved, data.fingerprint)  # the numbers must be on its own images

    measures = measure(model, deeper, data, trained.optim.batch_size, amp)
    eval_mode = {m.split: m for m in measures if m.mode == "eval"}

    source = run_dir.resolve()
    summary = Summary(
        name=cfg.run.name,
        seed=cfg.run.seed,
        iterations=cfg.schedule.iterations,
        train_error=eval_mode["train"].constructed_error,  # eval mode, un-augmented: see Construction
        train_loss=eval_mode["train"].constructed_loss,
        test_error=eval_mode["test"].constructed_error,
        test_loss=eval_mode["test"].constructed_loss,
        val_error=eval_mode["val"].constructed_error if "val" in eval_mode else None,
        val_loss=eval_mode["val"].constructed_loss if "val" in eval_mode else None,
        params=params,
        macs=macs,
        wall_time=0.0,  # nothing was trained
        images_per_sec=0.0,
        device=str(where),
        precision=precision,
        test_samples=eval_mode["test"].images,
        constructed_from=str(source),
    )
    env = environment(where, precision) | {
        "constructed_from": str(source),
        "source_iteration": saved["iteration"],
        "source_depth": trained.model.depth,
        "world_size": 1,
        "data_fingerprint": data.fingerprint,
        "params": params,
    }
    val_images = eval_mode["val"].images if "val" in eval_mode else 0
    state = constructed_state(saved, cfg, deeper, weights, summary, val_images)
    write_run(target, cfg, env, state, summary)
    return Construction(
        source=run_dir,
        target=target,
        name=cfg.run.name,
        seed=cfg.run.seed,
        source_depth=trained.model.depth,
        depth=depth,
        kind="residual" if cfg.model.residual else "plain",
        shortcut=cfg.model.shortcut,
        appended=cfg.model.n - trained.model.n,
        identity_in_train_mode=identity_in_train_mode(cfg.model),
        source_iteration=saved["iteration"],
        params=params,
        source_params=count_params(model),
        device=str(where),
        precision=precision,
        measures=measures,
        notes=data.notes,
    )


def constructed_config(trained: RunConfig, depth: int, name: str | None) -> RunConfig:
    """The source's resolved config at `depth`, named `<run.name>-deepened<depth>` (or `name`). Its
    run.overrides stay the source's, so the run lands beside it; a `model.depth=` entry among them
    names the new depth."""
    overrides = [f"model.depth={depth}" if e.startswith("model.depth=") else e for e in trained.run.overrides]
    raw = trained.to_dict()
    raw["model"]["depth"] = depth
    raw["run"] |= {"name": name or f"{trained.run.name}-deepened{depth}", "overrides": overrides}
    return config.validate(raw, source="--name" if name else "the deepened config")


def refuse_occupied(target: Path) -> None:
    """A RunDirError where `target` holds anything: deepen makes a run directory, it never reuses one."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RunDirError(
            f"{target} already exists: deepen writes a new run directory and never replaces one. "
            "Give the new run another name with --name NAME (or another --runs-dir), or delete "
            f"{target} first"
        )


def constructed_state(
    saved: checkpoint.Saved,
    cfg: RunConfig,
    deeper: nn.Module,
    weights: dict[str, Any],
    summary: Summary,
    val_images: int = 0,
) -> dict[str, Any]:
    """last.pt of the constructed run: the source's saved state (batch order, RNG states, window)
    with the config, the model and a fresh optimiser state replaced, at the schedule's last
    iteration, so that it reads as a finished run; its metrics are the constructed model's."""
    schedule = LrSchedule(cfg.optim.lr, cfg.schedule)
    schedule.warming_up = bool(saved["warming_up"])
    lr = schedule.lr(cfg.schedule.iterations)  # the lr of the source's last step
    optimizer = build_optimizer(deeper, cfg.optim)  # as training builds it on this device (fused on CUDA)
    eval_metrics = {"error/test": summary.test_error, "loss/test": summary.test_loss}
    evaluated_images = {"test": summary.test_samples}
    if summary.val_error is not None:
        eval_metrics |= {"error/val": summary.val_error, "loss/val": summary.val_loss}
        evaluated_images["val"] = val_images
    return {
        **saved,
        "iteration": cfg.schedule.iterations,
        "config": cfg.to_dict(),
        "model": weights,
        "optimizer": optimizer_state(optimizer, lr),
        "train_metrics": {"error/train": summary.train_error, "loss/train": summary.train_loss, "lr": lr},
        "eval_metrics": eval_metrics,
        "evaluated_images": evaluated_images,
        "wall_time": 0.0,
        "step_time": 0.0,
    }


def write_run(
    target: Path, cfg: RunConfig, env: dict[str, Any], state: dict[str, Any], summary: Summary
) -> None:
    """Write the run's files into a temporary folder beside `target`, then rename it into place:
    a failure leaves no half-written run (nor the folders made for it), and a directory made
    meanwhile is not overwritten."""
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    tmp: Path | None = None
    try:
        with writing(target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        write_run_files(tmp, cfg, env)
        with writing(tmp):
            checkpoint.save(state, tmp / CHECKPOINT)
            atomic_write(tmp / SUMMARY, json.dumps(asdict(summary), indent=2) + "\n")
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual permissions
        with writing(target.parent):
            try:
                os.rename(tmp, target)  # onto an empty directory at most: a run made meanwhile stays
            except OSError:
                refuse_occupied(target)
                raise
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: another process put something there
                folder.rmdir()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
