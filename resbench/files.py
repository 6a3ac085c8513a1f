"""Atomic file writes: a reader, or a crash, never sees half a file.

Every file resbench writes that matters goes through `atomic_open`: the data goes to a temp file
in the same directory, is flushed and fsynced, then renamed over the target with `os.replace`.
A failed write (a full disk, a read-only folder, a path through a file) raises `WriteError`, a
`ResbenchError` the CLI prints as one message, and leaves the target as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from resbench.errors import WriteError


def describe(err: OSError) -> str:
    """'PATH: reason' for a message, without Python's '[Errno 28]' prefix."""
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}" if err.filename else reason


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on a clean exit it replaces `path`, on an error it is removed.

    Any OSError on the way (creating, writing, syncing, renaming) becomes a `WriteError` naming `path`.
    """
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(err.errno, err.strerror or str(err), str(path)) from None
        raise
    _fsync_dir(path.parent)


def atomic_write(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
