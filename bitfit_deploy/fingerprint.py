"""The base-model fingerprint: a hash of the frozen base weights, computed one way everywhere.

A delta stores the fingerprint of the base it was trained on; a bundle stores the fingerprint
of the base it was exported from. Loading compares the two, so a delta can never be applied
to another base. Works on numpy arrays so that torch is not needed to compute it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

PREFIX = "sha256:"


def fingerprint(named_arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """Hash `(name, array)` pairs, sorted by name, as float32 little-endian with their shapes."""
    digest = hashlib.sha256()
    for name, array in sorted(named_arrays, key=lambda item: item[0]):
        data = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
        digest.update(f"{name}|{list(data.shape)}|".encode())
        digest.update(data.tobytes())
    return PREFIX + digest.hexdigest()


def short(fp: str) -> str:
    """A readable prefix of a fingerprint for messages and listings."""
    return fp[: len(PREFIX) + 12]
