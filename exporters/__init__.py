"""Export side (torch): the per-row bias ONNX graph, its int8 variant, baked single-task graphs, bundles."""

from __future__ import annotations

from bitfit_deploy.exporters.bake import export_baked_graph
from bitfit_deploy.exporters.bundle import export_bundle, write_manifest
from bitfit_deploy.exporters.graph import (
    PerRowBiasModel,
    check_runtime_inputs,
    dummy_text_inputs,
    export_per_row_graph,
    hidden_size,
    normalized_config,
)
from bitfit_deploy.exporters.quantize import QUANTIZATIONS, quantize_int8

__all__ = [
    "QUANTIZATIONS",
    "PerRowBiasModel",
    "check_runtime_inputs",
    "dummy_text_inputs",
    "export_baked_graph",
    "export_bundle",
    "export_per_row_graph",
    "hidden_size",
    "normalized_config",
    "quantize_int8",
    "write_manifest",
]
