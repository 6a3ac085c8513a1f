"""Why residual nets train: layer responses (Figure 7) and how far each block is from the identity.

    layer_responses(model, images)  -> list[LayerResponse]   std of every 3x3 conv's BN output
    block_ratios(model, images)     -> list[BlockRatio]      ||F(x)|| / ||shortcut(x)|| per residual block
    fixed_test_images(data, count)  -> Tensor                what both measure on (probe.py too)
    analyze_run(run_dir)            -> RunAnalysis           both, for a run's final model
    summarise_analyses(analyses)    -> AnalysisReport        seeds averaged, one line per model

§4.2 of the paper ("Analysis of Layer Responses"): the response of a layer is the standard
deviation of its 3x3 conv's output after BN and before the ReLU or the addition. Residual
functions that stay near zero give small responses, and an identity is then easy to learn.
Everything is captured with forward hooks, so the models are not changed. The std is taken over
all of N, C, H and W by default; `per_channel=True` adds the std per channel over N, H and W,
then averaged over the channels.
Nothing here prints or draws; the same measurement during training is probe.py.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

from resbench.analysis.trained import final_model
from resbench.data import Data, build_data
from resbench.errors import ConfigError
from resbench.models import BasicBlock, Bottleneck
from resbench.rundir import refuse_named_twice


@dataclass(frozen=True)
class LayerResponse:
    index: int  # 1-based, in network order
    name: str  # the BN module, e.g. stage1.0.bn1
    std: float  # over N, C, H and W
    std_per_channel: float | None = None  # per channel over N, H, W, then the mean (when asked)


@dataclass(frozen=True)
class BlockRatio:
    name: str  # e.g. stage2.0
    ratio: float  # ||F(x)|| / ||shortcut(x)||: 0 is the identity


@dataclass(frozen=True)
class RunAnalysis:
    run_dir: Path
    name: str
    depth: int
    residual: bool
    responses: list[LayerResponse]
    ratios: list[BlockRatio]  # empty for a plain net


def response_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(BN name, conv, BN) for every 3x3 conv inside a block, in network order; the stem and fc
    are not counted, so a basic-block net has depth - 2 of them."""
    layers = []
    for block_name, block in model.named_modules():
        if not isinstance(block, (BasicBlock, Bottleneck)):
            continue
        for conv_name, conv in block.named_children():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                bn_name = "bn" + conv_name.removeprefix("conv")
                layers.append((f"{block_name}.{bn_name}", conv, getattr(block, bn_name)))
    return layers


@contextmanager
def _capture(modules: list[tuple[str, nn.Module]]) -> Iterator[dict[str, list[Tensor]]]:
    """Record the output of each module during the forward passes inside the block."""
    outputs: dict[str, list[Tensor]] = defaultdict(list)
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: outputs[name].append(out.detach().float()))
        for name, m in modules
    ]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def response_std(outputs: list[Tensor], per_channel: bool = False) -> float:
    """Std over N, C, H, W of the concatenated outputs, or per channel over N, H, W, then the mean."""
    x = torch.cat(outputs)
    if per_channel:
        return x.transpose(0, 1).flatten(1).std(dim=1).mean().item()
    return x.std().item()


@torch.no_grad()
def layer_responses(
    model: nn.Module, images: Tensor, per_channel: bool = False, batch_size: int = 500
) -> list[LayerResponse]:
    """The response of every 3x3 layer, in eval mode on `images` (already normalised); with
    `per_channel`, the per-channel variant too."""
    layers = [(name, bn) for name, _, bn in response_layers(model)]
    model.eval()
    with _capture(layers) as outputs:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    return [
        LayerResponse(
            i + 1,
            name,
            response_std(outputs[name]),
            response_std(outputs[name], per_channel=True) if per_channel else None,
        )
        for i, (name, _) in enumerate(layers)
    ]


@torch.no_grad()
def block_ratios(model: nn.Module, images: Tensor, batch_size: int = 500) -> list[BlockRatio]:
    """For each residual block, ||F(x)|| / ||shortcut(x)|| over `images`: how much it changes its input."""
    blocks = [
        (n, b)
        for n, b in model.named_modules()
        if isinstance(b, (BasicBlock, Bottleneck)) and b.shortcut is not None
    ]
    branch_end = [(n, b.bn2 if isinstance(b, BasicBlock) else b.bn3) for n, b in blocks]
    model.eval()
    branch_sq: dict[str, float] = defaultdict(float)
    shortcut_sq: dict[str, float] = defaultdict(float)
    with _capture(branch_end) as branch, _capture([(n, b.shortcut) for n, b in blocks]) as shortcut:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
            for name, _ in blocks:
                branch_sq[name] += branch[name].pop().square().sum().item()
                shortcut_sq[name] += shortcut[name].pop().square().sum().item()
    return [BlockRatio(name, (branch_sq[name] / shortcut_sq[name]) ** 0.5) for name, _ in blocks]


def fixed_test_images(data: Data, count: int) -> Tensor:
    """A fixed, seeded sample of test images (the same for every run on the same data), normalised.
    Asking for more images than the test set holds is refused: the numbers would be measured on fewer."""
    if count > len(data.test):
        raise ConfigError(
            f"{count:,} test images asked for the layer responses (--images or analysis.images), but the "
            f"test set has {len(data.test):,}: ask for {len(data.test):,} or fewer"
        )
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[:count]
    return data.normalize(data.test.images[pick.to(data.test.images.device)])


def analyze_run(
    run_dir: Path, images: int = 1000, per_channel: bool = False, device: torch.device | str = "cpu"
) -> RunAnalysis:
    """Responses and block ratios of a run's final model (its last.pt) on `images` test images."""
    cfg, model, _ = final_model(run_dir)
    model = model.to(device)
    x = fixed_test_images(build_data(cfg.data, torch.device(device)), images)
    return RunAnalysis(
        run_dir,
        cfg.run.name,
        cfg.model.depth,
        cfg.model.residual,
        layer_responses(model, x, per_channel),
        block_ratios(model, x),
    )


# --------------------------------------------------------------------------------------------
# Over runs


@dataclass(frozen=True)
class ModelResponses:
    """One model's responses, averaged over its seeds."""

    name: str
    depth: int
    residual: bool
    seeds: int
    stds: list[float]  # per layer, network order
    median_ratio: float | None  # median over blocks of ||F(x)|| / ||shortcut(x)||, residual nets only

    @property
    def mean_std(self) -> float:
        return statistics.fmean(self.stds)

    @property
    def ratio_text(self) -> str:
        return "" if self.median_ratio is None else f"{self.median_ratio:.1%}"


@dataclass(frozen=True)
class AnalysisReport:
    models: list[ModelResponses]
    findings: list[str]


def summarise_analyses(analyses: list[RunAnalysis]) -> AnalysisReport:
    """Average the runs of each model (by run name) layer by layer; runs of one name must share
    an architecture, or their layers would be averaged with another net's."""
    refuse_named_twice((str(a.run_dir), a.run_dir) for a in analyses)
    groups: dict[str, list[RunAnalysis]] = defaultdict(list)
    for a in analyses:
        groups[a.name].append(a)
    models = []
    for name, group in groups.items():
        if len({(a.depth, a.residual, len(a.responses)) for a in group}) > 1:
            raise ConfigError(
                f"runs named {name} are different nets: "
                + ", ".join(
                    f"{a.run_dir} (depth {a.depth}, {'residual' if a.residual else 'plain'})" for a in group
                )
                + ". Analyze them separately, or give each config its own run.name."
            )
        stds = [statistics.fmean(a.responses[i].std for a in group) for i in range(len(group[0].responses))]
        ratios = [b.ratio for a in group for b in a.ratios]
        models.append(
            ModelResponses(
                name,
                group[0].depth,
                group[0].residual,
                len(group),
                stds,
                statistics.median(ratios) if ratios else None,
            )
        )
    models.sort(key=lambda m: (m.residual, m.depth))
    return AnalysisReport(models, _findings(models))


def _findings(models: list[ModelResponses]) -> list[str]:
    lines = []
    for m in models:
        if m.median_ratio is not None:
            lines.append(
                f"{m.name}: the median block changes its input by {m.median_ratio:.0%} "
                "(||F(x)|| / ||shortcut(x)||; 0% would be the identity)"
            )
    for m in (m for m in models if m.residual):
        twin = next((p for p in models if not p.residual and p.depth == m.depth), None)
        if twin is not None:
            factor = twin.mean_std / m.mean_std
            lines.append(
                f"{twin.name} layers have {factor:.1f}x the responses of {m.name} "
                f"(mean std {twin.mean_std:.3f} vs {m.mean_std:.3f})"
            )
    residual = sorted((m for m in models if m.residual), key=lambda m: m.depth)
    for shallow, deep in pairwise(residual):
        smaller = deep.mean_std < shallow.mean_std
        lines.append(
            f"{deep.name} has {'smaller' if smaller else 'larger'} responses than {shallow.name} "
            f"({deep.mean_std:.3f} vs {shallow.mean_std:.3f}): the paper "
            f"expects smaller{'' if smaller else '; this run does not show it'}"
        )
    return lines
