"""What one server process (or one Ray Serve replica) runs: a runtime, its task admin, the app.

`ServeConfig` holds every setting of `bitfit-deploy serve` that shapes the app; `build_app`
turns it into the Starlette app, loading the bundle's tasks, `--task` files and the task store.
The single-process command and each Ray replica call the same function, so they serve alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette

from bitfit_deploy.errors import TaskExistsError
from bitfit_deploy.runtime.runtime import Runtime
from bitfit_deploy.runtime.server import Limits, create_app
from bitfit_deploy.runtime.store import StoreSync, TaskStore


@dataclass(frozen=True)
class ServeConfig:
    """The settings of one server; picklable, so Ray can ship it to its replicas."""

    bundle: Path
    tasks: tuple[Path, ...] = ()
    """Delta files served besides the bundle's (fixed: the admin routes cannot change them)."""
    tasks_dir: Path | None = None
    """The task store; None keeps admin changes in memory."""
    poll_s: float = 2.0
    """How often the task store is re-read for other writers' changes."""
    provider: str = "cpu"
    variant: str = "fp32"
    threads: int | None = None
    parallel: str = "auto"
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    admin_token: str | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass
class BuiltApp:
    """An app ready to serve, with what loading found wrong and how tasks are kept."""

    app: Starlette
    runtime: Runtime
    problems: list[str]
    """One line per task file that was skipped."""
    store: str
    """How admin changes are kept, in words, for the start-up line."""


def build_app(config: ServeConfig) -> BuiltApp:
    """Load the runtime, the --task files and the task store; return the app over them."""
    runtime = Runtime(
        config.bundle,
        provider=config.provider,
        threads=config.threads,
        variant=config.variant,
        parallel=config.parallel,
        max_batch_size=config.max_batch_size,
        spin_wait=False,  # idle ORT threads sleep: the event loop shares the cores
    )
    for path in config.tasks:
        try:
            runtime.load_task(path)
        except TaskExistsError:  # its message speaks of the Python API's replace=True
            raise TaskExistsError(
                f"--task {path}: a task of its name is loaded already (the bundle ships one, or "
                "another --task has it); retrain it under another name (train --task NAME), or "
                "export a bundle without the other."
            ) from None
    admin, problems = None, []
    if config.tasks_dir is not None:
        admin = StoreSync(TaskStore(config.tasks_dir), runtime, config.poll_s)
        problems = admin.sync(log_problems=False)  # the caller prints them (`serve`)
        store = f"task store {config.tasks_dir} (re-read every {config.poll_s:g} s)"
    else:
        store = "memory only (no --tasks-dir): uploaded tasks are lost on restart"
    app = create_app(
        runtime,
        max_batch_size=config.max_batch_size,
        max_delay_ms=config.max_delay_ms,
        admin_token=config.admin_token,
        limits=config.limits,
        admin=admin,
    )
    return BuiltApp(app, runtime, problems, store)
