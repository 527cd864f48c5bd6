"""A failed write (disk full, read-only folder) as one line: the path and the OS's words.

Python's ``write``/``flush`` raise ``OSError`` without a file name, and safetensors reports
the same errno inside its own exception type (measured on a full 64 KiB tmpfs:
``SafetensorError('Error while serializing: I/O error: No space left on device (os error
28)')``), so the caller names the path it was writing and :func:`os_words` finds the OS's
words in either. No torch here: the CLI imports it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from cgpt.model.errors import CgptError

_RUST_IO = re.compile(r"I/O error: (.+?) \(os error (\d+)\)")


class WriteFailed(CgptError):
    """Writing ``path`` failed with the OS error ``words``; callers add what is intact."""

    def __init__(self, path: str | os.PathLike, words: str):
        super().__init__(f"cannot write {path}: {words}")
        self.path, self.words = str(path), words


def os_words(e: BaseException) -> str | None:
    """The OS's description of a failed write, or None if ``e`` is not one."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    m = _RUST_IO.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    return m.group(1) if m else None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OS write error inside into :class:`WriteFailed` naming ``path``."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as e:
        words = os_words(e)
        if words is None:
            raise
        raise WriteFailed(path, words) from e


def writable_alternative(name: str) -> str:
    """A new path called ``name`` in a folder this user can write to (the working folder,
    else home, else the temporary folder), for advice after a refused write."""
    import tempfile
    from pathlib import Path

    for folder in (Path.cwd(), Path.home(), Path(tempfile.gettempdir())):
        if os.access(folder, os.W_OK | os.X_OK):
            for i in range(100):
                p = folder / (name if i == 0 else f"{name}-{i}")
                if not os.path.lexists(p):
                    return str(p)
    return str(Path.home() / name)
