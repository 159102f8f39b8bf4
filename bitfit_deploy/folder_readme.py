"""The README.md of a merged folder: which loader reads it, and how its logits become labels."""

from __future__ import annotations

from bitfit_deploy.delta import DeltaMetadata

_TO_LABELS = {
    "single_label": "predicted = [labels[i] for i in logits.argmax(axis=1)]",
    "multi_label": "predicted = [[name for name, x in zip(labels, row) if x > 0] for row in logits]",
    "regression": "predicted = logits[:, 0]  # the regression value",
}
EXAMPLE_TEXTS = ["a gorgeous film", "a dull film"]
"""The texts of the README's examples (the tests run them)."""
EXAMPLE_PAIRS = (["A man is sleeping.", "A cat sits."], ["Nobody sleeps.", "An animal sits."])
"""The pairs of the README's pair example: first texts, second texts."""
_TEXTS = repr(EXAMPLE_TEXTS)
_PAIRS = f"{EXAMPLE_PAIRS[0]!r}, {EXAMPLE_PAIRS[1]!r}"


def render(meta: DeltaMetadata, name: str, classifier: str | None) -> str:
    """README for folder `name` of task `meta`: a `classifier` folder, or sentence-transformers."""
    labels = meta.labels if meta.problem_type != "regression" else ["score"]
    lines = [
        f"# {meta.task}",
        "",
        f"A task written by bitfit-deploy: its base model ({meta.architecture}; "
        f"{meta.base_model or 'source not recorded'}) with the task's biases merged in, and its "
        "head. "
        f"Problem type: {meta.problem_type}; logits, in order: {', '.join(labels)}. "
        "`bitfit_task.json` holds the task's metadata.",
        "",
    ]
    setup = f"labels = {labels!r}\n{_TO_LABELS[meta.problem_type]}\nprint(predicted)"
    if classifier is not None:
        lines += [
            f"A complete `{classifier}`: transformers' own head computes exactly this task "
            f"(pooling {meta.pooling!r}).",
            "",
            _block(
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f'model = AutoModelForSequenceClassification.from_pretrained("path/to/{name}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")\n'
                f"features = tokenizer({_inputs(meta)}, padding=True, truncation=True, "
                'return_tensors="pt")\n'
                "logits = model(**features).logits.detach().numpy()\n" + setup
            ),
        ]
        return "\n".join(lines)
    lines += [
        "A sentence-transformers model: the encoder (`0_Transformer/`), the task's pooling "
        f"({meta.pooling!r}, `1_Pooling/`) and the task's head as a Dense module with an identity "
        "activation (`2_Dense/`), so it returns the task's logits. transformers has no "
        "`*ForSequenceClassification` that computes this task, so the folder has no root "
        "`config.json` and `AutoModelForSequenceClassification` refuses it; "
        f'`AutoModel.from_pretrained("path/to/{name}", subfolder="0_Transformer")` loads the '
        "encoder alone.",
        "",
    ]
    if meta.inputs != "pair":
        lines += [
            _block(
                "from sentence_transformers import SentenceTransformer\n\n"
                f'model = SentenceTransformer("path/to/{name}")\n'
                f"logits = model.encode({_TEXTS})\n" + setup
            ),
            "",
        ]
    if meta.inputs != "single":
        lines += [
            "Text pairs: the tokenizer's pair input through the model's forward pass works with "
            "any sentence-transformers version (`encode` of version 6 also takes "
            "`(text, text_pair)` tuples; bitfit-deploy's runtime takes pairs as they are):",
            "",
            _block(
                "import torch\nfrom sentence_transformers import SentenceTransformer\n\n"
                f'model = SentenceTransformer("path/to/{name}")\n'
                f"features = model.tokenizer({_PAIRS}, padding=True, truncation=True, "
                'return_tensors="pt")\n'
                "with torch.no_grad():\n"
                '    logits = model(dict(features))["sentence_embedding"].numpy()\n' + setup
            ),
            "",
        ]
    return "\n".join(lines)


def _inputs(meta: DeltaMetadata) -> str:
    return _PAIRS if meta.inputs == "pair" else _TEXTS


def _block(code: str) -> str:
    return f"```python\n{code}\n```\n"
