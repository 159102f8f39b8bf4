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
        self,
        path: str | os.PathLike[str] | Tokenizer,
        max_length: int,
        pad_id: int,
        text_inputs: Sequence[str],
    ) -> None:
        if isinstance(path, Tokenizer):  # see `for_tokenizer`
            self._tokenizer = path
        else:
            try:
                self._tokenizer = Tokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises a bare Exception on bad files
                raise BundleError(
                    f"cannot read the bundle tokenizer {str(path)!r} ({exc}); export the bundle "
                    "again."
                ) from exc
        self._tokenizer.no_padding()
        self._pair_template = _pair_template(self._tokenizer)
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

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Tokenizer, max_length: int, pad_id: int, text_inputs: Sequence[str]
    ) -> BundleTokenizer:
        """The same cutting over a copy of `tokenizer` (a transformers fast tokenizer's
        `backend_tokenizer`, say): training cuts pairs as the runtime does, in linear time."""
        copy = Tokenizer.from_str(tokenizer.to_str())
        return cls(copy, max_length, pad_id, text_inputs)

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
                singles = [i for i in rows if isinstance(batch[i], str)]
                pairs = [i for i in rows if not isinstance(batch[i], str)]
                if singles:
                    self._tokenizer.enable_truncation(max_length=length, strategy="longest_first")
                    encodings = self._encode_batch([batch[i] for i in singles])
                    for i, encoding in zip(singles, encodings, strict=True):
                        out[i] = _encoded(encoding)
                if pairs:
                    cut = self._encode_pairs([batch[i] for i in pairs], length)  # type: ignore[misc]
                    for i, encoded in zip(pairs, cut, strict=True):
                        out[i] = encoded
        return out  # type: ignore[return-value]

    def _encode_pairs(self, pairs: list[tuple[str, str]], length: int) -> list[Encoded]:
        """Pairs cut as the tokenizer's longest_first cuts them, in time linear in their length.

        The tokenizer's own pair truncation builds every overflow combination of the two sides:
        two 20,000-character sides took seconds and gigabytes. Each side is tokenized whole
        (linear), cut to the lengths `longest_first` keeps, then given its special tokens.
        The lock is held: truncation is tokenizer state.
        """
        if self._pair_template is None:  # a layout not read from a sample: the tokenizer's way
            self._tokenizer.enable_truncation(max_length=length, strategy="longest_first")
            return [_encoded(e) for e in self._encode_batch(pairs)]
        self._tokenizer.no_truncation()
        firsts = self._encode_batch([a for a, _ in pairs], add_special_tokens=False)
        seconds = self._encode_batch([b for _, b in pairs], add_special_tokens=False)
        budget = length - self.pair_specials
        out = []
        for first, second in zip(firsts, seconds, strict=True):
            sides = (first.ids, second.ids)
            keep = longest_first(len(sides[0]), len(sides[1]), budget)
            ids: list[int] = []
            types: list[int] = []
            for part, type_id in self._pair_template:
                if isinstance(part, int):  # a special token
                    ids.append(part)
                    types.append(type_id)
                else:  # the side's kept tokens
                    kept = sides[part[0]][: keep[part[0]]]
                    ids.extend(kept)
                    types.extend([type_id] * len(kept))
            out.append(Encoded(ids, types, keep[0] < len(sides[0]) or keep[1] < len(sides[1])))
        return out

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


PairPart = tuple[int | tuple[int], int]
"""One part of a pair's layout and its segment id: a special token's id, or (side,) for a text."""


def _pair_template(tokenizer: Tokenizer) -> list[PairPart] | None:
    """Where a pair's special tokens and its two texts go, as the tokenizer's post-processor
    lays them out ([CLS] A [SEP] B [SEP] for BERT, <s> A </s></s> B </s> for RoBERTa); None
    unless the sample shows each text once, in order."""
    tokenizer.no_truncation()
    sample = tokenizer.encode("a", "b")
    parts: list[PairPart] = []
    for token, type_id, side in zip(sample.ids, sample.type_ids, sample.sequence_ids, strict=True):
        if side is None:
            parts.append((token, type_id))
        elif not parts or parts[-1][0] != (side,):
            parts.append(((side,), type_id))
    texts = [part for part, _ in parts if isinstance(part, tuple)]
    return parts if texts == [(0,), (1,)] else None


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """The tokens each side of a pair keeps within `budget` (max length less the special
    tokens), as tokenizers' `longest_first` keeps them: the longer side is cut first, down to the
    other's length; then both, the side that was longer (the second on a tie) keeping the odd one.
    Checked against the tokenizer itself (tests/test_runtime_inputs.py)."""
    if n1 + n2 <= budget:
        return n1, n2
    if n1 > n2 and budget - n2 >= n2:
        return budget - n2, n2
    if n2 > n1 and budget - n1 >= n1:
        return n1, budget - n1
    small, large = budget // 2, budget - budget // 2
    return (large, small) if n1 > n2 else (small, large)


def _encoded(encoding: Encoding) -> Encoded:
    return Encoded(encoding.ids, encoding.type_ids, bool(encoding.overflowing))
