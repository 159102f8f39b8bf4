"""The task store: one folder of `NAME.safetensors` deltas that every server replica serves.

`TaskStore` is the folder: it writes atomically (temp file in the folder, fsync, rename, fsync of
the folder), so a reader sees a whole old file or a whole new one. `StoreSync` keeps one
runtime in step with it: `sync()` loads new and changed files and unloads removed ones (the
server calls it every `poll_s` seconds), and the admin calls (`put`, `delete`, `load`,
`unload`) change the folder first and the runtime after. A file that fails to load is reported
by name and skipped; if an older version of that task is loaded, it keeps serving.

`NAME.unloaded` beside a delta (written by `unload`, removed by `load` or `put`) keeps that
task out of every replica until it is loaded again. Tasks the runtime had before the store
(the bundle's, `--task` files) are not the store's: the admin calls refuse them.

`MemoryTasks` is the same interface without a folder: admin changes live in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from bitfit_deploy.contract import TASK_NAME, TASK_NAME_RULE
from bitfit_deploy.errors import BitFitError, DeltaFormatError, TaskNotFoundError
from bitfit_deploy.reading import read_regular
from bitfit_deploy.runtime.oip import MODEL_VERSION
from bitfit_deploy.runtime.runtime import Runtime

log = logging.getLogger("bitfit_deploy.store")

SUFFIX = ".safetensors"
UNLOADED = ".unloaded"
MAX_FILE_BYTES = 256 << 20
"""A task file larger than this is no delta (a MiniLM delta is 0.1 MiB; uploads stop at 64 MiB)."""
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
"""Task states as the Open Inference Protocol's repository index names them."""


class TaskStoreError(BitFitError, OSError):
    """The task store folder cannot be read or written."""


class StoreConflictError(BitFitError, ValueError):
    """An admin call this server cannot make durable: no task store, or a task that is not in it."""


@dataclass(frozen=True)
class Stamp:
    """What identifies one version of a file without reading it: inode, size and times."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class TaskStore:
    """A folder of task deltas, `NAME.safetensors`, written atomically; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TaskStoreError(
                f"task store {str(self.root)!r} is not a folder; create it (mkdir -p) first."
            )
        mask = os.umask(0)  # read once here: os.umask is process-wide, not thread-safe
        os.umask(mask)
        self._mode = 0o666 & ~mask

    def path(self, name: str) -> Path:
        """The delta file of task `name`."""
        return self.root / f"{name}{SUFFIX}"

    def source(self, name: str) -> str:
        """How errors name task `name`'s file: without the folder, which clients need not see."""
        return f"task store file {name}{SUFFIX}"

    def mark(self, name: str) -> Path:
        """The file that keeps task `name` unloaded."""
        return self.root / f"{name}{UNLOADED}"

    def scan(self) -> tuple[dict[str, Stamp], set[str], list[str]]:
        """(stamps of the task files, names marked unloaded, files with unusable names)."""
        files: dict[str, Stamp] = {}
        unloaded: set[str] = set()
        bad: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:
            raise TaskStoreError(f"cannot list the task store {str(self.root)!r} ({exc}).") from exc
        for entry in entries:
            if entry.name.startswith("."):  # temp files of writers in progress
                continue
            for suffix in (SUFFIX, UNLOADED):
                if entry.name.endswith(suffix):
                    name = entry.name[: -len(suffix)]
                    if not TASK_NAME.fullmatch(name):
                        bad.append(entry.name)
                    elif suffix == UNLOADED:
                        unloaded.add(name)
                    else:
                        try:
                            files[name] = Stamp.of(entry.stat())
                        except OSError as exc:  # removed meanwhile, or else reported by the read:
                            # a link to nothing, a link loop, no permission (stamped by the link)
                            if not isinstance(exc, FileNotFoundError) or entry.is_symlink():
                                files[name] = Stamp.of(entry.stat(follow_symlinks=False))
        return files, unloaded, sorted(bad)

    def read(self, name: str) -> bytes:
        """The bytes of task `name`'s file; DeltaFormatError if it is no regular file (a FIFO
        would block the store for good) or larger than MAX_FILE_BYTES."""
        return read_regular(self.path(name), "task store file", DeltaFormatError, MAX_FILE_BYTES)

    def stage(self, data: bytes) -> Path:
        """Write `data` to a durable temp file in the store (invisible to `scan`); return its path."""
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, self._mode)  # mkstemp makes 0600; other replicas must read it
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise self._error("write", tmp, exc) from exc
        return Path(tmp)

    def commit(self, staged: Path, name: str) -> Stamp:
        """Rename a staged file to task `name`'s file, clear its unloaded mark; return its stamp."""
        path = self.path(name)
        try:
            os.replace(staged, path)
            self.mark(name).unlink(missing_ok=True)
            self._fsync_dir()
            return Stamp.of(path.stat())
        except OSError as exc:
            raise self._error("write", path, exc) from exc
        finally:
            staged.unlink(missing_ok=True)

    def remove(self, name: str) -> bool:
        """Delete task `name`'s file and mark; True if the file existed."""
        try:
            self.mark(name).unlink(missing_ok=True)
            existed = self.path(name).exists()
            self.path(name).unlink(missing_ok=True)
            self._fsync_dir()
        except OSError as exc:
            raise self._error("delete", self.path(name), exc) from exc
        return existed

    def mark_unloaded(self, name: str, unloaded: bool) -> None:
        """Create (or remove) `NAME.unloaded`, which keeps the task out of every replica."""
        mark = self.mark(name)
        staged = self.stage(b"") if unloaded else None
        try:
            if staged is not None:
                os.replace(staged, mark)
            else:
                mark.unlink(missing_ok=True)
            self._fsync_dir()
        except OSError as exc:
            raise self._error("write", mark, exc) from exc
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)

    def _fsync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _error(self, verb: str, path: str | os.PathLike[str], exc: OSError) -> TaskStoreError:
        return TaskStoreError(
            f"cannot {verb} {str(path)!r} in the task store ({exc.strerror or exc}); check that "
            "the folder exists, is writable by the server and has free space."
        )


class TaskAdmin(Protocol):
    """What the server's admin routes call; `StoreSync` and `MemoryTasks` implement it."""

    durable: bool

    def put(self, name: str, data: bytes) -> bool: ...
    def delete(self, name: str) -> None: ...
    def load(self, name: str) -> None: ...
    def unload(self, name: str) -> None: ...
    def index(self) -> list[dict[str, str]]: ...
    def describe(self) -> dict[str, Any]: ...


class MemoryTasks:
    """Admin changes in this process's memory only: a restart or another replica never sees them."""

    durable = False

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def put(self, name: str, data: bytes) -> bool:
        """Load (or replace) task `name` from a delta file's bytes; True if it was loaded before."""
        existed = name in self.runtime.tasks
        self.runtime.load_task_bytes(data, name, True)
        return existed

    def delete(self, name: str) -> None:
        """Unload task `name`."""
        self.runtime.unload_task(name)

    def load(self, name: str) -> None:
        """Refused: there is no store to load from."""
        raise StoreConflictError(_NO_STORE)

    def unload(self, name: str) -> None:
        """Refused: there is no store to load the task from again."""
        raise StoreConflictError(_NO_STORE)

    def index(self) -> list[dict[str, str]]:
        """Every loaded task, READY."""
        return [_index_row(n, READY, "") for n in sorted(self.runtime.tasks)]

    def describe(self) -> dict[str, Any]:
        """How tasks are kept, for `GET /v1/tasks` and the start-up line."""
        return {
            "durable": False,
            "detail": "admin changes live in this process only and are lost on restart; "
            "start the server with --tasks-dir DIR to keep them.",
        }


_NO_STORE = (
    "this server has no task store, so it cannot load or unload tasks by name; start it with "
    "--tasks-dir DIR, or use PUT/DELETE /v1/tasks/NAME."
)


@dataclass(frozen=True)
class _Entry:
    """One store task as this replica last saw it."""

    stamp: Stamp | None
    """The file version last read (loaded or failed)."""
    sha256: str | None
    """The content this replica serves; None if it serves none."""
    state: str
    reason: str = ""


_UNLOADED = _Entry(None, None, UNAVAILABLE, "unloaded; load it through the repository API")
BAD_NAME = f"its name is no task name ({TASK_NAME_RULE}); rename the file"


class StoreSync:
    """Keeps `runtime` in step with `store`; thread-safe; see the module docstring.

    Example:
        sync = StoreSync(TaskStore("tasks/"), runtime)
        for problem in sync.sync():   # at start: load every delta, report the bad ones
            print(problem)
    """

    durable = True

    def __init__(self, store: TaskStore, runtime: Runtime, poll_s: float = 2.0) -> None:
        self.store = store
        self.runtime = runtime
        self.poll_s = poll_s
        self._fixed = frozenset(runtime.tasks)
        """The tasks the runtime had before the store: the bundle's and --task files."""
        self._entries: dict[str, _Entry] = {}
        self._bad: set[str] = set()
        """Files with unusable names, reported once."""
        self._lock = threading.RLock()

    # ------------------------------------------------------------ following
    def sync(self, log_problems: bool = True) -> list[str]:
        """Load new and changed files, unload removed or marked ones; one line per problem found,
        also logged unless the caller reports them itself (`log_problems=False`)."""
        with self._lock:
            files, unloaded, bad = self.store.scan()
            problems = [
                f"{self.store.root / b}: skipped; {BAD_NAME}." for b in bad if b not in self._bad
            ]
            self._bad = set(bad)
            for name, stamp in sorted(files.items()):
                problem = self._follow(name, stamp, name in unloaded)
                if problem:
                    problems.append(problem)
            for name in [n for n in self._entries if n not in files]:
                if self._entries.pop(name).sha256 is not None:
                    self._unload_quietly(name)
                    log.info("task %s: its file is gone; unloaded", name)
            for line in problems if log_problems else ():
                log.warning("%s", line)
            return problems

    def _follow(self, name: str, stamp: Stamp, unloaded: bool) -> str | None:
        """Bring task `name` in step with its file; a problem line, or None."""
        entry = self._entries.get(name)
        if name in self._fixed:
            if entry is not None:
                return None
            reason = "a task of this name ships with the bundle or --task"
            self._entries[name] = _Entry(stamp, None, UNAVAILABLE, reason)
            return f"{self.store.path(name)}: skipped; {reason}. Rename the file."
        if unloaded:
            if entry is not None and entry.sha256 is not None:
                self._unload_quietly(name)
                log.info("task %s: marked unloaded; unloaded", name)
            self._entries[name] = _UNLOADED
            return None
        if entry is not None and entry.stamp == stamp:
            return None  # this version was read already (loaded, or failed and reported)
        return self._load(name, stamp, entry)

    def _load(self, name: str, stamp: Stamp, entry: _Entry | None) -> str | None:
        """Read and load task `name`'s file; on failure keep what is loaded and say why."""
        path = self.store.path(name)
        try:
            data = self.store.read(name)
            sha = hashlib.sha256(data).hexdigest()
            if entry is None or entry.sha256 != sha:
                self.runtime.load_task_bytes(data, name, True, self.store.source(name))
                log.info("task %s: loaded %s", name, path)
        except (BitFitError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if entry is not None and entry.sha256 is not None:
                reason = f"serving the previous version; the file failed: {why}"
                self._entries[name] = replace(entry, stamp=stamp, reason=reason)
                return f"{path}: kept the previous version of task {name!r}; {why}"
            self._entries[name] = _Entry(stamp, None, UNAVAILABLE, why)
            return f"{path}: skipped; {why}"
        self._entries[name] = _Entry(stamp, sha, READY)
        return None

    # ---------------------------------------------------------------- admin
    def put(self, name: str, data: bytes) -> bool:
        """Validate `data`, write it as task `name`'s file, serve it; True if it replaced a task."""
        with self._lock:
            self._check_ours(name)
            existed = name in self.runtime.tasks
            staged = self.store.stage(data)
            try:
                self.runtime.load_task_bytes(data, name, True)  # validates, then serves
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            try:
                stamp = self.store.commit(staged, name)
            except TaskStoreError:
                self._restore(name, existed)
                raise
            self._entries[name] = _Entry(stamp, hashlib.sha256(data).hexdigest(), READY)
            return existed

    def delete(self, name: str) -> None:
        """Delete task `name`'s file (and mark) and unload it."""
        with self._lock:
            self._check_ours(name)
            existed = self.store.remove(name)
            entry = self._entries.pop(name, None)
            loaded = name in self.runtime.tasks
            if loaded:
                self._unload_quietly(name)
            if not existed and entry is None and not loaded:
                raise TaskNotFoundError(self._not_in_store(name))

    def load(self, name: str) -> None:
        """Load task `name` from its file again, clearing an unloaded mark."""
        with self._lock:
            if name in self._fixed and name in self.runtime.tasks:
                return
            self._check_ours(name)
            path = self.store.path(name)
            try:
                stamp = Stamp.of(path.stat())
            except FileNotFoundError:
                raise TaskNotFoundError(self._not_in_store(name)) from None
            data = self.store.read(name)
            self.runtime.load_task_bytes(data, name, True, self.store.source(name))
            self.store.mark_unloaded(name, False)
            self._entries[name] = _Entry(stamp, hashlib.sha256(data).hexdigest(), READY)

    def unload(self, name: str) -> None:
        """Stop serving task `name` on every replica (its file stays), until `load` or `put`."""
        with self._lock:
            self._check_ours(name)
            if not self.store.path(name).exists():
                raise TaskNotFoundError(self._not_in_store(name))
            self.store.mark_unloaded(name, True)
            self._unload_quietly(name)
            self._entries[name] = _UNLOADED

    def index(self) -> list[dict[str, str]]:
        """Every task of the store (and the fixed ones) with its state on this replica."""
        with self._lock:
            rows = {n: _index_row(n, READY, "ships with the bundle or --task") for n in self._fixed}
            for name, e in self._entries.items():
                if name not in self._fixed:
                    rows[name] = _index_row(name, e.state, e.reason)
            for file in self._bad:  # listed under its file name, which is no task name
                rows.setdefault(file, _index_row(file, UNAVAILABLE, BAD_NAME))
            return [rows[n] for n in sorted(rows)]

    def describe(self) -> dict[str, Any]:
        """How tasks are kept, for `GET /v1/tasks` and the start-up line."""
        return {
            "durable": True,
            "detail": f"admin changes are written to the task store; other servers sharing it "
            f"pick them up within {self.poll_s:g} s.",
            "poll_seconds": self.poll_s,
        }

    # -------------------------------------------------------------- helpers
    def _check_ours(self, name: str) -> None:
        if name in self._fixed:
            raise StoreConflictError(
                f"task {name!r} ships with the bundle (or a --task file), not with the task "
                "store, so it cannot be changed here; upload under another name, or restart "
                "the server without it."
            )

    def _not_in_store(self, name: str) -> str:
        return f"task {name!r} is not in the task store; GET /v1/tasks lists the tasks."

    def _restore(self, name: str, existed: bool) -> None:
        """After a failed write, serve what the file still holds (or nothing)."""
        entry = self._entries.get(name)
        try:
            if entry is not None and entry.sha256 is not None:
                self.runtime.load_task_bytes(
                    self.store.read(name), name, True, self.store.source(name)
                )
            elif not existed:
                self._unload_quietly(name)
        except (BitFitError, OSError):
            log.exception("task %s: could not restore the previous version", name)
            self._unload_quietly(name)

    def _unload_quietly(self, name: str) -> None:
        with contextlib.suppress(TaskNotFoundError):
            self.runtime.unload_task(name)


def _index_row(name: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": MODEL_VERSION, "state": state, "reason": reason}


async def follow(sync: StoreSync, call: Callable[..., Awaitable[Any]]) -> None:
    """Every `sync.poll_s` seconds, run `sync.sync` through `call` (the runtime's thread); forever."""
    while True:
        await asyncio.sleep(sync.poll_s)
        try:
            await call(sync.sync)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing poll (store unmounted) must not end the following
            log.exception(
                "task store %s: sync failed; retrying in %g s", sync.store.root, sync.poll_s
            )
