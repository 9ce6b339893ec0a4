"""`mnforge port` and `mnforge run`: move a checkpoint between formats, check it on real input.

Every framework step runs in its own process (conformance/porting/worker.py), so a PyTorch checkpoint
can become a Keras one without TensorFlow and torchvision sharing an interpreter. The neutral
safetensors file sits between the two steps. The flavor travels with the weights: it is recorded in
every file written (safetensors metadata or a sidecar JSON) and read back by `run` and `port`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from conformance import weights as neutral
from conformance.porting.formats import FORMATS, FRAMEWORK_OF, NEUTRAL, read_metadata
from conformance.porting.references import LIBRARIES, for_variant
from generators.frameworks import FRAMEWORKS
from spec import describe
from spec.loader import LoadedSpec

WORKER_TIMEOUT = 900


class PortError(ValueError):
    pass


def parse_location(text: str, role: str) -> tuple[str, Path]:
    fmt, sep, path = text.partition(":")
    if not sep or fmt not in FORMATS or not path:
        raise PortError(f"--{role} takes FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}; got {text!r}")
    return fmt, Path(path)


def choose_flavor(loaded: LoadedSpec, variant: str, explicit: str | None, source_fmt: str, source: Path,
                  target_fmt: str, echo: Callable[[str], None]) -> str:
    """--flavor, else what the source file records, else the flavor its format implies, else the target's."""
    recorded = read_metadata(source).get("flavor") if source.exists() else None
    if explicit:
        if recorded and recorded != explicit:
            echo(f"note: {source} was written for flavor {recorded}; reinterpreting it as {explicit} (--flavor)")
        return explicit
    implied = [LIBRARIES[fmt].flavor for fmt in (source_fmt, target_fmt) if fmt in LIBRARIES]
    return recorded or (implied or [None])[0] or loaded.spec.default_flavor


def _check_recorded_variant(path: Path, variant: str) -> None:
    recorded = read_metadata(path).get("variant")
    if recorded and recorded != variant:
        raise PortError(f"{path} holds weights of {recorded}, not {variant}")


def run_worker(request: dict, framework: str | None, what: str) -> dict:
    """One port step in a fresh process of `framework` (its native run: Keras on TensorFlow); raises
    PortError with the worker's message."""
    with tempfile.TemporaryDirectory(prefix="mnforge-port-") as tmp:
        request = {**request, "result": str(Path(tmp) / "result.json"), "run": framework}
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        try:
            proc = subprocess.run([sys.executable, "-m", "conformance.porting.worker", str(Path(tmp) / "request.json")],
                                  capture_output=True, text=True, timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PortError(f"{what}: the {framework} worker did not finish in {WORKER_TIMEOUT} s") from None
        result_file = Path(request["result"])
        if not result_file.exists():
            tail = "\n".join(proc.stderr.splitlines()[-15:])
            raise PortError(f"{what}: the {framework} worker exited with code {proc.returncode}:\n{tail}")
        result = json.loads(result_file.read_text())
    if "error" in result:
        raise PortError(f"{what}: {result['error']}")
    return result


def port(loaded: LoadedSpec, variant: str, source: str, target: str, flavor: str | None = None,
         num_classes: int = 1000, echo: Callable[[str], None] = print) -> dict:
    source_fmt, source_path = parse_location(source, "from")
    target_fmt, target_path = parse_location(target, "to")
    if not source_path.is_file():
        raise PortError(f"{source_path}: no such file")
    _check_recorded_variant(source_path, variant)
    flavor = choose_flavor(loaded, variant, flavor, source_fmt, source_path, target_fmt, echo)
    desc = describe(loaded, variant, flavor, num_classes=num_classes)
    common = {"spec": str(loaded.path), "variant": variant, "flavor": flavor, "num_classes": num_classes}
    size_mb = source_path.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="mnforge-port-") as tmp:
        middle = Path(tmp) / "neutral.safetensors"
        echo(f"reading {source_fmt}:{source_path} ({size_mb:.1f} MB) as {variant}, flavor {flavor}")
        if source_fmt == NEUTRAL:
            tensors, _ = neutral.load(source_path)
            neutral.check_tensors(tensors, neutral.expected_tensors(desc), str(source_path))
            neutral.save(middle, tensors, {"variant": variant, "flavor": flavor, "num_classes": str(num_classes)})
        else:
            run_worker({**common, "op": "read", "format": source_fmt, "path": str(source_path), "neutral": str(middle),
                        "reference": _reference_name(source_fmt, variant, flavor)},
                       FRAMEWORK_OF[source_fmt], f"reading {source_path}")
        tensors, _ = neutral.load(middle)
        echo(f"writing {target_fmt}:{target_path}")
        target_path.parent.mkdir(parents=True, exist_ok=True)
        if target_fmt == NEUTRAL:
            neutral.save(target_path, tensors, {"variant": variant, "flavor": flavor, "num_classes": str(num_classes),
                                                "source": f"{source_fmt}:{source_path.name}"})
        else:
            run_worker({**common, "op": "write", "format": target_fmt, "path": str(target_path),
                        "neutral": str(middle), "reference": _reference_name(target_fmt, variant, flavor)},
                       FRAMEWORK_OF[target_fmt], f"writing {target_path}")
    summary = {"variant": variant, "flavor": flavor, "tensors": len(tensors),
               "params": sum(v.size for k, v in tensors.items() if not neutral.is_state(k)),
               "state": sum(v.size for k, v in tensors.items() if neutral.is_state(k)),
               "from": f"{source_fmt}:{source_path}", "to": f"{target_fmt}:{target_path}"}
    echo(f"converted {summary['tensors']} tensors ({summary['params']:,} params, {summary['state']:,} BatchNorm "
         f"statistics) of {variant} ({flavor}): {summary['from']} -> {summary['to']}")
    return summary


def _reference_name(fmt: str, variant: str, flavor: str) -> str | None:
    if fmt not in LIBRARIES:
        return None
    try:
        choose = flavor if fmt == "timm" and flavor in ("timm", "timm_tf") else None
        return for_variant(fmt, variant, choose).name
    except KeyError as exc:
        raise PortError(str(exc.args[0])) from None


def run_model(loaded: LoadedSpec, variant: str, framework: str, weights: Path, inputs: Path, output: Path,
              flavor: str | None = None, num_classes: int | None = None) -> dict:
    if framework not in FRAMEWORKS:
        raise PortError(f"--framework takes {', '.join(FRAMEWORKS)}; got {framework!r}")
    if not weights.is_file():
        raise PortError(f"{weights}: no such file")
    if not inputs.is_file():
        raise PortError(f"{inputs}: no such file")
    _check_recorded_variant(weights, variant)
    recorded = read_metadata(weights)
    flavor = flavor or recorded.get("flavor") or loaded.spec.default_flavor
    num_classes = num_classes or int(recorded.get("num_classes", 1000))
    return run_worker({"spec": str(loaded.path), "op": "run", "variant": variant, "flavor": flavor,
                       "num_classes": num_classes, "framework": framework, "path": str(weights),
                       "input": str(inputs), "output": str(output)},
                      framework, f"running {variant} in {framework}")
