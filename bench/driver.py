"""`python -m bench` / `make bench`: time generated models against the references, print the ratios.

One worker process per framework (bench/worker.py), run one after another so that they never compete
for the cores: PyTorch, then Flax (whose times are set against the PyTorch reference's, measured just
before in the other process), then Keras. Within a process the two models of a pair are timed
interleaved, median of repeated rounds after warm-up (bench/timing.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.pairs import PAIRS
from bench.timing import Settings
from bench.worker import bench_module
from generators.frameworks import FRAMEWORKS

ROOT = Path(__file__).resolve().parent.parent
# The frameworks with a benchmark (bench/<key>_bench.py), each right after the one it is set against
# (generators/frameworks.py: bench_against).
ORDER = tuple(key for own in FRAMEWORKS if FRAMEWORKS[own].bench_against is None
              for key in (own, *(k for k, f in FRAMEWORKS.items() if f.bench_against == own))
              if importlib.util.find_spec(f"bench.{key}_bench") is not None)
PARITY = 0.03  # ratios within 1 +- this are parity (run-to-run noise of medians on a shared machine)
# Flax mode -> the PyTorch reference modes it is set against.
FLAX_AGAINST = {"jit": ("eager", "compiled"), "fp32 jit": ("fp32",), "bf16 jit": ("bf16+channels_last compiled",)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, short rounds (a smoke test)")
    parser.add_argument("--only", choices=ORDER, default=None, help="one framework")
    parser.add_argument("--json", type=Path, default=None, help="write every row and setting here")
    parser.add_argument("--gpu", action="store_true",
                        help="batch 256 on the GPU: fp32 (TF32 off), bf16 + channels_last, compiled / jitted")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="cores (and threads) per process, the same for both sides (default: all)")
    parser.add_argument("--batches", default=None, help="comma-separated (default 1,32; with --gpu 256)")
    parser.add_argument("--pairs", default=None,
                        help="comma-separated reference names to run (default: every pair whose generated code exists)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = "gpu" if args.gpu else "cpu"
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([256] if args.gpu else [1, 32])
    settings = Settings.quick() if args.quick else Settings()
    frameworks = [args.only] if args.only else [f for f in ORDER
                                                if not args.gpu or getattr(bench_module(f), "GPU_MODES", ())]
    wanted = set(args.pairs.split(",")) if args.pairs else None
    report = {"date": datetime.date.today().isoformat(), "device": device, "threads": args.threads,
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "batches": batches, "settings": asdict(settings), "workers": {}, "rows": [], "skipped": []}
    print(f"bench: {device}, {args.threads} thread(s) per process, batches {batches}, "
          f"{settings.rounds} rounds after {settings.warmup} warm-up calls", file=sys.stderr)
    jobs = []
    for framework in frameworks:
        chosen = [p.reference.name for p in PAIRS[framework] if wanted is None or p.reference.name in wanted]
        jobs.append((framework, chosen, False))
    against = FRAMEWORKS[args.only].bench_against if args.only else None
    if against:  # set against another framework's references: time them (alone) first
        jobs.insert(0, (against, jobs[0][1], True))
    status = 0
    for framework, chosen, reference_only in jobs:
        result = run_worker(framework, chosen, device, args.threads, batches, settings, reference_only)
        key = framework + (" (references)" if reference_only else "")
        report["workers"][key] = {k: v for k, v in result.items() if k not in ("rows", "skipped")}
        report["skipped"] += [{"framework": framework, **s} for s in result.get("skipped", [])]
        report["rows"] += [{"framework": framework, **row} for row in result.get("rows", [])]
        if "error" in result:
            print(f"bench: {framework} failed: {result['error']}", file=sys.stderr)
            if result.get("traceback"):
                print(result["traceback"], file=sys.stderr)
            status = 2
            if device == "gpu":
                break  # no GPU here: the next framework would say the same
    report["rows"] += flax_vs_torch(report["rows"])
    print_tables(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"bench: wrote {args.json}", file=sys.stderr)
    return status


def run_worker(framework: str, chosen: list[str], device: str, threads: int, batches: list[int],
               settings: Settings, reference_only: bool) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    if device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory(prefix="mnforge-bench-") as tmp:
        request, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"framework": framework, "device": device, "threads": threads,
                                       "batches": batches, "settings": asdict(settings), "pairs": chosen,
                                       "reference_only": reference_only, "out": str(out)}))
        what = "references only" if reference_only else f"{len(chosen)} pair(s)"
        print(f"bench: {framework} process ({what})", file=sys.stderr, flush=True)
        start, load_before = time.perf_counter(), os.getloadavg()
        if load_before[0] > threads + 0.5:
            print(f"bench: warning: load average {load_before[0]:.1f} on {os.cpu_count()} cores before the "
                  f"{framework} process: other work competes for the cores, times are noisy", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "bench.worker", str(request)], cwd=ROOT, env=env, check=False)
        if not out.exists():
            return {"error": f"worker exited with code {proc.returncode} and wrote nothing (see its stderr above)"}
        result = json.loads(out.read_text())
        result["load_average"] = {"before": load_before, "after": os.getloadavg()}
        print(f"bench: {framework} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return result


def flax_vs_torch(rows: list[dict]) -> list[dict]:
    """Flax rows set against the PyTorch reference's time for the same pair and batch (other process)."""
    torch_rows = {(r["reference"], r["mode"], r["batch"]): r for r in rows if r["framework"] == "torch"}
    out = []
    for row in rows:
        if row["framework"] != "flax":
            continue
        for against in FLAX_AGAINST[row["mode"]]:
            reference = torch_rows.get((row["reference"], against, row["batch"]))
            if reference is None:
                continue
            out.append({**{k: v for k, v in row.items() if not k.startswith("reference_")},
                        "framework": "flax vs torch", "mode": f"{row['mode']} vs torch {against}",
                        "reference_s": reference["reference_s"], "ratio": reference["reference_s"] / row["generated_s"],
                        "spread": None})
    return out


TITLES = {
    "torch": "PyTorch: generated vs torchvision / timm (same process, interleaved)",
    "keras": "Keras 3 (TensorFlow): generated vs keras.applications (same process, interleaved; "
             "logits, V3 without its Rescaling layer)",
    "flax vs torch": "Flax NNX (jit) vs the PyTorch reference (separate processes, run back to back)",
}


COLUMNS = ("reference vs generated (flavor)", "mode", "batch", "reference ms", "generated ms", "generated img/s",
           "ratio", "± (IQR/2)")
NOTE = (f"ratio = reference time / generated time (>= 1.00: generated at least as fast; within ±{PARITY:.0%}: "
        "parity); ± = half the interquartile range of the per-round ratios")


def tables(report: dict):
    """(title, rows of cells) per framework; the ratio cell is left a float."""
    for framework, title in TITLES.items():
        rows = [r for r in report["rows"] if r["framework"] == framework and "generated_s" in r]
        if rows:
            yield (f"{title}; {report['device']}, {report['threads']} thread(s) per process",
                   [[r["pair"], r["mode"], str(r["batch"]), f"{r['reference_s'] * 1e3:.2f}",
                     f"{r['generated_s'] * 1e3:.2f}", f"{r['batch'] / r['generated_s']:,.0f}", r["ratio"],
                     "–" if r.get("spread") is None else f"{r['spread']:.1%}"] for r in rows])


def print_tables(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    for title, rows in tables(report):
        table = Table(title=title)
        for i, column in enumerate(COLUMNS):
            table.add_column(column, justify="left" if i < 3 else "right")
        for cells in rows:
            colour = "green" if cells[6] >= 1 - PARITY else "red"
            table.add_row(*cells[:6], f"[{colour}]{cells[6]:.2f}[/]", cells[7])
        console.print(table)
    for s in report["skipped"]:
        console.print(f"skipped ({s['framework']}): {s['pair']}: {s['why']}")
    console.print(NOTE)


def markdown(report: dict) -> str:
    """The same tables in Markdown (for bench/RESULTS.md): `python -m bench.driver --markdown FILE.json`."""
    out = []
    for title, rows in tables(report):
        out += [f"**{title}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * 5]
        out += ["| " + " | ".join(cells[:6] + [f"{cells[6]:.2f}", cells[7]]) + " |" for cells in rows]
        out.append("")
    return "\n".join(out + [NOTE])


if __name__ == "__main__" and sys.argv[1:2] == ["--markdown"]:
    print(markdown(json.loads(Path(sys.argv[2]).read_text())))
