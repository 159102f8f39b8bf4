"""ONNX Runtime sessions on the CPU or CUDA execution provider, with a clear error when CUDA is missing."""

from __future__ import annotations

import os

import onnxruntime as ort

from bitfit_deploy.errors import InvalidInputError, ProviderUnavailableError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def check_provider(provider: str) -> str:
    """The ORT provider name for `provider` ("cpu" or "cuda"); raise if this install lacks it."""
    if provider not in PROVIDERS:
        raise ProviderUnavailableError(
            f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}."
        )
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise ProviderUnavailableError(
            f"provider {provider!r} needs ONNX Runtime's {name}, but this install offers only "
            f"{', '.join(available)}; install onnxruntime-gpu (pip install 'bitfit-deploy[gpu]') on a "
            "machine with a CUDA device, or use provider='cpu'."
        )
    return name


def create_session(
    model: str | os.PathLike[str] | bytes,
    provider: str = "cpu",
    threads: int | None = None,
    spin_wait: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession on `provider` with `threads` intra-op threads (None: ORT's default).

    `spin_wait=False` lets idle ORT threads sleep instead of spinning between runs: a little
    slower for back-to-back calls, but a server's event loop then gets the cores it needs.
    """
    name = check_provider(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {threads}.")
        options.intra_op_num_threads = threads
    providers = [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, sess_options=options, providers=providers)
    if name not in session.get_providers():
        raise ProviderUnavailableError(
            f"ONNX Runtime could not start {name} (it fell back to {session.get_providers()}); check the "
            "CUDA and cuDNN libraries onnxruntime-gpu needs, or use provider='cpu'."
        )
    return session
