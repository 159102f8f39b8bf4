"""Where the int8 graphs' time goes (ONNX Runtime's profiler), and which session settings help.

Exports the packaged all-MiniLM-L6-v2 twice with an int8 variant, static scales (the default) and
per-token scales (no tasks: the base biases are fed to every row), then, at 8 x 64 and 32 x 27
tokens:

- profiles the fp32 and both int8 per-row graphs (one thread, so kernel times add up) and prints
  each graph's share of time in matrix multiplies, activation quantization (scales, smoothing,
  QuantizeLinear, the per-token rescale), per-row bias adds and the rest, with the top operators;
- times session settings side by side (graph optimization level, intra-op threads, spinning, and
  the runtime's parallel="rows": one thread per session, the batch's rows split into one slice
  per thread, run at once), repetitions interleaved, and prints each int8 graph's speed-up over
  fp32 as the median of paired ratios with its p10-p90 spread;
- prints the rate of one int8 matrix multiply alone (GMAC/s on one core: is there time left in
  the GEMMs?);
- prints int8 as the runtime serves it by default (parallel="auto": rows) against fp32 as served
  by default (ops), from the same interleaved repetitions.

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
from functools import partial
from pathlib import Path

import numpy as np
from _common import SPIN_PAUSE_S, cpu_description, format_ratio, interleaved_ms, paired_ratio
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


SERVED = "as served (auto)"


def settings(threads: int) -> dict:
    """Settings to compare: name -> variant -> (optimization level, threads, spinning, row slices).

    "as served (auto)" is what `Runtime(parallel="auto", spin_wait=False)` runs: rows for int8,
    ops for fp32.
    """
    ops = ("all", threads, False, 1)
    rows = ("all", 1, False, threads)
    return {
        "all optimizations": lambda v: ("all", threads, True, 1),
        "extended optimizations": lambda v: ("extended", threads, True, 1),
        "basic optimizations": lambda v: ("basic", threads, True, 1),
        "no spinning": lambda v: ops,
        "rows, no spinning": lambda v: rows,
        SERVED: lambda v: rows if v.startswith("int8") else ops,
        "1 thread": lambda v: ("all", 1, True, 1),
    }


def first_output(sess):  # noqa: ANN001, ANN201
    """`feeds -> first output` of an ORT session: what `RowSlices.run` calls per slice."""
    return lambda feeds: sess.run(None, feeds)[0]


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
    from bitfit_deploy.runtime.parallel import RowSlices

    times: dict = {}
    for name, setting in tqdm(settings(threads).items(), desc="settings", file=sys.stdout):
        sessions, spin = {}, False
        for v, path in graphs.items():
            level, n_threads, spin_v, n_slices = setting(v)
            spin |= spin_v
            sessions[v] = (
                first_output(session(path, level, n_threads, spin_v)),
                RowSlices(n_slices),
            )
        calls = {key: partial(slices.run, run, feeds) for key, (run, slices) in sessions.items()}
        for call in calls.values():
            call()
        for key, ms in interleaved_ms(calls, reps, SPIN_PAUSE_S if spin else 0.0).items():
            times[name, key] = ms
        del sessions, calls
    return times


def int8_gemm_rates(reps: int) -> list[str]:
    """GMAC/s of one `MatMulIntegerToFloat` (uint8 x int8, 1 thread) at MiniLM's 8 x 64 shapes.

    On the machine of the README, 170-670 GMAC/s (the VM's speed varies by the hour): 2-7x the
    per-thread AVX-512 VNNI figure reported when MLAS gained AMX kernels (onnxruntime#14042), so
    the matrix multiplies are not where int8 time is left.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out = []
    for m, k, n in ((512, 384, 384), (512, 384, 1536), (512, 1536, 384)):
        inits = [
            numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
            numpy_helper.from_array(np.array(0.01, np.float32), "a_scale"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "zero_point"),
        ]
        node = helper.make_node(
            "MatMulIntegerToFloat",
            ["x", "w", "a_scale", "w_scale", "zero_point"],
            ["y"],
            domain="com.microsoft",
        )
        graph = helper.make_graph(
            [node],
            "gemm",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
            inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        x = rng.integers(0, 256, (m, k)).astype(np.uint8)
        ms = []
        for _ in range(reps + 3):
            start = time.perf_counter()
            sess.run(None, {"x": x})
            ms.append(time.perf_counter() - start)
        rate = m * k * n / statistics.median(ms[3:]) / 1e9
        out.append(f"[{m}, {k}] x [{k}, {n}] {rate:.0f} GMAC/s")
    return out


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
        rates = ", ".join(int8_gemm_rates(5 if args.quick else 30))
        print(f"int8 matrix multiply alone (MatMulIntegerToFloat, 1 thread): {rates}")
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
            print(f"    ({SERVED}: int8 with parallel='rows', fp32 with 'ops', no spinning)")


if __name__ == "__main__":
    main()
