"""How well the static int8 range probe predicts int8 fidelity for tasks added after export.

Exports the packaged all-MiniLM-L6-v2 with a static int8 variant calibrated on the shipped texts
only (no tasks), then, for each BitFit delta of the quality run (`benchmarks/quality.py`, which
writes them to `runs/quality/deltas/`) and for one delta with its biases scaled up:

- loads it into fp32 and int8 runtimes and reads the probe's `int8_clipped`;
- predicts the first `--rows` rows of the task's dev file with both and prints how often the
  int8 label agrees with fp32 (regression: the largest difference);
- for the scaled delta, also exports a bundle *with* it (calibrated on it) and measures again.

No timings, so nothing here is a ratio of speeds.

    .venv/bin/python benchmarks/int8_checks.py [--rows 300] [--scaled mrpc:3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import cpu_description
from quality import ROOT, TASKS

from bitfit_deploy.delta import TaskDelta, load_delta, save_delta
from bitfit_deploy.evaluate import read_eval_data
from bitfit_deploy.exporters.bundle import export_bundle
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.int8_ranges import CLIPPED_WARNING


def scaled(delta: TaskDelta, factor: float) -> TaskDelta:
    """The delta with every bias multiplied by `factor`, renamed so it can sit beside the original."""
    meta = dataclasses.replace(delta.metadata, task=f"{delta.metadata.task}x{factor:g}")
    return dataclasses.replace(
        delta, metadata=meta, biases={k: v * factor for k, v in delta.biases.items()}
    )


def fidelity(bundle: Path, path: Path, items: list, threads: int) -> tuple[float | None, str]:
    """(int8_clipped, agreement of int8 with fp32 on `items`) for the delta at `path`."""
    outs, clipped = {}, None
    for variant in ("fp32", "int8"):
        rt = Runtime(bundle, variant=variant, threads=threads, load_bundle_tasks=False)
        name = rt.load_task(path, replace=True)
        preds = rt.predict(name, items)
        outs[variant] = np.array(
            [[p.value] if p.value is not None else list(p.scores.values()) for p in preds]
        )
        if variant == "int8":
            rt.wait_for_int8_checks()
            clipped = rt.tasks[name].int8_clipped
    a, b = outs["fp32"], outs["int8"]
    if a.shape[1] == 1:
        return clipped, f"max |diff| {np.abs(a - b).max():.3f}"
    return clipped, f"labels agree on {100 * np.mean(a.argmax(1) == b.argmax(1)):.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=Path, default=ROOT / "runs/quality/deltas")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--rows", type=int, default=300, help="dev rows scored per task")
    parser.add_argument("--scaled", default="mrpc:3", help="TASK:FACTOR, a delta scaled up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    found = {t: args.deltas / f"{t}--bitfit.safetensors" for t in TASKS}
    found = {t: p for t, p in found.items() if p.is_file()}
    if not found:
        sys.exit(f"no BitFit deltas in {args.deltas}; run benchmarks/quality.py first.")
    print(f"CPU: {cpu_description()}")
    print(f"warning threshold: {100 * CLIPPED_WARNING:.2f}% clipped\n")
    with tempfile.TemporaryDirectory(prefix="bitfit-int8-checks-") as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(bundle, quantize="int8", progress=False)

        def items_of(task: str, delta: TaskDelta) -> list:
            spec = TASKS[task]
            split = read_eval_data(args.data / spec.dev, delta, None, spec.preset)
            pairs = split.pairs
            rows = list(zip(split.texts, pairs, strict=True)) if pairs is not None else split.texts
            return rows[: args.rows]

        print("task (not in the calibration)      clipped   int8 vs fp32")
        for task, path in found.items():
            clipped, agreement = fidelity(
                bundle, path, items_of(task, load_delta(path)), args.threads
            )
            print(f"  {task:32s} {100 * clipped:6.3f}%   {agreement}")

        task, factor = args.scaled.split(":")
        original = load_delta(found[task])
        loud = save_delta(scaled(original, float(factor)), Path(tmp) / "scaled.safetensors")
        items = items_of(task, original)
        clipped, agreement = fidelity(bundle, loud, items, args.threads)
        label = f"{task}, biases x{factor}"
        print(f"  {label:32s} {100 * clipped:6.3f}%   {agreement}")
        with_it = Path(tmp) / "with-task"
        export_bundle(with_it, tasks=[loud], quantize="int8", progress=False)
        clipped, agreement = fidelity(with_it, loud, items, args.threads)
        print(f"  {'the same, exported with it':32s} {100 * clipped:6.3f}%   {agreement}")


if __name__ == "__main__":
    main()
