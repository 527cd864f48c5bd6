"""One writer per folder: an OS file lock held for as long as a run (or a prepare) writes.

``FolderLock(folder)`` takes an exclusive ``fcntl.flock`` on ``folder/.cgpt.lock`` and writes
the holder's pid, host, start time and command line into it. A second writer gets one
:class:`CgptError` line naming the holder. The OS drops the lock when its process dies
(killed, crashed, preempted), so a stale lock file left by a dead process is simply taken
over; the file itself is never deleted while in use (deleting a lock file races). A
symbolic link at the lock's name is refused (``O_NOFOLLOW``), never written through.

flock is advisory and per open file: it protects against every cgpt process on the hosts
that share the filesystem's locking (local disks, NFSv4, Lustre with flock enabled).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.files import open_nofollow

LOCK_NAME = ".cgpt.lock"


class FolderLock:
    def __init__(self, folder: str | os.PathLike, what: str = "run folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise CgptError(
                f"{self.what} {str(self.folder)!r} is a file, not a folder; choose another path"
            )
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link planted at the lock's name is refused, never truncated
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666, "lock")
        except CgptError:
            self._cleanup_created()
            raise
        except OSError as e:
            self._cleanup_created()
            raise CgptError(
                f"cannot create {self.what} {str(self.folder)!r}: {e.strerror or e}"
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a hard link is truncated too
            os.close(fd)
            raise CgptError(
                f"lock {str(self.path)!r} is not a plain file of its own (a hard link or a "
                "special file); cgpt does not write through it: remove it, then run again"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise CgptError(
                f"{self.what} {str(self.folder)!r} is in use by {holder}; wait for "
                "it to finish or stop it, or use another folder"
            ) from None
        self._fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "argv": sys.argv,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # the lock itself is held; the holder note is only for the message above
        return self

    def release(self, cleanup_if_unused: bool = False) -> None:
        """Drop the lock. With ``cleanup_if_unused``, a folder this lock created and that
        holds nothing else is removed again (a run refused at start leaves no trace)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # no holder any more: a released lock file is empty
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if cleanup_if_unused:
            self._cleanup_created()

    def _cleanup_created(self) -> None:
        if not self._created:
            return
        try:
            if {p.name for p in self.folder.iterdir()} <= {LOCK_NAME}:
                self.path.unlink(missing_ok=True)
                self.folder.rmdir()
        except OSError:
            pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(cleanup_if_unused=exc_type is not None)


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} (since {since})"
