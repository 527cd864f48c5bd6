"""How cgpt puts files on disk: one atomic writer, umask-following modes, no symlink writes.

Every file or folder cgpt publishes for people to read gets the mode the user's umask gives
an ordinary file (0644/0755 under umask 022, 0600/0700 under 077), like ``open()`` and
``mkdir`` would; temporary files (``mkstemp``/``mkdtemp`` make them 0600/0700) stay private
until the rename that publishes them. Files cgpt creates or truncates in place (lock files)
are opened with ``O_NOFOLLOW``, so a symbolic link planted at such a name is refused with one
line instead of truncating whatever it points to. Temporary folders are held with an
``flock`` while in use, so the next writer of the same output can tell a stale one (left by a
killed process) from a live one and remove it. No torch here: quick verbs import this.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cgpt.model.errors import CgptError


# ---- modes ---------------------------------------------------------------------------------
def umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc; os.umask
    can only be read by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def file_mode(executable: bool = False) -> int:
    """The mode ``open()`` gives a new file (0o666 & ~umask; 0o777 & ~umask if executable)."""
    return (0o777 if executable else 0o666) & ~umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder (0o777 & ~umask)."""
    return 0o777 & ~umask()


def make_public(path: str | os.PathLike, executable: bool = False) -> None:
    """Give a temporary file or folder (private by mkstemp/mkdtemp) the mode an ordinary one
    of the user's gets, just before it is published; never follows a link."""
    p = Path(path)
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return
    os.chmod(p, dir_mode() if stat.S_ISDIR(st.st_mode) else file_mode(executable))


# ---- no writes through links ---------------------------------------------------------------
def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o666, what: str = "") -> int:
    """``os.open`` with ``O_NOFOLLOW``: a symbolic link at ``path`` is a CgptError (one line),
    never followed, so the file it points to is not created, truncated or written."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise CgptError(
                f"{what + ' ' if what else ''}{str(path)!r} is a symbolic link; cgpt does not "
                "write through links: remove it (and check where it points), then run again"
            ) from None
        raise


def open_append(path: str | os.PathLike, what: str = ""):
    """A text file opened for appending (created with the umask's mode if missing), never
    through a symbolic link (metrics.jsonl, logs)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    return os.fdopen(open_nofollow(path, flags, 0o666, what), "a")


def refuse_link(path: str | os.PathLike, what: str = "") -> None:
    """CgptError if ``path`` is a symbolic link (checked before deleting or replacing it)."""
    if os.path.islink(path):
        raise CgptError(
            f"{what + ' ' if what else ''}{str(path)!r} is a symbolic link; cgpt does not "
            "replace or delete through links: remove it yourself, then run again"
        )


# ---- the one atomic writer -----------------------------------------------------------------
def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable; a filesystem that cannot fsync a folder is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike, data: str | bytes, executable: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``data`` to ``path`` through a private temporary file in the same folder: write,
    fsync, give it the umask's mode, rename over ``path`` (a link there is replaced, never
    followed), fsync the folder. A failure leaves ``path`` as it was and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode(encoding, "surrogateescape") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.fchmod(f.fileno(), file_mode(executable))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # and so is the rename
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, executable: bool = False) -> Iterator[Path]:
    """For writers that need a file name (safetensors, matplotlib): yield a private temporary
    name beside ``path``; on success it gets the umask's mode and is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode(executable))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after the rename; removes a failed one


# ---- temporary folders that the next writer can clean up -----------------------------------
TMP_SUFFIX = ".tmp"


class HeldTempDir:
    """A private folder ``.NAME.<random>.tmp`` beside ``target``, flock-held while its
    process lives. :func:`remove_stale` deletes the ones whose holder is gone."""

    def __init__(self, target: str | os.PathLike):
        target = Path(target)
        self.path = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
        )
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # no flock on this filesystem: remove_stale then never takes it for stale

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def remove_stale(target: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` folders beside ``target`` that no live process holds (a
    killed writer's leftovers); return them. A folder that cannot be locked is kept."""
    target = Path(target)
    removed: list[Path] = []
    try:
        entries = list(target.parent.glob(f".{glob.escape(target.name)}.*{TMP_SUFFIX}"))
    except OSError:
        return removed
    for p in entries:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # a link or not a folder: not ours to delete
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it (or flock is unsupported: keep it)
        try:
            shutil.rmtree(p, ignore_errors=True)  # rmtree never follows links inside
            removed.append(p)
        finally:
            os.close(fd)
    return removed


__all__ = [
    "umask",
    "file_mode",
    "dir_mode",
    "make_public",
    "open_nofollow",
    "open_append",
    "refuse_link",
    "fsync_dir",
    "write_atomic",
    "atomic_path",
    "HeldTempDir",
    "remove_stale",
]
