"""Shared fixtures: a CLI runner and the real CIFAR-10 copy (skipped where it is absent)."""

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


# tiny CIFAR data for any test, and the real copy (prepared once per session, skipped where absent)
from data_fixtures import learnable_root, real_cifar10_prepared, real_cifar10_root, tiny, tiny_cifar10_root  # noqa: E402, F401
