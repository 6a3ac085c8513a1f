"""models.py: shapes, exact parameter counts and MACs from paper.md, layer counts, the identity property."""

import pickle

import pytest
import torch

from resbench.config import ModelConfig
from resbench.models import (
    BasicBlock,
    Bottleneck,
    ShortcutA,
    build_model,
    count_macs,
    count_params,
    describe,
    make_shortcut,
    weighted_layers,
)

# paper.md: option A (and the plain twins), exact
PARAMS_A = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
MACS_A = {20: 40.55e6, 32: 68.86e6, 44: 97.17e6, 56: 125.49e6, 110: 252.89e6, 1202: 2_829.2e6}
PROJECTION_B_EXTRA = 2_752

BASIC_DEPTHS = [8, 20, 32]
VARIANTS = [(True, "A"), (True, "B"), (True, "C"), (False, None)]


def cfg(
    depth: int, block: str = "basic", residual: bool = True, shortcut: str | None = None, **kw
) -> ModelConfig:
    return ModelConfig(depth=depth, block=block, residual=residual, shortcut=shortcut, **kw)


@pytest.mark.parametrize("residual,shortcut", VARIANTS)
@pytest.mark.parametrize(
    "block,depth", [("basic", d) for d in BASIC_DEPTHS] + [("bottleneck", 11), ("bottleneck", 29)]
)
def test_forward_shape_and_finite(block: str, depth: int, residual: bool, shortcut: str | None) -> None:
    torch.manual_seed(0)
    model = build_model(cfg(depth, block, residual, shortcut)).train()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("residual,shortcut", VARIANTS)
@pytest.mark.parametrize(
    "block,depth", [("basic", 20), ("basic", 56), ("bottleneck", 29), ("bottleneck", 164)]
)
def test_weighted_layers_equal_depth(block: str, depth: int, residual: bool, shortcut: str | None) -> None:
    model = build_model(cfg(depth, block, residual, shortcut))
    assert weighted_layers(model) == depth


@pytest.mark.parametrize("depth", sorted(PARAMS_A))
def test_exact_params_and_macs_option_a(depth: int) -> None:
    resnet, plain = describe(cfg(depth)), describe(cfg(depth, residual=False))
    assert resnet.params == plain.params == PARAMS_A[depth]
    assert resnet.macs == pytest.approx(MACS_A[depth], rel=1e-3)
    assert plain.macs == resnet.macs


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_option_b_adds_two_projections(depth: int) -> None:
    assert describe(cfg(depth, shortcut="B")).params == PARAMS_A[depth] + PROJECTION_B_EXTRA


def test_option_c_depth20() -> None:
    assert describe(cfg(20, shortcut="C")).params == 283_962


@pytest.mark.parametrize("num_classes", [10, 100])
def test_the_classifier_has_num_classes_outputs(num_classes: int) -> None:
    arch = describe(cfg(20, num_classes=num_classes))
    assert arch.output_shape == (num_classes,)
    assert arch.params == PARAMS_A[20] + 65 * (num_classes - 10)  # fc: 64 weights + 1 bias per class


def test_width_multiplier_scales_planes() -> None:
    model = build_model(cfg(20, width=32))
    assert model.fc.in_features == 128
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mac_counter_on_a_hand_counted_net() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Flatten(), torch.nn.Linear(8 * 32 * 32, 10)
    )
    assert count_macs(net) == 32 * 32 * 8 * 3 * 9 + 8 * 32 * 32 * 10


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_count_macs_gives_back_the_mode_it_found_and_the_bn_statistics(mode: str) -> None:
    model = build_model(cfg(8)).train(mode != "eval")
    if mode == "mixed":
        model.stage2.eval()
    before = {name: m.training for name, m in model.named_modules()}
    assert len(set(before.values())) == (2 if mode == "mixed" else 1)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_residual_block_with_zero_branch_is_identity(block: str) -> None:
    """The paper's argument: if F outputs zero, relu(F(x) + x) = x for x >= 0. Not so for a plain block."""
    torch.manual_seed(0)
    cls = BasicBlock if block == "basic" else Bottleneck
    planes = 16 // cls.expansion
    residual = cls(16, planes, 1, make_shortcut("A", 16, 16, 1))
    plain = cls(16, planes, 1, None)
    for b in (residual, plain):
        b.zero_init_last()
        last_bn = b.bn2 if block == "basic" else b.bn3
        torch.nn.init.zeros_(last_bn.bias)
    x = torch.rand(4, 16, 8, 8)  # non-negative, as after a ReLU
    for mode in ("train", "eval"):
        getattr(residual, mode)()
        getattr(plain, mode)()
        assert torch.equal(residual(x), x)
        assert not torch.allclose(plain(x), x)


def test_shortcut_a_subsamples_and_zero_pads() -> None:
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    y = ShortcutA(4, 8, stride=2)(x)
    assert y.shape == (2, 8, 2, 2)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 4:], torch.zeros(2, 4, 2, 2))
    assert count_params(ShortcutA(4, 8, 2)) == 0


@pytest.mark.parametrize(
    "kind,stride,cin,cout,expected",
    [
        (None, 2, 16, 32, type(None)),
        ("A", 1, 16, 16, torch.nn.Identity),
        ("A", 2, 16, 32, ShortcutA),
        ("B", 1, 16, 16, torch.nn.Identity),
        ("B", 2, 16, 32, torch.nn.Sequential),
        ("C", 1, 16, 16, torch.nn.Sequential),
    ],
)
def test_make_shortcut(kind: str | None, stride: int, cin: int, cout: int, expected: type) -> None:
    assert type(make_shortcut(kind, cin, cout, stride)) is expected


def test_plain_and_residual_twins_share_layer_names_and_shapes() -> None:
    resnet, plain = build_model(cfg(20)), build_model(cfg(20, residual=False))
    assert {k: v.shape for k, v in resnet.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    assert "ShortcutA" in repr(resnet) and "ShortcutA" not in repr(plain)


def test_model_pickles() -> None:
    model = build_model(cfg(20))
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), clone.eval()(x))


@pytest.mark.parametrize("mode", ["fan_out", "fan_in"])
def test_he_init_std(mode: str) -> None:
    torch.manual_seed(0)
    conv = build_model(cfg(56, init_mode=mode)).stage3[1].conv1  # 64 -> 64, 3x3
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_zero_init_residual_only_on_residual_nets() -> None:
    resnet = build_model(cfg(20, zero_init_residual=True))
    assert all(
        float(b.bn2.weight.detach().abs().sum()) == 0 for s in (resnet.stage1, resnet.stage2) for b in s
    )
    plain = build_model(cfg(20, residual=False, zero_init_residual=True))
    assert all(float(b.bn2.weight.detach().abs().sum()) > 0 for b in plain.stage1)


def test_describe_reports_stage_shortcuts() -> None:
    assert describe(cfg(20, shortcut="B")).shortcuts == ("projection", "projection")
    assert describe(cfg(20, residual=False)).shortcuts == ("none", "none")
    assert describe(cfg(20)).blocks_per_stage == (3, 3, 3)
