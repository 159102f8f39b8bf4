"""The int8 speed-ups tried for issue 12 and dropped, each timed against what the graphs do now.

Exports the packaged all-MiniLM-L6-v2 with static int8 (or takes `--bundle`), then prints, as
medians of interleaved paired repetitions with their p10-p90 spread (above 1: the alternative is
faster):

1. operators alone, one thread, on one rows slice's shapes (4 x 64 tokens): a per-channel
   QuantizeLinear against Mul + QuantizeLinear (the smoothing), LayerNormalization taking the
   per-row bias against LayerNorm + Add, ORT's SkipLayerNormalization against Add + LayerNorm,
   and a 3-input Sum against two Adds (bias and residual);
2. session options on the int8 graph as served (parallel="rows", 8 x 64): memory patterns and
   the arena off, denormals as zero, 4 slices on 2 cores, slices sharing one 2-thread session,
   and ops mode with and without `dynamic_block_base`;
3. graph edits, timing only (the outputs are not kept): the per-row adds of the LayerNorm, key
   and value biases deleted (an upper bound of folding them away), fp32 and int8; and attention
   in int8 (Q, K, V and the softmax output quantized with timing-only scales, both products as
   MatMulIntegerToFloat); and each attention core as ONNX Runtime's MultiHeadAttention operator
   (also at 1 x 27 and 2 x 256 tokens);
4. whether a session made before `os.fork` runs in the child, and can be closed there, with 1
   and 2 intra-op threads.

Run: `.venv/bin/python benchmarks/int8_alternatives.py [--quick] [--bundle DIR]`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from _common import cpu_description, format_ratio, interleaved_ms, paired_ratio
from int8_profile import feeds_for, first_output, session

HIDDEN, FFN = 384, 1536


def op_model(nodes: list, inputs: dict[str, list[int]], inits: dict[str, np.ndarray], out: str):  # noqa: ANN201
    """A one-thread session over `nodes` (inputs float32 of the given shapes)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    out_type = TensorProto.UINT8 if out.endswith("_u8") else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "op",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(out, out_type, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # as written: ORT would otherwise fuse Add + LayerNorm into SkipLayerNormalization itself
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def operators(reps: int) -> None:
    from onnx import helper

    rng = np.random.default_rng(0)
    f32 = np.float32
    row, ffn = [4, 64, HIDDEN], [4, 64, FFN]
    gamma = rng.uniform(0.5, 1.5, HIDDEN).astype(f32)
    inits = {
        "inv_c": rng.uniform(0.5, 2, FFN).astype(f32),
        "s": np.array(0.05, f32),
        "zp": np.array(128, np.uint8),
        "s_c": rng.uniform(0.02, 0.1, FFN).astype(f32),
        "zp_c": np.full(FFN, 128, np.uint8),
        "gamma": gamma,
        "zeros": np.zeros(HIDDEN, f32),
    }
    node = helper.make_node
    pairs = {
        "per-channel QuantizeLinear vs Mul + QuantizeLinear": (
            (
                [
                    node("Mul", ["x", "inv_c"], ["m"]),
                    node("QuantizeLinear", ["m", "s", "zp"], ["y_u8"]),
                ],
                {"x": ffn},
                "y_u8",
            ),
            ([node("QuantizeLinear", ["x", "s_c", "zp_c"], ["y_u8"], axis=-1)], {"x": ffn}, "y_u8"),
        ),
        "LayerNormalization with the per-row bias vs LayerNorm + Add": (
            (
                [
                    node("LayerNormalization", ["x", "gamma", "zeros"], ["n"], axis=-1),
                    node("Add", ["n", "b"], ["y"]),
                ],
                {"x": row, "b": [4, 1, HIDDEN]},
                "y",
            ),
            (
                [node("LayerNormalization", ["x", "gamma", "b"], ["y"], axis=-1)],
                {"x": row, "b": [4, 1, HIDDEN]},
                "y",
            ),
        ),
        "SkipLayerNormalization vs Add + LayerNorm": (
            (
                [
                    node("Add", ["x", "r"], ["a"]),
                    node("LayerNormalization", ["a", "gamma", "zeros"], ["y"], axis=-1),
                ],
                {"x": row, "r": row},
                "y",
            ),
            (
                [
                    node(
                        "SkipLayerNormalization", ["x", "r", "gamma"], ["y"], domain="com.microsoft"
                    )
                ],
                {"x": row, "r": row},
                "y",
            ),
        ),
        "Sum of 3 vs Add + Add (row bias, residual)": (
            (
                [node("Add", ["x", "b"], ["a"]), node("Add", ["a", "r"], ["y"])],
                {"x": row, "b": [4, 1, HIDDEN], "r": row},
                "y",
            ),
            ([node("Sum", ["x", "b", "r"], ["y"])], {"x": row, "b": [4, 1, HIDDEN], "r": row}, "y"),
        ),
    }
    print("\n== 1. operators alone (1 thread, one 4 x 64 slice's shapes)")
    for name, ((now_nodes, shapes, out), (alt_nodes, _, _)) in pairs.items():
        used = {i for n in now_nodes + alt_nodes for i in n.input}
        inits_used = {k: v for k, v in inits.items() if k in used}
        feeds = {k: rng.normal(size=s).astype(f32) for k, s in shapes.items()}
        now = op_model(now_nodes, shapes, inits_used, out)
        alt = op_model(alt_nodes, shapes, inits_used, out)
        calls = {"now": partial(now.run, None, feeds), "alt": partial(alt.run, None, feeds)}
        for call in calls.values():
            call()
        t = interleaved_ms(calls, reps)
        print(
            f"  {name}: {statistics.median(t['alt']):.3f} vs {statistics.median(t['now']):.3f} ms, "
            f"{format_ratio(paired_ratio(t['now'], t['alt']))}"
        )


def options_session(path: Path, threads: int = 1, config: dict | None = None, **options):  # noqa: ANN003, ANN201
    """An ORT session, spinning off, with `options` attributes and `config` entries set."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session_options(int8: Path, feeds: dict, reps: int) -> None:
    from bitfit_deploy.runtime.parallel import RowSlices

    variants = {
        "as served (rows, 2 slices)": (options_session(int8), 2),
        "memory patterns off": (options_session(int8, enable_mem_pattern=False), 2),
        "arena off": (options_session(int8, enable_cpu_mem_arena=False), 2),
        "memory patterns and arena off": (
            options_session(int8, enable_mem_pattern=False, enable_cpu_mem_arena=False),
            2,
        ),
        "denormals as zero": (
            options_session(int8, config={"session.set_denormal_as_zero": "1"}),
            2,
        ),
        "4 slices on 2 cores": (options_session(int8), 4),
        "2 slices on one 2-thread session": (options_session(int8, threads=2), 2),
        "ops (2 threads)": (options_session(int8, threads=2), 1),
        "ops, dynamic_block_base 4": (
            options_session(int8, 2, {"session.intra_op.dynamic_block_base": "4"}),
            1,
        ),
    }
    calls = {k: partial(RowSlices(n).run, first_output(s), feeds) for k, (s, n) in variants.items()}
    report(calls, reps, "2. int8 session options, 8 x 64, as served (parallel='rows')")


def report(calls: dict, reps: int, title: str) -> None:
    """Time `calls` interleaved; print each against the first."""
    for call in calls.values():
        call()
    t = interleaved_ms(calls, reps)
    first = next(iter(calls))
    print(f"\n== {title}")
    for key in calls:
        ratio = "" if key == first else f", {format_ratio(paired_ratio(t[first], t[key]))}"
        print(f"  {key:34s} {statistics.median(t[key]):7.1f} ms{ratio}")


def without_adds(src: Path, dst: Path, pattern: str) -> int:
    """`src` with the Add nodes whose names match `pattern` deleted (their first input passed on)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    graph, rx = model.graph, re.compile(pattern)
    dropped = [n for n in graph.node if n.op_type == "Add" and rx.search(n.name)]
    for node in dropped:
        for other in graph.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = node.input[0]
        graph.node.remove(node)
    onnx.save(model, str(dst))
    return len(dropped)


def int8_attention(src: Path, dst: Path) -> None:
    """`src` with Q, K, V and the softmax output quantized and both attention products in int8."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    graph.initializer.extend(
        numpy_helper.from_array(v, k)
        for k, v in {
            "alt/s": np.array(0.05, np.float32),
            "alt/zp": np.array(128, np.uint8),
            "alt/sp": np.array(1 / 255, np.float32),
            "alt/zp0": np.array(0, np.uint8),
        }.items()
    )
    nodes, out = list(graph.node), []
    for n in nodes:
        if n.name.endswith(("/self/query/Add", "/self/key/Add", "/self/value/Add")):
            q = n.output[0] + "_u8"
            out += [n, helper.make_node("QuantizeLinear", [n.output[0], "alt/s", "alt/zp"], [q])]
            for other in nodes:
                if other.op_type == "Reshape" and other.input[0] == n.output[0]:
                    other.input[0] = q
        elif n.name.endswith("/self/MatMul"):
            out.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [*n.input, "alt/s", "alt/s", "alt/zp", "alt/zp"],
                    [n.output[0]],
                    domain="com.microsoft",
                )
            )
        elif n.name.endswith("/self/MatMul_1"):
            p = n.input[0] + "_u8"
            out += [
                helper.make_node("QuantizeLinear", [n.input[0], "alt/sp", "alt/zp0"], [p]),
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [p, n.input[1], "alt/sp", "alt/s", "alt/zp0", "alt/zp"],
                    [n.output[0]],
                    domain="com.microsoft",
                ),
            ]
        else:
            out.append(n)
    del graph.node[:]
    graph.node.extend(out)
    del graph.value_info[:]  # the head reshapes now carry uint8
    onnx.save(model, str(dst))


def multihead_attention(src: Path, dst: Path, heads: int = 12) -> None:
    """`src` with each layer's attention core (after the per-row bias adds) as one ORT
    `MultiHeadAttention` node reading the biased Q, K, V and the attention mask as key padding."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    out = [helper.make_node("Cast", ["attention_mask"], ["alt/mask"], to=TensorProto.INT32)]
    for n in graph.node:
        if not n.name.endswith("/self/Reshape_3"):  # the heads merged back: the core's last node
            out.append(n)
            continue
        at = n.name.removesuffix("Reshape_3")
        qkv = [f"{at}{x}/Add_output_0" for x in ("query", "key", "value")]
        out.append(
            helper.make_node(
                "MultiHeadAttention",
                [*qkv, "", "alt/mask"],
                [n.output[0]],
                domain="com.microsoft",
                num_heads=heads,
                scale=(HIDDEN // heads) ** -0.5,
            )
        )
    needed, live = {o.name for o in graph.output}, []  # drop the traced cores and 4-D mask
    for n in reversed(out):
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(n.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))


def graph_edits(bundle: Path, fp32: Path, int8: Path, feeds: dict, reps: int) -> None:
    from bitfit_deploy.runtime.parallel import RowSlices

    adds = r"LayerNorm/Add$|self/key/Add$|self/value/Add$"
    edited = {
        "fp32 now": fp32,
        "fp32 without LN/key/value adds": bundle / f".alt-{os.getpid()}-fp32-adds.onnx",
        "int8 now": int8,
        "int8 without LN/key/value adds": bundle / f".alt-{os.getpid()}-int8-adds.onnx",
        "int8 with int8 attention": bundle / f".alt-{os.getpid()}-int8-attention.onnx",
        "fp32 with MultiHeadAttention": bundle / f".alt-{os.getpid()}-fp32-mha.onnx",
        "int8 with MultiHeadAttention": bundle / f".alt-{os.getpid()}-int8-mha.onnx",
    }
    n = without_adds(fp32, edited["fp32 without LN/key/value adds"], adds)
    without_adds(int8, edited["int8 without LN/key/value adds"], adds)
    int8_attention(int8, edited["int8 with int8 attention"])
    multihead_attention(fp32, edited["fp32 with MultiHeadAttention"])
    multihead_attention(int8, edited["int8 with MultiHeadAttention"])
    try:
        print(f"\n(deleted {n} per-row adds of LayerNorm, key and value biases)")
        for variant in ("fp32", "int8"):
            calls = {}
            for key, path in edited.items():
                if key.startswith(variant):
                    s = session(path, "all", 1, False)
                    names = {i.name for i in s.get_inputs()}
                    own = {k: v for k, v in feeds.items() if k in names}
                    calls[key] = partial(RowSlices(2).run, first_output(s), own)
            report(calls, reps, f"3. {variant} graph edits, 8 x 64, rows mode (timing only)")
        from safetensors.numpy import load_file

        base = load_file(str(bundle / "base.safetensors"))
        for batch, tokens in ((1, 27), (2, 256)):
            shaped = feeds_for(session(fp32, "all", 1, False), base, batch, tokens)
            for variant in ("fp32", "int8"):
                calls = {}
                for key in (f"{variant} now", f"{variant} with MultiHeadAttention"):
                    s = session(edited[key], "all", 1, False)
                    calls[key] = partial(RowSlices(2).run, first_output(s), shaped)
                title = f"3. {variant} MultiHeadAttention, {batch} x {tokens}, rows mode"
                report(calls, reps, title)
    finally:
        for key, path in edited.items():
            if "now" not in key:
                path.unlink(missing_ok=True)


def in_child(job) -> str:  # noqa: ANN001
    """Run `job()` in a forked child: "done", "failed" or "hung" (killed after 30 s)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            job()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "done" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def after_fork(path: Path, feeds: dict) -> None:
    print("\n== 4. a session made before os.fork, in the child")
    for threads in (1, 2):
        holder = [session(path, "all", threads, False)]
        holder[0].run(None, feeds)
        ran = in_child(partial(holder[0].run, None, feeds))
        closed = in_child(holder.clear)  # the session's destructor
        print(f"  {threads} intra-op thread(s): run {ran}; closing it {closed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--bundle", type=Path, help="an existing MiniLM bundle with static int8")
    args = parser.parse_args()
    reps = 6 if args.quick else 30
    from safetensors.numpy import load_file

    from bitfit_deploy.exporters import export_bundle
    from bitfit_deploy.manifest import read_manifest

    print(f"CPU: {cpu_description()}")
    operators(reps * 5)
    with tempfile.TemporaryDirectory(prefix="bitfit-int8-alt-") as tmp:
        bundle = args.bundle or Path(tmp) / "bundle"
        if args.bundle is None:
            export_bundle(bundle, quantize="int8", progress=False)
        manifest = read_manifest(bundle)
        fp32, int8 = (bundle / manifest.variants[v] for v in ("fp32", "int8"))
        base = load_file(str(bundle / "base.safetensors"))
        feeds = feeds_for(session(fp32, "all", 1, False), base, 8, 64)
        session_options(int8, feeds, reps)
        graph_edits(bundle, fp32, int8, feeds, reps)
        after_fork(int8, feeds)


if __name__ == "__main__":
    main()
