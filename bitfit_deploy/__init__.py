"""bitfit-deploy: many BitFit tasks (bias deltas) on one frozen transformer.

Importing this package loads neither torch nor transformers; training and export
modules import them when used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from bitfit_deploy.delta import DeltaMetadata, TaskDelta, load_delta, save_delta  # noqa: E402
from bitfit_deploy.errors import BitFitError  # noqa: E402

__all__ = ["BitFitError", "DeltaMetadata", "TaskDelta", "__version__", "load_delta", "save_delta"]
