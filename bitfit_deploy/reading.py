"""Opening files users name: regular files only. A FIFO blocks an open until a writer comes (a
server polling its task store hung for good on one), and a device such as /dev/zero never ends;
both are refused with an error that says what the path is."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from bitfit_deploy.errors import BitFitError

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular(
    path: str | os.PathLike[str],
    what: str,
    error: type[BitFitError],
    limit: int | None = None,
    fix: str = "give a file's path",
) -> BinaryIO:
    """`path` opened for reading if it is a regular file (of at most `limit` bytes), else
    `error` naming it. The open does not block, whatever the path is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        check_regular_path(path, what, error, fix)  # a socket, say, cannot be opened at all
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}.") from exc
    try:
        info = os.fstat(fd)
        _check_regular(info.st_mode, path, what, error, fix)
        if limit is not None and info.st_size > limit:
            raise error(
                f"{what} {str(path)!r} is {info.st_size:,} bytes, more than the {limit:,} "
                "allowed; is it the right file?"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular_path(
    path: str | os.PathLike[str],
    what: str,
    error: type[BitFitError],
    fix: str = "give a file's path",
) -> None:
    """`error` naming what `path` is if it exists and is no regular file; a missing path passes
    (the caller says it is missing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    _check_regular(mode, path, what, error, fix)


def _check_regular(
    mode: int, path: str | os.PathLike[str], what: str, error: type[BitFitError], fix: str
) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise error(f"{what} {str(path)!r} is {kind}, not a regular file; {fix}.")


def read_regular(
    path: str | os.PathLike[str], what: str, error: type[BitFitError], limit: int | None = None
) -> bytes:
    """The bytes of regular file `path` (see `open_regular`)."""
    with open_regular(path, what, error, limit) as fh:
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:  # it grew since the check
        raise error(f"{what} {str(path)!r} is more than the {limit:,} bytes allowed.")
    return data
