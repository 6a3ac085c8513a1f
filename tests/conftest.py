"""Shared fixtures: a CLI runner and the real CIFAR-10 copy (skipped where it is absent)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from resbench.cli import app

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def cli():
    """Invoke `resbench ARGS...` in-process; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner(env={"COLUMNS": "200"})

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
