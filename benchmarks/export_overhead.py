"""What the per-row bias graph costs, and what int8 buys, on the packaged all-MiniLM-L6-v2.

In one run, with repetitions interleaved (ONNX Runtime intra_op_num_threads=2 by default):

- latency, batch 8 x 64 tokens (and 32 x 27, 1 x 27): the per-row bias graph (`model.onnx`, biases
  and head fed as inputs) vs the `--bake` graph of the same task (biases and head as constants);
  goal: within 5%;
- latency: int8 (`model.int8.onnx`, static or per-token activation scales) vs fp32 per-row graphs; goal: at
  least 1.8x faster at 8 x 64 on a CPU with int8 dot-product instructions (VNNI/AMX); beside it the
  previous int8 graph (ORT dynamic quantization, one activation scale per tensor);
- SST-2 dev accuracy (872 rows) of a trained task, fp32 vs both int8 graphs; goal: a drop of at
  most 1 point; and how far a batch-mate moves a row's score (0 for the bundle's int8 graph).

Every ratio is the median of per-repetition ratios of interleaved runs, with its 10th-90th
percentile spread (`benchmarks/_common.py`).

The task is trained here (`bitfit_deploy.train`, BitFit, mean pooling, 1 epoch on the first
`--train-rows` SST-2 train rows) unless `--delta PATH` names an existing SST-2 delta.

Run: `.venv/bin/python benchmarks/export_overhead.py [--quick] [--delta PATH] [--plot PATH]`.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import cpu_description, format_ratio, paired_ratio, save_plot
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/glue/sst2"
SAMPLE = ROOT / "examples/data/sst2"


def sst2_split(name: str) -> tuple[Path, list[tuple[str, str]]]:
    """(path, [(sentence, label)]) of SST-2 `name` (train/dev); the examples sample without ../shared."""
    path = (SHARED if (SHARED / f"{name}.tsv").is_file() else SAMPLE) / f"{name}.tsv"
    with open(path, newline="") as fh:
        rows = [
            (r["sentence"].strip(), r["label"])
            for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]
    return path, rows


def trained_delta(args: argparse.Namespace, work: Path) -> Path:
    """The SST-2 delta to measure: `--delta`, or BitFit-trained here on a slice of SST-2 train."""
    if args.delta:
        return Path(args.delta)
    from bitfit_deploy.train import TrainConfig, train

    source, rows = sst2_split("train")
    subset = work / "train.tsv"
    subset.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[: args.train_rows])
    )
    print(
        f"training SST-2 BitFit on {min(args.train_rows, len(rows))} rows of {source} (1 epoch, mean pooling)"
    )
    result = train(
        TrainConfig(
            task="sst2",
            train=str(subset),
            output=str(work / "sst2.safetensors"),
            preset="sst2",
            pooling="mean",
            epochs=1.0,
            max_length=64,
            seed=0,
        )
    )
    return result.output


def per_tensor_int8(source: Path, target: Path) -> Path:
    """The previous int8 graph: ORT dynamic quantization, one activation scale per tensor."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bitfit_deploy.exporters.quantize import frozen_weight_nodes

    logging.getLogger().setLevel(logging.ERROR)  # ORT's pre-processing hint does not apply
    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=["MatMul", "Gather"],
        nodes_to_quantize=frozen_weight_nodes(source),
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    return target


def sessions(bundle: Path, manifest, threads: int, work: Path) -> dict:
    """fp32, both int8 per-row graphs and the baked graph, each in its own session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see _common
    paths = {
        "per-row fp32": bundle / manifest.variants["fp32"],
        "baked fp32": bundle / next(iter(manifest.baked.values())),
        "per-row int8": bundle / manifest.variants["int8"],
        "per-tensor int8": per_tensor_int8(bundle / manifest.variants["fp32"], work / "old.onnx"),
    }
    return {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }


def feeds(
    tokenizer, manifest, base: dict, delta, texts: list[str], pad_to: int | None
) -> tuple[dict, dict]:
    """(text feeds, per-row feeds) for `texts`, every row on `delta`."""
    kwargs = (
        {"padding": "max_length", "max_length": pad_to}
        if pad_to
        else {"padding": True, "max_length": delta.metadata.max_length}
    )
    enc = tokenizer(texts, truncation=True, return_tensors="np", **kwargs)
    text = {n: enc[n].astype(np.int64) for n in manifest.text_inputs}
    rows = len(texts)
    per_row = dict(text)
    for b in manifest.bias_inputs:
        per_row[b.name] = np.tile(base[b.name] + delta.biases.get(b.name, 0.0), (rows, 1)).astype(
            np.float32
        )
    per_row["head.weight"] = np.tile(delta.head_weight, (rows, 1, 1))
    per_row["head.bias"] = np.tile(delta.head_bias, (rows, 1))
    return text, per_row


def latency(sess: dict, text: dict, per_row: dict, reps: int) -> dict[str, list[float]]:
    """Milliseconds per run for each session, repetitions interleaved in rotating order."""
    names = list(sess)
    inputs = {k: (text if k.startswith("baked") else per_row) for k in names}
    for k in names:  # warm-up
        for _ in range(3):
            sess[k].run(None, inputs[k])
    times: dict[str, list[float]] = {k: [] for k in names}
    for rep in tqdm(range(reps), desc="latency", file=sys.stdout):
        for k in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            sess[k].run(None, inputs[k])
            times[k].append((time.perf_counter() - start) * 1e3)
    return times


def accuracy(
    sess: dict, tokenizer, manifest, base: dict, delta, rows: list[tuple[str, str]]
) -> dict[str, float]:
    """SST-2 accuracy of the per-row graphs (fp32, both int8), batches of 32 alternating between them."""
    from bitfit_deploy.presets import get_preset

    label_map = get_preset("sst2").label_map
    gold = np.array([delta.metadata.labels.index(label_map.get(y, y)) for _, y in rows])
    preds: dict[str, list[np.ndarray]] = {k: [] for k in sess if not k.startswith("baked")}
    for i in tqdm(range(0, len(rows), 32), desc="accuracy", file=sys.stdout):
        _, per_row = feeds(tokenizer, manifest, base, delta, [s for s, _ in rows[i : i + 32]], None)
        for k in preds:
            preds[k].append(sess[k].run(None, per_row)[0].argmax(1))
    out = {k: float((np.concatenate(v) == gold).mean()) for k, v in preds.items()}
    out["agreement"] = float(
        (np.concatenate(preds["per-row fp32"]) == np.concatenate(preds["per-row int8"])).mean()
    )
    return out


def batch_mate_shift(sess: dict, tokenizer, manifest, base: dict, delta) -> dict[str, float]:
    """How far one text's logits move when it shares a batch with a long text (issue 8's case)."""
    text, mate = "a gorgeous, moving film but overlong", "dull " * 100
    _, alone = feeds(tokenizer, manifest, base, delta, [text], None)
    _, shared = feeds(tokenizer, manifest, base, delta, [text, mate], None)
    out = {}
    for k in (k for k in sess if not k.startswith("baked")):
        a, b = sess[k].run(None, alone)[0][0], sess[k].run(None, shared)[0][0]
        out[k] = float(np.abs(a - b).max())
    return out


def plot(
    path: Path, times: dict[str, dict[str, list[float]]], acc: dict[str, float], title: str
) -> None:
    """Median latency per shape and variant (left), SST-2 accuracy per variant (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shapes = list(times)
    names = list(times[shapes[0]])
    width = 0.8 / len(names)
    for j, k in enumerate(names):
        left.bar(
            [i + j * width for i in range(len(shapes))],
            [statistics.median(times[sh][k]) for sh in shapes],
            width,
            label=k,
            color=f"C{j}",
        )
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes)
    left.set_ylabel("median ms per run")
    left.set_title("latency (batch x tokens)")
    left.legend(fontsize=8)
    graphs = [k for k in names if not k.startswith("baked")]
    right.bar(graphs, [100 * acc[k] for k in graphs], color=[f"C{names.index(k)}" for k in graphs])
    right.set_ylim(min(100 * acc[k] for k in graphs) - 5, 100)
    right.set_ylabel("SST-2 dev accuracy (%)")
    right.set_title("accuracy")
    right.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_plot(fig, path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer repetitions and training rows.")
    parser.add_argument(
        "--delta", help="An existing SST-2 delta of the packaged MiniLM (skips training)."
    )
    parser.add_argument(
        "--train-rows", type=int, default=3000, help="SST-2 train rows to train on."
    )
    parser.add_argument(
        "--save-delta", type=Path, help="Keep the trained delta here (reuse it with --delta)."
    )
    parser.add_argument("--reps", type=int, default=40, help="Timed repetitions per variant.")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    parser.add_argument(
        "--shapes", default="8x64,32x27,1x27", help="Comma-separated BATCHxTOKENS to time."
    )
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "benchmarks/results/export_overhead.png"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.train_rows = min(args.reps, 10), min(args.train_rows, 800)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]

    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from bitfit_deploy.delta import load_delta
    from bitfit_deploy.exporters import export_bundle

    with tempfile.TemporaryDirectory(prefix="bitfit-export-bench-") as tmp:
        work = Path(tmp)
        delta_path = trained_delta(args, work)
        delta = load_delta(delta_path)
        if args.save_delta and not args.delta:
            shutil.copyfile(delta_path, args.save_delta)
        start = time.perf_counter()
        manifest = export_bundle(
            work / "bundle", tasks=[delta_path], quantize="int8", bake=[delta.metadata.task]
        )
        print(
            f"exported bundle (fp32 + int8 + baked {delta.metadata.task}) in {time.perf_counter() - start:.1f} s"
        )
        bundle = work / "bundle"
        base = load_file(str(bundle / "base.safetensors"))
        tokenizer = AutoTokenizer.from_pretrained(str(bundle))
        sess = sessions(bundle, manifest, args.threads, work)
        dev_path, dev = sst2_split("dev")
        times, diff = {}, 0.0
        for batch, tokens in shapes:
            texts = [dev[i % len(dev)][0] for i in range(batch)]
            text, per_row = feeds(tokenizer, manifest, base, delta, texts, tokens)
            diff = max(
                diff,
                np.abs(
                    sess["per-row fp32"].run(None, per_row)[0]
                    - sess["baked fp32"].run(None, text)[0]
                ).max(),
            )
            times[f"{batch}x{tokens}"] = latency(sess, text, per_row, args.reps)
        sizes = {
            k: sum(
                (bundle / rel).stat().st_size
                for rel in (manifest.variants[k], manifest.weights.get(k))
                if rel
            )
            / 2**20
            for k in ("fp32", "int8")
        }
        acc = accuracy(sess, tokenizer, manifest, base, delta, dev)
        shift = batch_mate_shift(sess, tokenizer, manifest, base, delta)
        scheme = manifest.quantization.get("int8", {}).get("activations", "per-token")

    print(
        f"\npackaged all-MiniLM-L6-v2, {args.threads} ORT threads, {args.reps} interleaved repetitions"
        f" (spinning off), per-row int8 with {scheme} activation scales"
    )
    print(f"CPU: {cpu_description()}")
    for shape, t in times.items():
        print(f"batch x tokens {shape}:")
        for k, v in t.items():
            print(
                f"  {k:16s} median {statistics.median(v):7.2f} ms   p90 {np.percentile(v, 90):7.2f} ms"
            )
        overhead = paired_ratio(t["per-row fp32"], t["baked fp32"])
        new = paired_ratio(t["per-row fp32"], t["per-row int8"])
        old = paired_ratio(t["per-row fp32"], t["per-tensor int8"])
        goal = " (goal: >= 1.8x at 8x64 with VNNI/AMX)" if shape == "8x64" else ""
        print(f"  per-row / baked time:        {format_ratio(overhead)}  (goal: <= 1.05x)")
        print(f"  int8 speed-up (per-row):     {format_ratio(new)}{goal}")
        print(f"  int8 speed-up (per-tensor):  {format_ratio(old)}  (the previous graph)")
    print(f"per-row vs baked logits: max abs diff {diff:.2e}")
    print(f"SST-2 dev accuracy ({len(dev)} rows of {dev_path}):")
    for k in (k for k in acc if k != "agreement"):
        drop = 100 * (acc["per-row fp32"] - acc[k])
        print(f"  {k:16s} {100 * acc[k]:.2f}%  drop {drop:+.2f} points (goal: <= 1)")
    print(f"  fp32 and per-row int8 agree on {100 * acc['agreement']:.1f}% of rows")
    print("a long batch-mate moves a row's logits by (max abs; issue 8's example):")
    for k, v in shift.items():
        print(f"  {k:16s} {v:.2e}")
    print(f"graph size: fp32 {sizes['fp32']:.1f} MiB, int8 {sizes['int8']:.1f} MiB")
    plot(args.plot, times, acc, f"export overhead, MiniLM-L6, {args.threads} threads")


if __name__ == "__main__":
    main()
