"""`merge`: the merged folder reproduces the trained task model; bad input is refused."""

from __future__ import annotations

import pytest
import torch

from bitfit_deploy.delta import load_delta
from bitfit_deploy.errors import DeltaFormatError, FingerprintMismatchError, OutputExistsError
from bitfit_deploy.merge import load_model_folder, merge
from bitfit_deploy.modeling import load_encoder
from bitfit_deploy.train import TrainConfig, train

TEXTS = ["the movie was great", "this film was dull", "our trip was lovely"]


def trained(model_dir, toy_tsv, tmp_path, pooling: str, name: str = "d.safetensors"):
    cfg = TrainConfig(
        task="toy",
        train=str(toy_tsv(48)),
        output=str(tmp_path / name),
        model=str(model_dir),
        pooling=pooling,
        max_steps=3,
        batch_size=16,
        max_length=16,
        lr=5e-2,
        progress=False,
    )
    return train(cfg)


def encode(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))(TEXTS, padding=True, return_tensors="pt")


def task_logits(model, enc):
    with torch.no_grad():
        return model.eval()(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))[
            "logits"
        ]


@pytest.mark.parametrize(("arch", "pooling"), [("bert", "mean"), ("distilbert", "cls")])
def test_merged_folder_reproduces_logits(tiny_models, toy_tsv, tmp_path, arch, pooling):
    from transformers import AutoModel

    model_dir = tiny_models(arch)
    result = trained(model_dir, toy_tsv, tmp_path, pooling)
    merged = merge(result.output, tmp_path / "merged", model=str(model_dir))
    assert not merged.sequence_classification
    assert (
        "no *ForSequenceClassification folder" in merged.description
        and pooling in merged.description
    )
    reloaded, meta = load_model_folder(tmp_path / "merged")
    assert meta == result.delta.metadata
    enc = encode(model_dir)
    torch.testing.assert_close(
        task_logits(reloaded, enc), task_logits(result.model, enc), atol=1e-5, rtol=1e-5
    )
    # The folder is a plain HF encoder whose biases are base + delta.
    plain = dict(AutoModel.from_pretrained(str(tmp_path / "merged")).named_parameters())
    base = dict(load_encoder(str(model_dir))[0].named_parameters())
    name, delta = next(iter(result.delta.biases.items()))
    torch.testing.assert_close(plain[name], base[name] + torch.from_numpy(delta))


def test_pooler_pooling_gives_a_complete_sequence_classifier(tiny_bert, toy_tsv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = trained(tiny_bert, toy_tsv, tmp_path, "pooler")
    merged = merge(result.output, tmp_path / "merged", model=str(tiny_bert))
    assert merged.sequence_classification and "BertForSequenceClassification" in merged.description
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert hf.config.id2label == {0: "0", 1: "1"}
    assert hf.config.problem_type == "single_label_classification"
    enc = encode(tiny_bert)
    with torch.no_grad():
        logits = hf(**enc).logits
    torch.testing.assert_close(logits, task_logits(result.model, enc), atol=1e-5, rtol=1e-5)


def test_merge_refuses_bad_input(tiny_models, toy_tsv, tmp_path):
    result = trained(tiny_models("bert"), toy_tsv, tmp_path, "mean")
    with pytest.raises(FingerprintMismatchError, match="was trained on base sha256:.*--model"):
        merge(result.output, tmp_path / "other", model=str(tiny_models("distilbert")))
    assert not (tmp_path / "other").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="--force"):
        merge(result.output, tmp_path / "taken", model=str(tiny_models("bert")))
    merge(result.output, tmp_path / "taken", model=str(tiny_models("bert")), force=True)
    assert (tmp_path / "taken" / "bitfit_task.json").is_file()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(result.output.read_bytes()[:100])
    with pytest.raises(DeltaFormatError, match="truncated or corrupt"):
        merge(broken, tmp_path / "never")
    with pytest.raises(DeltaFormatError, match="lacks bitfit_task.json"):
        load_model_folder(tiny_models("bert"))
    assert load_delta(result.output).metadata.task == "toy"
