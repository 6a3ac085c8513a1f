"""`python -m resbench` and the `resbench` command: a stop is a message from the first moment on.

Importing the command line takes seconds (torch). A Ctrl-C or SIGTERM in that time would otherwise
print an import traceback or kill the process without a word (exit 143), and torch's import code
sometimes drops a KeyboardInterrupt altogether. So both signals are only noted while importing, and
a stop noted then exits 130 with one message, as a stop anywhere later does.

A torchrun worker ends with `os._exit` once the command is done, its files closed and its process
group destroyed. Gloo can abort a worker while the interpreter tears down ("terminate called
without an active exception", SIGABRT, about 1 run in 50 on a loaded 2-core CPU machine, after
training had finished); torchrun then reports the whole job failed and kills the other ranks.
Skipping the teardown of a process that has nothing left to do avoids that.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, NoReturn


def main() -> None:
    stops: list[int] = []

    def note(signum: int, frame: Any) -> None:
        stops.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, note)
    from resbench.cli import main as cli_main
    from resbench.distributed import from_env

    if stops:
        sys.stderr.write(f"stopped: {signal.Signals(stops[0]).name} while starting; nothing was done\n")
        raise SystemExit(130)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli_main()  # makes SIGTERM stop like Ctrl-C, as a KeyboardInterrupt
    except SystemExit as done:
        if from_env().enabled:  # a torchrun worker
            leave(done.code)
        raise


def leave(code: object) -> NoReturn:
    """Exit with SystemExit's meaning of `code`, without interpreter teardown."""
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
