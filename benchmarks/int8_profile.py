"""Where the int8 graphs' time goes (ONNX Runtime's profiler), and which session settings help.

Exports the packaged all-MiniLM-L6-v2 twice with an int8 variant, static scales (the default) and
per-token scales (no tasks: the base biases are fed to every row), then, at 8 x 64 and 32 x 27
tokens:

- profiles the fp32 and both int8 per-row graphs (one thread, so kernel times add up) and prints
  each graph's share of time in matrix multiplies, activation quantization (scales, smoothing,
  QuantizeLinear, the per-token rescale), per-row bias adds and the rest, with the top operators;
- times session settings side by side (graph optimization level, intra-op threads, spinning),
  repetitions interleaved, and prints each int8 graph's speed-up over fp32 as the median of
  paired ratios with its p10-p90 spread.

Run: `.venv/bin/python benchmarks/int8_profile.py [--quick] [--bundle DIR]`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SPIN_PAUSE_S, cpu_description, format_ratio, paired_ratio
from tqdm import tqdm

MATMUL = {"MatMul", "MatMulIntegerToFloat", "FusedMatMul", "MatMulInteger", "Gemm", "QGemm"}
QUANT = {"QuantizeLinear", "ReduceMax", "ReduceMin", "Neg", "Max", "Cast", "DequantizeLinear"}


def feeds_for(session, base: dict, batch: int, tokens: int) -> dict:
    """Random token ids (every row full length), base biases on every row, a random 2-label head."""
    rng = np.random.default_rng(0)
    out = {
        "input_ids": rng.integers(1000, 20000, (batch, tokens)).astype(np.int64),
        "attention_mask": np.ones((batch, tokens), np.int64),
        "token_type_ids": np.zeros((batch, tokens), np.int64),
    }
    for i in session.get_inputs():
        if i.name in out:
            continue
        if i.name == "head.weight":
            out[i.name] = rng.normal(0, 0.1, (batch, 2, 384)).astype(np.float32)
        elif i.name == "head.bias":
            out[i.name] = np.zeros((batch, 2), np.float32)
        else:
            out[i.name] = np.tile(base[i.name], (batch, 1)).astype(np.float32)
    return {k: v for k, v in out.items() if k in {i.name for i in session.get_inputs()}}


def category(op: str, shapes: list) -> str:
    """matmul / activation quantization / per-row bias add / other."""
    if op in MATMUL:
        return "matrix multiplies"
    per_token_rescale = op == "Mul" and len(shapes) == 2 and shapes[1][-1:] == [1]
    smoothing = op == "Mul" and len(shapes) == 2 and len(shapes[1]) == 1 and shapes[1][0] > 1
    if op in QUANT or per_token_rescale or smoothing:
        return "activation quantization"
    if op == "Add" and len(shapes) == 2 and len(shapes[1]) == 3 and shapes[1][1] == 1:
        return "per-row bias adds"
    return "everything else"


def profile(path: Path, feeds: dict, runs: int) -> tuple[dict, collections.Counter]:
    """(category -> share of kernel time, op -> microseconds) over `runs` runs on one thread."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "p")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    cats: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            shapes = [next(iter(d.values())) for d in e["args"].get("input_type_shape", [])]
            cats[category(op, shapes)] += e["dur"]
            ops[op] += e["dur"]
    total = sum(cats.values())
    return {k: v / total for k, v in cats.items()}, ops


def settings(threads: int) -> dict:
    """Session settings to compare: name -> (graph optimization level, threads, spinning)."""
    return {
        "all optimizations": ("all", threads, True),
        "extended optimizations": ("extended", threads, True),
        "basic optimizations": ("basic", threads, True),
        "no spinning": ("all", threads, False),
        "1 thread": ("all", 1, True),
    }


def session(path: Path, level: str, threads: int, spin: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_settings(graphs: dict, feeds: dict, threads: int, reps: int) -> dict:
    """(setting, variant) -> per-repetition ms; one setting at a time, its variants interleaved.

    Sessions of one setting only exist together, and a spinning session is timed after
    `SPIN_PAUSE_S` idle, so no other session's spinning threads take its cores (see _common).
    """
    times: dict = {}
    for name, (level, n_threads, spin) in tqdm(
        settings(threads).items(), desc="settings", file=sys.stdout
    ):
        sessions = {v: session(path, level, n_threads, spin) for v, path in graphs.items()}
        for s in sessions.values():
            s.run(None, feeds)
        keys = list(sessions)
        for key in keys:
            times[name, key] = []
        for rep in range(reps):
            for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
                if spin:
                    time.sleep(SPIN_PAUSE_S)
                start = time.perf_counter()
                sessions[key].run(None, feeds)
                times[name, key].append((time.perf_counter() - start) * 1e3)
        del sessions
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--bundle", type=Path, help="an existing MiniLM bundle with int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="8x64,32x27")
    args = parser.parse_args()
    runs, reps = (5, 5) if args.quick else (20, 30)
    from safetensors.numpy import load_file

    from bitfit_deploy.exporters import export_bundle
    from bitfit_deploy.manifest import read_manifest

    with tempfile.TemporaryDirectory(prefix="bitfit-int8-profile-") as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "bundle"
            export_bundle(bundle, quantize="int8")
        per_token = Path(tmp) / "per-token"
        export_bundle(per_token, quantize="int8", int8_activations="per-token", progress=False)
        manifest = read_manifest(bundle)
        scheme = manifest.quantization.get("int8", {}).get("activations", "per-token")
        graphs = {
            "fp32": bundle / manifest.variants["fp32"],
            f"int8 {scheme}": bundle / manifest.variants["int8"],
        }
        if scheme != "per-token":
            graphs["int8 per-token"] = per_token / manifest.variants["int8"]
        base = load_file(str(bundle / "base.safetensors"))
        print(f"CPU: {cpu_description()}")
        for shape in args.shapes.split(","):
            batch, tokens = (int(v) for v in shape.split("x"))
            feeds = feeds_for(session(graphs["fp32"], "all", 1, True), base, batch, tokens)
            print(f"\n== {batch} x {tokens} tokens: share of kernel time (1 thread, {runs} runs)")
            for variant, path in graphs.items():
                shares, ops = profile(path, feeds, runs)
                line = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(shares.items()))
                top = ", ".join(
                    f"{op} {100 * t / sum(ops.values()):.1f}%" for op, t in ops.most_common(6)
                )
                print(f"  {variant}: {line}\n    top operators: {top}")
            times = time_settings(graphs, feeds, args.threads, reps)
            print(
                f"  speed-up over fp32 by session setting ({args.threads} threads unless named; "
                f"{reps} interleaved repetitions):"
            )
            for name in settings(args.threads):
                fp32 = times[name, "fp32"]
                cells = [f"fp32 {statistics.median(fp32):6.1f} ms"]
                for variant in list(graphs)[1:]:
                    ms = times[name, variant]
                    ratio = format_ratio(paired_ratio(fp32, ms))
                    cells.append(f"{variant} {statistics.median(ms):6.1f} ms = {ratio}")
                print(f"    {name:24s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
