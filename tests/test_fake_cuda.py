"""The CUDA path, checked on a machine without a GPU: every bundled net on a fake CUDA device under
bf16 autocast, the fused SGD that build_optimizer picks there, and torch.compile without graph
breaks. The `cuda`-marked variants run the dry run and fused SGD on a real GPU (`pytest -m cuda`);
none of them has run on a GPU yet.

A fake CUDA device is torch's FakeTensorMode: tensors that carry a device, dtype, shape and strides
but no data, and ops that compute only those. An op that mixes a CPU tensor with a CUDA one, or
dtypes that a CUDA kernel refuses, raises as it would on a GPU. It cannot run a backward pass (the
autograd engine asks the CUDA driver for a context), nor read a value: `.item()` gets a
placeholder here, so code that reads values runs but its numbers mean nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from test_step import batch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from resbench import config
from resbench.config import ModelConfig, OptimConfig
from resbench.data import Data, Split
from resbench.hardware import autocast, resolve_precision
from resbench.models import build_model
from resbench.probe import TrainingProbe, fixed_test_images
from resbench.step import forward_loss
from resbench.train import build_optimizer, evaluate

CUDA = torch.device("cuda")


class PlaceholderReads(TorchDispatchMode):
    """Answers every read of a value (`.item()`, `float(t)`) with 1, since fake tensors hold none."""

    def __torch_dispatch__(
        self, func: torch._ops.OpOverload, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            return 1.0 if args[0].is_floating_point() else 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def on_cuda(kind: str) -> Iterator[None]:
    """Run the block with CUDA as `kind`: "fake" on any machine, "real" on a GPU."""
    if kind == "real":
        yield
        return
    with contextlib.ExitStack() as stack:
        # What torch asks the driver before it enables bf16 autocast, and what resolve_precision
        # asks: an H100. Patched here only; torch.cuda.is_available() stays False, or factories
        # would try to seed a real CUDA generator.
        stack.enter_context(
            mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False)
        )
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", return_value=True))
        stack.enter_context(mock.patch("torch.cuda.get_device_capability", return_value=(9, 0)))
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=False))
        stack.enter_context(PlaceholderReads())
        yield


def cuda_model(model: Callable[[], nn.Module], kind: str) -> nn.Module:
    """The model on CUDA, channels_last on a real GPU as training has it. A fake model is created
    on the device instead: moving fake parameters fails in nn.Module._apply (swap_tensors)."""
    if kind == "real":
        return model().to(CUDA, memory_format=torch.channels_last).train()
    with torch.device(CUDA):  # only while building: what forward creates keeps torch's default, the CPU
        return model().train()


def synthetic_data(n: int, device: torch.device) -> Data:
    """A CIFAR-shaped Data on `device`, as build_data returns it (which reads files: not faked)."""
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8, device=device)
    split = Split(images, torch.arange(n, device=device) % 10)
    return Data(
        train=split,
        test=split,
        val=None,
        mean=torch.zeros(3, 32, 32, device=device),  # pixel_mean's shapes
        std=torch.ones(1, 1, 1, device=device),
        num_classes=10,
        source="synthetic",
        official=False,
        notes=(),
        fingerprint="0" * 16,
    )


def dry_run(model: nn.Module, amp: contextlib.AbstractContextManager[Any]) -> None:
    """What a run computes on CUDA, short of backward: train_step's forward, loss and metrics,
    evaluation, and the training probe (layer responses, block ratios, gradient norms)."""
    images, labels = batch(2, CUDA)
    with amp:
        logits = model(images)
    loss, _, wrong = forward_loss(model, images, labels, amp)
    assert logits.dtype == torch.bfloat16, "autocast did not reach the model: the dtype checks were void"
    assert (loss.dtype, wrong.dtype) == (torch.float32, torch.int64)
    assert {t.device.type for t in (logits, loss, wrong)} == {"cuda"}

    data = synthetic_data(4, CUDA)
    evaluate(model, data, data.test, amp, batch_size=2)
    scalars, vectors = TrainingProbe(model, fixed_test_images(data, 4))()
    assert set(scalars) >= {"responses/first", "grad_norm/last"} and len(vectors["responses"]) > 0


# --------------------------------------------------------------------------------------------
# Every bundled net on CUDA, under bf16 autocast


# About 1-2 s a net on a loaded 2-core CPU; resnet1202 takes about 14 s (four passes through 1,202
# layers, and building them), so it is marked slow.
@pytest.mark.parametrize("kind", ["fake", pytest.param("real", marks=pytest.mark.cuda)])
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "resnet1202" else n for n in config.bundled_names()],
)
def test_every_bundled_net_runs_on_cuda_in_bf16(name: str, kind: str) -> None:
    with on_cuda(kind):
        precision = resolve_precision("auto", CUDA)
        if kind == "real" and precision != "bf16":
            pytest.skip("this GPU predates Ampere: `auto` gives fp32, and the check is about bf16")
        assert precision == "bf16"  # `auto` on the faked H100
        model = cuda_model(lambda: build_model(config.load(name).model), kind)
        dry_run(model, autocast(CUDA, precision))


class ZerosOnTheCpu(nn.Module):
    """Option A written with torch.cat and a torch.zeros that forgets the device."""

    def __init__(self, extra_planes: int) -> None:
        super().__init__()
        self.extra_planes = extra_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::2, ::2]
        zeros = torch.zeros(x.shape[0], self.extra_planes, *x.shape[2:], dtype=x.dtype)
        return torch.cat([x, zeros], dim=1)


class MeanOfActivations(nn.Module):
    """A running mean kept in fp32 and updated with bf16 activations under autocast."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(planes))

    def forward(self, x: Tensor) -> Tensor:
        self.running.lerp_(x.detach().mean(dim=0), 0.1)
        return x


def tiny_resnet() -> nn.Module:
    return build_model(ModelConfig(depth=8, width=4))


def with_a_cpu_tensor_in_forward() -> nn.Module:
    model = tiny_resnet()
    model.stage2[0].shortcut = ZerosOnTheCpu(extra_planes=4)
    return model


def with_a_dtype_mismatch_in_forward() -> nn.Module:
    model = tiny_resnet()
    model.fc = nn.Sequential(model.fc, MeanOfActivations(10))
    return model


@pytest.mark.parametrize(
    ("model", "error"),
    [
        (with_a_cpu_tensor_in_forward, r"cpu.*cuda|cuda.*cpu"),
        (with_a_dtype_mismatch_in_forward, r"expected dtype torch\.float32.*bfloat16"),
    ],
    ids=["cpu-tensor", "dtype"],
)
def test_the_dry_run_catches_what_a_gpu_would_refuse(model: Callable[[], nn.Module], error: str) -> None:
    with on_cuda("fake"):
        broken = cuda_model(model, "fake")
        with pytest.raises(RuntimeError, match=error):
            dry_run(broken, autocast(CUDA, "bf16"))
    with on_cuda("fake"):  # the same nets without the faulty module pass
        dry_run(cuda_model(tiny_resnet, "fake"), autocast(CUDA, "bf16"))


# --------------------------------------------------------------------------------------------
# Fused SGD on CUDA


@pytest.mark.parametrize("weight_decay_on", ["all", "weights"])
def test_build_optimizer_fuses_sgd_on_cuda_only(weight_decay_on: str) -> None:
    cfg = OptimConfig(weight_decay_on=weight_decay_on)
    on_cpu = build_optimizer(tiny_resnet(), cfg)
    # CPU as before this change: torch's default, its per-parameter loop
    assert all(g["fused"] is None and g["foreach"] is None for g in on_cpu.param_groups)
    with on_cuda("fake"):
        model = cuda_model(tiny_resnet, "fake")
        for optimizer in (build_optimizer(model, cfg), build_optimizer(model, cfg, CUDA)):
            assert all(g["fused"] is True and g["foreach"] is None for g in optimizer.param_groups)
    # the device given wins over where the parameters are (a model not yet moved)
    assert build_optimizer(tiny_resnet(), cfg, CUDA).defaults["fused"] is True


@pytest.mark.parametrize("weight_decay_on", ["all", "weights"])
def test_fused_sgd_with_a_tensor_lr_makes_the_same_update(weight_decay_on: str) -> None:
    """The CUDA-graph step (issue 11) will run build_optimizer's SGD fused with its lr in a device
    tensor. torch's fused CPU kernel runs the same Python path as the CUDA one: the update (weight
    decay, momentum from the first step on, the lr, both param groups) equals the default's."""
    torch.manual_seed(0)
    cfg = OptimConfig(weight_decay_on=weight_decay_on)
    models = [tiny_resnet(), tiny_resnet()]
    models[1].load_state_dict(models[0].state_dict())
    default = build_optimizer(models[0], cfg)
    fused = build_optimizer(models[1], cfg, CUDA)  # what CUDA gets, run by torch's fused CPU kernel
    assert all(g["fused"] is True for g in fused.param_groups)
    lr = torch.tensor(cfg.lr)
    for group in fused.param_groups:
        group["lr"] = lr  # one tensor for every group, changed in place as a graph replay needs
    images, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    for step in range(3):
        lr.fill_(cfg.lr * 0.1**step)  # a milestone each step
        for group in default.param_groups:
            group["lr"] = cfg.lr * 0.1**step
        for model, optimizer in zip(models, (default, fused), strict=True):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    # fused multiplies in another order: the last bits may differ, an update of the wrong size would not
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_build_optimizer_steps_fused_on_a_gpu() -> None:
    torch.manual_seed(0)
    model = tiny_resnet().to(CUDA)
    optimizer = build_optimizer(model, OptimConfig())
    before = [p.detach().clone() for p in model.parameters()]
    images, labels = batch(8, CUDA)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    assert optimizer.defaults["fused"] is True
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


# --------------------------------------------------------------------------------------------
# torch.compile without graph breaks (CPU, backend aot_eager)
#
# What compiles as one graph on torch 2.14 (fullgraph=True raises at any break):
# - the model, its loss and the step's loss and error sums; AOTAutograd compiles the backward too;
# - forward, loss and backward together, with torch._dynamo.config.trace_autograd_ops (off by
#   default), where that option exists;
# - not optimizer.step(): torch.optim graph-breaks on purpose around every step (pytorch#104053),
#   fused SGD is torch.compiler.disable'd ("don't trace into fused optimizer") and its kernel has no
#   fake implementation; nor optimizer.zero_grad(), which dynamo skips. So train_step as a whole
#   cannot be one dynamo graph, and the CUDA-graph step must capture fused SGD with
#   torch.cuda.graph, around the compiled model, as issue 11 plans.


def compiled_step_inputs() -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    """A tiny net and a copy with the same weights, and one channels_last batch."""
    torch.manual_seed(0)
    model = tiny_resnet().to(memory_format=torch.channels_last).train()
    twin = tiny_resnet().to(memory_format=torch.channels_last).train()
    twin.load_state_dict(model.state_dict())
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return model, twin, images, torch.arange(4)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """The same gradients, and the same BN statistics (which the graph updates in place)."""
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(a.state_dict(), b.state_dict())


@pytest.mark.slow  # each compile takes 3-8 s on a loaded 2-core CPU
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forward_loss_and_sums_compile_as_one_graph(precision: str) -> None:
    model, twin, images, labels = compiled_step_inputs()
    amp = autocast(torch.device("cpu"), precision)
    backend = CompileCounterWithBackend("aot_eager")
    step = torch.compile(forward_loss, fullgraph=True, backend=backend)
    for _ in range(2):  # the second step must reuse the graph
        compiled = step(model, images, labels, amp)
        compiled[0].backward()  # AOTAutograd's compiled backward
        eager = forward_loss(twin, images, labels, amp)
        eager[0].backward()
        for c, e in zip(compiled, eager, strict=True):
            torch.testing.assert_close(c, e)
    assert backend.frame_count == 1
    assert_same_state(model, twin)


def loss_sums_and_backward(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    loss, summed_loss, wrong = forward_loss(model, images, labels, contextlib.nullcontext())
    loss.backward()
    return summed_loss, wrong


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(torch._dynamo.config, "trace_autograd_ops"),
    reason="this torch has no torch._dynamo.config.trace_autograd_ops: backward always breaks the graph",
)
def test_forward_loss_and_backward_compile_as_one_graph() -> None:
    model, twin, images, labels = compiled_step_inputs()
    backend = CompileCounterWithBackend("aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        step = torch.compile(loss_sums_and_backward, fullgraph=True, backend=backend)
        for _ in range(2):
            # as train_step: no gradients before the backward (.grad being None or not is guarded)
            model.zero_grad(set_to_none=True)
            twin.zero_grad(set_to_none=True)
            compiled = step(model, images, labels)
            eager = loss_sums_and_backward(twin, images, labels)
            for c, e in zip(compiled, eager, strict=True):
                torch.testing.assert_close(c, e)
            assert_same_state(model, twin)
    assert backend.frame_count == 1


@pytest.mark.slow
def test_evaluation_compiles_once_not_at_every_switch() -> None:
    """run.compile compiles the model that trains and evaluates: one graph per mode, kept."""
    model, _, images, _ = compiled_step_inputs()
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    data = synthetic_data(4, torch.device("cpu"))
    for _ in range(3):  # train, evaluate, train, ... as the loop does at each eval point
        compiled(images).sum().backward()
        evaluate(compiled, data, data.test, contextlib.nullcontext(), batch_size=4)
    assert backend.frame_count == 2
