"""The one exception type that reaches users as a single line and exit code 2, and the OS errors
that are the user's to fix, told the same way."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """Bad input: a missing file, an unknown name, a value out of range.

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback.
    The message must say what is wrong and what would be right.
    """


PATH_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG, errno.EFBIG}
"""OS errors that are about a path the user gave or a disk they control: one line, not a bug."""


def describe_os_error(exc: OSError) -> str:
    """One line: which file, what is wrong, and (for a full disk) which device and that the last
    good files were kept (every file tunelab writes is written aside and renamed into place)."""
    path = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"no space left on the device holding {path} (mounted at {mount_point(Path(str(path)))}) while "
                f"writing it; free some space and run the same command again: the last good files are intact")
    return f"{path}: {exc.strerror or exc}"


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path
