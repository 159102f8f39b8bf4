"""Many tasks on one session: memory, task switching, mixed batching, and HF PEFT LoRA as the peer.

Exports the packaged all-MiniLM-L6-v2 as a bundle (fp32 + int8, 10 baked single-task graphs)
into a temp folder, makes synthetic task deltas, and measures side by side in one run, with
repetitions interleaved (2 ONNX Runtime / torch threads by default):

- memory: process RSS with 1 vs 100 tasks loaded, and with 10 separate baked ORT sessions
  (each measured in a fresh child process so that nothing else pollutes it);
- task switching: 1,000 single requests cycling through 10 tasks vs all on one task, and
  switching by creating a session per task change (fewer requests: it is slow);
- mixed batching: 256 requests over 32 tasks as length-sorted mixed batches of 32, vs unsorted
  batches of 32, vs one run per request, vs the same 256 requests all for one task;
- peer: the same 256 requests through HF PEFT LoRA (r=8, query+value, 32 adapters) with
  per-sample `adapter_names`, length-sorted batches of 32, vs ours in fp32 and int8;
- overhead: a bare ONNX Runtime session run on exactly the batches the runtime formed (same ids,
  shapes and pre-gathered bias rows) vs `Runtime.predict_mixed`, the two alone, interleaved
  batch by batch for 3x the repetitions; goal: runtime/bare >= 0.95.

Every ratio is the median of per-repetition ratios (variants interleaved within a repetition),
with its 10th-90th percentile spread (`benchmarks/_common.py`); the CPU is printed beside them.

Run: `.venv/bin/python benchmarks/runtime_tasks.py [--quick] [--plot PATH]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import cpu_description, format_ratio, paired_ratio, save_plot
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SST2 = [
    ROOT.parent / "shared/data/glue/sst2/dev.tsv",
    ROOT / "examples/data/sst2/dev.tsv",
    ROOT / "examples/data/sst2/train.tsv",
]
N_TASKS_MEMORY = 100
N_BAKED = 10


# ------------------------------------------------------------------------ setup
def sst2_sentences(n: int) -> list[str]:
    """The first `n` SST-2 sentences (dev first, then the fallbacks)."""
    out: list[str] = []
    for path in SST2:
        if path.is_file():
            with open(path, newline="") as fh:
                out += [
                    row["sentence"].strip()
                    for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
                ]
        if len(out) >= n:
            return out[:n]
    if not out:
        raise SystemExit("no SST-2 sentences found (looked in " + ", ".join(map(str, SST2)) + ")")
    return (out * (n // len(out) + 1))[:n]


def prepare(work: Path, n_tasks: int) -> dict:
    """Export the packaged MiniLM bundle (int8 + baked graphs) and `n_tasks` synthetic deltas."""
    from bitfit_deploy.contract import graph_bias_names
    from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta
    from bitfit_deploy.exporters.bundle import export_bundle
    from bitfit_deploy.modeling import base_fingerprint, load_encoder, resolve_pooling

    encoder, path = load_encoder()
    pooling = resolve_pooling(encoder, path)
    params = {n: p.detach().numpy() for n, p in encoder.named_parameters()}
    names = graph_bias_names(params, pooling)
    fp, hidden = base_fingerprint(encoder), int(encoder.config.hidden_size)
    rng = np.random.default_rng(0)
    deltas = []
    for i in range(n_tasks):
        meta = DeltaMetadata(
            task=f"task{i:03d}",
            base_fingerprint=fp,
            problem_type="single_label",
            labels=["negative", "positive"],
            pooling=pooling,
        )
        biases = {n: rng.normal(0, 0.02, params[n].shape).astype(np.float32) for n in names}
        delta = TaskDelta(
            meta,
            biases,
            rng.normal(0, 0.1, (2, hidden)).astype(np.float32),
            np.zeros(2, np.float32),
        )
        deltas.append(save_delta(delta, work / "deltas" / f"{meta.task}.safetensors"))
    baked = [f"task{i:03d}" for i in range(N_BAKED)]
    t0 = time.perf_counter()
    manifest = export_bundle(work / "bundle", tasks=deltas[:N_BAKED], bake=baked, quantize="int8")
    print(
        f"exported the bundle in {time.perf_counter() - t0:.0f} s: {len(manifest.bias_inputs)} "
        f"bias inputs, pooling {manifest.pooling}, variants {list(manifest.variants)}"
    )
    return {
        "bundle": work / "bundle",
        "deltas": deltas,
        "baked": [work / "bundle" / manifest.baked[t] for t in baked],
    }


# ----------------------------------------------------------------------- memory
CHILD = r"""
import json, sys, psutil
args = json.loads(sys.argv[1])
proc = psutil.Process()
texts = args["texts"]
if args["mode"] == "runtime":
    from bitfit_deploy.runtime import Runtime
    before = proc.memory_info().rss
    rt = Runtime(args["bundle"], threads=args["threads"], load_bundle_tasks=False, spin_wait=False)
    names = [rt.load_task(args["deltas"][0])]
    for _ in range(3):  # RSS settles after a few runs (allocator and arena warm-up)
        rt.predict_mixed([(names[0], t) for t in texts])
    first = proc.memory_info().rss  # the same process with 1 task, then with all of them
    names += [rt.load_task(p) for p in args["deltas"][1:]]
    for _ in range(3):
        rt.predict_mixed([(names[i % len(names)], t) for i, t in enumerate(texts)])
    tables = sum(t.row.nbytes + t.head_weight.nbytes + t.head_bias.nbytes for t in rt._registry.snapshot().tasks.values())
else:
    from bitfit_deploy.manifest import read_manifest
    from bitfit_deploy.runtime.providers import create_session
    from bitfit_deploy.runtime.tokenize import BundleTokenizer
    m = read_manifest(args["bundle"])
    tok = BundleTokenizer(args["bundle"] + "/tokenizer.json", m.max_length, m.pad_token_id, m.text_inputs)
    before = proc.memory_info().rss
    sessions = [create_session(p, "cpu", args["threads"], spin_wait=False) for p in args["baked"]]
    feeds = tok.pad(tok.encode(texts))
    for _ in range(3):
        for s in sessions:
            s.run(None, feeds)
    tables = 0
    first = proc.memory_info().rss
rss = proc.memory_info().rss
print(json.dumps({"before_mb": before / 2**20, "first_mb": first / 2**20, "rss_mb": rss / 2**20, "tables_mb": tables / 2**20}))
"""


def child_rss(args: dict) -> dict:
    """RSS of a fresh process that loads what `args` says and runs one batch."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"memory child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(setup: dict, texts: list[str], threads: int, reps: int) -> dict:
    base = {"bundle": str(setup["bundle"]), "threads": threads, "texts": texts[:32]}
    variants = {
        "runtime": {
            **base,
            "mode": "runtime",
            "deltas": [str(p) for p in setup["deltas"][:N_TASKS_MEMORY]],
        },
        "baked": {**base, "mode": "baked", "baked": [str(p) for p in setup["baked"]]},
    }
    samples: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in tqdm(range(reps), desc="memory (child processes)"):
        for name, args in variants.items():
            samples[name].append(child_rss(args))
    rt, baked = samples["runtime"], samples["baked"]
    return {
        "1 task": {
            "rss_mb": statistics.median(s["first_mb"] for s in rt),
            "added_mb": statistics.median(s["first_mb"] - s["before_mb"] for s in rt),
            "task_tables_mb": rt[0]["tables_mb"] / N_TASKS_MEMORY,
        },
        f"{N_TASKS_MEMORY} tasks": {
            "rss_mb": statistics.median(s["rss_mb"] for s in rt),
            "added_mb": statistics.median(s["rss_mb"] - s["before_mb"] for s in rt),
            "task_tables_mb": rt[0]["tables_mb"],
        },
        f"{N_BAKED} baked sessions": {
            "rss_mb": statistics.median(s["rss_mb"] for s in baked),
            "added_mb": statistics.median(s["rss_mb"] - s["before_mb"] for s in baked),
            "task_tables_mb": 0.0,
        },
        "growth": statistics.median(s["rss_mb"] / s["first_mb"] - 1 for s in rt),
    }


# ----------------------------------------------------------------------- timing
Step = Callable[[], int]


def interleave(variants: dict[str, list[Step]], reps: int, desc: str) -> dict[str, list[float]]:
    """Requests/s of each variant in each of `reps` repetitions, steps interleaved.

    Each variant is a list of steps (a batch, a block of requests); step k of every variant runs
    before step k + 1 of any, in an order rotated each time, so that the noise of a shared
    machine falls on all variants alike.
    """
    names = list(variants)
    rates: dict[str, list[float]] = {k: [] for k in names}
    longest = max(len(v) for v in variants.values())
    for rep in tqdm(range(reps), desc=desc):
        seconds = dict.fromkeys(names, 0.0)
        counts = dict.fromkeys(names, 0)
        for k in range(longest):
            shift = (rep + k) % len(names)
            for name in names[shift:] + names[:shift]:
                if k < len(variants[name]):
                    t0 = time.perf_counter()
                    counts[name] += variants[name][k]()
                    seconds[name] += time.perf_counter() - t0
        for name in names:
            rates[name].append(counts[name] / seconds[name])
    return rates


def bench_switching(
    rt, setup: dict, texts: list[str], threads: int, blocks: int, reps: int
) -> dict:
    """Blocks of 50 single requests cycling 10 tasks vs on one task; 2 new sessions per block."""
    from bitfit_deploy.runtime.providers import create_session

    tasks = [f"task{i:03d}" for i in range(N_BAKED)]
    tok = rt._tokenizer

    def requests(k: int, cycle: bool) -> Step:
        def step() -> int:
            for i in range(50 * k, 50 * (k + 1)):
                rt.predict(tasks[i % len(tasks)] if cycle else tasks[0], [texts[i % len(texts)]])
            return 50

        return step

    def new_sessions(k: int) -> Step:
        def step() -> int:
            for i in range(2 * k, 2 * k + 2):  # every request is for another task than the last
                session = create_session(
                    setup["baked"][i % N_BAKED], "cpu", threads, spin_wait=False
                )
                session.run(None, tok.pad(tok.encode([texts[i % len(texts)]])))
            return 2

        return step

    variants = {
        "cycling 10 tasks": [requests(k, True) for k in range(blocks)],
        "one task": [requests(k, False) for k in range(blocks)],
        "new session per switch": [new_sessions(k) for k in range(blocks)],
    }
    return interleave(variants, reps, "task switching")


def recorded_feeds(rt, requests: list) -> list[dict]:
    """The feeds of every session run `rt.predict_mixed(requests)` makes (ids, masks, rows)."""
    session = rt._engine.session
    seen: list[dict] = []
    real = session.run

    def record(outputs, feeds, *args, **kwargs):
        seen.append({n: np.array(v, copy=True) for n, v in feeds.items()})
        return real(outputs, feeds, *args, **kwargs)

    session.run = record
    try:
        rt.predict_mixed(requests)
    finally:
        del session.run
    return seen


def bench_batching(
    rts: dict, texts: list[str], n_tasks: int, reps: int, peer: list[Step] | None, threads: int
) -> dict:
    """256 requests over `n_tasks` tasks: batches of 32 (sorted by length or not) vs single runs."""
    from bitfit_deploy.runtime.batching import plan_runs

    rt = rts["fp32"]
    requests = [(f"task{i % n_tasks:03d}", t) for i, t in enumerate(texts)]
    lengths = [len(e) for e in rt._tokenizer.encode(texts)]
    sorted_runs = plan_runs(lengths, 32)  # what predict_mixed does with all 256 at once
    chunks = [list(range(i, min(i + 32, len(texts)))) for i in range(0, len(texts), 32)]

    def batch(runtime, rows: list[int], one_task: bool = False) -> Step:
        reqs = [("task000", texts[i]) if one_task else requests[i] for i in rows]
        return lambda: len(runtime.predict_mixed(reqs))

    def singles(rows: list[int]) -> Step:
        def step() -> int:
            for i in rows:
                rt.predict(requests[i][0], [requests[i][1]])
            return len(rows)

        return step

    from bitfit_deploy.runtime.providers import create_session

    bare = create_session(rt._variant_path("fp32"), "cpu", threads, spin_wait=False)
    formed = [recorded_feeds(rt, [requests[i] for i in r]) for r in sorted_runs]

    def bare_runs(feeds: list[dict]) -> Step:
        return lambda: sum(len(bare.run(None, f)[0]) for f in feeds)

    variants = {
        "mixed, sorted batches of 32": [batch(rt, r) for r in sorted_runs],
        "mixed, unsorted batches of 32": [batch(rt, r) for r in chunks],
        "one run per request": [singles(r) for r in chunks],
        "one task, sorted batches of 32": [batch(rt, r, one_task=True) for r in sorted_runs],
    }
    if "int8" in rts:
        variants["int8 mixed, sorted batches of 32"] = [batch(rts["int8"], r) for r in sorted_runs]
    if peer is not None:
        variants["PEFT LoRA, sorted batches of 32"] = peer
    rates = interleave(variants, reps, "mixed batching")
    # The overhead pair alone, batch by batch: with 7 variants between them, A and B of one
    # pair lie seconds apart, and 10 repetitions left a 0.89-0.98 spread.
    pair = {
        "runtime": [batch(rt, r) for r in sorted_runs],
        "bare session, the same batches": [bare_runs(f) for f in formed],
    }
    rates["runtime vs bare"] = interleave(pair, 3 * reps, "runtime vs bare")  # type: ignore[assignment]
    rates["runtime split"] = runtime_split(rt, requests, sorted_runs)  # type: ignore[assignment]
    return rates


def runtime_split(rt, requests: list, runs: list[list[int]], reps: int = 3) -> dict[str, float]:
    """Milliseconds per 256 requests in each part of `predict_mixed` on the sorted batches.

    Timed by wrapping the runtime's tokenizer, feed builder and session for a few extra passes
    after the interleaved ones; "other" (predictions, batching) is the rest of the wall time.
    """
    spent: dict[str, float] = dict.fromkeys(("tokenize", "pad", "feeds", "session"), 0.0)
    parts = [
        (rt._tokenizer, "encode", "tokenize"),
        (rt._tokenizer, "pad", "pad"),
        (rt._engine, "feeds", "feeds"),
        (rt._engine.session, "run", "session"),
    ]

    def timed(real, key: str):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return call

    for owner, name, key in parts:
        setattr(owner, name, timed(getattr(owner, name), key))
    try:
        start = time.perf_counter()
        for _ in range(reps):
            for run in runs:
                rt.predict_mixed([requests[i] for i in run])
        total = time.perf_counter() - start
    finally:
        for owner, name, _ in parts:
            delattr(owner, name)
    scale = 1000 * 256 / (reps * sum(len(r) for r in runs))
    split = {k: v * scale for k, v in spent.items()}
    split["other"] = total * scale - sum(split.values())
    return split


def _median(rates: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in rates.items()}


def peft_peer(
    texts: list[str], n_tasks: int, threads: int, n_single: int
) -> tuple[list[Step], Step]:
    """HF PEFT LoRA (r=8 on query, value; one adapter and head per task), per-sample adapter_names."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from bitfit_deploy.modeling import default_model_path, load_encoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder, path = load_encoder(default_model_path(), attn_implementation="sdpa")
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False
    )
    names = [f"task{i:03d}" for i in range(n_tasks)]
    model = get_peft_model(encoder, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    model.eval()
    heads = torch.randn(n_tasks, 2, encoder.config.hidden_size) * 0.1
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i])["input_ids"]))

    def forward(idx: list[int], adapter_names: list[str] | None) -> torch.Tensor:
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=256,
            return_tensors="pt",
        )
        kwargs = {"adapter_names": adapter_names} if adapter_names is not None else {}
        hidden = model(**enc, **kwargs).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        rows = torch.tensor([i % n_tasks for i in idx])
        return torch.softmax(torch.einsum("blh,bh->bl", heads[rows], pooled), -1)

    def batch(idx: list[int]) -> Step:
        def step() -> int:
            with torch.inference_mode():
                forward(idx, [names[i % n_tasks] for i in idx])
            return len(idx)

        return step

    def one_at_a_time() -> int:
        with torch.inference_mode():
            for i in range(n_single):
                model.set_adapter(names[i % n_tasks])
                forward([i], None)
        return n_single

    return [batch(order[s : s + 32]) for s in range(0, len(order), 32)], one_at_a_time


# ------------------------------------------------------------------------ report
def report(results: dict, plot: Path) -> None:
    mem, sw_rates, mb_rates = results["memory"], results["switching"], dict(results["batching"])
    split = mb_rates.pop("runtime split")
    overhead = mb_rates.pop("runtime vs bare")
    sw, mb = _median(sw_rates), _median(mb_rates)
    mem = dict(mem)
    growth = mem.pop("growth")
    print(
        "\n== memory: process RSS (MiB); 1 then 100 tasks in the same fresh child, baked in another =="
    )
    print(f"  {'':32s} {'RSS':>8s} {'added by sessions+tasks':>24s} {'task tables':>12s}")
    for k, v in mem.items():
        print(f"  {k:32s} {v['rss_mb']:8.1f} {v['added_mb']:24.1f} {v['task_tables_mb']:12.2f}")
    tables = mem[f"{N_TASKS_MEMORY} tasks"]["task_tables_mb"]
    print(
        f"  {N_TASKS_MEMORY} tasks cost {100 * growth:+.1f}% RSS over 1 task in the same process "
        f"(goal <= +5%); their bias rows and heads are {tables:.1f} MiB"
    )
    print(f"\nCPU: {cpu_description()}")
    print("\n== task switching: single requests/s (median of repetitions) ==")
    for k, v in sw.items():
        print(f"  {k:32s} {v:8.1f}")
    cost = paired_ratio(sw_rates["one task"], sw_rates["cycling 10 tasks"])
    print(f"  cycling 10 tasks / one task, time:  {format_ratio(cost)} (goal <= 1.02x)")
    print("\n== mixed batching: 256 requests over 32 tasks, requests/s ==")
    for k, v in mb.items():
        print(f"  {k:36s} {v:8.1f}")
    m = mb_rates["mixed, sorted batches of 32"]

    def ratio(label: str, a: list[float], b: list[float], goal: str) -> None:
        print(f"  {label:36s} {format_ratio(paired_ratio(a, b))} ({goal})")

    ratio("mixed sorted / one run per request", m, mb_rates["one run per request"], "goal >= 1.5x")
    ratio(
        "mixed sorted / one task sorted",
        m,
        mb_rates["one task, sorted batches of 32"],
        "goal >= 0.95x",
    )
    runtime, bare = overhead["runtime"], overhead["bare session, the same batches"]
    print(
        f"  runtime alone with a bare session on the batches it formed, {len(runtime)} "
        f"interleaved repetitions: {statistics.median(runtime):.1f} vs "
        f"{statistics.median(bare):.1f} requests/s"
    )
    ratio("runtime / bare session, same batches", runtime, bare, "goal >= 0.95")
    own = sum(v for k, v in split.items() if k != "session")
    print(
        "  the runtime's own work per 256 requests (sorted batches, 3 extra passes): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items())
        + f"; all but the session: {100 * own / (own + split['session']):.1f}%"
    )
    if "PEFT LoRA, sorted batches of 32" in mb:
        p = mb_rates["PEFT LoRA, sorted batches of 32"]
        ratio("ours fp32 / PEFT", m, p, "goal >= 1.5x")
        if "int8 mixed, sorted batches of 32" in mb:
            ratio(
                "ours int8 / PEFT", mb_rates["int8 mixed, sorted batches of 32"], p, "goal >= 2.5x"
            )
            ratio("ours int8 / ours fp32", mb_rates["int8 mixed, sorted batches of 32"], m, "")
        print(f"  PEFT one request at a time (set_adapter): {results['peft_single']:.1f}/s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, (title, data, unit) in zip(
        axes,
        [
            ("RSS", {k: v["rss_mb"] for k, v in mem.items()}, "MiB"),
            ("Task switching", sw, "requests/s"),
            ("256 requests, 32 tasks", mb, "requests/s"),
        ],
        strict=True,
    ):
        ax.barh(list(data), list(data.values()), color="tab:blue")
        ax.set_title(title)
        ax.set_xlabel(unit)
        ax.invert_yaxis()
    fig.tight_layout()
    save_plot(fig, plot)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and repetitions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/runtime_tasks.png")
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT peer")
    args = parser.parse_args(argv)
    blocks, n_single, reps, mem_reps = (4, 8, 2, 1) if args.quick else (10, 32, 10, 3)
    texts = sst2_sentences(256)
    from bitfit_deploy.runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="bitfit-bench-") as tmp:
        setup = prepare(Path(tmp), N_TASKS_MEMORY)
        results: dict = {"memory": bench_memory(setup, texts, args.threads, mem_reps)}
        rts = {
            v: Runtime(
                setup["bundle"],
                threads=args.threads,
                variant=v,
                load_bundle_tasks=False,
                spin_wait=False,  # interleaved with other sessions: see _common
            )
            for v in ("fp32", "int8")
        }
        for rt in rts.values():
            for p in setup["deltas"][:32]:
                rt.load_task(p)
            rt.predict_mixed([("task000", t) for t in texts[:64]])  # warm up
        results["switching"] = bench_switching(
            rts["fp32"], setup, texts, args.threads, blocks, 2 if args.quick else 5
        )
        peer = single = None
        if not args.no_peft:
            peer, single = peft_peer(texts, 32, args.threads, n_single)
            peer[0]()  # warm up
        results["batching"] = bench_batching(rts, texts, 32, reps, peer, args.threads)
        if single is not None:
            results["peft_single"] = statistics.median(
                interleave({"peft": [single]}, 1, "PEFT one at a time")["peft"]
            )
    report(results, args.plot)
    print("\n" + json.dumps(results))
    return results


if __name__ == "__main__":
    main()
