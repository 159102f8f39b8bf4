"""Cold start and edge footprint of an app that embeds the runtime (packaged all-MiniLM-L6-v2).

Cold start: a fresh Python process imports `bitfit_deploy.runtime`, opens a bundle, loads a task
and predicts one text; the child times itself from before the import to after the prediction
(interpreter start-up excluded; the whole process, as the parent saw it, and the child's CPU
time are printed too).
fp32 and int8, each opened three ways, repetitions interleaved (median of 5, min-max):

- `before`: as before issue 12: a copy of the bundle with the weights inside the graphs (one
  protobuf each) and every bundle file hashed, the unused variant included (`verify="full"`),
  no cache folder;
- `loaded`: weights in `<graph>.data`, only the files it loads hashed, an empty cache folder (a
  first open after export or copy: it also saves ORT's optimized graph for later opens, see
  `bitfit_deploy.runtime.optimized_graphs`);
- `nograph`: as `marker` below but with `BITFIT_DEPLOY_OPTIMIZED_GRAPHS=0`: markers only, the
  graph optimized in every process (the default path before the optimized-graph cache);
- `marker`: weights in `<graph>.data`, verified markers and the optimized graph in the cache
  folder, nothing hashed or optimized (every later open; the default path).

The bundle's files are in the page cache (read just before), as on a machine that opened the
bundle recently; a cold disk adds its read time. Goal: at most 0.35 s for fp32 (set on a quiet
2-core Xeon with AVX-512 VNNI and AMX, where `before` took 0.51-0.64 s). As this VM's speed
drifts by hour, the default path over `before`, paired per repetition, is printed too, with
what it comes to at the goal's machine speed.

Footprint: a fresh venv with the runtime only (`pip install -c constraints.txt .`, no extras, from
this checkout; needs PyPI or a pip cache), its installed size without pip and setuptools (sizes of
the files each distribution's RECORD lists), and the RSS after the first prediction, fp32 and int8.
The cold-start children run in that venv, as an app would; `--no-footprint` uses this interpreter.

Run: `.venv/bin/python benchmarks/cold_start.py [--quick] [--bundle DIR] [--venv DIR] [--plot PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("before", "loaded", "nograph", "marker")
SKIP_COPY = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "results", "__pycache__")
EXCLUDED = (
    "pip",
    "setuptools",
    "wheel",
    "_distutils_hack",
    "pkg_resources",
    "distutils-precedence",
)

CHILD = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from bitfit_deploy.runtime import Runtime
import bitfit_deploy.runtime.runtime as opening
t1 = time.perf_counter()
checks = []
def timed_check(*args, _check=opening.verify_bundle):
    start = time.perf_counter()
    _check(*args)
    checks.append(time.perf_counter() - start)
opening.verify_bundle = timed_check  # only to report the checksum share of "open"
bundle, variant, verify, threads, delta, task = sys.argv[1:7]
rt = Runtime(bundle, threads=int(threads), variant=variant, verify=verify)
t2 = time.perf_counter()
if delta:
    rt.load_task(delta)
t3 = time.perf_counter()
label = rt.predict(task, ["a gorgeous, witty, seductive movie."])[0].label
t4, c4 = time.perf_counter(), time.process_time()
status = {}
try:
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key] = int(value.split()[0]) / 1024
except OSError:
    import resource
    status["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "verify": sum(checks), "task": t3 - t2, "predict": t4 - t3,
                  "total": t4 - t0, "cpu": c4 - c0, "rss_mb": status.get("VmRSS"), "peak_mb": status.get("VmHWM"),
                  "label": label}))
"""


# ----------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name and the instruction sets that matter here (int8 dot products, sha)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_int8", "sha_ni")
    return f"{name}, {os.cpu_count()} logical CPUs, {' '.join(f for f in wanted if f in flags)}"


# ------------------------------------------------------------------ bundle
def bundle_and_task(args: argparse.Namespace, work: Path) -> tuple[Path, str, str]:
    """(bundle with fp32 and int8, delta path or "" when the bundle ships the task, task name)."""
    from bitfit_deploy.manifest import read_manifest

    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from bitfit_deploy.exporters import export_bundle

        bundle = work / "bundle"
        start = time.perf_counter()
        export_bundle(bundle, quantize="int8")
        print(f"exported the packaged MiniLM (fp32 + int8) in {time.perf_counter() - start:.1f} s")
    manifest = read_manifest(bundle, verify=False)
    if "int8" not in manifest.variants:
        raise SystemExit(f"{bundle} has no int8 variant; export it with --quantize int8.")
    if manifest.tasks:
        return bundle, "", Path(manifest.tasks[0]).stem
    return bundle, str(synthetic_delta(manifest, work / "mood.safetensors")), "mood"


def synthetic_delta(manifest, path: Path) -> Path:
    """A 2-label task: the base biases unchanged, a random head (prediction cost is the same)."""
    import numpy as np

    from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta

    rng = np.random.default_rng(0)
    meta = DeltaMetadata(
        task="mood",
        base_fingerprint=manifest.base_fingerprint,
        problem_type="single_label",
        labels=["negative", "positive"],
        pooling=manifest.pooling,
    )
    biases = {b.name: np.zeros(b.dim, np.float32) for b in manifest.bias_inputs}
    head = rng.normal(0, 0.05, (2, manifest.hidden_size)).astype(np.float32)
    return save_delta(TaskDelta(meta, biases, head, np.zeros(2, np.float32)), path)


# --------------------------------------------------------------- footprint
def runtime_venv(args: argparse.Namespace, work: Path) -> Path:
    """A venv with `pip install -c constraints.txt .` (no extras); `--venv` keeps or reuses one.

    A reused venv gets this checkout's bitfit-deploy again (same version number, so pip would
    otherwise keep the old code).
    """
    venv = Path(args.venv) if args.venv else work / "runtime-venv"
    python = venv / "bin" / "python"
    source = work / "source"  # a copy: setuptools writes build/ into the tree it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SKIP_COPY))
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    start = time.perf_counter()
    if python.exists():
        subprocess.run([*pip, "--no-deps", "--force-reinstall", str(source)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(source)], check=True)
    print(f"runtime-only venv ready in {time.perf_counter() - start:.0f} s: {venv}")
    return python


def install_size(python: Path) -> dict[str, int]:
    """Bytes per installed distribution (files its RECORD lists), pip and setuptools excluded."""
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    sizes = {}
    for record in Path(site).glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-")[0]
        if name.lower().replace("_", "-") in EXCLUDED or name in EXCLUDED:
            continue
        total = 0
        for line in record.read_text().splitlines():
            rel = line.rsplit(",", 2)[0]
            path = (Path(site) / rel).resolve()
            if path.is_file():
                total += path.stat().st_size
        sizes[name] = total
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


# -------------------------------------------------------------- cold start
def run_child(
    python: Path, bundle: Path, variant: str, mode: str, args, markers: Path, delta, task
):
    """One fresh process; returns its own timings plus the parent's view of its wall time."""
    cache = "" if mode == "before" else str(markers)  # "": no markers, no optimized graphs
    env = {**os.environ, "BITFIT_DEPLOY_CACHE_DIR": cache, "PYTHONDONTWRITEBYTECODE": "1"}
    env["BITFIT_DEPLOY_OPTIMIZED_GRAPHS"] = "0" if mode == "nograph" else "1"
    verify = {"before": "full", "loaded": "loaded", "nograph": "cached", "marker": "cached"}[mode]
    start = time.perf_counter()
    proc = subprocess.run(
        [str(python), "-c", CHILD, str(bundle), variant, verify, str(args.threads), delta, task],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: the child must import the installed package
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({variant}, {mode}):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process"] = wall
    return result


def embedded_copy(bundle: Path, target: Path) -> Path:
    """`bundle` as exported before issue 12: each graph's weights inside it, no weights files."""
    import onnx

    from bitfit_deploy.exporters.bundle import write_manifest
    from bitfit_deploy.manifest import read_manifest

    shutil.copytree(bundle, target)
    manifest = read_manifest(target, verify=False)
    for variant, data in manifest.weights.items():
        graph = target / manifest.variants[variant]
        onnx.save_model(onnx.load(str(graph)), str(graph))
        (target / data).unlink()
    manifest.weights = {}
    write_manifest(target, manifest)
    return target


def cold_start(python: Path, bundle: Path, delta: str, task: str, args, work: Path) -> dict:
    """Interleaved repetitions of every (variant, mode); markers primed once for `marker`."""
    from bitfit_deploy import integrity

    markers = work / "markers"
    scratch = work / "scratch-cache"  # emptied before each first open
    before = embedded_copy(bundle, work / "bundle-before")
    newest = max(p.stat().st_ctime for p in bundle.rglob("*") if p.is_file())
    time.sleep(max(0.0, newest + integrity.RACY_SECONDS + 0.1 - time.time()))  # markers allowed
    configs = [(v, m) for v in ("fp32", "int8") for m in MODES]
    for variant in ("fp32", "int8"):  # prime the markers and the page cache
        run_child(python, bundle, variant, "marker", args, markers, delta, task)
        run_child(python, before, variant, "before", args, scratch, delta, task)
    samples: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for variant, mode in configs[rep % len(configs) :] + configs[: rep % len(configs)]:
            path = before if mode == "before" else bundle
            if mode in ("marker", "nograph"):
                result = run_child(python, path, variant, mode, args, markers, delta, task)
            else:  # a first open: an empty cache folder each time
                shutil.rmtree(scratch, ignore_errors=True)
                result = run_child(python, path, variant, mode, args, scratch, delta, task)
            samples[(variant, mode)].append(result)
        print(f"  repetition {rep + 1}/{args.reps} done", flush=True)
    return samples


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} s ({min(values):.3f}-{max(values):.3f})"


ISSUE_BEFORE_S = (0.51, 0.64)
"""The old path's cold start on the quiet machine the 0.35 s goal was set on (issue 12)."""


def print_speed_free_goal(samples: dict) -> None:
    """The default path over the old one, paired per repetition: a figure the host's speed cancels from.

    This VM runs 1.2-1.4x slower on some hours, the old path too; the ratio, applied to the old
    path's time on the quiet machine the goal was set on, says what the default path would take there.
    """
    from _common import format_ratio, paired_ratio

    for variant in ("fp32", "int8"):
        ratio = paired_ratio(
            [r["total"] for r in samples[(variant, "marker")]],
            [r["total"] for r in samples[(variant, "before")]],
        )
        lo, hi = (ratio[0] * s for s in ISSUE_BEFORE_S)
        print(
            f"{variant} default path / before, paired per repetition: {format_ratio(ratio)}; "
            f"at the goal's machine speed (before: {ISSUE_BEFORE_S[0]}-{ISSUE_BEFORE_S[1]} s) "
            f"that is {lo:.3f}-{hi:.3f} s"
            + (
                f" (goal: <= 0.35 s) {'OK' if hi <= 0.35 else 'MISSED'}"
                if variant == "fp32"
                else ""
            )
        )


def plot(path: Path, samples: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [f"{v}\n{m}" for v, m in samples]
    parts = ("import", "open", "task", "predict")
    bottom = [0.0] * len(samples)
    for part in parts:
        heights = [statistics.median(s[part] for s in runs) for runs in samples.values()]
        ax.bar(names, heights, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.axhline(0.35, color="k", ls="--", lw=1, label="goal (fp32)")
    ax.set_ylabel("seconds (medians of each phase)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from _common import save_plot

    save_plot(fig, path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 5.")
    parser.add_argument("--reps", type=int, default=5, help="Fresh processes per configuration.")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    parser.add_argument(
        "--bundle", help="A MiniLM bundle with an int8 variant (default: export one)."
    )
    parser.add_argument(
        "--venv", help="Runtime-only venv to create or reuse (default: a temp one)."
    )
    parser.add_argument(
        "--no-footprint",
        action="store_true",
        help="Skip the fresh venv; children run with this interpreter.",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/cold_start.png")
    args = parser.parse_args()
    if args.quick:
        args.reps = min(args.reps, 3)

    from bitfit_deploy.manifest import read_manifest

    print(
        f"CPU: {cpu_model()}; {args.threads} ONNX Runtime threads; Python {sys.version.split()[0]}"
    )
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="bitfit-cold-start-") as tmp:
        work = Path(tmp)
        bundle, delta, task = bundle_and_task(args, work)
        sizes = {}
        if args.no_footprint:
            python = Path(sys.executable)
        else:
            python = runtime_venv(args, work)
            sizes = install_size(python)
        print(f"cold start children: {python}")
        samples = cold_start(python, bundle, delta, task, args, work)
        manifest = read_manifest(bundle, verify=False)
        graphs = {
            v: sum((bundle / rel).stat().st_size for rel in manifest.variant_files(v)) / 2**20
            for v in manifest.variants
        }
        layout = "external weights file" if manifest.weights else "weights inside the graph"

    print(
        f"\ncold start: import + open bundle + load task + first prediction, median of {args.reps} (min-max)"
    )
    parts = ("import", "open", "verify", "task", "predict", "process", "cpu")
    print(f"  {'variant':7s} {'mode':7s} {'total':>24s}  " + "".join(f"{p:>9s}" for p in parts))
    for (variant, mode), runs in samples.items():
        print(
            f"  {variant:7s} {mode:7s} {summary([r['total'] for r in runs]):>24s}  "
            + "".join(f"{_median(runs, p):9.3f}" for p in parts)
        )
    print(
        "(medians of each part; verify: the checksum share of open; process: the whole child "
        "process as the parent saw it, interpreter start-up included)"
    )
    print(
        f"(CPU time: the child's user + system seconds over the same span; on a busy machine it "
        f"tracks a quiet machine's wall time better than wall time does; load average now: {load()})"
    )
    goal = statistics.median(r["total"] for r in samples[("fp32", "marker")])
    print(
        f"fp32 with markers (the default path): {goal:.3f} s (goal: <= 0.35 s)  {'OK' if goal <= 0.35 else 'MISSED'}"
    )
    print_speed_free_goal(samples)
    print("\nRSS after the first prediction, median (peak during start-up)")
    for variant in ("fp32", "int8"):
        now, old = samples[(variant, "marker")], samples[(variant, "before")]
        print(
            f"  {variant}: {_median(now, 'rss_mb'):.0f} MiB ({_median(now, 'peak_mb'):.0f} MiB); "
            f"before, weights inside the graph: {_median(old, 'rss_mb'):.0f} MiB "
            f"({_median(old, 'peak_mb'):.0f} MiB); graph {graphs[variant]:.1f} MiB ({layout})"
        )
    if sizes:
        total = sum(sizes.values())
        print(
            f"\nruntime-only install (pip install -c constraints.txt ., no extras; pip and setuptools excluded): {total / 2**20:.1f} MiB"
        )
        for name, size in sizes.items():
            print(f"  {name:24s} {size / 2**20:7.1f} MiB")
    try:
        plot(args.plot, samples, f"cold start, MiniLM-L6, {args.threads} threads")
    except ImportError:
        print("(no plot: matplotlib is not installed)")


if __name__ == "__main__":
    main()
