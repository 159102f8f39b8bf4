"""Tokenization from the bundle's tokenizer.json: truncation per row at its task's max length, padding per batch."""

from __future__ import annotations

import os
import threading
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
        self.pair_specials = self._tokenizer.num_special_tokens_to_add(True)
        """Special tokens a pair gets; a max length must exceed it to cut anything."""
        self._lock = threading.Lock()  # the truncation length is tokenizer state
        # tokenizers >= 0.20: encode_batch without character offsets, which nothing here reads.
        self._encode_batch = getattr(
            self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch
        )

    def encode(
        self, items: Sequence[TextInput], max_lengths: Sequence[int] | None = None
    ) -> list[Encoded]:
        """Tokenize texts or (text, text_pair) pairs, each cut at its own max length; flag cut ones.

        `max_lengths` holds one length per item (its task's, as training cut it), capped by the
        bundle's; None (or 0 for an item) means the bundle's.
        """
        batch = [tuple(x) if not isinstance(x, str) else x for x in items]
        lengths = max_lengths if max_lengths is not None else [0] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(min(n, self.max_length) if n > 0 else self.max_length, []).append(i)
        out: list[Encoded | None] = [None] * len(batch)
        with self._lock:
            for length, rows in groups.items():
                self._tokenizer.enable_truncation(max_length=length, strategy="longest_first")
                encodings = self._encode_batch([batch[i] for i in rows])
                for i, encoding in zip(rows, encodings, strict=True):
                    out[i] = _encoded(encoding)
        return out  # type: ignore[return-value]

    def pad(self, rows: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """The graph's text inputs for `rows`, padded to the longest row (int64, `[batch, seq]`)."""
        width = max(len(r) for r in rows)
        if width > self.max_length:  # truncation did not apply: never feed past the positions
            raise BundleError(
                f"the bundle tokenizer returned {width} tokens, more than the bundle's max length "
                f"{self.max_length}; its tokenizer.json does not fit the manifest. Export the "
                "bundle again."
            )
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
