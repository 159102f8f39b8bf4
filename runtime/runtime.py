"""`Runtime`: many BitFit tasks on one ONNX Runtime session; tasks switch by feeding bias rows.

Imports numpy, onnxruntime, tokenizers and safetensors only (never torch or transformers),
so apps can embed it with a small install.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bitfit_deploy.arguments import (
    MOST_BATCH,
    MOST_THREADS,
    check_count,
    check_flag,
    check_path,
    check_seconds,
    check_text,
)
from bitfit_deploy.contract import check_task_name, shortest_max_length
from bitfit_deploy.delta import TaskDelta, check_delta_fits, from_bytes, load_delta
from bitfit_deploy.errors import (
    BitFitError,
    BundleError,
    IncompatibleTaskError,
    InvalidInputError,
    TaskNotFoundError,
)
from bitfit_deploy.integrity import VERIFY_MODES, verify_bundle
from bitfit_deploy.manifest import (
    BASE_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    VARIANT_FILES,
    Manifest,
    read_manifest,
)
from bitfit_deploy.runtime.batching import plan_runs
from bitfit_deploy.runtime.engine import BoundEngine, HostEngine, check_graph_inputs
from bitfit_deploy.runtime.inputs import check_input, describe
from bitfit_deploy.runtime.int8_ranges import CheckResult, RangeChecker, RangeProbe, warn_if_clipped
from bitfit_deploy.runtime.parallel import PARALLEL_MODES, RowSlices, resolve_parallel
from bitfit_deploy.runtime.providers import PROVIDERS, create_session
from bitfit_deploy.runtime.registry import (
    BiasLayout,
    LoadedTask,
    Snapshot,
    TaskRegistry,
    prepare_task,
)
from bitfit_deploy.runtime.results import Prediction, TaskInfo, make_prediction
from bitfit_deploy.runtime.tokenize import BundleTokenizer, TextInput

Request = tuple[str, Any]
log = logging.getLogger("bitfit_deploy.runtime")


class Runtime:
    """One bundle, one ONNX Runtime session, many tasks; rows of one batch may belong to different tasks.

    Example:
        >>> rt = Runtime("bundle/", threads=2)                       # doctest: +SKIP
        >>> rt.load_task("sst2.safetensors")                         # doctest: +SKIP
        'sst2'
        >>> rt.predict("sst2", ["a gripping film"])[0].label        # doctest: +SKIP
        'positive'

    Args:
        bundle_dir: a folder written by `bitfit-deploy export --onnx`.
        provider: "cpu" or "cuda" (onnxruntime-gpu's CUDA provider, with I/O binding).
        threads: ONNX Runtime intra-op threads; None lets ORT choose.
        variant: "fp32" or "int8" (if the bundle was exported with it).
        max_batch_size: the most rows in one run of the graph.
        load_bundle_tasks: load the deltas shipped in the bundle's tasks/ folder.
        io_binding: gather task rows on the session's device with I/O binding; default on for cuda.
        spin_wait: let idle ORT threads spin between runs (fastest for back-to-back calls);
            False suits a process that does other work, like the server.
        verify: how the bundle's sha256 checksums are checked before anything is loaded:
            "cached" (default) hashes the files this runtime loads, skipping a file whose
            verified marker still matches (size, mtime, ctime, inode: see
            `bitfit_deploy.integrity` for what that does not catch); "loaded" always hashes
            them; "full" hashes every file of the bundle, unused variants included.
        check_int8_ranges: on a static int8 variant, run each task loaded through the bundle's
            range probe in the background and record `TaskInfo.int8_clipped`, warning when much
            of it leaves the calibrated range (see `bitfit_deploy.runtime.int8_ranges`).
        parallel: how a batch uses the `threads` on the CPU: "ops" splits each operator over
            them (ORT's intra-op threads); "rows" runs slices of the batch's rows at once, one
            thread each (faster for batches, but one row gets one core); "auto" (default) picks
            rows for the int8 variant on the CPU (unless max_batch_size is 1) and ops otherwise.
            With threads=None, rows uses one slice per physical core. Logits are the same in both
            (see `bitfit_deploy.runtime.parallel` for the figures).
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        provider: str = "cpu",
        threads: int | None = None,
        variant: str = "fp32",
        max_batch_size: int = 32,
        load_bundle_tasks: bool = True,
        *,
        io_binding: bool | None = None,
        spin_wait: bool = True,
        verify: str = "cached",
        check_int8_ranges: bool = True,
        parallel: str = "auto",
    ) -> None:
        check_text("provider", provider, tuple(PROVIDERS))
        check_text("variant", variant, tuple(VARIANT_FILES))
        check_text("verify", verify, VERIFY_MODES)
        check_text("parallel", parallel, PARALLEL_MODES)
        check_count("threads", threads, MOST_THREADS, optional=True)
        check_count("max_batch_size", max_batch_size, MOST_BATCH)
        for flag, value in (
            ("load_bundle_tasks", load_bundle_tasks),
            ("spin_wait", spin_wait),
            ("check_int8_ranges", check_int8_ranges),
        ):
            check_flag(flag, value)
        check_flag("io_binding", io_binding, optional=True)
        check_path("bundle_dir", bundle_dir)
        threads = None if threads is None else int(threads)  # a numpy integer: ORT takes ints
        max_batch_size = int(max_batch_size)
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = read_manifest(self.bundle_dir, verify=False)
        self.max_batch_size = max_batch_size
        bound = provider != "cpu" if io_binding is None else io_binding
        # "ops" or "rows": what `parallel` resolved to (see runtime/parallel.py).
        self.parallel, slices = resolve_parallel(
            parallel, provider, variant, bound, threads, max_batch_size
        )
        session_threads = 1 if self.parallel == "rows" else threads
        self.provider = provider
        self.variant = variant
        model_path = self._variant_path(variant)
        verify_bundle(self.bundle_dir, self.manifest, variant, verify, load_bundle_tasks)
        self._layout = BiasLayout.from_inputs(self.manifest.bias_inputs)
        self._bias_dims = dict(zip(self._layout.names, self._layout.dims, strict=True))
        self._base_row = self._read_base()
        self._tokenizer = BundleTokenizer(
            self.bundle_dir / TOKENIZER_FILE,
            self.manifest.max_length,
            self.manifest.pad_token_id,
            self.manifest.text_inputs,
        )
        least = shortest_max_length(self._tokenizer.pair_specials)
        if self.manifest.max_length < least:  # the tokenizer would not cut at all
            raise BundleError(
                f"{self.bundle_dir / MANIFEST_FILE}: max_length {self.manifest.max_length} is "
                f"below {least}, too short for this tokenizer's special tokens and a text; "
                "export the bundle again with a larger --max-length."
            )
        digests = [self.manifest.files.get(f) for f in self.manifest.variant_files(variant)]
        session = create_session(  # digests verified above: the optimized-graph cache key
            model_path,
            provider,
            session_threads,
            spin_wait,
            digests=digests if all(digests) else None,
        )
        hidden = self.manifest.hidden_size
        check_graph_inputs(
            session,
            self.manifest.text_inputs,
            self._layout,
            hidden,
            str(self.bundle_dir / MANIFEST_FILE),
        )
        self._engine: HostEngine | BoundEngine
        if bound:
            self._engine = BoundEngine(
                session,
                self._layout,
                hidden,
                provider,
                threads,
                "cuda" if provider == "cuda" else "cpu",
            )
        else:
            self._engine = HostEngine(session, self._layout, hidden, RowSlices(slices))
        self._registry = TaskRegistry(self._engine.build_device)
        probe = (
            RangeProbe.for_variant(
                self.bundle_dir,
                self.manifest,
                variant,
                self._layout,
                session_threads,
                use_markers=verify == "cached",
            )
            if check_int8_ranges
            else None
        )
        self._range_checker = RangeChecker(probe, self._record_int8_checks) if probe else None
        if load_bundle_tasks:
            for rel in self.manifest.tasks:
                try:
                    self.load_task(self.bundle_dir / rel)
                except BitFitError as exc:  # its own task does not fit: the bundle is damaged
                    raise BundleError(
                        f"{self.bundle_dir / MANIFEST_FILE}: the shipped task {rel} does not fit "
                        f"the bundle ({type(exc).__name__}: {exc}); the manifest or the task was "
                        "edited. Export the bundle again."
                    ) from exc

    # ----------------------------------------------------------------- tasks
    def load_task(
        self, path: str | os.PathLike[str], name: str | None = None, replace: bool = False
    ) -> str:
        """Load a delta file as task `name` (default: the delta's own name); return the name."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInputError(
                f"load_task takes the path of a delta file, got {describe(path)}; for the file's "
                "bytes use load_task_bytes."
            )
        return self._add(load_delta(path), name, replace, repr(str(path)))

    def load_task_bytes(
        self,
        data: bytes,
        name: str | None = None,
        replace: bool = False,
        source: str = "uploaded delta",
    ) -> str:
        """Load a delta from its file bytes (an upload); return the task's name.

        `source` names the bytes in error messages (a file they were read from, say).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                f"load_task_bytes takes a delta file's bytes, got {describe(data)}; for a path "
                "use load_task."
            )
        return self._add(from_bytes(bytes(data), source=source), name, replace, source)

    def unload_task(self, name: str) -> None:
        """Stop serving task `name`; runs under way finish with it."""
        self._registry.remove(name)

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        """A snapshot of the loaded tasks: name -> TaskInfo."""
        return {name: t.info for name, t in self._registry.snapshot().tasks.items()}

    def wait_for_int8_checks(self, timeout: float | None = None) -> bool:
        """Block until the int8 range check of every loaded task is done (see `TaskInfo.int8_clipped`).

        The checks run in the background on a static int8 variant and never delay serving.
        Returns False if `timeout` seconds pass first; True at once when there is nothing to check.
        """
        check_seconds("timeout", timeout, optional=True)
        return True if self._range_checker is None else self._range_checker.wait(timeout)

    # ------------------------------------------------------------- predicting
    def validate_input(self, task: str, item: Any, index: int = 0) -> TextInput:
        """`item` as it will be read, or TaskNotFoundError / InvalidInputError (naming input `index`).

        Checks what `predict` checks: text only, well-formed Unicode, the task's arity
        (`TaskInfo.inputs`: one text or a (text, text_pair) pair).
        """
        return check_input(item, self._task(self._registry.snapshot(), task, index).info, index)

    def predict(
        self, task: str, inputs: Sequence[str | tuple[str, str] | list[str]]
    ) -> list[Prediction]:
        """Predict `task` for each input (a text, or a (text, text_pair) pair), in input order.

        `inputs` is a list (or any iterable: a generator, a numpy array of strings) of inputs.
        """
        inputs = _as_list(inputs, "inputs")
        if isinstance(inputs, tuple) and inputs and all(isinstance(x, str) for x in inputs):
            raise InvalidInputError(
                f"inputs is a tuple of {len(inputs)} texts, which reads as one (text, text_pair) "
                "pair; pass a list: [text, ...] for texts, [(text, text_pair)] for a pair."
            )
        return self.predict_mixed([(task, item) for item in inputs])

    def predict_mixed(
        self, requests: Sequence[tuple[str, str | tuple[str, str]]]
    ) -> list[Prediction]:
        """Predict many (task, input) requests together: rows of similar length share runs; input order kept."""
        requests = _as_list(requests, "requests")
        if not requests:
            raise InvalidInputError(
                "no inputs given: pass at least one text (or (text, text_pair) pair) to predict."
            )
        snapshot = self._registry.snapshot()
        tasks, items = [], []
        for index, request in enumerate(requests):
            if not isinstance(request, (tuple, list)) or len(request) != 2:
                raise InvalidInputError(
                    f"request {index} must be a (task, input) pair, got {describe(request)}."
                )
            task = self._task(snapshot, request[0], index)
            tasks.append(task)
            items.append(check_input(request[1], task.info, index))
        encoded = self._tokenizer.encode(items, [t.info.max_length for t in tasks])
        results: list[Prediction | None] = [None] * len(encoded)
        for run in plan_runs([len(e) for e in encoded], self.max_batch_size):
            self._run(snapshot, run, tasks, encoded, results)
        return results  # type: ignore[return-value]

    # -------------------------------------------------------------- internals
    @staticmethod
    def _task(snapshot: Snapshot, name: str, index: int) -> LoadedTask:
        """The task of request `index`, or TaskNotFoundError naming that request."""
        try:
            return snapshot.get(name)
        except TaskNotFoundError as exc:
            raise TaskNotFoundError(f"request {index}: {exc}") from None

    def _run(
        self, snapshot: Snapshot, run: list[int], tasks: list, encoded: list, results: list
    ) -> None:
        run_tasks = [tasks[i] for i in run]
        text = self._tokenizer.pad([encoded[i] for i in run])
        logits = self._engine.run(snapshot, run_tasks, text).tolist()
        for row, i in enumerate(run):
            info = run_tasks[row].info
            results[i] = make_prediction(info, logits[row][: info.num_labels], encoded[i].truncated)

    def _add(self, delta: TaskDelta, name: str | None, replace: bool, source: str) -> str:
        check_flag("replace", replace)
        m = self.manifest
        check_delta_fits(
            delta, m.base_fingerprint, m.pooling, self._bias_dims, m.hidden_size, source=source
        )
        name = delta.metadata.task if name is None else name
        check_task_name(name, "pass another name, or retrain the task with another --task")
        max_length = self._task_max_length(delta, name, source)
        task = prepare_task(delta, name, self._base_row, self._layout, max_length)
        self._registry.add(task, replace=replace)
        if self._range_checker is not None:
            self._range_checker.submit(task)
        return name

    def _record_int8_checks(self, results: list[CheckResult]) -> None:
        updates = []
        for task, share, where in results:
            updates.append((task, dataclasses.replace(task.info, int8_clipped=round(share, 6))))
            warn_if_clipped(task.info.name, share, where)
        self._registry.update_infos(updates)

    def _task_max_length(self, delta: TaskDelta, name: str, source: str) -> int:
        """Where the task's inputs are cut: as in training, capped (with a warning) by the bundle."""
        trained, bundle = delta.metadata.max_length, self.manifest.max_length
        least = shortest_max_length(self._tokenizer.pair_specials)
        if trained < least:
            raise IncompatibleTaskError(
                f"{source} (task {name!r}) has max_length {trained}, too short to hold a text "
                f"beside the special tokens (at least {least}); retrain it with a larger "
                "--max-length."
            )
        if trained > bundle:
            log.warning(
                "task %r was trained on inputs of up to %d tokens but this bundle reads at most %d: "
                "longer inputs are cut at %d, unlike in training, and may score below the task's "
                "metrics. Export the bundle with --max-length %d (if the model allows it).",
                name,
                trained,
                bundle,
                bundle,
                trained,
            )
        return min(trained, bundle)

    def _variant_path(self, variant: str) -> Path:
        rel = self.manifest.variants.get(variant)
        if rel is None:
            raise BundleError(
                f"bundle {str(self.bundle_dir)!r} has no {variant!r} graph (it has "
                f"{', '.join(self.manifest.variants)}); export it with that variant (e.g. --quantize int8)."
            )
        return self.bundle_dir / rel

    def _read_base(self) -> np.ndarray:
        path = self.bundle_dir / BASE_FILE
        try:
            base = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise BundleError(f"cannot read {path} ({exc}); export the bundle again.") from exc
        missing = [n for n in self._layout.names if n not in base]
        if missing:
            raise BundleError(
                f"{path} lacks the base biases {missing[:3]}; export the bundle again."
            )
        wrong = [n for n, d in self._bias_dims.items() if base[n].shape != (d,)]
        if wrong:  # the checksummed base against the manifest, which nothing else checks
            raise BundleError(
                f"{self.bundle_dir / MANIFEST_FILE} gives widths that {path} does not have "
                f"({', '.join(f'{n}: {self._bias_dims[n]} vs {base[n].shape}' for n in wrong[:3])}); "
                "the manifest was edited or damaged. Export the bundle again."
            )
        return self._layout.flatten(base)


def _as_list(values: Any, what: str) -> Any:
    """`values` if a sequence, a list of them if another iterable; InvalidInputError for one value."""
    if isinstance(values, (str, bytes)):
        raise InvalidInputError(
            f"{what} is {describe(values)}, a single value; pass a list of texts, e.g. [text]."
        )
    if isinstance(values, Sequence):
        return values
    if isinstance(values, Iterable) and not isinstance(values, (Mapping, Set)):
        try:
            return list(values)  # a generator, a numpy array (a set or dict has no input order)
        except TypeError:  # a 0-d numpy array says it iterates, then refuses
            pass
    raise InvalidInputError(
        f"{what} is {describe(values)}; pass a list of texts or (text, text_pair) pairs."
    )
