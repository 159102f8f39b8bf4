"""Scale-out on Ray Serve: 1 vs 2 replicas at the same load, and Ray's cost against one process.

Exports the packaged all-MiniLM-L6-v2 as a bundle with synthetic task deltas (a task store),
then serves it three ways at once on 127.0.0.1 and measures them side by side, repetitions
interleaved (the order rotates per repetition):

- single: `bitfit-deploy serve` in one child process, `--threads` ONNX Runtime threads;
- ray x1: one Ray Serve replica (route prefix /one), `--threads` threads;
- ray x2: two replicas (route prefix /two), `--threads` split between them.

The same closed-loop load drives each: `--clients` concurrent clients, each sending one-text
requests for a random task for `--duration` seconds. Figures: requests/s and p50/p99 latency
(medians over repetitions, min-max beside them); ratios are medians of per-repetition ratios
(`benchmarks/_common.py`) with their spread. On a 2-core machine two replicas share the cores
with Ray's proxy, the idle third replica and the load generator, so expect little gain there:
scale-out pays when replicas get cores (or machines) of their own.

Run: `.venv/bin/python benchmarks/ray_scale.py [--quick] [--plot PATH]` (needs the [ray] extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_description, format_ratio, paired_ratio, save_plot
from server_load import RAMP, _load, free_port, load_texts, reuse_or_make_bundle, start_server

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("single", "ray x1", "ray x2")


def measure(
    base: str, tasks: list[str], texts: list[str], args: argparse.Namespace, seed: int
) -> dict[str, float]:
    """One load phase against `base`: requests/s and latency percentiles."""
    latencies = asyncio.run(_load(base, tasks, texts, args.clients, args.duration, seed))
    ms = np.array(latencies or [float("nan")]) * 1000
    return {
        "rps": len(latencies) / (args.duration * (1 - RAMP)),  # requests after the ramp-up
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def deploy_ray(bundle: Path, tasks_dir: Path, port: int, args: argparse.Namespace) -> None:
    """Start a local Ray instance and deploy 1 replica at /one and 2 replicas at /two."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from bitfit_deploy.runtime.app import ServeConfig
    from bitfit_deploy.runtime.ray_serve import application

    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name, replicas in (("one", 1), ("two", 2)):
        config = ServeConfig(
            bundle,
            tasks_dir=tasks_dir,
            threads=max(1, args.threads // replicas),
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
        )
        # Ray's CPUs are logical: 0.5 each lets all three replicas exist on 2 cores at once.
        app = application(config, replicas, num_cpus=0.5)
        serve.run(app, name=name, route_prefix=f"/{name}")


def summarize(
    results: dict[str, list[dict[str, float]]], args: argparse.Namespace
) -> dict[str, Any]:
    def stats(phase: str, key: str) -> dict[str, float]:
        values = [r[key] for r in results[phase]]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def ratio(a: str, b: str) -> tuple[float, float, float]:
        return paired_ratio([r["rps"] for r in results[a]], [r["rps"] for r in results[b]])

    return {
        "cpu": cpu_description(),
        "clients": args.clients,
        "tasks": args.tasks,
        "threads": args.threads,
        "duration_s": args.duration,
        "reps": args.reps,
        "max_batch_size": args.max_batch_size,
        "max_delay_ms": args.max_delay_ms,
        "phases": {p: {k: stats(p, k) for k in ("rps", "p50_ms", "p99_ms")} for p in PHASES},
        "ray2_vs_ray1": ratio("ray x2", "ray x1"),
        "ray1_vs_single": ratio("ray x1", "single"),
        "ray2_vs_single": ratio("ray x2", "single"),
        "raw": results,
    }


def report(summary: dict[str, Any]) -> None:
    s = summary
    print(f"\nCPU: {s['cpu']}")
    print(
        f"{s['clients']} clients, {s['tasks']} tasks, {s['threads']} ONNX Runtime threads per "
        f"configuration, {s['reps']} x {s['duration_s']:g} s per phase, interleaved"
    )
    print(f"{'server':<10}{'req/s (min-max)':>24}{'p50 ms':>10}{'p99 ms':>10}")
    for phase in PHASES:
        p = s["phases"][phase]
        rps = f"{p['rps']['median']:.1f} ({p['rps']['min']:.1f}-{p['rps']['max']:.1f})"
        print(f"{phase:<10}{rps:>24}{p['p50_ms']['median']:>10.1f}{p['p99_ms']['median']:>10.1f}")
    print(f"ray x2 / ray x1:  {format_ratio(s['ray2_vs_ray1'])}")
    print(f"ray x1 / single:  {format_ratio(s['ray1_vs_single'])}  (Ray's overhead)")
    print(f"ray x2 / single:  {format_ratio(s['ray2_vs_single'])}")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = summary["phases"]
    values = [phases[p]["rps"]["median"] for p in PHASES]
    errors = [
        [v - phases[p]["rps"]["min"] for p, v in zip(PHASES, values, strict=True)],
        [phases[p]["rps"]["max"] - v for p, v in zip(PHASES, values, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(
        PHASES, values, yerr=errors, capsize=4, color=["tab:gray", "tab:blue", "tab:cyan"]
    )
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("requests per second (median, min-max)")
    ax.set_title(
        f"{summary['clients']} clients, MiniLM-L6; x2/x1 {summary['ray2_vs_ray1'][0]:.2f}, "
        f"x1/single {summary['ray1_vs_single'][0]:.2f}\n{summary['cpu']}",
        fontsize=9,
    )
    fig.tight_layout()
    save_plot(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="short phases, 2 repetitions, no files"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per phase [10; quick 4]"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions [5; quick 2]"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--tasks", type=int, default=8, help="synthetic tasks")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 2, help="ORT threads per configuration"
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep (and reuse) the bundle here"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="[benchmarks/results/ray_scale.png]"
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (4.0 if args.quick else 10.0)
    args.reps = args.reps or (2 if args.quick else 5)
    if args.plot is None and not args.quick:
        args.plot = ROOT / "benchmarks/results/ray_scale.png"
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs Ray Serve: pip install -c constraints.txt -e '.[ray]'")
    texts = load_texts()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        bundle, tasks_dir, tasks = reuse_or_make_bundle(work, args.tasks)
        single_port, ray_port = free_port(), free_port()
        proc = start_server(bundle, tasks_dir, single_port, args)
        try:
            print("starting Ray and deploying 1 + 2 replicas ...", flush=True)
            start = time.perf_counter()
            deploy_ray(bundle, tasks_dir, ray_port, args)
            print(f"Ray ready in {time.perf_counter() - start:.0f} s", flush=True)
            bases = {
                "single": f"http://127.0.0.1:{single_port}",
                "ray x1": f"http://127.0.0.1:{ray_port}/one",
                "ray x2": f"http://127.0.0.1:{ray_port}/two",
            }
            warm = argparse.Namespace(**{**vars(args), "duration": 2.0})
            for base in bases.values():
                measure(base, tasks, texts, warm, seed=99)
            results: dict[str, list[dict[str, float]]] = {p: [] for p in PHASES}
            for rep in range(args.reps):
                order = PHASES[rep % 3 :] + PHASES[: rep % 3]
                for phase in order:
                    results[phase].append(measure(bases[phase], tasks, texts, args, seed=rep))
                    r = results[phase][-1]
                    print(f"rep {rep + 1}/{args.reps} {phase:<7} {r['rps']:7.1f} req/s", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            from ray import serve

            serve.shutdown()

    summary = summarize(results, args)
    report(summary)
    if args.plot is not None:
        plot(summary, args.plot)
        args.plot.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
