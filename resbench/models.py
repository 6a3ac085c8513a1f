"""CIFAR ResNets and their plain twins (He et al. 2015, §4.2). No training code here.

A net is a 3x3 stem (16 filters), three stages of n blocks at 16/32/64 planes on 32/16/8-pixel maps
(stride 2 at the start of stages 2 and 3), a global mean pool and a linear classifier. A block
builds its residual branch. The net decides each block's shortcut and passes it in. A plain twin
is the same net with no shortcut at all, so with option A it has exactly the same parameters.

    build_model(cfg.model) -> CifarResNet
    describe(cfg.model)    -> Architecture (parameters, MACs, layer counts)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resbench.config import ModelConfig


class ShortcutA(nn.Module):
    """Option A: identity that subsamples by `stride` and zero-pads the new channels (no parameters).

    The zero channels go after the existing ones; the paper leaves the placement open.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra_planes = out_planes - in_planes
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_planes))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_planes={self.extra_planes}"


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Options B and C: a learned 1x1 conv + BN, W_s in Eq. (2)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # no bias: the BN that follows has its own (§3.4)
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs. With a shortcut: relu(F(x) + shortcut(x)); without: relu(F(x))."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, planes, H/stride, W/stride)
        out = self.bn2(self.conv2(out))  # BN before the addition, so F can learn to output zero
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)  # ReLU after the addition (§3.2, Fig. 2)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), the ImageNet block of §4.1; 9n+2 layers on CIFAR."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, planes, H, W)
        out = F.relu(self.bn2(self.conv2(out)))  # (N, planes, H/stride, W/stride)
        out = self.bn3(self.conv3(out))  # (N, 4 * planes, H/stride, W/stride)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_shortcut(kind: str | None, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The shortcut for one block: None (plain), identity, option A, or a projection (B, C)."""
    if kind is None:
        return None
    shape_changes = stride != 1 or in_planes != out_planes
    if kind == "C" or (kind == "B" and shape_changes):
        return projection(in_planes, out_planes, stride)
    if shape_changes:  # option A
        return ShortcutA(in_planes, out_planes, stride)
    return nn.Identity()


class CifarResNet(nn.Module):
    """The §4.2 network: stem, stage1..3 of n blocks each, mean pool, fc."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        block = BLOCKS[cfg.block]
        self.conv1 = conv3x3(3, cfg.width)
        self.bn1 = nn.BatchNorm2d(cfg.width)
        in_planes = cfg.width
        stages = []
        for i, planes in enumerate((cfg.width, 2 * cfg.width, 4 * cfg.width)):
            blocks = []
            for j in range(cfg.n):
                stride = 2 if i > 0 and j == 0 else 1
                out_planes = planes * block.expansion
                shortcut = make_shortcut(cfg.shortcut, in_planes, out_planes, stride)
                blocks.append(block(in_planes, planes, stride, shortcut))
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(in_planes, cfg.num_classes)
        self._init(cfg)

    def _init(self, cfg: ModelConfig) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=cfg.init_mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if cfg.zero_init_residual and cfg.residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        x = self.stage1(x)  # (N, 16e, 32, 32)
        x = self.stage2(x)  # (N, 32e, 16, 16)
        x = self.stage3(x)  # (N, 64e, 8, 8)
        x = x.mean(dim=(2, 3))  # global average pool; a mean has a deterministic backward on CUDA
        return self.fc(x)


def build_model(cfg: ModelConfig) -> CifarResNet:
    return CifarResNet(cfg)


# --------------------------------------------------------------------------------------------
# Counting


@dataclass(frozen=True)
class Architecture:
    """What `resbench show` reports about a model."""

    depth: int
    weighted_layers: int  # convs and fc on the main path (projection shortcuts not counted, as in §4.2)
    blocks_per_stage: tuple[int, int, int]
    shortcuts: tuple[str, ...]  # per stage change (stage1->2, stage2->3), e.g. ("A", "A")
    params: int
    macs: int  # forward multiply-accumulates per image: convs + linear
    output_shape: tuple[int, ...]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Forward multiply-accumulates per image over Conv2d and Linear (BN, ReLU, pool and adds excluded).

    Counts in eval mode, so BN statistics stay untouched, then gives every module back the mode it had.
    """
    total = 0
    modes = [(m, m.training) for m in model.modules()]

    def conv_hook(m: nn.Conv2d, inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return total


def weighted_layers(model: nn.Module) -> int:
    """Convs and linears on the main path: the paper's depth."""
    in_shortcuts = {
        id(m)
        for mod in model.modules()
        if isinstance(mod, (BasicBlock, Bottleneck)) and mod.shortcut is not None
        for m in mod.shortcut.modules()
    }
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in in_shortcuts for m in model.modules())


def _shortcut_name(module: nn.Module | None) -> str:
    if module is None:
        return "none"
    return "A (zero-pad)" if isinstance(module, ShortcutA) else "projection"


def describe(cfg: ModelConfig) -> Architecture:
    model = build_model(cfg)
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 32, 32))
    return Architecture(
        depth=cfg.depth,
        weighted_layers=weighted_layers(model),
        blocks_per_stage=(cfg.n, cfg.n, cfg.n),
        shortcuts=tuple(_shortcut_name(stage[0].shortcut) for stage in (model.stage2, model.stage3)),
        params=count_params(model),
        macs=count_macs(model),
        output_shape=tuple(out.shape[1:]),
    )
