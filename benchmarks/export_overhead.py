"""What the per-row bias graph costs, and what int8 buys, on the packaged all-MiniLM-L6-v2.

In one run, with repetitions interleaved (ONNX Runtime intra_op_num_threads=2 by default):

- latency, batch 8 x 64 tokens: the per-row bias graph (`model.onnx`, biases and head fed as
  inputs) vs the `--bake` graph of the same task (biases and head as constants); goal: within 5%;
- latency: int8 (`model.int8.onnx`) vs fp32 per-row graphs; goal: at least 1.8x faster;
- SST-2 dev accuracy (872 rows) of a trained task, fp32 vs int8; goal: a drop of at most 1 point.

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


def sessions(bundle: Path, manifest, threads: int) -> dict:
    """fp32 and int8 per-row graphs and the baked graph, each in its own session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    paths = {
        "per-row fp32": bundle / manifest.variants["fp32"],
        "baked fp32": bundle / next(iter(manifest.baked.values())),
        "per-row int8": bundle / manifest.variants["int8"],
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
    """SST-2 accuracy of the fp32 and int8 per-row graphs, batches of 32 alternating between them."""
    from bitfit_deploy.presets import get_preset

    label_map = get_preset("sst2").label_map
    gold = np.array([delta.metadata.labels.index(label_map.get(y, y)) for _, y in rows])
    preds: dict[str, list[np.ndarray]] = {"per-row fp32": [], "per-row int8": []}
    for i in tqdm(range(0, len(rows), 32), desc="accuracy", file=sys.stdout):
        _, per_row = feeds(tokenizer, manifest, base, delta, [s for s, _ in rows[i : i + 32]], None)
        for k in preds:
            preds[k].append(sess[k].run(None, per_row)[0].argmax(1))
    out = {k: float((np.concatenate(v) == gold).mean()) for k, v in preds.items()}
    out["agreement"] = float(
        (np.concatenate(preds["per-row fp32"]) == np.concatenate(preds["per-row int8"])).mean()
    )
    return out


def plot(path: Path, times: dict[str, list[float]], acc: dict[str, float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(times)
    left.bar(names, [statistics.median(times[k]) for k in names], color=["C0", "C1", "C2"])
    left.set_ylabel("median ms per batch (8 x 64 tokens)")
    left.set_title("latency")
    right.bar(
        ["fp32", "int8"], [100 * acc["per-row fp32"], 100 * acc["per-row int8"]], color=["C0", "C2"]
    )
    right.set_ylim(min(100 * acc["per-row int8"], 100 * acc["per-row fp32"]) - 5, 100)
    right.set_ylabel("SST-2 dev accuracy (%)")
    right.set_title("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _vnni() -> str:
    """Whether the CPU has int8 dot-product instructions (without them int8 GEMM gains little)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted({f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags})
    return ", ".join(found) if found else "none"


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
    parser.add_argument("--reps", type=int, default=60, help="Timed repetitions per variant.")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "benchmarks/results/export_overhead.png"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.train_rows = min(args.reps, 15), min(args.train_rows, 800)

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
        sess = sessions(bundle, manifest, args.threads)
        dev_path, dev = sst2_split("dev")
        text, per_row = feeds(
            tokenizer, manifest, base, delta, [s for s, _ in dev[: args.batch]], args.tokens
        )
        diff = np.abs(
            sess["per-row fp32"].run(None, per_row)[0] - sess["baked fp32"].run(None, text)[0]
        ).max()
        sizes = {
            k: (bundle / manifest.variants[k]).stat().st_size / 2**20 for k in ("fp32", "int8")
        }
        times = latency(sess, text, per_row, args.reps)
        acc = accuracy(sess, tokenizer, manifest, base, delta, dev)

    med = {k: statistics.median(v) for k, v in times.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
    overhead = med["per-row fp32"] / med["baked fp32"] - 1
    speedup = med["per-row fp32"] / med["per-row int8"]
    drop = 100 * (acc["per-row fp32"] - acc["per-row int8"])
    print(
        f"\npackaged all-MiniLM-L6-v2, batch {args.batch} x {args.tokens} tokens, {args.threads} threads, "
        f"{args.reps} interleaved repetitions"
    )
    for k in times:
        print(f"  {k:13s} median {med[k]:7.2f} ms   p90 {p90[k]:7.2f} ms")
    print(f"  per-row vs baked logits: max abs diff {diff:.2e}")
    print(
        f"per-row bias inputs vs baked: {100 * overhead:+.1f}%   (goal: within 5%)  {'OK' if abs(overhead) <= 0.05 else 'MISSED'}"
    )
    print(
        f"int8 vs fp32 speed-up:        {speedup:.2f}x   (goal: >= 1.8x)  {'OK' if speedup >= 1.8 else 'MISSED'}"
    )
    print(
        f"SST-2 dev accuracy ({len(dev)} rows of {dev_path}): fp32 {100 * acc['per-row fp32']:.2f}%  "
        f"int8 {100 * acc['per-row int8']:.2f}%  drop {drop:+.2f} points (goal: <= 1)  "
        f"{'OK' if drop <= 1 else 'MISSED'};  fp32/int8 agree on {100 * acc['agreement']:.1f}% of rows"
    )
    print(
        f"graph size: fp32 {sizes['fp32']:.1f} MiB, int8 {sizes['int8']:.1f} MiB; CPU int8 dot-product "
        f"instructions (VNNI): {_vnni()}"
    )
    plot(args.plot, times, acc, f"export overhead, MiniLM-L6, {args.threads} threads")
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
