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

from bitfit_deploy.errors import OutputExistsError, OutputPathError


def _umask_mode(base: int) -> int:
    """`base` filtered by the process umask: the mode a plain open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def check_output(
    path: str | os.PathLike[str], force: bool, what: str = "output", *, file: bool = False
) -> Path:
    """Refuse an existing output unless `force`, and one that cannot be written; return the path.

    `file`: the output is a file, so an existing folder there is refused even with `force`.
    Commands call it before their work, so a bad path fails in a second, not after training.
    """
    if not str(path).strip():
        raise OutputPathError(f"the {what} path is empty; give the path to write.")
    path = Path(path)
    if file and path.is_dir():
        raise OutputPathError(
            f"cannot write {what} {str(path)!r}: it is a folder; give the path of a file to write."
        )
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise OutputPathError(  # --force must never swap a device (/dev/null) or pipe for a file
            f"cannot write {what} {str(path)!r}: it is a device, pipe or socket, not a file; "
            "choose another path."
        )
    if path.exists() and not force:
        raise OutputExistsError(
            f"{what} {str(path)!r} exists already; pass --force (force=True) to overwrite it, "
            "or choose another path."
        )
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing folder: where the missing ones get made
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {what} {str(path)!r}: {str(folder)!r} is a file, not a folder; "
            "choose another path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"cannot write {what} {str(path)!r}: no permission to write in {str(folder)!r}; "
            "choose another path or change its permissions."
        )
    _probe_write(folder, path, what)
    return path


def _probe_write(folder: Path, path: Path, what: str) -> None:
    """Make and remove an empty file in `folder`: permission bits do not tell everything (root
    may "write" in /proc and /sys, a mount may be read-only), an actual write does."""
    import tempfile

    with _writing(path, what):
        fd, probe = tempfile.mkstemp(prefix=".bitfit-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError while making or placing the output into an OutputPathError naming it."""
    try:
        yield
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {what} {str(path)!r} ({exc.strerror or exc}); choose another path, "
            "or check the folder's permissions and free space."
        ) from exc


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = check_output(path, force, "output file", file=True)
    import tempfile

    with _writing(path, "output file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with _writing(path, "output file"):
            tmp_path.chmod(_umask_mode(0o666))  # mkstemp makes 0600; others (a server) must read it
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; swap it in for `path` only if the block succeeds."""
    path = check_output(path, force, "output folder")
    import shutil
    import tempfile

    with _writing(path, "output folder"):
        path.parent.mkdir(parents=True, exist_ok=True)
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
