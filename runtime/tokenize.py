"""Tokenization from the bundle's tokenizer.json: truncation at the max length, padding per batch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from bitfit_deploy.contract import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from bitfit_deploy.errors import BundleError

TextInput = str | tuple[str, str]


@dataclass(frozen=True)
class Encoded:
    """One tokenized input: its ids, segment ids, and whether it was cut at the max length."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class BundleTokenizer:
    """The bundle's fast tokenizer, set to truncate (longest first) and never to pad on its own."""

    def __init__(
        self, path: str | os.PathLike[str], max_length: int, pad_id: int, text_inputs: Sequence[str]
    ) -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise BundleError(
                f"cannot read the bundle tokenizer {str(path)!r} ({exc}); export the bundle again."
            ) from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        self.max_length = max_length
        self.pad_id = pad_id
        self.text_inputs = tuple(text_inputs)

    def encode(self, items: Sequence[TextInput]) -> list[Encoded]:
        """Tokenize texts or (text, text_pair) pairs; flag the ones cut at the max length."""
        batch = [tuple(x) if not isinstance(x, str) else x for x in items]
        return [_encoded(e) for e in self._tokenizer.encode_batch(batch)]

    def pad(self, rows: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """The graph's text inputs for `rows`, padded to the longest row (int64, `[batch, seq]`)."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            n = len(row)
            ids[i, :n] = row.ids
            mask[i, :n] = 1
            types[i, :n] = row.type_ids
        arrays = {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types}
        return {name: arrays[name] for name in self.text_inputs}


def _encoded(encoding: Encoding) -> Encoded:
    return Encoded(encoding.ids, encoding.type_ids, bool(encoding.overflowing))
