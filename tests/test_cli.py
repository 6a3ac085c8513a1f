"""cli.py: commands, messages and exit codes, through Typer's CliRunner and `python -m resbench`."""

import subprocess
import sys

import pytest


def test_models_lists_every_bundled_config(cli) -> None:
    result = cli("models")
    assert result.exit_code == 0
    for name, params in [
        ("plain20", "269,722"),
        ("resnet56", "853,018"),
        ("resnet20_B", "272,474"),
        ("resnet20_C", "283,962"),
        ("resnet1202", "19,421,274"),
    ]:
        line = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert params in line


def test_show_prints_resolved_yaml_and_architecture(cli) -> None:
    result = cli("show", "resnet56", "--set", "optim.lr=0.05")
    assert result.exit_code == 0, result.output
    assert "lr: 0.05" in result.stdout and "depth: 56" in result.stdout
    assert "853,018" in result.stdout and "125.49M" in result.stdout and "A (zero-pad)" in result.stdout


def test_show_output_is_a_loadable_config(cli, tmp_path) -> None:
    from resbench import config

    text = cli("show", "plain20", "--preset", "quick").stdout
    yaml_part = text.split("\n\n")[0]
    path = tmp_path / "out.yaml"
    path.write_text(yaml_part)
    assert config.load(path) == config.load("plain20", preset="quick")


@pytest.mark.parametrize(
    "args,message",
    [
        (["show", "configs/plain56.yaml", "--set", "model.shortcut=B"], "a plain net"),
        (["show", "resnet57"], "did you mean resnet56"),
        (["show", "resnet20", "--set", "optim.lr=-1"], "optim.lr: must be positive"),
        (["show", "resnet20", "--set", "nokey"], "KEY=VALUE"),
        (["show", "resnet20", "--preset", "slow"], "no preset named 'slow'"),
    ],
)
def test_user_errors_exit_2_with_one_message(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "resbench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "show" in out.stdout and "models" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "resbench", "show", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no config named 'nope'" in bad.stderr and "Traceback" not in bad.stderr
