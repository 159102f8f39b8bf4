"""BitFit vs full fine-tuning on the packaged MiniLM: training samples/s and peak memory, side by side.

Each run trains in a fresh child process (so peak RSS is that variant's alone) on the same SST-2
sample, with the same batch size, max length, seed and number of steps; the variants alternate
run by run so that machine noise hits both alike. Goal: BitFit >= 1.5x the samples/s of full.

    .venv/bin/python benchmarks/train_speed.py            # 6 rounds of 6 steps
    .venv/bin/python benchmarks/train_speed.py --quick    # 2 rounds of 4 steps

Speed = batch size / median step time (forward, backward, optimizer), first steps left out; the
ratio is the median of the per-round ratios, each from two runs back to back (robust to load drift).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "sst2" / "train.tsv"
VARIANTS = ("bitfit", "full")
WARMUP_STEPS = 2
"""Steps left out of the timing: the first ones allocate buffers and optimizer state."""


def child(method: str, steps: int, batch_size: int, max_length: int, data: str) -> dict:
    """Train `steps` steps with `method` in this process; return its figures."""
    import resource
    import time

    import torch
    from transformers import TrainerCallback

    from bitfit_deploy.train import TrainConfig, train

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (forward, backward, update), without the setup around them."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            TrainConfig(
                task="sst2",
                train=data,
                output=str(Path(tmp) / ("out.safetensors" if method == "bitfit" else "out")),
                method=method,
                preset="sst2",
                max_steps=steps,
                batch_size=batch_size,
                max_length=max_length,
                seed=0,
                progress=False,
            ),
            callbacks=[timer],
        )
    steady = timer.times[WARMUP_STEPS:] or timer.times
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "samples_per_s": batch_size / statistics.median(steady),
        "train_runtime_s": result.train_runtime,
        "peak_rss_mb": peak_kb / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "trainable": result.trainable_parameters,
        "total": result.total_parameters,
        "threads": torch.get_num_threads(),
    }


def run_child(method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--data",
        str(args.data),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{method} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(runs: list[dict], args: argparse.Namespace) -> dict[str, dict]:
    """Print the table and the ratio; return the per-variant medians."""
    summary = {}
    for method in VARIANTS:
        mine = [r for r in runs if r["method"] == method]
        speeds = [r["samples_per_s"] for r in mine]
        summary[method] = {
            "samples_per_s": statistics.median(speeds),
            "min": min(speeds),
            "max": max(speeds),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
            "trainable": mine[0]["trainable"],
            "total": mine[0]["total"],
            "runs": len(mine),
        }
    from _common import cpu_description

    print(f"\nCPU: {cpu_description()}")
    print(
        f"Packaged all-MiniLM-L6-v2, SST-2 sample ({args.data.name}), batch {args.batch_size}, "
        f"max length {args.max_length}, {args.steps} steps per run (first {WARMUP_STEPS} untimed), {args.rounds} round(s), "
        f"{runs[0]['threads']} torch threads"
    )
    print(
        f"{'method':<8}{'samples/s (median)':>20}{'min..max':>18}{'peak RSS MB':>14}{'trainable params':>20}"
    )
    for method, s in summary.items():
        print(
            f"{method:<8}{s['samples_per_s']:>20.1f}{s['min']:>10.1f}..{s['max']:<6.1f}"
            f"{s['peak_rss_mb']:>14.0f}{s['trainable']:>12,} of {s['total'] / 1e6:.1f}M"
        )
    pairs = [
        runs[i]["samples_per_s"] / runs[i + 1]["samples_per_s"]
        if runs[i]["method"] == "bitfit"
        else runs[i + 1]["samples_per_s"] / runs[i]["samples_per_s"]
        for i in range(0, len(runs) - 1, 2)
    ]
    ratio = statistics.median(pairs)
    print("per-round BitFit/full ratios: " + ", ".join(f"{r:.2f}" for r in pairs))
    saved = summary["full"]["peak_rss_mb"] - summary["bitfit"]["peak_rss_mb"]
    verdict = "meets" if ratio >= 1.5 else "misses"
    print(
        f"\nBitFit / full samples/s: {ratio:.2f}x ({verdict} the 1.5x goal); "
        f"BitFit peak RSS {saved:.0f} MB below full"
    )
    return summary


def plot(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = list(summary)
    axes[0].bar(
        names, [summary[n]["samples_per_s"] for n in names], color=["tab:green", "tab:gray"]
    )
    axes[0].set_ylabel("training samples/s (median)")
    axes[1].bar(names, [summary[n]["peak_rss_mb"] for n in names], color=["tab:green", "tab:gray"])
    axes[1].set_ylabel("peak RSS (MB)")
    fig.suptitle("BitFit vs full fine-tuning, packaged MiniLM")
    fig.tight_layout()
    from _common import save_plot

    save_plot(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Two rounds of 4 steps.")
    parser.add_argument("--rounds", type=int, default=6, help="Runs per variant, interleaved.")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per run.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "benchmarks" / "results" / "train_speed.png"
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(args.child, args.steps, args.batch_size, args.max_length, str(args.data))
            )
        )
        return
    if args.quick:
        args.rounds, args.steps = 2, 4
    from tqdm import tqdm

    order = [VARIANTS if r % 2 == 0 else VARIANTS[::-1] for r in range(args.rounds)]
    runs = []
    with tqdm(total=args.rounds * len(VARIANTS), desc="runs") as bar:
        for methods in order:
            for method in methods:
                bar.set_postfix_str(method)
                runs.append(run_child(method, args))
                bar.update()
    summary = report(runs, args)
    if args.plot:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
