"""`merge`: folders the ecosystem loads as the task (logits = runtime = PyTorch), or refuses."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import random_delta, reference, tokenize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitfit_deploy.delta import TaskDelta, load_delta, save_delta
from bitfit_deploy.errors import (
    DeltaFormatError,
    FingerprintMismatchError,
    IncompatibleTaskError,
    OutputExistsError,
)
from bitfit_deploy.folder_readme import EXAMPLE_PAIRS, EXAMPLE_TEXTS
from bitfit_deploy.merge import (
    SENTENCE_TRANSFORMERS,
    SEQUENCE_CLASSIFICATION,
    MergeResult,
    load_model_folder,
    merge,
)
from bitfit_deploy.modeling import encoder_inputs, load_encoder

TEXTS = [
    "the movie was good",
    "a much longer sentence, with quite a few more tokens than the others",
    "x",
]
PAIRS = list(zip(*EXAMPLE_PAIRS, strict=True))
TOL = {"atol": 1e-4, "rtol": 1e-4}


@dataclass
class Merged:
    """One merged task: its base folder, delta, merge result and a bundle exported with it."""

    model_dir: Path
    delta: TaskDelta
    delta_path: Path
    result: MergeResult
    bundle: Path

    @property
    def folder(self) -> Path:
        return self.result.output


def make_delta(encoder, pooling: str, problem_type: str, inputs: str, labels: int = 3, seed=0):
    """A random task; multi-label unless asked, so the runtime's scores give back its logits."""
    delta = random_delta(encoder, "task", labels, pooling, seed=seed)
    meta = dataclasses.replace(delta.metadata, problem_type=problem_type, inputs=inputs)
    if problem_type == "regression":
        meta = dataclasses.replace(meta, labels=[])
        return TaskDelta(meta, delta.biases, delta.head_weight[:1], delta.head_bias[:1])
    return dataclasses.replace(delta, metadata=meta)


def merge_and_export(model_dir: Path, out: Path, delta: TaskDelta, runtime: bool = True) -> Merged:
    """Save `delta`, merge it into `out/merged`, and export a bundle with it (`out/bundle`)."""
    from bitfit_deploy.exporters import export_bundle

    out.mkdir(parents=True, exist_ok=True)
    path = save_delta(delta, out / "task.safetensors", force=True)
    result = merge(path, out / "merged", model=str(model_dir))
    if runtime:
        export_bundle(out / "bundle", model=str(model_dir), tasks=[path], max_length=64)
    return Merged(model_dir, delta, path, result, out / "bundle")


@pytest.fixture(scope="module")
def merged(tiny_models, tmp_path_factory):
    """Factory: (arch, pooling, problem_type, inputs) -> Merged, built once per module."""
    cache: dict[tuple, Merged] = {}

    def get(
        arch: str, pooling: str, problem_type: str = "multi_label", inputs: str = "unknown"
    ) -> Merged:
        key = (arch, pooling, problem_type, inputs)
        if key not in cache:
            model_dir = tiny_models(arch)
            delta = make_delta(load_encoder(str(model_dir))[0], pooling, problem_type, inputs)
            out = tmp_path_factory.mktemp(f"merge-{arch}-{pooling}")
            cache[key] = merge_and_export(model_dir, out, delta)
        return cache[key]

    return get


def torch_logits(m: Merged, first: list[str], second: list[str] | None = None) -> np.ndarray:
    """The PyTorch reference (modeling.apply_delta on the base) for texts or pairs."""
    encoder = load_encoder(str(m.model_dir))[0]
    if second is None:
        return reference(encoder, m.delta, tokenize(m.model_dir, first, encoder_inputs(encoder)))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(m.model_dir), local_files_only=True)
    enc = tok(first, second, padding=True, return_tensors="np")
    text = {n: enc[n].astype(np.int64) for n in encoder_inputs(encoder)}
    return reference(encoder, m.delta, text)


def runtime_logits(m: Merged, inputs: list) -> np.ndarray:
    """The runtime's logits: multi-label scores are sigmoids, so their log-odds are the logits."""
    from bitfit_deploy.runtime import Runtime

    preds = Runtime(m.bundle, threads=1).predict("task", inputs)
    labels = m.delta.metadata.labels
    p = np.array([[pred.scores[label] for label in labels] for pred in preds])
    return np.log(p) - np.log1p(-p)


def st_model(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def assert_refused_by_transformers(folder: Path) -> None:
    """Loading the folder as a transformers classifier fails instead of adding a random head."""
    from transformers import AutoModelForSequenceClassification

    assert not (folder / "config.json").exists()
    with pytest.raises((OSError, ValueError)):
        AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_merged_folder_is_the_task_in_sentence_transformers(merged, arch, pooling):
    m = merged(arch, pooling)
    assert m.result.layout == SENTENCE_TRANSFORMERS and not m.result.sequence_classification
    assert m.result.loader == "SentenceTransformer(folder)"
    assert "AutoModelForSequenceClassification refuses" in m.result.description
    logits = st_model(m.folder).encode(TEXTS)
    assert logits.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(logits, torch_logits(m, TEXTS), **TOL)
    np.testing.assert_allclose(logits, runtime_logits(m, TEXTS), **TOL)
    assert_refused_by_transformers(m.folder)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_pooler_pooling_gives_an_exact_sequence_classifier(merged, arch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = merged(arch, "pooler", "multi_label")
    name = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}
    assert m.result.layout == SEQUENCE_CLASSIFICATION and name[arch] in m.result.description
    hf = AutoModelForSequenceClassification.from_pretrained(str(m.folder), local_files_only=True)
    assert type(hf).__name__ == name[arch]
    assert hf.config.id2label == {0: "l0", 1: "l1", 2: "l2"}
    assert hf.config.problem_type == "multi_label_classification"
    tok = AutoTokenizer.from_pretrained(str(m.folder), local_files_only=True)
    with torch.no_grad():
        logits = hf.eval()(**tok(TEXTS, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(logits, torch_logits(m, TEXTS), **TOL)
    np.testing.assert_allclose(logits, runtime_logits(m, TEXTS), **TOL)


def test_pair_task_through_the_tokenizer_and_encode(merged):
    m = merged("bert", "mean", "multi_label", "pair")
    first, second = EXAMPLE_PAIRS
    model = st_model(m.folder)
    features = model.tokenizer(first, second, padding=True, truncation=True, return_tensors="pt")
    assert "token_type_ids" in features  # the pair's second text is marked, as in training
    with torch.no_grad():
        logits = model(dict(features))["sentence_embedding"].numpy()
    np.testing.assert_allclose(logits, torch_logits(m, first, second), **TOL)
    np.testing.assert_allclose(logits, runtime_logits(m, PAIRS), **TOL)
    np.testing.assert_allclose(model.encode(PAIRS), logits, **TOL)


def test_one_type_encoder_under_a_bert_tokenizer_gets_no_token_types(merged):
    m = merged("roberta", "cls")
    config = json.loads((m.folder / "0_Transformer" / "tokenizer_config.json").read_text())
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    first, second = EXAMPLE_PAIRS
    logits = st_model(m.folder).encode(PAIRS)
    np.testing.assert_allclose(logits, torch_logits(m, first, second), **TOL)


def _readme_blocks(folder: Path) -> list[str]:
    text = (folder / "README.md").read_text()
    return [
        b.replace("path/to/merged", str(folder))
        for b in re.findall(r"```python\n(.*?)```", text, re.S)
    ]


def _labels_of(logits: np.ndarray, problem_type: str, labels: list[str]) -> list:
    if problem_type == "single_label":
        return [labels[i] for i in logits.argmax(1)]
    if problem_type == "multi_label":
        return [[lab for lab, x in zip(labels, row, strict=True) if x > 0] for row in logits]
    return list(logits[:, 0])


@pytest.mark.parametrize(
    ("arch", "pooling", "problem_type", "inputs", "blocks"),
    [
        ("bert", "mean", "single_label", "single", 1),
        ("distilbert", "cls", "multi_label", "pair", 1),
        ("roberta", "mean", "regression", "unknown", 2),
        ("bert", "pooler", "single_label", "pair", 1),
    ],
)
def test_folder_readme_examples_run_and_give_the_task_labels(
    tiny_models, tmp_path, arch, pooling, problem_type, inputs, blocks
):
    model_dir = tiny_models(arch)
    delta = make_delta(load_encoder(str(model_dir))[0], pooling, problem_type, inputs, seed=3)
    m = merge_and_export(model_dir, tmp_path, delta, runtime=False)
    meta = json.loads((m.folder / "bitfit_task.json").read_text())
    assert (meta["problem_type"], meta["labels"]) == (problem_type, delta.metadata.labels)
    found = _readme_blocks(m.folder)
    assert len(found) == blocks
    for code in found:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        pair = "model.tokenizer(" in code or (m.result.sequence_classification and inputs == "pair")
        expected = torch_logits(m, *EXAMPLE_PAIRS) if pair else torch_logits(m, EXAMPLE_TEXTS)
        np.testing.assert_allclose(namespace["logits"], expected, **TOL)
        want = _labels_of(expected, problem_type, delta.metadata.labels)
        if problem_type == "regression":
            assert namespace["predicted"] == pytest.approx(want, abs=1e-4)
        else:
            assert namespace["predicted"] == want


def test_folder_reloads_as_the_task_model_with_merged_biases(merged):
    m = merged("distilbert", "mean")
    model, meta = load_model_folder(m.folder)
    assert meta == m.delta.metadata
    enc = tokenize(m.model_dir, TEXTS, model.text_inputs)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in enc.items()})["logits"].numpy()
    np.testing.assert_allclose(logits, torch_logits(m, TEXTS), atol=1e-5, rtol=1e-5)
    merged_params = dict(model.encoder.named_parameters())
    base = dict(load_encoder(str(m.model_dir))[0].named_parameters())
    name, delta = next(iter(m.delta.biases.items()))
    torch.testing.assert_close(merged_params[name], base[name] + torch.from_numpy(delta))
    assert json.loads((m.folder / "bitfit_task.json").read_text())["merged_from"] == str(
        m.delta_path
    )


def test_merge_refuses_bad_input(merged, tiny_models, tmp_path):
    m = merged("bert", "mean")
    with pytest.raises(FingerprintMismatchError, match="was trained on base sha256:.*--model"):
        merge(m.delta_path, tmp_path / "other", model=str(tiny_models("distilbert")))
    assert not (tmp_path / "other").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="--force"):
        merge(m.delta_path, tmp_path / "taken", model=str(m.model_dir))
    merge(m.delta_path, tmp_path / "taken", model=str(m.model_dir), force=True)
    assert (tmp_path / "taken" / "modules.json").is_file()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(m.delta_path.read_bytes()[:100])
    with pytest.raises(DeltaFormatError, match="truncated or corrupt"):
        merge(broken, tmp_path / "never")
    with pytest.raises(DeltaFormatError, match="lacks bitfit_task.json"):
        load_model_folder(m.model_dir)
    info = json.loads((tmp_path / "taken" / "bitfit_task.json").read_text())
    (tmp_path / "taken" / "bitfit_task.json").write_text(json.dumps({**info, "layout": "x"}))
    with pytest.raises(DeltaFormatError, match="layout 'x'.*merge the delta again"):
        load_model_folder(tmp_path / "taken")
    assert load_delta(m.delta_path).metadata.task == "task"


@given(cut=st.integers(0, 40), which=st.integers(0, 10**6), head=st.booleans())
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_merge_refuses_a_delta_of_the_wrong_shape(merged, tmp_path_factory, cut, which, head):
    """A delta of the right base with a bias (or head) of another width: one typed error."""
    m = merged("bert", "mean")
    delta = load_delta(m.delta_path)
    if head:
        cut += cut == delta.head_weight.shape[1]  # the model's own width would fit
        delta.head_weight = np.zeros((delta.head_weight.shape[0], cut), np.float32)
    else:
        name = sorted(delta.biases)[which % len(delta.biases)]
        if cut == delta.biases[name].shape[0]:
            cut += 1
        delta.biases[name] = np.zeros(cut, np.float32)
    path = save_delta(delta, tmp_path_factory.mktemp("cut") / "cut.safetensors")
    out = path.parent / "merged"
    wanted = "head of shape" if head else "has shape"
    with pytest.raises(IncompatibleTaskError, match=wanted):
        merge(path, out, model=str(m.model_dir))
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packaged_minilm_merges_to_the_same_logits(tmp_path, pooling):
    from bitfit_deploy.modeling import default_model_path

    model_dir = Path(default_model_path())
    delta = make_delta(load_encoder(str(model_dir))[0], pooling, "multi_label", "unknown", seed=4)
    m = merge_and_export(model_dir, tmp_path, delta)
    assert m.result.layout == SENTENCE_TRANSFORMERS
    logits = st_model(m.folder).encode(TEXTS)
    np.testing.assert_allclose(logits, torch_logits(m, TEXTS), **TOL)
    np.testing.assert_allclose(logits, runtime_logits(m, TEXTS), **TOL)
    assert_refused_by_transformers(m.folder)


def test_project_readme_loading_example_runs(tiny_models, tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Loading a merged folder", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    model_dir = tiny_models("bert")
    delta = make_delta(load_encoder(str(model_dir))[0], "mean", "single_label", "unknown", seed=5)
    m = merge_and_export(model_dir, tmp_path / "work", delta, runtime=False)
    m.folder.rename(tmp_path / "sentiment-model")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["task"]["labels"] == ["l0", "l1", "l2"]
    single = torch_logits(m, EXAMPLE_TEXTS).argmax(axis=1)  # the README's texts, as the folder's
    assert capsys.readouterr().out.strip() == str([f"l{i}" for i in single])
    pair = torch_logits(m, ["A man is sleeping."], ["Nobody sleeps."])
    np.testing.assert_allclose(namespace["logits"], pair, **TOL)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "it is not a JSON object"),
        ('{"layout": "x"}', "it lacks task"),
        ("LABELS", "'labels' is 5, not list[str]"),
        ("MAXLEN", "'max_length' is \"9\", not int"),
    ],
)
def test_a_damaged_task_file_in_a_merged_folder_is_one_error(merged, tmp_path, content, says):
    m = merged("bert", "mean")
    folder = tmp_path / "folder"
    shutil.copytree(m.result.output, folder)
    info = json.loads((folder / "bitfit_task.json").read_text())
    text = {
        "LABELS": json.dumps({**info, "labels": 5}),
        "MAXLEN": json.dumps({**info, "max_length": "9"}),
    }.get(content, content)
    (folder / "bitfit_task.json").write_text(text)
    with pytest.raises(DeltaFormatError, match=re.escape(says)):
        load_model_folder(folder)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("delta_path", 3), ("output", None), ("model", 2.5), ("force", "yes"), ("force", None)],
)
def test_merge_checks_its_arguments(tmp_path, argument, value):
    """merge(force="yes") forced; merge(delta_path=3) was a TypeError from pathlib."""
    from bitfit_deploy.errors import InvalidInputError

    arguments = {"delta_path": tmp_path / "d.safetensors", "output": tmp_path / "out"}
    with pytest.raises(InvalidInputError, match=argument):
        merge(**{**arguments, argument: value})
    assert not (tmp_path / "out").exists()
