"""Inputs checked per task: arity recorded at training, well-formed Unicode, truncation at each task's length."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_fixtures import LONG_TEXT, synthetic_delta
from test_runtime import reference_logits

from bitfit_deploy.delta import save_delta
from bitfit_deploy.errors import IncompatibleTaskError, InvalidInputError
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.inputs import check_input, describe
from bitfit_deploy.runtime.results import TaskInfo

LONG_PAIR = (LONG_TEXT, "a short hypothesis about the film")
TASKS = {  # name -> (inputs, max_length)
    "single": ("single", 16),
    "pair": ("pair", 24),
    "legacy": ("unknown", 128),
}


@pytest.fixture(scope="module")
def bundle_dir(tiny_bert, tmp_path_factory):
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("inputs") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return read_manifest(bundle_dir)


@pytest.fixture(scope="module")
def deltas(bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("input-deltas")
    paths = {}
    for seed, (name, (inputs, max_length)) in enumerate(TASKS.items()):
        delta = synthetic_delta(bundle, name, seed=seed)
        delta.metadata.inputs, delta.metadata.max_length = inputs, max_length
        paths[name] = save_delta(delta, folder / f"{name}.safetensors")
    return paths


@pytest.fixture(scope="module")
def runtime(bundle_dir, deltas):
    rt = Runtime(bundle_dir, threads=1)
    for path in deltas.values():
        rt.load_task(path)
    return rt


def test_task_info_tells_arity_and_max_length(runtime):
    info = runtime.tasks
    assert {n: (i.inputs, i.max_length) for n, i in info.items()} == TASKS
    assert info["pair"].to_dict()["inputs"] == "pair"


def test_each_row_is_cut_at_its_own_tasks_length_as_training_cut_it(runtime, deltas, tiny_bert):
    rows = [("single", LONG_TEXT), ("legacy", LONG_TEXT), ("pair", LONG_PAIR), ("single", "ok")]
    mixed = runtime.predict_mixed(rows)
    assert [p.truncated for p in mixed] == [True, True, True, False]
    for (task, item), served in zip(rows, mixed, strict=True):
        want = reference_logits(tiny_bert, deltas[task], [item], TASKS[task][1])[0]
        probs = np.exp(want - want.max())
        assert served.scores == pytest.approx(
            dict(zip(["negative", "positive"], probs / probs.sum(), strict=True)), abs=1e-4
        )
        alone = runtime.predict(task, [item])[0]
        assert alone.scores == pytest.approx(served.scores, abs=1e-5)


def test_a_task_longer_than_the_bundle_is_capped_with_a_warning(
    bundle, bundle_dir, tmp_path, caplog
):
    delta = synthetic_delta(bundle, "long")
    delta.metadata.max_length = 512
    path = save_delta(delta, tmp_path / "long.safetensors")
    rt = Runtime(bundle_dir, threads=1)
    with caplog.at_level(logging.WARNING, logger="bitfit_deploy.runtime"):
        rt.load_task(path)
    assert rt.tasks["long"].max_length == bundle.max_length == 128
    assert "up to 512 tokens" in caplog.text and "--max-length 512" in caplog.text
    assert rt.predict("long", [LONG_TEXT])[0].truncated


def test_a_max_length_too_short_for_any_text_is_refused(bundle, bundle_dir, tmp_path):
    delta = synthetic_delta(bundle, "tiny")
    delta.metadata.max_length = 2
    path = save_delta(delta, tmp_path / "tiny.safetensors")
    with pytest.raises(IncompatibleTaskError, match="max_length 2"):
        Runtime(bundle_dir, threads=1).load_task(path)


@pytest.mark.parametrize(
    ("task", "item", "message"),
    [
        ("single", ["great", "film"], "is a pair, but the task was trained on single texts"),
        ("single", ("great", "film"), "is a pair"),
        ("pair", "great film", "is one text, but the task was trained on pairs"),
        ("pair", ["only one"], "a list of 1 item; a pair is exactly two texts"),
        ("legacy", ["a", "b", "c"], "a list of 3 items"),
        ("legacy", ["a", 3], "the text_pair of the pair is an int"),
        ("legacy", {"text": "a", "text_pair": "b"}, "an object of 2 keys"),
        ("legacy", 3, "is an int"),
        ("legacy", None, "is null"),
        ("legacy", b"bytes", "is a bytes"),
    ],
)
def test_an_input_of_the_wrong_arity_or_kind_is_refused_naming_task_and_what_it_takes(
    runtime, task, item, message
):
    for call in (
        lambda: runtime.predict(task, ["fine" if task != "pair" else ("a", "b"), item]),
        lambda: runtime.validate_input(task, item, 1),
    ):
        with pytest.raises(InvalidInputError, match=f"input 1 for task '{task}'") as err:
            call()
        assert message in str(err.value)


def test_a_task_of_unknown_arity_takes_texts_and_pairs(runtime):
    out = runtime.predict("legacy", ["a text", ("a", "pair"), ["a", "list pair"]])
    assert len(out) == 3
    assert runtime.validate_input("legacy", ["a", "b"]) == ("a", "b")


def test_a_bare_tuple_of_texts_is_not_read_as_several_inputs(runtime):
    with pytest.raises(InvalidInputError, match="reads as one \\(text, text_pair\\) pair"):
        runtime.predict("pair", ("premise", "hypothesis"))
    assert len(runtime.predict("pair", [("premise", "hypothesis")])) == 1
    assert len(runtime.predict("single", ["a", "b"])) == 2


@pytest.mark.parametrize("bad", ["great film \ud83d", "\udc00", "ok \ud800 then"])
def test_text_that_is_not_valid_unicode_is_refused_naming_the_input(runtime, bad):
    with pytest.raises(InvalidInputError, match="input 2 for task 'single'.*lone surrogate"):
        runtime.predict_mixed([("single", "fine"), ("legacy", "good"), ("single", bad)])
    with pytest.raises(InvalidInputError, match="input 0 for task 'pair': the text_pair"):
        runtime.predict("pair", [("fine", bad)])


def test_control_characters_and_odd_text_are_predicted(runtime):
    odd = ["\x00", "\x01\x7f\u200b", "\ufffd", "🎬" * 50, "a\x00b", " x "]
    out = runtime.predict("single", odd)
    assert [p.task for p in out] == ["single"] * len(odd)
    assert all(np.isfinite(p.score) for p in out)


@settings(max_examples=40, deadline=None)
@given(blank=st.text(alphabet=st.sampled_from(" \t\n\r\u3000\u00a0\u2028\x0b\x0c"), max_size=4))
def test_an_empty_or_blank_text_is_refused_everywhere(runtime, blank):
    """The runtime (and so the server) predicted "" as [CLS][SEP] while training and `predict`
    refused it: one rule now, for a text and each side of a pair."""
    with pytest.raises(InvalidInputError, match="input 1 for task 'single': the text is empty"):
        runtime.predict("single", ["fine", blank])
    with pytest.raises(InvalidInputError, match="the text_pair is empty"):
        runtime.predict("pair", [("a premise", blank)])
    with pytest.raises(InvalidInputError, match="input 0 for task 'legacy': the text is empty"):
        runtime.predict_mixed([("legacy", (blank, "x"))])


def test_describe_never_recurses_into_a_value():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert describe(deep) == "a list of 1 item"
    assert describe(10**10_000) == "an int"
    info = TaskInfo("t", ["a", "b"], "single_label", inputs="single")
    with pytest.raises(InvalidInputError, match="a list of 1 item"):
        check_input(deep, info, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, "an int"),
        (1.5, "a float"),
        (True, "a bool"),
        (b"x", "a bytes"),
        (np.arange(3, dtype=np.int64), "an array of shape (3,) (int64)"),
        (np.float32(2), "an array of shape () (float32)"),
        (object(), "an object"),
        ([], "a list of 0 items"),
        (("a",), "a tuple of 1 item"),
        ({"a": 1}, "an object of 1 key"),
        ({}, "an object of 0 keys"),
    ],
)
def test_describe_reads_as_english(value, expected):
    """The article fits the type's name and counts agree with their noun (it said 'a int')."""
    assert describe(value) == expected


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(
        st.one_of(st.text(max_size=60), st.tuples(st.text(max_size=40), st.text(max_size=40))),
        min_size=1,
        max_size=6,
    ),
    lengths=st.lists(st.one_of(st.just(0), st.integers(8, 40)), min_size=6, max_size=6),
)
def test_tokenizer_fast_path_matches_full_encoding(bundle_dir, items, lengths):
    """encode() uses encode_batch_fast (no offsets); ids, segments and the cut flag stay those of
    the full encode_batch at every row's own max length."""
    from tokenizers import Tokenizer

    from bitfit_deploy.manifest import TOKENIZER_FILE
    from bitfit_deploy.runtime.tokenize import BundleTokenizer

    manifest = read_manifest(bundle_dir, verify=False)
    ours = BundleTokenizer(
        bundle_dir / TOKENIZER_FILE, manifest.max_length, manifest.pad_token_id, ["input_ids"]
    )
    full = Tokenizer.from_file(str(bundle_dir / TOKENIZER_FILE))
    full.no_padding()
    got = ours.encode(items, lengths[: len(items)])
    for item, n, encoded in zip(items, lengths, got, strict=False):
        cut = min(n, manifest.max_length) if n > 0 else manifest.max_length
        full.enable_truncation(max_length=cut, strategy="longest_first")
        want = full.encode_batch([item])[0]
        assert (encoded.ids, encoded.type_ids) == (want.ids, want.type_ids)
        assert encoded.truncated == bool(want.overflowing)


WORDS = st.text(alphabet=st.sampled_from("ab é日\t-.'"), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    first=st.lists(WORDS, max_size=12).map(" ".join),
    second=st.lists(WORDS, max_size=12).map(" ".join),
    length=st.integers(min_value=5, max_value=24),
)
def test_pairs_are_cut_exactly_as_the_tokenizer_cuts_them(first, second, length):
    """Pairs are cut without the tokenizer's own pair truncation (quadratic: it builds every
    overflow combination); the ids, segments and `truncated` flag must be the same."""
    from conftest import packaged_model_dir
    from tokenizers import Tokenizer

    from bitfit_deploy.runtime.tokenize import BundleTokenizer

    path = packaged_model_dir() / "tokenizer.json"
    ours = BundleTokenizer(path, 64, 0, ["input_ids", "token_type_ids"])
    (got,) = ours.encode([(first, second)], [length])
    reference = Tokenizer.from_file(str(path))
    reference.no_padding()
    reference.enable_truncation(max_length=length, strategy="longest_first")
    want = reference.encode(first, second)
    assert (got.ids, got.type_ids) == (want.ids, want.type_ids)
    assert got.truncated == bool(want.overflowing)


def test_a_pair_of_long_sides_costs_time_linear_in_its_length():
    """Two 20,000-character sides (the server's per-text limit) took seconds and gigabytes; one
    pair now tokenizes like its two texts alone. Counted in tokens, not timed: the kept lengths."""
    from conftest import packaged_model_dir

    from bitfit_deploy.runtime.tokenize import BundleTokenizer

    tokenizer = BundleTokenizer(packaged_model_dir() / "tokenizer.json", 128, 0, ["input_ids"])
    side = "word " * 4000
    rows = tokenizer.encode([(side, side)] * 4, [16, 16, 128, 128])
    assert [len(r) for r in rows] == [16, 16, 128, 128] and all(r.truncated for r in rows)
