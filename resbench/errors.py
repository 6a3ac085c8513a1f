"""Every error a user can fix, in one place, with the exit code the CLI gives it.

The CLI prints a `ResbenchError` as one message, without a traceback, and exits with its
`exit_code`: 2 for a bad parameter or config (the Unix usage convention, as Click's), 1 for a run
or a file that failed, 130 for a stop by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it).
Anything else that escapes is a bug, and keeps its traceback.
"""

from __future__ import annotations


class ResbenchError(Exception):
    """A problem the user can fix; the message names it and the fix."""

    exit_code = 1
    label = "error"  # the word the CLI prints before the message


class ConfigError(ResbenchError):
    """A config, an override or an option that cannot be read or is not valid."""

    exit_code = 2


class CompareError(ResbenchError):
    """Runs that cannot be compared as asked (different recipes, nothing to compare)."""

    exit_code = 2


class DataError(ResbenchError):
    """Data that is missing, corrupt or unusable; the message names the file and the fix."""


class CheckpointError(ResbenchError):
    """A `last.pt` that cannot be read, or that belongs to another run."""


class RunDirError(ResbenchError):
    """A run directory that cannot be used as asked: busy, occupied, damaged or not writable."""


class ReportError(ResbenchError):
    """A report folder that cannot be written."""


class WriteError(ResbenchError, OSError):
    """A file that could not be written. Still an OSError, so callers that tolerate one keep doing so."""

    def __str__(self) -> str:
        return (
            f"cannot write {self.filename}: {self.strerror}. Free space there or make the folder "
            "writable, or choose another folder (--runs-dir, --out, --root)"
        )


class CaptureError(ResbenchError):
    """run.cuda_graph could not capture the step on this GPU; the run stops rather than go on with a
    batch generator that a failed capture may have left in capture mode."""


class Diverged(ResbenchError):
    """The loss, the weights or the BN statistics became NaN or infinite; earlier checkpoints are kept."""


class Interrupted(ResbenchError):
    """SIGINT or SIGTERM: the checkpoint is written and the run can be resumed."""

    exit_code = 130
    label = "stopped"
