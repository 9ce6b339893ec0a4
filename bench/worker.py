"""One framework in one process: `python -m bench.worker REQUEST.json`.

Pins the process to the requested number of cores before any framework is imported (every framework
then sizes its thread pool to them; PyTorch and TensorFlow are also told explicitly), runs the
framework's benchmark (bench/<framework key>_bench.py) and writes its rows as JSON. Progress goes to
stderr. A benchmark that cannot run (e.g. --gpu without a GPU) writes {"error": ...} and exits with 3.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path


def bench_module(framework: str):
    """bench/<key>_bench.py: `run(request, progress)`, and GPU_MODES where it times on a GPU. Importing it
    imports no framework."""
    return importlib.import_module(f"bench.{framework}_bench")


class BenchError(RuntimeError):
    """A benchmark that cannot run here, with a message for the user."""


def progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pin_threads(threads: int) -> list[int]:
    """Restrict this process to `threads` cores (the first ones it may use); returns them."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    cores = allowed[:threads]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    return cores


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    out = Path(request["out"])
    cores = pin_threads(request["threads"]) if request["device"] == "cpu" else []
    result: dict = {"framework": request["framework"], "device": request["device"], "threads": request["threads"],
                    "cores": cores, "python": platform.python_version()}
    start = time.perf_counter()
    try:
        result.update(bench_module(request["framework"]).run(request, progress))
    except BenchError as exc:
        result["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 (reported by the driver with its traceback)
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=8)
    result["seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=1))
    return 3 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
