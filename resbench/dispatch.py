"""What a training step dispatches: every aten op, the optimiser's share, and the ops that would
make a GPU wait for the host. No training code here; the tests and scripts/bench_train.py use it.

    with OpCounter() as ops:
        train_step(...)
    len(ops.ops), ops.optimizer_ops, ops.syncs

The counter is a TorchDispatchMode, so it sees each op once, after autograd and autocast and
before the backend kernel, on any device: a CPU run tells which ops a CUDA run would dispatch
(up to the optimiser's kernels, see `OpCounter`), and which of them would wait for the GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that, on a GPU, block the host until the device has finished everything queued before them.
# On CPU they cost nothing, which is why the list is checked by name and not by timing.
SYNC_OPS: dict[str, str] = {
    # A value copied into a Python number: Tensor.item(), float(t), int(t), bool(t). (tolist() on a
    # GPU tensor is a copy to host memory, caught below.)
    "aten._local_scalar_dense": "copies a value to the host",
    # is_nonzero (bool(t)) and item decompose into _local_scalar_dense before this mode in current
    # torch; named in case a torch dispatches them whole.
    "aten.is_nonzero": "copies a value to the host",
    "aten.item": "copies a value to the host",
    # They return a Python bool, computed on the device.
    "aten.equal": "returns a host bool",
    "aten.allclose": "returns a host bool",
    # The output's size depends on the data, so the host reads a count before allocating it.
    "aten.nonzero": "data-dependent output size",
    "aten.masked_select": "data-dependent output size",
    "aten._unique": "data-dependent output size",
    "aten._unique2": "data-dependent output size",
    "aten.unique_dim": "data-dependent output size",
    "aten.unique_consecutive": "data-dependent output size",
    "aten.bincount": "data-dependent output size",  # its length is the input's max + 1
}
# Not syncs, so not listed: aten._assert_async (the check runs on the device and fails the next
# sync, it does not wait), nonzero_static (a fixed size), and non_blocking copies from pinned host
# memory to the device.
# Invisible to any dispatch mode, so not caught here: torch.cuda.synchronize(), Event.synchronize()
# and the like, which are not aten ops.

_OPTIMIZER_STEP = "Optimizer.step#"  # torch.optim wraps every step() in a record_function so named


class OpCounter(TorchDispatchMode):
    """Record the aten ops dispatched while active, and those that would sync a GPU with the host.

    `optimizer_ops` counts the ops inside `optimizer.step()`. That share depends on the device:
    torch's SGD on CPU is a Python loop over the parameters (4 ops each with momentum and weight
    decay), its CUDA default the foreach path (4 ops, each launching a kernel per chunk of tensors),
    and `fused=True` one op per param group. Forward, loss and backward dispatch nearly the same ops
    on both devices (BN's CPU path adds an `empty` per layer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []  # "aten.convolution.default", in dispatch order
        self.syncs: list[str] = []  # "op: why", one per syncing op dispatched
        self.optimizer_ops = 0
        self._open: list[bool] = []  # the open record_function ranges, innermost last: an optimizer step?

    def __torch_dispatch__(
        self, func: torch._ops.OpOverload, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "profiler":  # markers, not work: used only to find the optimiser's ops
            # Ranges close in the reverse order they open; the handle passed to exit is another
            # Python object than the one enter returned, so it cannot be matched by identity.
            if func.__name__.startswith("_record_function_enter"):
                self._open.append(str(args[0]).startswith(_OPTIMIZER_STEP))
            elif func.__name__.startswith("_record_function_exit") and self._open:
                self._open.pop()
            return out
        self.ops.append(str(func))
        self.optimizer_ops += any(self._open)
        if why := _sync_reason(func, args, kwargs):
            self.syncs.append(f"{func}: {why}")
        return out


def _sync_reason(func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    name = func.overloadpacket._qualified_op_name.replace("::", ".")
    if name in SYNC_OPS:
        return SYNC_OPS[name]
    if func is torch.ops.aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "data-dependent output size (no output_size given)"
    # Indexing with a bool mask runs nonzero inside the kernel, where this mode no longer looks.
    if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "a mask index (runs nonzero)"
    # A copy from a device into host memory: a blocking one waits for the device, and a non_blocking
    # one needs a sync before the host may read it.
    if name in ("aten._to_copy", "aten.copy_", "aten.copy"):
        source = args[1] if name != "aten._to_copy" else args[0]
        target = kwargs.get("device") if name == "aten._to_copy" else args[0].device
        if (
            isinstance(source, torch.Tensor)
            and source.device.type not in ("cpu", "meta")
            and target is not None
            and torch.device(target).type == "cpu"
        ):
            return "a copy to host memory"
    return None
