"""README.md: every command in its code blocks parses, and each one that takes configs resolves them.

A command is a line of a fenced code block that starts with `resbench`, `python -m resbench` or
`torchrun ... -m resbench`. Each must parse (its command and every option exist). `show`, `train`
and `compare` then run through the CLI up to the point where training would start, so a config
error in the README fails here. Commands naming run directories (`runs/...`) or a placeholder
(`...`) need real runs, so they are only parsed. A comment like `# error, exit 2` states the exit
code the README promises.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from resbench import config

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Command:
    line: str  # as written, continuation lines joined
    args: tuple[str, ...]  # what follows `resbench`
    exit_code: int  # 0, or what the line's comment promises ("# error, exit 2")

    @property
    def resolvable(self) -> bool:
        needs_runs = any(a.startswith("runs/") or a == "..." for a in self.args)
        return bool(self.args) and self.args[0] in ("show", "train", "compare") and not needs_runs


def readme_commands(text: str) -> list[Command]:
    commands = []
    for block in re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            code, _, comment = line.strip().partition(" #")
            words = shlex.split(code) if code.startswith(("resbench", "python -m", "torchrun")) else []
            if words[:1] == ["resbench"]:
                args = words[1:]
            elif words[:3] == ["python", "-m", "resbench"]:
                args = words[3:]
            elif "-m" in words and words[words.index("-m") + 1 :][:1] == ["resbench"]:  # torchrun
                args = words[words.index("-m") + 2 :]
            else:
                continue
            promised = re.search(r"exit (\d+)", comment)
            commands.append(Command(" ".join(line.split()), tuple(args), int(promised[1]) if promised else 0))
    return commands


COMMANDS = readme_commands(README.read_text())


def test_the_readme_commands_are_found() -> None:
    assert len(COMMANDS) >= 20
    assert {c.args[0] for c in COMMANDS} >= {"show", "train", "compare", "analyze"}
    assert any(c.line.startswith("torchrun") for c in COMMANDS)
    assert sum(c.resolvable for c in COMMANDS) >= 15


def test_the_parser_reads_continuations_comments_and_quotes() -> None:
    text = (
        "```bash\n"
        "torchrun --nproc_per_node=2 \\\n    -m resbench train -c resnet20   # two ranks\n"
        "resbench show x --set a='[1, 2]'   # error, exit 2\n"
        "make demo\n"
        "```\n"
        "  ```\n  python -m resbench models\n  ```\n"
    )
    assert readme_commands(text) == [
        Command(
            "torchrun --nproc_per_node=2 -m resbench train -c resnet20 # two ranks",
            ("train", "-c", "resnet20"),
            0,
        ),
        Command("resbench show x --set a='[1, 2]' # error, exit 2", ("show", "x", "--set", "a=[1, 2]"), 2),
        Command("python -m resbench models", ("models",), 0),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.line for c in COMMANDS])
def test_every_readme_command_parses(cli, command: Command) -> None:
    """`--help` is eager: it stops after parsing, which fails (exit 2) on an unknown command or option."""
    result = cli(*command.args, "--help")
    assert result.exit_code == 0, result.output


class Resolved(Exception):
    """Raised where the command would start training: every config it needs has been resolved."""


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c.resolvable], ids=[c.line for c in COMMANDS if c.resolvable]
)
def test_every_readme_command_resolves_its_configs(
    cli, command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resbench.experiment

    loaded: list[config.RunConfig] = []
    load, plan, plan_runs = config.load, resbench.experiment.plan, resbench.experiment.plan_runs

    def recording_load(*args: Any, **kwargs: Any) -> config.RunConfig:
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Resolved

    def plan_then_stop(*args: Any, **kwargs: Any) -> None:
        plan(*args, **kwargs)
        raise Resolved

    def plan_runs_then_stop(*args: Any, **kwargs: Any) -> None:  # compare --dry-run
        plan_runs(*args, **kwargs)
        raise Resolved

    monkeypatch.chdir(tmp_path)  # no runs/ here: nothing is reused, nothing written
    monkeypatch.setattr(config, "load", recording_load)
    monkeypatch.setattr("resbench.rundir.load", recording_load)  # rundir.load_config: train, compare
    monkeypatch.setattr(resbench.experiment, "train_run", stop)
    monkeypatch.setattr(resbench.experiment, "plan", plan_then_stop)
    monkeypatch.setattr(resbench.experiment, "plan_runs", plan_runs_then_stop)
    result = cli(*command.args)
    if command.exit_code:
        assert result.exit_code == command.exit_code and "Traceback" not in result.output
    elif command.args[0] == "show":
        assert result.exit_code == 0, result.output
    else:
        assert isinstance(result.exception, Resolved), result.output
    assert loaded or command.exit_code
