"""cli.py: commands, messages and exit codes, through Typer's CliRunner and `python -m resbench`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resbench.cli import parse_seeds
from resbench.errors import ConfigError


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
        # Typer checks the choices since --preset is an Enum: its message, formerly "no preset named 'slow'"
        (["show", "resnet20", "--preset", "slow"], "'slow' is not one of 'paper', 'quick'"),
    ],
)
def test_user_errors_exit_2_with_one_message(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_python_dash_m_works(resbench_command) -> None:
    out = subprocess.run(resbench_command("--help"), capture_output=True, text=True)
    assert out.returncode == 0 and "show" in out.stdout and "models" in out.stdout
    bad = subprocess.run(resbench_command("show", "nope"), capture_output=True, text=True)
    assert bad.returncode == 2 and "no config named 'nope'" in bad.stderr and "Traceback" not in bad.stderr


SLOW_IMPORT = """
import sys, time
class SlowCli:  # makes importing resbench.cli take seconds, as torch's import does on a slow disk
    def find_spec(self, name, path=None, target=None):
        if name == "resbench.cli":
            sys.meta_path.remove(self)
            print("importing", flush=True)
            time.sleep(2)
        return None
sys.meta_path.insert(0, SlowCli())
from resbench.__main__ import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_command_line_imports_is_one_message_and_130(sig: str) -> None:
    """Before: an import traceback (Ctrl-C) or a silent exit 143 (SIGTERM), before any handler."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_IMPORT, "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "importing\n"
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"stopped: {sig} while starting" in err and "Traceback" not in err and "resnet56" not in out


LEAVE = """
import atexit, sys
import resbench.cli
def command():  # stands for a finished command; its output is still in the buffer
    print("done")
    sys.exit(None if sys.argv[1] == "none" else int(sys.argv[1]))
resbench.cli.main = command
atexit.register(lambda: print("interpreter teardown"))
from resbench.__main__ import main
main()
"""


@pytest.mark.parametrize("world_size,code", [("2", "0"), ("2", "none"), ("2", "130"), ("1", "130")])
def test_a_torchrun_worker_leaves_without_interpreter_teardown(world_size: str, code: str) -> None:
    """Gloo can abort a finished worker during interpreter teardown, and torchrun then fails the job.
    A worker's output is flushed and its exit code kept; a single process exits as usual."""
    env = {**os.environ, "WORLD_SIZE": world_size}
    out = subprocess.run([sys.executable, "-c", LEAVE, code], capture_output=True, text=True, env=env)
    assert out.returncode == (0 if code == "none" else int(code)), out.stderr
    assert out.stdout.startswith("done\n")
    assert ("interpreter teardown" in out.stdout) == (world_size == "1")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--retries", "3"], "--retries need --backend ray"),
        (["--cpus-per-run", "2"], "--cpus-per-run need --backend ray"),
        (["--backend", "ray", "--retries", "-1"], "--retries -1: must be 0 or more"),
        (["--backend", "ray", "--gpus-per-run", "-2"], "--gpus-per-run -2: must be 0 or more"),
        (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run 0: must be more than 0"),
    ],
)
def test_ray_options_are_checked_not_ignored(cli, tmp_path, args: list[str], message: str) -> None:
    """Before: with --backend local they were silently ignored, and with ray a negative value went
    through to Ray."""
    result = cli("compare", "plain20", "--runs-dir", tmp_path, "--no-train", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["train", "-c", "resnet20", "--device", "gpu"],
        ["compare", "plain20", "--device", "gpu"],
        ["analyze", "runs/x/seed0", "--device", "gpu"],
        ["evaluate", "runs/x/seed0", "--device", "gpu"],
        ["compare", "plain20", "--backend", "slurm"],
        ["data", "prepare", "--dataset", "cifar1000"],
        ["train", "-c", "resnet20", "--preset", "slow"],
    ],
)
def test_options_with_fixed_values_are_checked_by_typer_and_exit_2(cli, args: list[str]) -> None:
    """--device, --backend, --dataset and --preset are Literal or Enum types: a bad value exits 2
    (Typer's message, which names every choice) before anything loads."""
    result = cli(*args)
    assert result.exit_code == 2 and "is not one of" in result.stderr, result.output
    choices = {"--device": "'auto', 'cuda', 'mps', 'cpu'", "--backend": "'local', 'ray'"}
    choices |= {"--dataset": "'cifar10', 'cifar100'", "--preset": "'paper', 'quick'"}
    assert choices[args[-2]] in result.stderr and "Traceback" not in result.output


def test_help_lists_the_choices(cli) -> None:
    out = cli("compare", "--help").stdout
    assert "auto|cuda|mps|cpu" in out and "local|ray" in out and "paper|quick" in out


# --------------------------------------------------------------------------------------------
# --seeds


@pytest.mark.parametrize(
    "text,seeds", [("3", [0, 1, 2]), ("1", [0]), ("0,4", [0, 4]), (" 7 ", list(range(7))), ("5,", [5])]
)
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


def test_seeds_parse_as_count_or_list() -> None:
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7] and parse_seeds("5,") == [5]
    with pytest.raises(ConfigError):
        parse_seeds("x")
    with pytest.raises(ConfigError):
        parse_seeds("0")


@pytest.mark.parametrize(
    "text,message",
    [
        ("1,1", "repeats seed 1; give each seed once"),
        ("0,2,0,2", "repeats seeds 0, 2;"),
        ("0", "a count must be between 1 and 1000"),
        ("-2", "a count must be between 1 and 1000"),
        ("100000000", "a count must be between 1 and 1000"),
        ("0,-1", "seeds are 0 or more"),
        ("a,b", "expected a count (3) or a list (0,1,2)"),
        ("1.5", "expected a count"),
        (",", "expected 1 to 1000 seeds"),
        ("", "expected 1 to 1000 seeds"),
    ],
)
def test_bad_seeds_are_refused_up_front(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_seeds(text)
    assert message in str(err.value)


def test_train_with_duplicate_seeds_exits_2_before_training(cli, tmp_path: Path) -> None:
    result = cli("train", "-c", "resnet20", "--seeds", "1,1", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "repeats seed 1" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_evaluate_prints_the_table_and_notes_then_exits_1_where_numbers_differ(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table and each run's data line come first, then one error naming the run (stderr, exit 1)."""
    from resbench.analysis.evaluate import EXACT, Evaluation, SplitResult

    def evaluation(
        run_dir: Path, overrides: list[str], device: str | None, _split: str = "test"
    ) -> Evaluation:
        error = 12.5 if run_dir.name == "bad" else 10.0
        split = SplitResult("test", 40, error, 0.5, 10.0, 0.5)
        return Evaluation(
            run_dir, "resnet20", 0, 20, 20, "cpu", "fp32", Path("data"), "abc123", "the cache", True,
            ("a copy [with brackets]",), (split,), EXACT,
        )  # fmt: skip

    monkeypatch.setattr("resbench.cli.evaluate_run", evaluation)
    monkeypatch.setattr("resbench.cli.is_run_dir", lambda path: True)  # no run directories behind these
    good = cli("evaluate", "runs/good")
    assert good.exit_code == 0 and "agrees (exact)" in good.stdout and good.stderr == ""
    assert "  note: a copy [with brackets]" in good.stdout and "fingerprint abc123" in good.stdout
    result = cli("evaluate", "runs/good", "runs/bad")
    assert result.exit_code == 1 and "differs" in result.stdout
    assert result.stderr.startswith("error: runs/bad: the saved model's errors differ from summary.json")
