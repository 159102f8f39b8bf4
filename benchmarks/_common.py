"""What every benchmark prints beside its figures: the CPU, and ratios from interleaved pairs.

Shared machines are noisy: one pair of timings can be off by 15%. A ratio is therefore the
median of per-repetition ratios (A and B timed back to back, order alternating), with its
spread (10th-90th percentile), never a ratio of two separate medians.

Interleaving has a trap of its own: after a run, ONNX Runtime's worker threads spin for a while
(`session.intra_op.allow_spinning`, on by default), and the spinning pool of the session just timed
takes the cores from the next one. Measured on 2 cores, fp32 and int8 MiniLM sessions alternating:
166 and 100 ms a run, against 71 and 33 ms with a 50 ms pause before each run, or 76 and 36 ms with
spinning off. So interleaved sessions here run with spinning off (as the server's do), or after
`SPIN_PAUSE_S` when spinning itself is compared.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
"""Where benchmarks save their plots and outputs."""

SPIN_PAUSE_S = 0.05
"""Idle time before a timed run of a spinning session, so that other pools have gone to sleep."""

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_description() -> str:
    """'Intel(R) Xeon(R) ..., 2 cores, int8 dot product: avx512_vnni, amx_int8' (Linux; best effort)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in (
                "",
                platform.machine(),
                platform.processor(),
            ):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    dot = ", ".join(f for f in INT8_DOT_FLAGS if f in flags) or "none"
    return f"{model}, {os.cpu_count()} cores, int8 dot-product instructions: {dot}"


def paired_ratio(
    numerator: Sequence[float], denominator: Sequence[float]
) -> tuple[float, float, float]:
    """(median, p10, p90) of numerator[i] / denominator[i] over interleaved repetitions i."""
    ratios = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return statistics.median(ratios), deciles[0], deciles[-1]


def interleaved_ms(
    runs: dict[Any, Callable[[], object]], reps: int, pause_s: float = 0.0
) -> dict[Any, list[float]]:
    """Milliseconds of each `runs[key]()` in each of `reps` repetitions, in rotating order.

    Repetition i runs every key once, starting one key further than repetition i-1, so drift
    falls on all keys alike; `pause_s` idles before each timed call (see SPIN_PAUSE_S).
    """
    keys = list(runs)
    times: dict[Any, list[float]] = {key: [] for key in keys}
    for rep in range(reps):
        for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            if pause_s:
                time.sleep(pause_s)
            start = time.perf_counter()
            runs[key]()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def format_ratio(ratio: tuple[float, float, float], unit: str = "x") -> str:
    """'1.92x (p10-p90 1.85-2.01)'."""
    mid, lo, hi = ratio
    return f"{mid:.2f}{unit} (p10-p90 {lo:.2f}-{hi:.2f})"


def save_plot(fig, path: Path, dpi: int = 120) -> Path:  # noqa: ANN001
    """Save a matplotlib figure (creating its folder), print where, and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    print(f"plot: {path}")
    return path
