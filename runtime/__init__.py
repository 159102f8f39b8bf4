"""The embeddable runtime: many BitFit tasks on one ONNX Runtime session, without torch.

Imports numpy, onnxruntime, tokenizers and safetensors only.
"""

from __future__ import annotations

from bitfit_deploy.runtime.results import Prediction, TaskInfo
from bitfit_deploy.runtime.runtime import Runtime

__all__ = ["Prediction", "Runtime", "TaskInfo"]
