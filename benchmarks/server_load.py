"""Load on `bitfit-deploy serve` over loopback: throughput, latency, batch size, mixed vs single task.

Exports the packaged all-MiniLM-L6-v2 as a bundle into a temp folder with synthetic task deltas,
starts `bitfit-deploy serve` in a child process on 127.0.0.1, and measures side by side in one
run, repetitions interleaved (the order alternates per repetition):

- served, mixed tasks: `--clients` concurrent clients, each sending one-text requests for a
  random task, for `--duration` seconds; requests/s, p50/p99 latency, mean batch size (from the
  server's own /metrics);
- served, single task: the same load, every request for one task;
- in-process: the runtime's own `predict_mixed` throughput at the mean batch size the server
  formed in the same repetition (mixed tasks, same texts, same ORT threads), with no HTTP.

Goals: served / in-process >= 0.8; mixed / single >= 0.95. The load generator shares the
machine's cores with the server, as a client on the same host would. Both ratios are also given
per CPU-second (rows per CPU-second of the server process vs of the in-process loop), which
other load on a shared machine disturbs far less than wall-clock throughput.

Run: `.venv/bin/python benchmarks/server_load.py [--quick] [--plot PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _common import cpu_description, save_plot
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
RAMP = 0.25
"""Share of each served phase before requests count (the queue fills up)."""
_KEYS = ("rps", "p50_ms", "p99_ms", "server_p99_ms", "batch", "rows_per_cpu_s")
SST2 = [ROOT.parent / "shared/data/glue/sst2/dev.tsv", ROOT / "examples/data/sst2/dev.tsv"]


def load_texts(limit: int = 872) -> list[str]:
    """SST-2 dev sentences when available (real lengths), else synthetic review-like sentences."""
    for path in SST2:
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
            return [r[0].strip() for r in rows if r and r[0].strip()][:limit]
    rng = random.Random(0)
    words = ["the", "film", "plot", "was", "very", "not", "good", "bad", "dull", "long", "story"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(limit)]


def make_bundle(root: Path, n_tasks: int) -> tuple[Path, Path, list[str]]:
    """Export the packaged MiniLM and write `n_tasks` synthetic 2-3 label deltas."""
    from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta
    from bitfit_deploy.exporters.bundle import export_bundle

    manifest = export_bundle(root / "bundle", quantize="int8")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(n_tasks):
        name = f"task{i:02d}"
        labels = ["neg", "pos"] if i % 2 == 0 else ["a", "b", "c"]
        biases = {
            b.name: rng.normal(0, 0.02, b.dim).astype(np.float32) for b in manifest.bias_inputs
        }
        meta = DeltaMetadata(
            task=name,
            base_fingerprint=manifest.base_fingerprint,
            problem_type="single_label",
            labels=labels,
            pooling=manifest.pooling,
        )
        head_w = rng.normal(0, 0.5, (len(labels), manifest.hidden_size)).astype(np.float32)
        head_b = np.zeros(len(labels), np.float32)
        save_delta(TaskDelta(meta, biases, head_w, head_b), tasks_dir / f"{name}.safetensors")
        names.append(name)
    return root / "bundle", tasks_dir, names


def reuse_or_make_bundle(work: Path, n_tasks: int) -> tuple[Path, Path, list[str]]:
    """The bundle and task store already in `work` (from --workdir), or export them there."""
    if (work / "bundle").is_dir():
        tasks_dir = work / "tasks"
        return work / "bundle", tasks_dir, sorted(p.stem for p in tasks_dir.glob("*.safetensors"))
    print("exporting the packaged MiniLM bundle ...", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    return make_bundle(work, n_tasks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    bundle: Path, tasks_dir: Path, port: int, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "bitfit-deploy"
    cmd = [
        str(exe),
        "serve",
        "--bundle",
        str(bundle),
        "--tasks-dir",
        str(tasks_dir),
        "--port",
        str(port),
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-delay-ms",
        str(args.max_delay_ms),
        "--threads",
        str(args.threads),
        "--variant",
        args.variant,
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"the server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready within 120 s")


def server_metrics(base: str) -> tuple[float, float, dict[float, float]]:
    """(sum, count) of the server's batch-size histogram, and its request-latency histogram
    (bucket upper bound in s -> requests at most that slow, cumulative) over predict routes."""
    import httpx

    total = count = 0.0
    latency: dict[float, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("bitfit_batch_size_sum "):
            total = float(line.split()[1])
        elif line.startswith("bitfit_batch_size_count "):
            count = float(line.split()[1])
        elif line.startswith("bitfit_request_latency_seconds_bucket{") and "predict" in line:
            bound = float(line.split('le="')[1].split('"')[0])
            latency[bound] = latency.get(bound, 0.0) + float(line.split()[-1])
    return total, count, latency


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding quantile `q` of the requests between."""
    counts = {b: after[b] - before.get(b, 0.0) for b in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    for bound, cumulative in counts.items():
        if total and cumulative >= q * total:
            return bound * 1000
    return float("nan")


async def _load(
    base: str, tasks: list[str], texts: list[str], clients: int, duration: float, seed: int
) -> list[float]:
    """Run `clients` closed-loop clients for `duration` s; latencies of requests answered in the window."""
    import httpx

    latencies: list[float] = []
    begin = time.perf_counter() + duration * RAMP
    end = time.perf_counter() + duration

    async def client(rng: random.Random, http: httpx.AsyncClient) -> None:
        while time.perf_counter() < end:
            task = rng.choice(tasks)
            body = {"inputs": [rng.choice(texts)]}
            start = time.perf_counter()
            response = await http.post(f"/v1/tasks/{task}/predict", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"the server answered {response.status_code}: {response.text}")
            done = time.perf_counter()
            if begin <= done <= end:  # the ramp-up and the drain after `end` do not count
                latencies.append(done - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        await asyncio.gather(
            *(client(random.Random(seed * 1000 + i), http) for i in range(clients))
        )
    return latencies


def served(
    base: str,
    server: psutil.Process,
    tasks: list[str],
    texts: list[str],
    args: argparse.Namespace,
    seed: int,
) -> dict[str, float]:
    """One served load phase: requests/s, latency percentiles, mean batch size, rows per CPU-s."""
    s0, c0, lat0 = server_metrics(base)
    cpu0 = sum(server.cpu_times()[:2])
    latencies = asyncio.run(_load(base, tasks, texts, args.clients, args.duration, seed))
    cpu1 = sum(server.cpu_times()[:2])
    elapsed = args.duration * (1 - RAMP)
    s1, c1, lat1 = server_metrics(base)
    ms = np.array(latencies or [float("nan")]) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        # what the server itself measured (its histogram's bucket bound; the whole phase)
        "server_p99_ms": bucket_quantile(lat0, lat1, 0.99),
        "batch": (s1 - s0) / max(c1 - c0, 1),
        "requests": len(latencies),
        "rows_per_cpu_s": (s1 - s0) / max(cpu1 - cpu0, 1e-9),
    }


def in_process(
    runtime: Any, tasks: list[str], texts: list[str], batch: int, duration: float, seed: int
) -> dict[str, float]:
    """The runtime's own rows/s (and rows per CPU-s) on mixed-task batches of `batch` rows."""
    rng = random.Random(seed)
    rows = 0
    end = time.perf_counter() + duration
    start, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() < end:
        runtime.predict_mixed([(rng.choice(tasks), rng.choice(texts)) for _ in range(batch)])
        rows += batch
    cpu = time.process_time() - cpu0
    return {
        "batch": batch,
        "rps": rows / (time.perf_counter() - start),
        "rows_per_cpu_s": rows / cpu,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["served, mixed tasks", "served, one task", "in-process, same batch"]
    values = [
        summary["served_mixed"]["rps"],
        summary["served_single"]["rps"],
        summary["in_process_rows_per_s"],
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, values, color=["tab:blue", "tab:cyan", "tab:gray"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("rows (requests) per second")
    ax.set_title(
        f"bitfit-deploy serve on loopback, {summary['clients']} clients, MiniLM-L6\n"
        f"served/in-process {summary['served_vs_in_process']:.2f}, mixed/single {summary['mixed_vs_single']:.2f}"
    )
    fig.tight_layout()
    save_plot(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases, fewer repetitions")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per phase [8; quick 5]"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions [4; quick 2]"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help="concurrent clients [8; quick 4]; many more measure the load generator, which shares the cores",
    )
    parser.add_argument("--tasks", type=int, default=8, help="synthetic tasks")
    parser.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime threads (server and in-process)"
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--variant",
        choices=("fp32", "int8"),
        default="fp32",
        help="graph variant served (parallel='auto': rows for int8)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep (and reuse) the bundle here"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="[benchmarks/results/server_load.png; server_load_int8.png for int8]",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (5.0 if args.quick else 8.0)
    args.clients = args.clients or (4 if args.quick else 8)
    args.reps = args.reps or (2 if args.quick else 4)
    suffix = "" if args.variant == "fp32" else f"_{args.variant}"
    args.plot = args.plot or ROOT / f"benchmarks/results/server_load{suffix}.png"
    texts = load_texts()

    from bitfit_deploy.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        bundle, tasks_dir, tasks = reuse_or_make_bundle(work, args.tasks)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(bundle, tasks_dir, port, args)
        try:
            runtime = Runtime(
                bundle,
                threads=args.threads,
                variant=args.variant,
                max_batch_size=args.max_batch_size,
                spin_wait=False,  # as the server's
            )
            for path in sorted(tasks_dir.glob("*.safetensors")):
                runtime.load_task(path)
            server = psutil.Process(proc.pid)
            warm = argparse.Namespace(**{**vars(args), "duration": 3.0})
            served(base, server, tasks, texts, warm, seed=99)
            in_process(runtime, tasks, texts, 8, 1.0, seed=99)
            results: dict[str, list[Any]] = {"mixed": [], "single": [], "inproc": []}
            steps = tqdm(total=args.reps * 3, desc="phases", unit="phase")
            for rep in range(args.reps):
                order = ["mixed", "single"] if rep % 2 == 0 else ["single", "mixed"]
                for phase in order:
                    chosen = tasks if phase == "mixed" else tasks[:1]
                    results[phase].append(
                        served(
                            base, server, chosen, texts, args, seed=rep * 2 + (phase == "single")
                        )
                    )
                    steps.update()
                batch = max(1, round(results["mixed"][-1]["batch"]))
                results["inproc"].append(
                    in_process(runtime, tasks, texts, batch, args.duration, seed=rep)
                )
                steps.update()
            steps.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    def med(phase: str, key: str) -> float:
        return statistics.median(r[key] for r in results[phase])

    def ratio(a: str, b: str, key: str) -> float:
        """Median over repetitions of a/b, each pair measured side by side."""
        pairs = zip(results[a], results[b], strict=True)
        return statistics.median(x[key] / max(y[key], 1e-9) for x, y in pairs)

    inproc = med("inproc", "rps")
    summary = {
        "clients": args.clients,
        "tasks": args.tasks,
        "threads": args.threads,
        "variant": args.variant,
        "duration_s": args.duration,
        "reps": args.reps,
        "max_batch_size": args.max_batch_size,
        "max_delay_ms": args.max_delay_ms,
        "cpu_count": os.cpu_count(),
        "served_mixed": {k: med("mixed", k) for k in _KEYS},
        "served_single": {k: med("single", k) for k in _KEYS},
        "in_process_batch": [r["batch"] for r in results["inproc"]],
        "in_process_rows_per_s": inproc,
        "served_vs_in_process": ratio("mixed", "inproc", "rps"),
        "mixed_vs_single": ratio("mixed", "single", "rps"),
        "served_vs_in_process_per_cpu_s": ratio("mixed", "inproc", "rows_per_cpu_s"),
        "mixed_vs_single_per_cpu_s": ratio("mixed", "single", "rows_per_cpu_s"),
        "raw": results,
    }
    print(f"\nCPU: {cpu_description()}")
    print(
        f"{args.variant}, {args.clients} clients, {args.tasks} tasks, threads {args.threads}, "
        f"{args.reps} x {args.duration:.0f} s per phase (medians)"
    )
    print(
        f"{'load':<28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'server p99':>12}{'batch':>7}"
        f"{'rows/CPU-s':>12}"
    )
    for label, key in (
        ("served, mixed tasks", "served_mixed"),
        ("served, one task", "served_single"),
    ):
        s = summary[key]
        server_p99 = f"<= {s['server_p99_ms']:.0f}"
        print(
            f"{label:<28}{s['rps']:>8.1f}{s['p50_ms']:>9.1f}{s['p99_ms']:>9.1f}"
            f"{server_p99:>12}{s['batch']:>7.1f}{s['rows_per_cpu_s']:>12.1f}"
        )
    print(
        f"{'in-process, same batch':<28}{inproc:>8.1f}{'':>9}{'':>9}{'':>12}"
        f"{statistics.median(summary['in_process_batch']):>7.1f}{med('inproc', 'rows_per_cpu_s'):>12.1f}"
    )
    print(
        "(p50/p99: as the clients saw them; server p99: the server's own latency histogram, the "
        "upper bound of the bucket holding it)"
    )
    print(
        f"served / in-process: {summary['served_vs_in_process']:.2f} wall-clock, "
        f"{summary['served_vs_in_process_per_cpu_s']:.2f} per CPU-second (goal >= 0.8)"
    )
    print(
        f"mixed / single task: {summary['mixed_vs_single']:.2f} wall-clock, "
        f"{summary['mixed_vs_single_per_cpu_s']:.2f} per CPU-second (goal >= 0.95)"
    )
    plot(summary, args.plot)
    args.plot.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
