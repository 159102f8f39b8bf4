"""A row's answer depends only on its task and its text, whatever shares its run (fp32, int8 with
static scales, int8 with per-token scales; batches run whole or as row slices, parallel="rows").

Property test: random mixes of tasks (single-label, multi-label, regression, pairs, a task cut
shorter than the bundle), lengths from one word to past the bundle's max length, and runtimes
with small and large batches; every row's scores equal its single-row answer within 1e-5.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_fixtures import synthetic_delta

from bitfit_deploy.delta import save_delta
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime

BUNDLE_MAX_LENGTH = 24
# name -> (problem type, labels, inputs, the task's own max_length or None for the bundle's)
TASKS = {
    "sentiment": ("single_label", ["negative", "positive"], "single", None),
    "topics": ("multi_label", ["art", "sport", "money"], "single", None),
    "similarity": ("regression", [], "pair", None),
    "short": ("single_label", ["a", "b", "c", "d"], "single", 10),
}
WORDS = ["good", "film", "the", "dull", "a", "gorgeous", "plot", "moving", "x", "overlong", "!"]


@pytest.fixture(scope="module")
def runtimes(tiny_bert, tmp_path_factory):
    """(variant, max_batch_size) -> Runtime over a tiny bundle with every task of TASKS.

    Variants: "fp32", "int8" (static scales, the default) and "int8-per-token" (another bundle).
    """
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("inv") / "bundle"
    per_token = out.with_name("per-token")
    export_bundle(out, model=str(tiny_bert), quantize="int8", max_length=BUNDLE_MAX_LENGTH)
    export_bundle(
        per_token,
        model=str(tiny_bert),
        quantize="int8",
        int8_activations="per-token",
        max_length=BUNDLE_MAX_LENGTH,
    )
    manifest = read_manifest(out)
    paths = []
    for seed, (name, (problem, labels, inputs, length)) in enumerate(TASKS.items()):
        delta = synthetic_delta(manifest, name, problem, labels, seed=seed + 7)
        meta = dataclasses.replace(
            delta.metadata, inputs=inputs, max_length=length or BUNDLE_MAX_LENGTH
        )
        delta = dataclasses.replace(delta, metadata=meta)
        paths.append(save_delta(delta, tmp_path_factory.mktemp("d") / f"{name}.safetensors"))
    built = {}
    sources = {
        "fp32": (out, "fp32", "ops"),
        "int8": (out, "int8", "ops"),
        "int8-per-token": (per_token, "int8", "ops"),
        "fp32-rows": (out, "fp32", "rows"),  # 3 slices of rows at once
        "int8-rows": (out, "int8", "rows"),
    }
    for label, (bundle, variant, parallel) in sources.items():
        threads = 3 if parallel == "rows" else 1
        for batch in (3, 16):
            rt = Runtime(
                bundle, threads=threads, variant=variant, max_batch_size=batch, parallel=parallel
            )
            for path in paths:
                rt.load_task(path)
            built[label, batch] = rt
    return built


def _text(words: list[str]) -> str:
    return " ".join(words)


_texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(_text)


@st.composite
def _requests(draw) -> list[tuple[str, object]]:
    """1-20 (task, input) requests; pairs for the pair task, single texts for the rest."""
    out = []
    for _ in range(draw(st.integers(1, 20))):
        task = draw(st.sampled_from(sorted(TASKS)))
        item = (draw(_texts), draw(_texts)) if TASKS[task][2] == "pair" else draw(_texts)
        out.append((task, item))
    return out


def _scores(prediction) -> np.ndarray:
    if prediction.value is not None:
        return np.array([prediction.value])
    return np.array(list(prediction.scores.values()))


@pytest.mark.parametrize("variant", ["fp32", "int8", "int8-per-token", "fp32-rows", "int8-rows"])
@pytest.mark.parametrize("batch", [3, 16])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=_requests())
def test_row_answer_ignores_what_shares_its_run(runtimes, variant, batch, requests):
    rt = runtimes[variant, batch]
    mixed = rt.predict_mixed(requests)
    assert len(mixed) == len(requests)
    for (task, item), got in zip(requests, mixed, strict=True):
        alone = rt.predict(task, [item])[0]
        assert got.task == task and got.label == alone.label
        assert got.truncated == alone.truncated
        assert np.abs(_scores(got) - _scores(alone)).max() <= 1e-5, (task, item)


@pytest.mark.parametrize("variant", ["int8", "int8-per-token"])
def test_long_loud_batch_mates_do_not_move_an_int8_row(runtimes, variant):
    """The issue's case: one text alone, beside 15 long rows of another task, beside a long text."""
    rt = runtimes[variant, 16]
    text = "a gorgeous , moving film but overlong"
    alone = rt.predict("sentiment", [text])[0].scores["positive"]
    crowd = [("topics", " ".join(WORDS * 4))] * 15 + [("sentiment", text)]
    beside_long = [("sentiment", "dull " * 100), ("sentiment", text)]
    assert abs(rt.predict_mixed(crowd)[-1].scores["positive"] - alone) <= 1e-5
    assert abs(rt.predict_mixed(beside_long)[-1].scores["positive"] - alone) <= 1e-5


def test_each_task_is_cut_at_its_own_length(runtimes):
    """'short' (10 tokens) truncates where 'sentiment' (the bundle's 24) does not."""
    rt = runtimes["fp32", 16]
    text = " ".join(["good"] * 15)  # 17 tokens with [CLS] and [SEP]
    short, full = rt.predict_mixed([("short", text), ("sentiment", text)])
    assert short.truncated and not full.truncated
    assert rt.tasks["short"].max_length == 10


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=_requests())
def test_row_slices_answer_as_whole_batches_do(runtimes, variant, requests):
    """parallel="rows" splits each run into slices run at once; every answer stays the same."""
    whole = runtimes[variant, 16].predict_mixed(requests)
    sliced = runtimes[f"{variant}-rows", 16].predict_mixed(requests)
    for a, b in zip(whole, sliced, strict=True):
        assert a.label == b.label and a.truncated == b.truncated
        assert np.abs(_scores(a) - _scores(b)).max() <= 1e-6
