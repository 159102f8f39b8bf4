"""Static int8: check how much of a task's activations falls outside the ranges calibrated at export.

A static int8 graph clips each quantized activation at the value calibrated on the base and the
exported tasks. A task added later runs the bundle's range probe (the int8 graph plus, per
quantized tensor, the share of values beyond its clip: `INT8_PROBE_FILE`) on a few calibration
texts, one unpadded text a run. The worst tensor's share goes into `TaskInfo.int8_clipped`, with a
warning above `CLIPPED_WARNING`. The probe session opens on the first check and stays open (about
the int8 graph's memory again); `Runtime(..., check_int8_ranges=False)` skips all of it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from bitfit_deploy.contract import ATTENTION_MASK
from bitfit_deploy.integrity import verify_files
from bitfit_deploy.manifest import Manifest
from bitfit_deploy.runtime.engine import HostEngine
from bitfit_deploy.runtime.providers import create_session
from bitfit_deploy.runtime.registry import BiasLayout, LoadedTask

CLIPPED_WARNING = 0.02
"""Warn above 2% of a tensor's values clipped. Measured on all-MiniLM-L6-v2 with the shipped
calibration texts: 8 real BitFit tasks clip at most 0.7% and keep int8 within 0.5 points of fp32;
an MRPC delta doubled clips 2.6% and its int8 predictions agree with fp32 on 96.3% of rows."""

log = logging.getLogger("bitfit_deploy.runtime")


class RangeProbe:
    """Runs the bundle's range probe for one task at a time (thread-safe, opened lazily)."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        spec: dict,
        layout: BiasLayout,
        threads: int | None,
        use_markers: bool = True,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.outputs = list(spec["clip"])
        self._files = [spec["probe"], spec["calibration_inputs"]]
        self._layout = layout
        self._threads = threads
        self._use_markers = use_markers
        self._engine: HostEngine | None = None
        self._rows: list[dict[str, np.ndarray]] = []
        self._lock = threading.Lock()

    @classmethod
    def for_variant(
        cls,
        bundle_dir: Path,
        manifest: Manifest,
        variant: str,
        layout: BiasLayout,
        threads: int | None,
        use_markers: bool = True,
    ) -> RangeProbe | None:
        """The probe of `variant` if it is static int8 with a probe (bundles before it: None)."""
        spec = manifest.quantization.get(variant) or {}
        if spec.get("activations") != "static" or not spec.get("probe") or not spec.get("clip"):
            return None
        return cls(bundle_dir, manifest, spec, layout, threads, use_markers)

    def clipped(self, task: LoadedTask) -> tuple[float, str]:
        """The share of values clipped in the task's worst tensor, and that tensor's output name."""
        share = dict.fromkeys(self.outputs, 0.0)
        with self._lock:
            engine = self._open()
            for text in self._rows:  # one unpadded text a run: padding would count
                values = engine.session.run(self.outputs, engine.feeds([task], text))
                for name, value in zip(self.outputs, values, strict=True):
                    share[name] += float(value[0]) / len(self._rows)
        worst = max(share, key=share.__getitem__)
        return share[worst], worst

    def _open(self) -> HostEngine:
        if self._engine is None:
            verify_files(self.bundle_dir, self.manifest.files, self._files, self._use_markers)
            probe, inputs = (self.bundle_dir / f for f in self._files)
            arrays = load_file(str(inputs))
            lengths = arrays[ATTENTION_MASK].sum(axis=1)
            self._rows = [
                {k: v[i : i + 1, : int(n)] for k, v in arrays.items()}
                for i, n in enumerate(lengths)
            ]
            session = create_session(probe, "cpu", self._threads, spin_wait=False)
            self._engine = HostEngine(session, self._layout, self.manifest.hidden_size)
        return self._engine


def warn_if_clipped(name: str, share: float, where: str) -> None:
    """Log why a task's int8 scores may drop, and what to do, when `share` passes CLIPPED_WARNING."""
    if share > CLIPPED_WARNING:
        log.warning(
            "task %r clips %.1f%% of the values of an int8 activation (%s) on the bundle's "
            "calibration texts: its int8 scores may fall below fp32. Check with `bitfit-deploy "
            "eval --variant int8`; serve it with the fp32 variant, or export the bundle again with "
            "the task (--task) so that calibration covers it.",
            name,
            100 * share,
            where,
        )
