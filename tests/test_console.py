"""console.py: what the commands print. Most of it is checked through the commands (test_cli.py and
the command tests of each module); here, the pieces with rules of their own."""

import io

from rich.console import Console

from resbench import console
from resbench.console import ConsoleTracker


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
