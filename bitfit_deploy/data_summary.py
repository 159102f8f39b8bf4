"""What was read, in a few lines: files, rows and lines, columns, labels, truncation, drops, notes.

`train` prints this before it loads a model (and `--dry-run` stops after it). Counting the rows
longer than `max_length` needs only the base model's tokenizer (`tokenizer.json` through the
`tokenizers` library), not the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bitfit_deploy.contract import shortest_max_length
from bitfit_deploy.data import ReadReport, Split, TaskData
from bitfit_deploy.data_tables import listing
from bitfit_deploy.errors import DataError, ModelError, first_line
from bitfit_deploy.model_folder import position_limit, read_config

SHOWN_LABELS = 30
"""How many labels the summary lists per split before it gives only the count of the rest."""
_CHUNK = 4096
_Lengths = Callable[[Sequence[str], Sequence[str] | None], list[int]]


def describe(
    data: TaskData, truncated: dict[str, int] | None = None, max_length: int | None = None
) -> str:
    """The summary of `data` as printable lines; `truncated` maps "train"/"eval" to row counts."""
    used = ", ".join(
        f"{role} column {name!r}" for role, name in data.columns.items() if name is not None
    )
    lines = [f"data ({data.problem_type}): {used}"]
    for name, split in (("train", data.train), ("eval", data.eval)):
        if split is None:
            continue
        lines.extend(_describe_split(name, split, data))
        if truncated is not None and name in truncated and max_length is not None:
            share = truncated[name] / max(len(split), 1)
            lines.append(
                f"  longer than {max_length} tokens (truncated): {_rows(truncated[name])} "
                f"({share:.1%})"
            )
    return "\n".join(lines)


def _describe_split(name: str, split: Split, data: TaskData) -> list[str]:
    report = split.report or ReadReport("(in memory)", len(split))
    lines = [f"{name}: {report.source}", f"  rows: {_rows_and_lines(report)}"]
    for why, places in report.dropped.items():
        lines.append(f"  dropped: {_rows(len(places))} with {why} ({listing(places)})")
    if report.dropped:
        lines.append(f"  used: {_rows(report.rows_used)}")
    lines.append("  " + _labels(split, data))
    lines.extend(f"  note: {note}" for note in report.notes)
    return lines


def _rows_and_lines(report: ReadReport) -> str:
    text = f"{report.rows_read:,}"
    if report.line_count is None:
        return text
    parts = []
    if report.header_lines:
        parts.append(f"{report.header_lines} header line{'s' * (report.header_lines > 1)}")
    if report.blank_lines:
        parts.append(f"{report.blank_lines:,} blank line{'s' * (report.blank_lines > 1)} skipped")
    if report.multiline_rows:
        parts.append(f"{_rows(report.multiline_rows)} over several lines")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"{text} from {report.line_count:,} line{'s' * (report.line_count != 1)}{detail}"


def _labels(split: Split, data: TaskData) -> str:
    if data.problem_type == "regression":
        values = [float(v) for v in split.labels]
        mean = sum(values) / len(values)
        return f"target: {min(values):g} to {max(values):g}, mean {mean:.4g}"
    if data.problem_type == "single_label":
        counts = Counter(split.labels)
        title = "rows per label"
    else:
        counts = Counter(i for hot in split.labels for i, v in enumerate(hot) if v)
        title = "rows with each label"
        unlabelled = sum(1 for hot in split.labels if not any(hot))
    shown = [f"{name}={counts.get(i, 0):,}" for i, name in enumerate(data.labels)]
    text = f"{title}: " + ", ".join(shown[:SHOWN_LABELS])
    if len(shown) > SHOWN_LABELS:
        text += f" (and {len(shown) - SHOWN_LABELS} more labels)"
    if data.problem_type == "multi_label" and unlabelled:
        text += f"; {_rows(unlabelled)} with no label"
    return text


def _rows(n: int) -> str:
    return f"{n:,} row{'s' * (n != 1)}"


def max_tokens(model_dir: str | Path, max_length: int) -> int:
    """`max_length` capped by the model's position embeddings, as training caps it; DataError if
    it cannot hold the tokenizer's special tokens and a text (the tokenizer would not cut at all)."""
    limit = position_limit(read_config(model_dir))
    specials = pair_specials(Path(model_dir))
    least = shortest_max_length(specials)
    if max_length < least:
        raise DataError(
            f"--max-length {max_length} is too short for this model: its tokenizer adds "
            f"{specials} special tokens to a text pair, so inputs would not be cut at all; pass "
            f"at least {least}."
        )
    return min(max_length, limit)


def pair_specials(model_dir: Path) -> int:
    """How many special tokens the model's tokenizer adds to a text pair."""
    path = model_dir / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(path)).num_special_tokens_to_add(True)
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"cannot read the tokenizer {str(path)!r}: {first_line(exc)}") from exc
    return _slow_tokenizer(model_dir).num_special_tokens_to_add(pair=True)


def count_truncated(model_dir: str | Path, data: TaskData, max_length: int) -> dict[str, int]:
    """Rows per split ("train", "eval") with more than `max_length` tokens, special tokens included."""
    lengths = _length_function(Path(model_dir))
    return {
        name: sum(1 for n in lengths(split.texts, split.pairs) if n > max_length)
        for name, split in (("train", data.train), ("eval", data.eval))
        if split is not None
    }


def _length_function(model_dir: Path) -> _Lengths:
    """Token counts of (texts, pairs) with the model's tokenizer, without loading the model."""
    read_config(model_dir)
    path = model_dir / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()

        def fast(texts: Sequence[str], pairs: Sequence[str] | None) -> list[int]:
            inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
            out: list[int] = []
            for i in range(0, len(inputs), _CHUNK):
                out.extend(len(e.ids) for e in tokenizer.encode_batch(inputs[i : i + _CHUNK]))
            return out

        return fast
    slow_tokenizer = _slow_tokenizer(model_dir)

    def slow(texts: Sequence[str], pairs: Sequence[str] | None) -> list[int]:
        encoded = slow_tokenizer(list(texts), list(pairs) if pairs else None, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    return slow


def _slow_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load a tokenizer from {str(model_dir)!r}: {first_line(exc)}"
        ) from exc
