"""Where a run computes and in what precision: the device, bf16 or fp32, and the CUDA kernel settings.

    resolve_device("auto") -> torch.device      resolve_precision("auto", device) -> "bf16" | "fp32"
    set_kernels(device, deterministic) -> the settings env.json records
    autocast(device, precision)

No training here (train.py); evaluation and analysis pick their device through the same functions,
so `auto` means one thing everywhere. Asking for a device that is not there is an error, never a
silent fallback.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from resbench import distributed
from resbench.distributed import Dist
from resbench.errors import ConfigError


def resolve_device(name: str, d: Dist = distributed.SINGLE) -> torch.device:
    """`auto` picks cuda, then mps, then cpu. Asking for a device that is not there is an error.
    Under torchrun, each rank takes the GPU of its LOCAL_RANK."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(n for n in ("cuda", "mps", "cpu") if available[n])
    if name == "cuda" and available["cuda"] and d.enabled:
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    if not available[name]:
        raise ConfigError(
            f"run.device is {name!r} but this machine has no {name.upper()} device "
            "that torch can use; use --device cpu or --device auto"
        )
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":  # Ampere (8.0) and later; is_bf16_supported() also counts emulation
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":  # AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower than fp32
        cpu = getattr(torch, "cpu", None)
        return bool(
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "mps":
        raise ConfigError("run.precision bf16 is not supported on mps; use fp32 or auto")
    return precision


def set_kernels(device: torch.device, deterministic: bool) -> dict[str, bool]:
    """Choose the CUDA kernels; returns the settings for env.json.

    TF32 is off: a run that says fp32 computes in fp32 (cuDNN would otherwise use TF32 convs on
    Ampere and later), and bf16 autocast is the fast path. `deterministic` trades cudnn.benchmark's
    fastest kernels for reproducible ones, so that a resumed GPU run can match one done in one go.
    """
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic  # fixed shapes: pick once
    if deterministic:  # cuBLAS reads this when it starts, i.e. before the first matmul of the process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for convs and matmuls; weights, BN statistics and the loss stay in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
