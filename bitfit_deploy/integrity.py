"""Bundle integrity: sha256 of the files a runtime loads, with verified markers for fast reopening.

Hashing the 86 MiB fp32 MiniLM graph costs about 0.1 s, a third of a cold start, so a runtime
checks only the files it loads, and skips a file whose *verified marker* still matches it.

A marker is a small JSON file in the user's cache folder (`$BITFIT_DEPLOY_CACHE_DIR`, else
`$XDG_CACHE_HOME/bitfit-deploy/verified`, else `~/.cache/bitfit-deploy/verified`; an empty
`BITFIT_DEPLOY_CACHE_DIR` turns markers off). It is written after a file hashed to its manifest
sha256 and records the file's real path, size, mtime_ns, ctime_ns, inode and device; a later open
trusts the file without hashing only if all of these and the manifest sha256 are unchanged.

What a marker catches: any change made through the file system on Linux/macOS, including new
content of the same size with its mtime put back (writing, `touch` and `os.utime` all move the
ctime, which no user call can set), replacing or re-copying the file (new inode), and a
re-exported bundle (new sha256 in the manifest). What it does not catch: corruption below the
file system (a failing disk, bit rot, a raw-device edit), file systems that keep no honest ctime
(some network and FUSE mounts), Windows (where ctime is the creation time, so only size and mtime
count), and anyone who can write the cache folder. `verify="full"` (and `bitfit-deploy verify`)
hash every file and trust no marker. Like the manifest's sha256 itself, which whoever can write the
bundle can rewrite, this guards against accidents (partial copies, corruption, edits), not attacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bitfit_deploy._io import atomic_file
from bitfit_deploy.errors import BundleError, InvalidInputError
from bitfit_deploy.reading import check_regular_path, open_regular, read_regular

if TYPE_CHECKING:
    from bitfit_deploy.manifest import Manifest

log = logging.getLogger(__name__)

VERIFY_MODES = ("cached", "loaded", "full")
"""cached: the loaded files, trusting matching markers (default); loaded: the loaded files, always
hashed; full: every file in the manifest, always hashed. All three refresh the markers."""

CACHE_ENV = "BITFIT_DEPLOY_CACHE_DIR"
RACY_SECONDS = 2.0
"""No marker for a file changed this recently: a same-size rewrite within one tick of the file
system's coarse clock would keep its mtime and ctime (git's "racy" entries)."""
_STAT_KEYS = ("size", "mtime_ns", "ctime_ns", "inode", "device")
PRUNE_ABOVE = 512
"""Markers kept before those of deleted files are swept (each is about 250 bytes)."""
_pruned = False


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, hashed from a read-only memory map (one call, GIL released)."""
    with open_regular(path, "bundle file", BundleError) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


def check_mode(verify: str) -> str:
    """`verify` if it is one of VERIFY_MODES, else an InvalidInputError naming them."""
    if verify not in VERIFY_MODES:
        raise InvalidInputError(
            f"unknown verify mode {verify!r}; choose one of {', '.join(VERIFY_MODES)}."
        )
    return verify


def marker_dir() -> Path | None:
    """Where verified markers live, or None when `BITFIT_DEPLOY_CACHE_DIR` is set empty."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:
        root = Path(xdg) if xdg else Path.home() / ".cache"
    except RuntimeError:  # no home folder (some containers): hash on every open
        return None
    return root / "bitfit-deploy" / "verified"


def verify_bundle(
    bundle: str | os.PathLike[str],
    manifest: Manifest,
    variant: str,
    verify: str = "cached",
    tasks: bool = True,
) -> list[str]:
    """Check what a runtime of `variant` loads (with the shipped `tasks`), or everything for "full".

    Returns the files that were hashed (none when every marker matched).
    """
    check_mode(verify)
    files = manifest.runtime_files(variant, tasks)
    if verify == "full":
        files = [*manifest.files, *files]
    return verify_files(bundle, manifest.files, files, use_markers=verify == "cached")


def verify_files(
    bundle: str | os.PathLike[str],
    expected: Mapping[str, str],
    files: Iterable[str],
    use_markers: bool = True,
) -> list[str]:
    """Check that each of `files` (paths relative to `bundle`) exists and has its `expected` sha256.

    With `use_markers`, a file whose verified marker still matches is not hashed; a file that
    hashes correctly gets a fresh marker either way (a cache folder that cannot be written only
    costs the next open its hashing), unless it changed in the last RACY_SECONDS. Returns the
    files that were hashed.
    """
    bundle = Path(bundle)
    markers = marker_dir()
    hashed = []
    for rel in dict.fromkeys(files):
        path = bundle / rel
        digest = expected.get(rel)
        if digest is None:
            raise BundleError(
                f"the manifest of bundle {str(bundle)!r} lists no sha256 for {rel}, which the "
                "runtime loads; export the bundle again."
            )
        try:
            st = _stat_key(path)
        except OSError:
            # there, but a FIFO, a device or a folder: say so; else it is missing
            check_regular_path(path, "bundle file", BundleError, fix="export the bundle again")
            raise BundleError(f"bundle {str(bundle)!r} lacks {rel}; export it again.") from None
        key = {**st, "sha256": digest}
        if use_markers and markers is not None and _read_marker(markers, path) == key:
            continue
        hashed.append(rel)
        if sha256_file(path) != digest:
            raise BundleError(
                f"{path} does not match the sha256 in the manifest; the bundle was modified "
                "or partly copied. Export it again."
            )
        recent = time.time_ns() - max(st["mtime_ns"], st["ctime_ns"]) < RACY_SECONDS * 1e9
        if markers is not None and not recent:
            _write_marker(markers, path, key)
    return hashed


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(path)
    values = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    return dict(zip(_STAT_KEYS, values, strict=True))


def _marker_path(markers: Path, path: Path) -> Path:
    real = os.path.realpath(path)
    return markers / f"{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()}.json"


MARKER_BYTES = 64 << 10
"""A marker is a line of JSON; anything larger (or no regular file) is no marker of ours."""


def _read_marker(markers: Path, path: Path) -> dict[str, object] | None:
    try:  # a FIFO or a link to /dev/zero in the cache must not block or fill memory: ignored
        raw = read_regular(_marker_path(markers, path), "marker", BundleError, MARKER_BYTES)
        data = json.loads(raw)
    except (BundleError, OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("path") != os.path.realpath(path):
        return None
    return {k: data.get(k) for k in (*_STAT_KEYS, "sha256")}


def _write_marker(markers: Path, path: Path, key: dict[str, object]) -> None:
    try:
        markers.mkdir(parents=True, exist_ok=True)
        with atomic_file(_marker_path(markers, path), force=True) as tmp:
            tmp.write_text(json.dumps({"path": os.path.realpath(path), **key}))
        _prune(markers)
    except OSError as exc:  # a read-only home or cache: verification still happened
        log.debug("cannot write a verified marker in %s (%s)", markers, exc)


def marker_files(markers: Path) -> list[Path]:
    """The verified-marker files in folder `markers` (none if it does not exist)."""
    return sorted(markers.glob("*.json")) if markers.is_dir() else []


def _prune(markers: Path) -> None:
    """Past PRUNE_ABOVE markers, drop those whose file is gone (temp bundles), once a process."""
    global _pruned
    if _pruned:
        return
    entries = marker_files(markers)
    if len(entries) <= PRUNE_ABOVE:
        return
    _pruned = True
    for entry in entries:
        try:
            raw = read_regular(entry, "marker", BundleError, MARKER_BYTES)
            if not os.path.exists(json.loads(raw).get("path", "")):
                entry.unlink()
        except (BundleError, OSError, ValueError, AttributeError, RecursionError):
            entry.unlink(missing_ok=True)
