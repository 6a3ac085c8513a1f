"""resbench: plain vs residual CIFAR nets, the degradation experiment of He et al. 2015 (§4.2)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resbench")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0+unknown"
