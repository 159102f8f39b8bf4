"""ONNX Runtime's optimized graph, kept between processes so a CPU session skips graph optimization.

Creating a session optimizes the graph again in every process: 0.03-0.06 s of a MiniLM cold start
on the README's machine (`benchmarks/cold_start.py`, markers only against this cache). The first
CPU session of a bundle graph
therefore saves the graph as ORT optimized it (`optimized_model_filepath`, weights in a `.data`
file beside it) into `optimized/` under the verified-marker folder (see
`bitfit_deploy.integrity.marker_dir`); later sessions load that graph with optimization off.
The `.data` file also holds the weights as this CPU's kernels pack them
(`session.save_external_prepacked_constant_initializers`), which ORT maps at load instead of
packing again: session creation 0.079 -> 0.061 s for fp32 MiniLM, 0.041 -> 0.035 s for int8
(one-off timings, fresh processes), same outputs and run times.

An entry is keyed by the graph's and weights' sha256 from the manifest (already verified when
the session is made), the ONNX Runtime version and the CPU's feature flags, so a re-export, an
ORT upgrade or another CPU makes a new entry (the packed layouts depend on the CPU's kernels). It
costs disk (the weights and their packed copies: 126 MiB for fp32 MiniLM, 31 MiB for int8), so
only the newest `KEEP` entries are kept. An entry that
fails to load is removed and the session made from the bundle. Like markers, the folder is
trusted: whoever can write it can change what runs. `BITFIT_DEPLOY_OPTIMIZED_GRAPHS=0` turns it
off (markers stay); `BITFIT_DEPLOY_CACHE_DIR=""` turns off both.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER = "optimized"
"""The subfolder of the verified-marker folder that holds the entries."""
GRAPH_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
KEEP = 4
"""Entries kept (the newest by use); older ones are removed when a new one is written."""
ENV = "BITFIT_DEPLOY_OPTIMIZED_GRAPHS"
LAYOUT = 2
"""What an entry holds; part of its key, so entries of an older layout are no longer read (and
are pruned as new ones come). 2: the weights also as the CPU's kernels pack them."""


def enabled() -> bool:
    """False when `BITFIT_DEPLOY_OPTIMIZED_GRAPHS` is "0"."""
    return os.environ.get(ENV, "1").strip() != "0"


def entry_key(digests: list[str], version: str, layout: int = LAYOUT) -> str:
    """A short hex key for graph+weights `digests`, ONNX Runtime `version`, this CPU and the
    entry `layout`."""
    parts = [*digests, version, platform.machine(), _cpu_flags(), str(layout)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else the processor name: ORT's fusions may depend on them."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cached_graph(root: Path, key: str) -> Path | None:
    """The optimized graph of entry `key` under `root`, if a complete entry exists."""
    entry = root / key
    graph, weights = entry / GRAPH_FILE, entry / WEIGHTS_FILE
    if not (graph.is_file() and weights.is_file()):
        return None
    with contextlib.suppress(OSError):
        os.utime(entry)  # the newest by use are kept
    return graph


def new_entry(root: Path) -> Path | None:
    """A temp folder under `root` for ORT to save the optimized graph into, or None if unwritable."""
    import tempfile  # only a first open writes (see bitfit_deploy._io)

    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    except OSError as exc:
        log.debug("no optimized-graph cache in %s: %s", root, exc)
        return None


def publish(tmp: Path, root: Path, key: str) -> None:
    """Move the saved graph in `tmp` to entry `key` (unless another process was first); prune."""
    import shutil

    try:
        if (tmp / GRAPH_FILE).is_file() and (tmp / WEIGHTS_FILE).is_file():
            os.rename(tmp, root / key)
            _prune(root)
    except OSError:  # another process published the same entry first, or the folder went away
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def discard(root: Path, key: str) -> None:
    """Remove entry `key` (it failed to load)."""
    import shutil

    shutil.rmtree(root / key, ignore_errors=True)


def entries(root: Path) -> list[Path]:
    """The entries under `root`, the most recently used first (folders being written excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _prune(root: Path) -> None:
    import shutil

    for old in entries(root)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
