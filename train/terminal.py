"""A closed terminal (its window closed, an ssh connection dropped) as a stop, not a crash.

The kernel hangs the terminal up and sends SIGHUP to the session's leader (a shell passes it
on to its jobs); from then on every write to the terminal fails with EIO (Linux tty_io.c:
__tty_hangup swaps in hung_up_tty_fops, whose write returns -EIO). A trainer that printed
its next progress line would die there, before it saves. No torch here: the CLI imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


def leave_a_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a hung-up terminal. A zero-byte
    write is the probe: it fails on a hung-up terminal, and succeeds on a live one, a file
    or a pipe (whose reader may have left: Linux pipe_write returns 0 for 0 bytes). Safe in
    a signal handler; what was still buffered goes to /dev/null too."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


@contextlib.contextmanager
def surviving_a_hangup() -> Iterator[None]:
    """A console write inside that fails because the terminal hung up (EIO) moves the
    console to /dev/null and is dropped; the run goes on to its stop, and saves."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        leave_a_hung_up_terminal()
