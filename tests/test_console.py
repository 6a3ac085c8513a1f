"""console.py: what the commands print. Most of it is checked through the commands (test_cli.py and
the command tests of each module); here, the pieces with rules of their own: notes and errors, the
progress of a training and of a compare, in a terminal and in a log, and what the commands say to a
new user (help, a misplaced name, a bad value)."""

import io
import re
from pathlib import Path

from rich.console import Console

from resbench import config, console
from resbench.compare import Planned
from resbench.console import ConsoleTracker
from resbench.sweep import Event


def test_a_note_and_an_error_are_one_line_each_with_their_label_and_no_markup() -> None:
    """Messages carry paths and user text: brackets must print as they are, not as rich markup, and a
    long message stays one line for grep."""
    out = io.StringIO()
    to = Console(file=out, width=40)
    message = "runs/[plain20]/seed0: " + "x" * 60
    console.print_note(message, to=to)
    assert out.getvalue() == f"note: {message}\n"
    err = io.StringIO()
    console.err, saved = Console(file=err, width=40), console.err
    try:
        console.print_error("bad [red]value[/red]", "stopped", stop=True)
    finally:
        console.err = saved
    assert err.getvalue() == "stopped: bad [red]value[/red]\n"


def test_console_eval_lines_show_no_train_numbers_before_the_first_log_window() -> None:
    """An eval before the first log point (or right after a resume) printed "train err nan% loss nan"."""
    out = io.StringIO()
    tracker = ConsoleTracker(Console(file=out, width=200))
    tracker.total = 40
    tracker.log(6, {"error/test": 80.0, "loss/test": 2.0})
    tracker.log(8, {"error/train": 75.0, "loss/train": 1.5, "lr": 0.1, "perf/images_per_sec": 1234.0})
    tracker.log(12, {"error/test": 70.0, "loss/test": 1.9, "error/val": 72.0})
    before, after = out.getvalue().splitlines()
    assert "nan" not in before and "img/s" not in before
    assert before == "iter  6/40  train err     -   loss     -  test err 80.00%"
    assert after == "iter 12/40  train err 75.00%  loss 1.500  test err 70.00%  val err 72.00%  1,234 img/s"


# --------------------------------------------------------------------------------------------
# compare's progress: SweepProgress, fed the events a sweep sends


class Clock:
    """A clock the test sets: SweepProgress reads elapsed time from it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plan(*names: str) -> list[Planned]:
    """Runs to train, 100 iterations each, as compare.plan returns them."""
    return [
        Planned(
            config.load(n, ["schedule.iterations=100", "schedule.milestones=[50]"]),
            Path(f"runs/{n}"),
            "empty",
        )
        for n in names
    ]


def train_one(progress: console.SweepProgress, clock: Clock, run: Path, seconds: float) -> None:
    """A run's events from start to done, `seconds` long: a log and evaluation at 50 and 100."""
    progress(Event(run, "start", 0, 100))
    for it, train_err, test_err in ((50, 60.0, 65.0), (100, 40.0, 45.0)):
        clock.now += seconds / 2
        progress(Event(run, "step", it))
        progress(Event(run, "log", it, metrics={"error/train": train_err, "loss/train": 1.0}))
        progress(Event(run, "log", it, metrics={"error/test": test_err, "loss/test": 1.0}))
    progress(Event(run, "done", message="done, test error 45.00%"))


def test_sweep_lines_without_a_terminal_say_where_each_run_is() -> None:
    """Before: `plain20 seed 0: iter 50  test err 65.0%`: no place in the sweep, no time, and no train
    error, the number that shows the degradation."""
    out, clock = io.StringIO(), Clock()
    progress = console.SweepProgress(Console(file=out, width=200), clock)
    progress.planned(plan("plain20", "plain56"), "1 at a time")
    train_one(progress, clock, Path("runs/plain20"), 90)
    assert out.getvalue().splitlines()[1:] == [
        "[1/2] plain20 seed 0: training (100 iterations)",
        "[1/2] plain20 seed 0  iter 50/100  elapsed 0:00:45  train err 60.00%  test err 65.00%",
        "[1/2] plain20 seed 0  iter 100/100  elapsed 0:01:30  train err 40.00%  test err 45.00%",
        # plain56: 100 iterations at 56/20 the cost of plain20's, done at its rate: 90 s x 2.8
        "[1/2] done plain20 seed 0: train 40.00% test 45.00% (0:01:30); 1/2 runs done, about 0:04:12 left",
    ]


def test_sweep_in_a_terminal_keeps_notes_and_done_lines_and_estimates_the_whole_sweep() -> None:
    """Before: a note glued onto a stale frame of the live display, a finished run's bar vanished
    without a trace, the overall ETA stayed -:--:--, and the final evaluation showed 0:00:00."""
    out, clock = io.StringIO(), Clock()
    progress = console.SweepProgress(
        Console(file=out, width=200, force_terminal=True, color_system=None), clock
    )
    progress.planned(plan("plain20", "plain56", "resnet56"), "1 at a time")
    assert progress.progress is not None
    overall = progress.progress.tasks[0]
    progress(Event(Path("runs/plain20"), "note", message="a JPEG copy of CIFAR-10"))
    progress(Event(Path("runs/plain20"), "start", 0, 100))
    clock.now = 30
    progress(Event(Path("runs/plain20"), "step", 100))
    task = progress.progress.tasks[-1]
    assert task.fields["eta"] == "evaluating"  # the last step is done, the final evaluation runs
    assert console._Remaining().render(task).plain == "evaluating"
    assert overall.fields["eta"] == "-:--:--"  # no run has finished yet
    progress(Event(Path("runs/plain20"), "log", 100, metrics={"error/train": 40.0, "loss/train": 1.0}))
    progress(Event(Path("runs/plain20"), "log", 100, metrics={"error/test": 45.0, "loss/test": 1.0}))
    progress(Event(Path("runs/plain20"), "done", message="done, test error 45.00%"))
    assert overall.fields["eta"] == "0:02:48"  # 2 x 56/20 of the 30 s plain20 took
    progress.close()
    printed = out.getvalue()
    assert "note: a JPEG copy of CIFAR-10\n" in printed
    assert (
        "[1/3] done plain20 seed 0: train 40.00% test 45.00% (0:00:30); 1/3 runs done, about 0:02:48 left\n"
        in printed
    )


def test_the_training_bar_says_evaluating_after_the_last_step_and_notes_print_above_it() -> None:
    out = io.StringIO()
    tracker = ConsoleTracker(Console(file=out, width=200, force_terminal=True, color_system=None))
    env = {"device": "cpu", "device_name": "a CPU", "precision": "fp32"}
    tracker.start(config.load("resnet20", ["schedule.iterations=10", "schedule.milestones=[5]"]), 0, env)
    assert tracker.progress is not None
    tracker.note("cuda_graph capture failed; eager steps")
    tracker.step(9)
    assert "eta" not in tracker.progress.tasks[0].fields
    tracker.step(10)
    assert console._Remaining().render(tracker.progress.tasks[0]).plain == "evaluating"
    tracker.close()
    assert "note: cuda_graph capture failed; eager steps\n" in out.getvalue()


# --------------------------------------------------------------------------------------------
# What the commands say


def test_flags_read_as_flags_in_help(cli) -> None:
    """Before: `--resume <bool>`, as if the flag took a value."""
    for command in (["train"], ["compare"], ["analyze"], []):
        result = cli(*command, "--help")
        assert result.exit_code == 0 and "<bool>" not in result.stdout, result.stdout
    assert re.search(r"--resume\s+Continue the run", cli("train", "--help").stdout)


def test_train_given_the_name_without_c_says_how(cli) -> None:
    """`show` and `compare` take the name as an argument; `train` takes it with -c."""
    result = cli("train", "resnet56")
    assert result.exit_code == 2 and "did you mean resbench train -c resnet56?" in result.stderr
    both = cli("train", "-c", "resnet56", "resnet20")
    assert both.exit_code == 2 and "drop resnet20" in both.stderr
    none = cli("train")
    assert none.exit_code == 2 and "resbench train -c NAME" in none.stderr


def test_milestones_as_a_bare_list_show_the_form_that_works(cli) -> None:
    """Before: `Input should be a valid tuple`, pydantic's words."""
    result = cli("show", "resnet20", "--set", "schedule.milestones=1000,1500")
    assert result.exit_code == 2
    assert "--set 'schedule.milestones=[1000,1500]'" in result.stderr and "tuple" not in result.stderr


def test_analyze_and_compare_exit_alike_for_a_directory_that_is_no_run(cli, tmp_path: Path) -> None:
    """Before: analyze exited 1 where compare exited 2. A damaged run directory fails both with 1."""
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert cli("analyze", path).exit_code == cli("compare", path, "--no-train").exit_code == 2
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "metrics.jsonl").write_text("")
    assert cli("analyze", tmp_path / "damaged").exit_code == 1
    assert cli("compare", tmp_path / "damaged", "--no-train").exit_code == 1


def test_progress_names_runs_of_a_sweep_by_their_values() -> None:
    """Runs of one name and seed differ only in their overrides: the label shows them, and only then."""
    from resbench import config
    from resbench.console import run_labels

    cfgs = [config.load("resnet20", [f"optim.weight_decay={wd}", "run.seed=1"]) for wd in (0, 1e-4)]
    cfgs.append(config.load("plain20", ["optim.weight_decay=0", "run.seed=1"]))
    assert run_labels(cfgs) == [
        "resnet20 [optim.weight_decay=0] seed 1",
        "resnet20 [optim.weight_decay=0.0001] seed 1",  # the config's own value: no override, but a label
        "plain20 seed 1",
    ]
