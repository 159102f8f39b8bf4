"""Many threads predicting while tasks are loaded, replaced and unloaded get correct answers."""

from __future__ import annotations

import threading

import pytest
from runtime_fixtures import SENTENCES, synthetic_delta

from bitfit_deploy.delta import to_bytes
from bitfit_deploy.errors import TaskNotFoundError
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime

STABLE = ["s0", "s1", "s2"]


@pytest.mark.parametrize("io_binding", [False, True])
def test_eight_threads_with_loads_and_unloads(tiny_bert, tmp_path, io_binding):
    from bitfit_deploy.exporters.bundle import export_bundle

    export_bundle(tmp_path / "b", model=str(tiny_bert))
    manifest = read_manifest(tmp_path / "b")
    rt = Runtime(tmp_path / "b", threads=1, max_batch_size=4, io_binding=io_binding)
    for i, name in enumerate(STABLE):
        rt.load_task_bytes(to_bytes(synthetic_delta(manifest, name, seed=i)))
    expected = {name: [p.scores for p in rt.predict(name, SENTENCES)] for name in STABLE}
    churn = [to_bytes(synthetic_delta(manifest, f"c{i}", seed=100 + i)) for i in range(4)]
    stop = threading.Event()
    failures: list[str] = []
    counts = [0] * 8

    def worker(k: int) -> None:
        while not stop.is_set():
            requests = [(STABLE[(k + j) % 3], SENTENCES[j % len(SENTENCES)]) for j in range(5)]
            try:
                out = rt.predict_mixed(requests + [("c0", "churned")])
            except TaskNotFoundError:
                out = rt.predict_mixed(requests)
            for (task, text), p in zip(requests, out, strict=False):
                want = expected[task][SENTENCES.index(text)]
                if p.task != task or any(abs(p.scores[lab] - s) > 1e-5 for lab, s in want.items()):
                    failures.append(f"thread {k}: {task} {text!r} -> {p}")
            counts[k] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        for round_ in range(6):
            for i, data in enumerate(churn):
                rt.load_task_bytes(data, replace=True)
                if round_ % 2 and i:
                    rt.unload_task(f"c{i}")
            rt.load_task_bytes(churn[1], name="s-extra", replace=True)
            rt.unload_task("s-extra")
    finally:
        while min(counts) < 2 and not failures:
            threading.Event().wait(0.05)
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert set(STABLE) <= set(rt.tasks)
    final = [s for p in rt.predict("s1", SENTENCES) for s in p.scores.values()]
    assert final == pytest.approx(
        [s for scores in expected["s1"] for s in scores.values()], abs=1e-5
    )
