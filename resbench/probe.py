"""What resbench measures on a model, on fixed images: layer responses (Figure 7), how far each
residual block is from the identity, and weight-gradient norms. Nothing here trains, loads a run
or writes; train.py logs these during training (`analysis.every`, through `TrainingProbe`), and
analysis/responses.py measures a trained run's final model with the same functions.

    layer_responses(model, images)  -> list[LayerResponse]   std of every 3x3 conv's BN output
    block_ratios(model, images)     -> list[BlockRatio]      ||F(x)|| / ||shortcut(x)|| per residual block
    fixed_test_images(data, count)  -> Tensor                what both measure on
    TrainingProbe(model, images)()  -> (scalars, vectors) all of them, right after a training step

§4.2 of the paper ("Analysis of Layer Responses"): the response of a layer is the standard
deviation of its 3x3 conv's output after BN and before the ReLU or the addition. Everything is
captured with forward hooks, so the models are not changed. The std is taken over all of N, C, H
and W by default; `per_channel=True` adds the std per channel over N, H and W, then averaged over
the channels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from resbench.data import Data
from resbench.errors import ConfigError
from resbench.models import BasicBlock, Bottleneck


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


def residual_blocks(model: nn.Module) -> list[tuple[str, BasicBlock | Bottleneck]]:
    """(name, block) for every block with a shortcut, in network order; none in a plain net."""
    return [
        (n, b)
        for n, b in model.named_modules()
        if isinstance(b, (BasicBlock, Bottleneck)) and b.shortcut is not None
    ]


def branch_end(block: BasicBlock | Bottleneck) -> nn.BatchNorm2d:
    """The BN that ends a block's residual branch: F(x) is its output."""
    return block.bn2 if isinstance(block, BasicBlock) else block.bn3


@torch.no_grad()
def block_ratios(model: nn.Module, images: Tensor, batch_size: int = 500) -> list[BlockRatio]:
    """For each residual block, ||F(x)|| / ||shortcut(x)|| over `images`: how much it changes its input."""
    blocks = residual_blocks(model)
    branch_end_bns = [(n, branch_end(b)) for n, b in blocks]
    model.eval()
    branch_sq: dict[str, float] = defaultdict(float)
    shortcut_sq: dict[str, float] = defaultdict(float)
    with _capture(branch_end_bns) as branch, _capture([(n, b.shortcut) for n, b in blocks]) as shortcut:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
            for name, _ in blocks:
                branch_sq[name] += branch[name].pop().square().sum().item()
                shortcut_sq[name] += shortcut[name].pop().square().sum().item()
    return [BlockRatio(name, (branch_sq[name] / shortcut_sq[name]) ** 0.5) for name, _ in blocks]


def fixed_test_indices(data: Data, count: int) -> Tensor:
    """A fixed, seeded pick of `count` test images (the same for every run on the same data), as
    indices on the test set's device. Asking for more images than the test set holds is refused: the
    numbers would be measured on fewer."""
    if count > len(data.test):
        raise ConfigError(
            f"{count:,} test images asked for (--images or analysis.images), but the test set has "
            f"{len(data.test):,}: ask for {len(data.test):,} or fewer"
        )
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[:count]
    return pick.to(data.test.images.device)


def fixed_test_images(data: Data, count: int) -> Tensor:
    """The images of `fixed_test_indices`, normalised: what the responses are measured on."""
    return data.normalize(data.test.images[fixed_test_indices(data, count)])


class TrainingProbe:
    """During training (`analysis.every`): the response std and weight-gradient norm of each 3x3
    layer, and for each residual block ||F(x)|| / ||shortcut(x)|| and ||gamma|| of its branch's last BN
    (how far weight decay has pushed the block toward the identity).

    It runs the model in eval mode without gradients and reads `.grad`, so it changes neither the
    RNG nor BN statistics, and a resumed run stays bit-identical. Call it right after a step.
    """

    def __init__(self, model: nn.Module, images: Tensor) -> None:
        self.model, self.images = model, images
        self.convs = [conv for _, conv, _ in response_layers(model)]
        self.gammas = [branch_end(b).weight for _, b in residual_blocks(model)]

    def __call__(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        stds = torch.tensor([r.std for r in layer_responses(self.model, self.images)])
        vectors = {"responses": stds}
        if self.gammas:
            vectors["block_ratio"] = torch.tensor([r.ratio for r in block_ratios(self.model, self.images)])
            vectors["branch_gamma"] = torch.stack([g.detach().float().norm() for g in self.gammas]).cpu()
        self.model.train()
        vectors["grad_norm"] = grads = grad_norms(self.convs).float().cpu()
        positions = {"first": 0, "middle": len(stds) // 2, "last": len(stds) - 1}
        scalars = {f"responses/{k}": float(stds[i]) for k, i in positions.items()}
        scalars |= {f"grad_norm/{k}": float(grads[i]) for k, i in positions.items()}
        if self.gammas:
            scalars["block_ratio/median"] = float(vectors["block_ratio"].quantile(0.5))
        return scalars, vectors


def grad_norms(convs: list[nn.Conv2d]) -> Tensor:
    """The weight-gradient norm of each conv, 0 where it has no gradient (yet), on the weights' device."""
    return torch.stack(
        [c.weight.grad.norm() if c.weight.grad is not None else c.weight.new_zeros(()) for c in convs]
    )
