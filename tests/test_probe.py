"""probe.py: hook-based responses against direct computation, which layers count, block ratios,
and gradient norms on the weights' device."""

import pytest
import torch
import torch.nn.functional as F

from resbench import config
from resbench.models import build_model
from resbench.probe import block_ratios, grad_norms, layer_responses, response_layers


def net(depth: int = 8, residual: bool = True, block: str = "basic", width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(config.ModelConfig(depth=depth, residual=residual, block=block, width=width))
    for m in model.modules():  # non-trivial BN statistics, so eval mode is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_hook_std_equals_a_direct_forward() -> None:
    """Depth 8 = stem + one basic block per stage: compute every BN output by hand."""
    model = net(8)
    x = torch.randn(16, 3, 32, 32)
    direct = []
    with torch.no_grad():
        h = F.relu(model.bn1(model.conv1(x)))
        for stage in (model.stage1, model.stage2, model.stage3):
            block = stage[0]
            a = block.bn1(block.conv1(h))
            b = block.bn2(block.conv2(F.relu(a)))
            direct += [a, b]
            h = F.relu(b + block.shortcut(h))
    responses = layer_responses(model, x, per_channel=True, batch_size=5)  # batches of 5: concatenation too
    assert [r.std for r in responses] == pytest.approx([t.std().item() for t in direct], rel=1e-5)
    per_channel = [t.transpose(0, 1).flatten(1).std(dim=1).mean().item() for t in direct]
    assert [r.std_per_channel for r in responses] == pytest.approx(per_channel, rel=1e-5)
    assert layer_responses(model, x)[0].std_per_channel is None


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("depth", [8, 20, 56])
def test_only_3x3_layers_in_network_order(depth: int, residual: bool) -> None:
    model = net(depth, residual)
    names = [name for name, _, _ in response_layers(model)]
    assert len(names) == depth - 2
    n = (depth - 2) // 6
    expected = [f"stage{s}.{b}.bn{i}" for s in (1, 2, 3) for b in range(n) for i in (1, 2)]
    assert names == expected
    assert all(conv.kernel_size == (3, 3) for _, conv, _ in response_layers(model))


def test_bottleneck_nets_have_one_3x3_layer_per_block() -> None:
    layers = response_layers(net(29, block="bottleneck"))  # n = 3
    assert [name for name, _, _ in layers][:2] == ["stage1.0.bn2", "stage1.1.bn2"] and len(layers) == 9


def test_a_zeroed_residual_branch_has_ratio_zero() -> None:
    model = net(20)
    zeroed = model.stage2[1]
    torch.nn.init.zeros_(zeroed.bn2.weight)
    torch.nn.init.zeros_(zeroed.bn2.bias)
    ratios = {r.name: r.ratio for r in block_ratios(model, torch.randn(8, 3, 32, 32), batch_size=3)}
    assert len(ratios) == 9 and ratios["stage2.1"] == 0.0
    assert all(v > 0 for k, v in ratios.items() if k != "stage2.1")
    assert block_ratios(net(20, residual=False), torch.randn(2, 3, 32, 32)) == []


def test_gradient_norms_stay_on_the_weights_device() -> None:
    """A conv without a gradient gave a CPU zero, which cannot be stacked with CUDA (here: meta) norms."""
    convs = [torch.nn.Conv2d(2, 2, 3, device="meta") for _ in range(3)]
    convs[1].weight.grad = torch.ones_like(convs[1].weight)
    norms = grad_norms(convs)
    assert norms.device.type == "meta" and norms.shape == (3,)
    cpu = [torch.nn.Conv2d(2, 2, 3) for _ in range(2)]
    cpu[0].weight.grad = torch.full_like(cpu[0].weight, 2.0)
    assert grad_norms(cpu).tolist() == [12.0, 0.0]  # sqrt(36 weights * 2²), and none
