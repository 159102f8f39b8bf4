"""ONNX Runtime sessions on the CPU or CUDA execution provider, with a clear error when CUDA is missing."""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

from bitfit_deploy.errors import InvalidInputError, ProviderUnavailableError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
log = logging.getLogger(__name__)


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
    digests: list[str] | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on `provider` with `threads` intra-op threads (None: ORT's default).

    `spin_wait=False` lets idle ORT threads sleep instead of spinning between runs: a little
    slower for back-to-back calls, but a server's event loop then gets the cores it needs.
    With `digests` (the verified sha256 of a graph file and its weights), a CPU session reuses
    ORT's optimized graph from an earlier process (see `bitfit_deploy.runtime.optimized_graphs`).
    """
    name = check_provider(provider)
    if digests and name == "CPUExecutionProvider" and not isinstance(model, bytes):
        return _cpu_session_via_cache(str(model), threads, spin_wait, digests)
    return _session(model, name, _options(threads, spin_wait))


def _options(threads: int | None, spin_wait: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {threads}.")
        options.intra_op_num_threads = threads
    return options


def _session(
    model: str | os.PathLike[str] | bytes, name: str, options: ort.SessionOptions
) -> ort.InferenceSession:
    providers = [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, sess_options=options, providers=providers)
    if name not in session.get_providers():
        raise ProviderUnavailableError(
            f"ONNX Runtime could not start {name} (it fell back to {session.get_providers()}); check the "
            "CUDA and cuDNN libraries onnxruntime-gpu needs, or use provider='cpu'."
        )
    return session


def _cpu_session_via_cache(
    model: str, threads: int | None, spin_wait: bool, digests: list[str]
) -> ort.InferenceSession:
    """A CPU session from the cached optimized graph, else from `model` (saving its optimized graph)."""
    from bitfit_deploy.integrity import marker_dir
    from bitfit_deploy.runtime import optimized_graphs as cache

    folder = marker_dir()
    cpu = PROVIDERS["cpu"]
    if folder is None or not cache.enabled():
        return _session(model, cpu, _options(threads, spin_wait))
    root, key = folder / cache.FOLDER, cache.entry_key(digests, ort.__version__)
    graph = cache.cached_graph(root, key)
    if graph is not None:
        options = _options(threads, spin_wait)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = _session(graph, cpu, options)
            log.debug("session from the optimized graph %s", graph)
            return session
        except Exception as exc:  # a damaged entry: drop it, make the session from the bundle
            log.warning("optimized graph %s failed to load (%s); rebuilding it", graph, exc)
            cache.discard(root, key)
    options = _options(threads, spin_wait)
    tmp = cache.new_entry(root)
    if tmp is None:  # the cache folder cannot be written: open without saving
        return _session(model, cpu, options)
    options.optimized_model_filepath = str(tmp / cache.GRAPH_FILE)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", cache.WEIGHTS_FILE
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    # The weights as this CPU's kernels pack them, beside the plain ones: no packing at load.
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    try:
        session = _session(model, cpu, options)
    except Exception as exc:  # saving failed (a full disk, say), or the graph itself: try plain
        import shutil  # only a first open writes (see bitfit_deploy._io)

        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not save the optimized graph (%s); opening without it", exc)
        return _session(model, cpu, _options(threads, spin_wait))
    cache.publish(tmp, root, key)
    return session
