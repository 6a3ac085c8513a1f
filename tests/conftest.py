"""Shared fixtures: the CLI in-process and in a new process, and the tiny and real CIFAR data."""

import sys
from collections.abc import Callable, Iterable

import pytest
from typer.testing import CliRunner

from resbench.cli import app


@pytest.fixture
def cli():
    """Invoke `resbench ARGS...` in-process; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner(env={"COLUMNS": "200"})

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def resbench_command() -> Callable[..., list[str]]:
    """The command line of `resbench ARGS... --set S...` in a new process, for tests that send it
    signals or need `python -m resbench` itself: `python -m resbench`, or with `nproc` torchrun's
    `--standalone --nproc_per_node=NPROC -m resbench`."""

    def command(*args: object, sets: Iterable[str] = (), nproc: int | None = None) -> list[str]:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher = torchrun if nproc is not None else []
        options = [a for s in sets for a in ("--set", s)]
        return [sys.executable, *launcher, "-m", "resbench", *map(str, args), *options]

    return command


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda`-marked tests where torch sees no CUDA GPU; `pytest -m cuda` runs them on one."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# tiny CIFAR data for any test, and the real copy (prepared once per session, skipped where absent)
from data_fixtures import learnable_root, real_cifar10_prepared, real_cifar10_root, tiny, tiny_cifar10_root  # noqa: E402, F401
