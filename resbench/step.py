"""One training step, two ways: `train_step` (eager, the default) and `FixedStep` (run.cuda_graph).

    forward_loss(model, images, labels, amp) -> loss, summed loss, errors
    train_step(model, optimizer, images, labels, amp) -> summed loss, errors
    FixedStep(forward, optimizer, batches, window, amp, capture)(lr)

A ResNet for CIFAR is small for a GPU: an eager step is bound by its ~600 kernel launches, not by
its arithmetic. `FixedStep` keeps everything a step touches in tensors that stay where they are
from step to step (the batch order and its cursor, the lr, the gradients, the loss and error
window), so on CUDA it can capture augmentation, forward, loss, backward, fused SGD and the window
sums as one CUDA graph and replay it once per iteration. What changes between steps is written into
those tensors eagerly, between replays: a new epoch's order, the lr at a milestone or at the end of
the warm-up, a checkpoint restored on resume. Run eagerly (on CPU in the tests) it is bit-identical
to `train_step` over `Batches.next`, which is what makes the graph the same run.

Only `capture` and `side_stream` are CUDA-only. No schedule, logging or checkpoints here (train.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resbench.data import Batches
from resbench.errors import CaptureError

# Eager steps before capture: momentum buffers, gradients and cuDNN's algorithm choices must exist
# before the graph records them (PyTorch's CUDA-graph notes warm up for 3 iterations).
WARMUP_STEPS = 3


def forward_loss(
    model: nn.Module, images: Tensor, labels: Tensor, amp: contextlib.AbstractContextManager[Any]
) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's mean loss, to differentiate, and its summed loss and number of errors for the
    window, all on the device. The loss is taken in fp32 whatever autocast gave the logits."""
    with amp:
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    return loss, loss.detach() * labels.numel(), (logits.argmax(dim=1) != labels).sum()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    amp: contextlib.AbstractContextManager[Any],
) -> tuple[Tensor, Tensor]:
    """One SGD step. Returns the batch's summed loss and number of errors, still on the device."""
    loss, summed_loss, wrong = forward_loss(model, images, labels, amp)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return summed_loss, wrong


class FixedStep:
    """The training step in fixed buffers: called with the iteration's lr, it takes the next batch
    from `batches`, steps the optimizer and adds the batch's loss and errors to `window` (a summed
    loss and an error count, 0-d device tensors that the caller reads and zeroes between steps).

    With `capture` (CUDA only), the first `WARMUP_STEPS` calls run eagerly on a side stream, the
    next one captures the step as a CUDA graph, and every call from then on replays it. If capture
    fails, CaptureError says why in one line and nothing is saved after it: a failed capture can
    leave the batch generator (and the current stream) in capture mode, and eager steps after it
    would silently reuse random draws. The run goes on from its last checkpoint without
    run.cuda_graph, which may change on resume.
    """

    def __init__(
        self,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Batches,
        window: tuple[Tensor, Tensor],
        amp: contextlib.AbstractContextManager[Any],
        capture: bool = False,
    ) -> None:
        self.forward, self.optimizer, self.batches, self.amp = forward, optimizer, batches, amp
        self.window = window
        device = batches.cursor.device
        # A device tensor that every group shares: fused SGD reads it in its kernel, no host sync.
        self.lr = torch.zeros((), device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        self.lr_value: float | None = None  # what self.lr holds, known on the host
        self.use_graph = capture
        self.eager_steps = 0
        self.replay: Callable[[], None] | None = None  # the captured graph's replay

    def __call__(self, lr: float) -> None:
        if lr != self.lr_value:  # at the start, at milestones and at the end of the warm-up only
            self.lr.fill_(lr)
            self.lr_value = lr
        self.batches.advance()  # eagerly, between replays: a new epoch's order
        if self.replay is None and self.use_graph and self.eager_steps >= WARMUP_STEPS:
            self._capture()
        if self.replay is not None:
            self.replay()
            return
        with side_stream() if self.use_graph else contextlib.nullcontext():
            self._step()
        self.eager_steps += 1

    def _capture(self) -> None:
        try:
            self.replay = capture(self._step, self.batches.generator)
        except Exception as err:  # whatever the failure: one line, and no eager steps after it
            reason = (str(err).strip().splitlines() or [""])[0]
            raise CaptureError(
                f"run.cuda_graph: capture failed on this GPU ({type(err).__name__}: {reason}). Nothing "
                "after the last checkpoint is kept. Continue without the graph: the same command with "
                "--set run.cuda_graph=false --resume (or --force where the run has no checkpoint yet)"
            ) from err

    def _step(self) -> None:
        """What the graph holds. Gradients are zeroed, not freed, so they keep their memory."""
        images, labels = self.batches.take()
        loss, summed_loss, wrong = forward_loss(self.forward, images, labels, self.amp)
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.optimizer.step()
        self.window[0].add_(summed_loss)
        self.window[1].add_(wrong)


# --------------------------------------------------------------------------------------------
# CUDA only: the tests replace these two with eager stand-ins to check FixedStep's plumbing on CPU


def capture(step: Callable[[], None], generator: torch.Generator) -> Callable[[], None]:
    """Record `step` as one CUDA graph and return its replay. Capture runs nothing: the first
    replay does the step. `generator` (the batch generator) is registered with the graph, so its
    draws keep their order and its state stays checkpointable between replays."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


@contextlib.contextmanager
def side_stream() -> Iterator[None]:
    """Eager steps before capture run on a side stream, as PyTorch's CUDA-graph notes ask."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)
