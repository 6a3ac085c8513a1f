"""hardware.py: device choice (no silent fallback), bf16 where it is native, and the kernel settings.
The kernel settings as a run records them in env.json are tested in test_train.py."""

import pytest
import torch

from resbench.errors import ConfigError
from resbench.hardware import native_bf16, resolve_device, resolve_precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


@pytest.mark.parametrize(
    "capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_bf16_is_native_on_cuda_from_compute_capability_8(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], native: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # it counts emulation too
    cuda = torch.device("cuda", 0)
    assert native_bf16(cuda) is native
    assert resolve_precision("auto", cuda) == ("bf16" if native else "fp32")
