"""`python -m resbench` and the `resbench` command: a stop is a message from the first moment on.

Importing the command line takes seconds (torch). A Ctrl-C or SIGTERM in that time would otherwise
print an import traceback or kill the process without a word (exit 143), and torch's import code
sometimes drops a KeyboardInterrupt altogether. So both signals are only noted while importing, and
a stop noted then exits 130 with one message, as a stop anywhere later does.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


def main() -> None:
    stops: list[int] = []

    def note(signum: int, frame: Any) -> None:
        stops.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, note)
    from resbench.cli import main as cli_main

    if stops:
        sys.stderr.write(f"stopped: {signal.Signals(stops[0]).name} while starting; nothing was done\n")
        raise SystemExit(130)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()  # makes SIGTERM stop like Ctrl-C, as a KeyboardInterrupt


if __name__ == "__main__":
    main()
