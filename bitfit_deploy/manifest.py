"""The export bundle's layout and `manifest.json`: one source of truth for exporter and runtime.

A bundle folder holds `model.onnx` (and `model.int8.onnx`), each with its weights beside it in
`<graph>.data` (ONNX external data), the tokenizer, `base.safetensors`
(the base model's bias vectors, to which task deltas are added), `manifest.json`, and `tasks/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from bitfit_deploy import __version__
from bitfit_deploy.contract import POOLINGS, TEXT_INPUTS
from bitfit_deploy.errors import BundleError
from bitfit_deploy.integrity import sha256_file as sha256_file  # re-exported: exporters use it
from bitfit_deploy.integrity import verify_files
from bitfit_deploy.json_fields import conforms, mismatch, read_json_file, required_fields

FORMAT_NAME = "bitfit-bundle"
FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
BASE_FILE = "base.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TASKS_DIR = "tasks"
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
INT8_ACTIVATIONS = ("static", "per-token")
"""How the int8 graph scales activations (see `bitfit_deploy.exporters.quantize`)."""
INT8_PROBE_FILE = "model.int8.probe.onnx"
"""Static int8 only: the int8 graph plus each quantized tensor's per-row range (shares its weights)."""
INT8_CALIBRATION_FILE = "int8_calibration.safetensors"
"""Static int8 only: token ids of the texts the range probe runs a new task on."""
CLIPPED_OUTPUT_PREFIX = "int8_clipped/"
"""Range probe outputs: per row, the share of a quantized tensor's values beyond its clip."""
MAX_SIZE = 2**31 - 1
"""Above any size, width or id a model has: a larger value in a manifest is damage."""
PROBE_FILE_KEYS = ("probe", "calibration_inputs")
"""Keys of a static int8 variant's `quantization` entry that name bundle files."""
BAKED_DIR = "baked"
"""`--bake TASK` writes `baked/TASK.onnx`: a plain single-task graph with biases as constants."""


@dataclass
class BiasInput:
    """One per-row bias input of the graph: its name (a base parameter name) and width."""

    name: str
    dim: int


@dataclass
class Manifest:
    """What the runtime needs to know about a bundle, saved as `manifest.json`."""

    base_fingerprint: str
    architecture: str
    pooling: str
    max_length: int
    hidden_size: int
    text_inputs: list[str]
    bias_inputs: list[BiasInput]
    variants: dict[str, str]
    base_model: str = ""
    opset: int = 17
    pad_token_id: int = 0
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> sha256 of every file the bundle needs."""
    tasks: list[str] = field(default_factory=list)
    """Relative paths of the task deltas shipped in `tasks/`."""
    baked: dict[str, str] = field(default_factory=dict)
    """Task name -> relative path of its baked single-task graph."""
    weights: dict[str, str] = field(default_factory=dict)
    """Variant -> relative path of its graph's external weights file (ONNX external data), if any."""
    quantization: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant -> how it was quantized: "activations" (an INT8_ACTIVATIONS scheme); for "static"
    also "smoothing", "calibration" (texts, source, tasks), "probe" and "calibration_inputs" (files)
    and "clip" (probe output -> the value its tensor clips at). Bundles before it: per-token."""
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__

    def variant_files(self, variant: str) -> list[str]:
        """The graph of `variant` and its external weights file, if it has one."""
        weights = self.weights.get(variant)
        return [self.variants[variant], *([weights] if weights else [])]

    def runtime_files(self, variant: str, tasks: bool = True) -> list[str]:
        """The files a runtime of `variant` loads (graph, weights, tokenizer, base, shipped tasks).

        Not the int8 range probe's: the range checker verifies those in the background, and a
        damaged probe is reported while serving goes on."""
        return [
            *self.variant_files(variant),
            TOKENIZER_FILE,
            BASE_FILE,
            *(self.tasks if tasks else []),
        ]

    def referenced_files(self) -> list[str]:
        """Every file the manifest points at: each variant's runtime files (shipped tasks
        included), the baked graphs and the int8 range probe's files. Each needs a sha256."""
        files = [f for variant in self.variants for f in self.runtime_files(variant)]
        files += self.baked.values()
        files += [f for spec in self.quantization.values() for f in _probe_files(spec)]
        return list(dict.fromkeys(files))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_FILE) -> Manifest:
        """Build from parsed JSON, checking the format, keys, types and values; unknown keys tolerated."""
        if not isinstance(data, dict):
            raise BundleError(
                f"{source} holds a JSON {type(data).__name__}, not an object; it is not a bundle "
                "manifest (damaged or replaced). Export the bundle again."
            )
        if data.get("format") != FORMAT_NAME:
            raise BundleError(
                f"{source} is not a bitfit-deploy bundle manifest (format {data.get('format')!r}); "
                "create bundles with `bitfit-deploy export --onnx`."
            )
        _check_types(cls, data, source)
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise BundleError(
                f"{source} has bundle format version {data['format_version']}, newer than this "
                f"bitfit-deploy reads ({FORMAT_VERSION}); upgrade bitfit-deploy."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = [k for k in required_fields(cls) if k not in values]
        if missing:
            raise BundleError(f"{source} lacks the keys {missing}; export the bundle again.")
        values["bias_inputs"] = [BiasInput(**b) for b in values["bias_inputs"]]
        manifest = cls(**values)
        _check_values(manifest, source)
        return manifest


def _probe_files(spec: dict[str, Any]) -> list[str]:
    """The files a quantization entry names (a static int8 range probe's), if any."""
    return [spec[k] for k in PROBE_FILE_KEYS if isinstance(spec.get(k), str)]


def _check_types(cls: type, data: dict[str, Any], source: str) -> None:
    """BundleError naming the first known key whose value is not of the type `cls` declares."""
    wrong = mismatch(cls, data)
    if wrong:
        raise BundleError(
            f"{source}: {wrong}; the manifest was edited or damaged. Export the bundle again."
        )


def _check_values(m: Manifest, source: str) -> None:
    """BundleError for values of the right type that no export writes (sizes, names, paths)."""
    problems = [
        *(
            f"{k} {getattr(m, k)} is not from {least} to {MAX_SIZE}"
            for k, least in (
                ("max_length", 1),
                ("hidden_size", 1),
                ("opset", 1),
                ("pad_token_id", 0),
            )
            if not least <= getattr(m, k) <= MAX_SIZE
        ),
        *(
            f"{k} must not be empty"
            for k in ("base_fingerprint", "architecture", "text_inputs", "bias_inputs", "variants")
            if not getattr(m, k)
        ),
        *([f"pooling must be one of {', '.join(POOLINGS)}"] if m.pooling not in POOLINGS else []),
        *(
            f"text input {t!r} is not one of {', '.join(TEXT_INPUTS)}"
            for t in m.text_inputs
            if t not in TEXT_INPUTS
        ),
        *(
            f"bias input {b.name!r} has width {b.dim}"
            for b in m.bias_inputs
            if not 1 <= b.dim <= MAX_SIZE
        ),
        *(
            ["a bias input is listed twice"]
            if len({b.name for b in m.bias_inputs}) < len(m.bias_inputs)
            else []
        ),
        *(["a task is listed twice"] if len(set(m.tasks)) < len(m.tasks) else []),
    ]
    for variant, spec in m.quantization.items():
        if spec.get("activations", "per-token") not in INT8_ACTIVATIONS:
            problems.append(
                f"the {variant} activations are not one of {', '.join(INT8_ACTIVATIONS)}"
            )
        if spec.get("probe"):  # a static int8 range probe: its files and clip values
            clip = spec.get("clip")
            if not all(isinstance(spec.get(k), str) for k in PROBE_FILE_KEYS) or not (
                isinstance(clip, dict)
                and clip
                and all(conforms(v, float) and 0 < v < math.inf for v in clip.values())
            ):
                problems.append(f"the {variant} range probe lacks its files or clip values")
    paths = [*m.variants.values(), *m.weights.values(), *m.files, *m.tasks, *m.baked.values()]
    paths += [f for spec in m.quantization.values() for f in _probe_files(spec)]
    problems += [
        f"path {p!r} is not a relative path inside the bundle" for p in paths if not _inside(p)
    ]
    if problems:
        raise BundleError(
            f"{source}: {'; '.join(problems[:3])}; the manifest was edited or damaged. Export the "
            "bundle again."
        )


def _inside(rel: str) -> bool:
    """Whether `rel` names a file inside the bundle: relative, no `..`, not empty."""
    path = PurePosixPath(rel.replace("\\", "/"))
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and ":" not in rel


def read_manifest(bundle_dir: str | os.PathLike[str], verify: bool = True) -> Manifest:
    """Load a bundle's manifest; with `verify`, check every listed file exists and matches its sha256.

    This hashes every file, used or not, and trusts no verified marker; `Runtime` checks only the
    files it loads (see `bitfit_deploy.integrity`).
    """
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(
            f"{str(bundle)!r} has no {MANIFEST_FILE}: it is not an export bundle. "
            "Create one with `bitfit-deploy export --onnx --output DIR`."
        )
    data = read_json_file(path, BundleError, "export the bundle again")
    manifest = Manifest.from_dict(data, str(path))
    if verify:
        verify_files(bundle, manifest.files, manifest.files, use_markers=False)
    return manifest
