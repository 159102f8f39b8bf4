"""The runtime imports and predicts without torch or transformers (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

from runtime_fixtures import synthetic_delta

from bitfit_deploy.delta import save_delta
from bitfit_deploy.manifest import read_manifest

SCRIPT = """
import json, sys
from bitfit_deploy.runtime import Runtime
rt = Runtime(sys.argv[1], threads=1)
rt.load_task(sys.argv[2])
out = rt.predict("t", ["a fine day", ("a pair", "of texts")])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"heavy": heavy, "labels": [p.label for p in out]}))
"""


def test_no_torch_or_transformers_in_a_fresh_process(tiny_bert, tmp_path):
    from bitfit_deploy.exporters.bundle import export_bundle

    export_bundle(tmp_path / "b", model=str(tiny_bert))
    delta = save_delta(
        synthetic_delta(read_manifest(tmp_path / "b"), "t"), tmp_path / "t.safetensors"
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "b"), str(delta)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert len(result["labels"]) == 2 and set(result["labels"]) <= {"negative", "positive"}
