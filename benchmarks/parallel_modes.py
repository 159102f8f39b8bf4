"""parallel="ops" against parallel="rows", fp32 and int8, from one row to full batches.

"ops": one session with N intra-op threads runs the batch. "rows": one session with one thread,
the batch split into N slices of rows run at once (`bitfit_deploy.runtime.parallel.RowSlices`,
what `Runtime(parallel="rows")` does). All four (variant, mode) pairs are timed interleaved per
shape, spinning off (the server's setting); prints each mode's median time and the paired ratios
rows/ops per variant and fp32/int8 per mode, with their p10-p90 spread, and saves a plot.

Run: `.venv/bin/python benchmarks/parallel_modes.py [--quick] [--bundle DIR] [--threads N]`;
for one long window at one shape: `--shapes 8x64 --reps 300 --plot /tmp/p.png`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

from _common import (
    RESULTS,
    cpu_description,
    format_ratio,
    interleaved_ms,
    paired_ratio,
    save_plot,
)
from int8_profile import feeds_for, first_output, session
from tqdm import tqdm

SHAPES = ("1x27", "1x128", "2x64", "8x64", "32x27", "32x64")


def time_shape(graphs: dict, base: dict, threads: int, shape: str, reps: int) -> dict:
    """(variant, mode) -> per-repetition ms for one `batch x tokens` shape, all four interleaved."""
    from bitfit_deploy.runtime.parallel import RowSlices

    batch, tokens = (int(v) for v in shape.split("x"))
    runners = {}
    for variant, path in graphs.items():
        runners[variant, "ops"] = (first_output(session(path, "all", threads, False)), RowSlices(1))
        runners[variant, "rows"] = (
            first_output(session(path, "all", 1, False)),
            RowSlices(threads),
        )
    feeds = feeds_for(session(graphs["fp32"], "all", 1, False), base, batch, tokens)
    calls = {key: partial(slices.run, run, feeds) for key, (run, slices) in runners.items()}
    for call in calls.values():
        call()
    return interleaved_ms(calls, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--bundle", type=Path, help="an existing MiniLM bundle with int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument(
        "--reps", type=int, help="interleaved repetitions per shape [default: 20 or 60 by size]"
    )
    parser.add_argument("--plot", type=Path, default=RESULTS / "parallel_modes.png")
    args = parser.parse_args()
    from safetensors.numpy import load_file

    from bitfit_deploy.exporters import export_bundle
    from bitfit_deploy.manifest import read_manifest

    with tempfile.TemporaryDirectory(prefix="bitfit-parallel-") as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "bundle"
            export_bundle(bundle, quantize="int8")
        manifest = read_manifest(bundle)
        graphs = {v: bundle / manifest.variants[v] for v in ("fp32", "int8")}
        base = load_file(str(bundle / "base.safetensors"))
        print(f"CPU: {cpu_description()}; {args.threads} threads, spinning off")
        rows = []
        for shape in tqdm(args.shapes.split(","), desc="shapes", file=sys.stdout):
            batch, tokens = (int(v) for v in shape.split("x"))
            reps = args.reps or (6 if args.quick else (20 if batch * tokens >= 512 else 60))
            times = time_shape(graphs, base, args.threads, shape, reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            speed = {v: paired_ratio(times[v, "ops"], times[v, "rows"]) for v in ("fp32", "int8")}
            gain = {m: paired_ratio(times["fp32", m], times["int8", m]) for m in ("ops", "rows")}
            served = paired_ratio(times["fp32", "ops"], times["int8", "rows"])
            rows.append((shape, speed))
            tqdm.write(
                f"{shape:>6}: fp32 ops {med['fp32', 'ops']:.1f} / rows {med['fp32', 'rows']:.1f} ms, "
                f"int8 ops {med['int8', 'ops']:.1f} / rows {med['int8', 'rows']:.1f} ms ({reps} reps)\n"
                f"        ops/rows: fp32 {format_ratio(speed['fp32'])}, int8 {format_ratio(speed['int8'])}\n"
                f"        int8 speed-up over fp32: ops {format_ratio(gain['ops'])}, rows "
                f"{format_ratio(gain['rows'])}, as served by default (int8 rows, fp32 ops) "
                f"{format_ratio(served)}"
            )
        plot(rows, args.threads, args.plot)


def plot(rows: list, threads: int, path: Path) -> None:
    """Bars of rows-over-ops speed per shape, fp32 and int8, with the p10-p90 spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for i, variant in enumerate(("fp32", "int8")):
        xs = [j + (i - 0.5) * width for j in range(len(rows))]
        med = [speed[variant][0] for _, speed in rows]
        err = [
            [m - speed[variant][1] for m, (_, speed) in zip(med, rows, strict=True)],
            [speed[variant][2] - m for m, (_, speed) in zip(med, rows, strict=True)],
        ]
        ax.bar(xs, med, width, yerr=err, capsize=3, label=variant)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(rows)), [shape for shape, _ in rows])
    ax.set_xlabel("batch x tokens")
    ax.set_ylabel("ops time / rows time")
    ax.set_title(f"parallel='rows' vs 'ops', {threads} threads (above 1: rows faster)")
    ax.legend()
    fig.tight_layout()
    save_plot(fig, path)


if __name__ == "__main__":
    main()
