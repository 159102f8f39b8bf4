"""Atomic writes: a file or folder appears whole or not at all, and nothing is overwritten without force.

`tempfile` and `shutil` are imported when a write happens: an app that only opens a bundle and
predicts never needs them, and they (with the `random`, `bz2` and `lzma` they pull in) cost about
7 ms of its cold start (`python -X importtime`, the README's machine).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bitfit_deploy.errors import OutputExistsError


def _umask_mode(base: int) -> int:
    """`base` filtered by the process umask: the mode a plain open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def check_output(path: str | os.PathLike[str], force: bool, what: str = "output") -> Path:
    """Refuse an existing output unless `force`; return the path."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(
            f"{what} {str(path)!r} exists already; pass --force (force=True) to overwrite it, "
            "or choose another path."
        )
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = check_output(path, force, "output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(_umask_mode(0o666))  # mkstemp makes 0600; others (a server) must read it
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; swap it in for `path` only if the block succeeds."""
    path = check_output(path, force, "output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(_umask_mode(0o777))  # mkdtemp makes 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
