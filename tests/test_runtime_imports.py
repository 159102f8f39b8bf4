"""The runtime imports and predicts without torch or transformers, and a cached open without the
modules only writes need (checked in fresh interpreters)."""

from __future__ import annotations

import json
import os
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
writers = sorted(m for m in ("shutil", "tempfile") if m in sys.modules)
print(json.dumps({"heavy": heavy, "writers": writers, "labels": [p.label for p in out]}))
"""


def test_no_torch_or_transformers_in_a_fresh_process(tiny_bert, tmp_path):
    """Neither open imports torch or transformers; the second, from the markers and the optimized
    graph the first left in the cache, writes nothing, so it never imports `shutil` or `tempfile`
    (about 7 ms of a cold start, see bitfit_deploy._io)."""
    from bitfit_deploy.exporters.bundle import export_bundle

    export_bundle(tmp_path / "b", model=str(tiny_bert))
    delta = save_delta(
        synthetic_delta(read_manifest(tmp_path / "b"), "t"), tmp_path / "t.safetensors"
    )
    env = {**os.environ, "BITFIT_DEPLOY_CACHE_DIR": str(tmp_path / "cache")}
    first, cached = (_child(env, tmp_path / "b", delta) for _ in range(2))
    for result in (first, cached):
        assert result["heavy"] == []
        assert len(result["labels"]) == 2 and set(result["labels"]) <= {"negative", "positive"}
    assert first["writers"] == ["shutil", "tempfile"]  # it saved markers and the optimized graph
    assert cached["writers"] == []
    assert cached["labels"] == first["labels"]


def _child(env: dict, bundle, delta) -> dict:  # noqa: ANN001
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), str(delta)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
