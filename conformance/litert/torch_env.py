"""The PyTorch LiteRT export, from the main environment: a process in the litert-torch environment.

The main environment's PyTorch process (a conformance or `mnforge litert` worker) writes the model's
weights and a request into a temporary folder and starts `conformance.litert.torch_convert` with the
litert-torch environment's Python, which converts and writes the flatbuffer there; the caller writes it
into place (export.export, atomically) and runs it with the main environment's interpreter.

The environment is `.venv-litert-torch` at the project's root (`make setup` creates it from
constraints-litert-torch.txt); MNFORGE_LITERT_TORCH_PYTHON names another Python to use instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

ENVIRONMENT = "MNFORGE_LITERT_TORCH_PYTHON"
VENV = ".venv-litert-torch"
ROOT = Path(__file__).resolve().parents[2]  # the project: its `conformance` package is what runs there
TIMEOUT = 3600  # seconds; MobileNetV5's 300M encoder is the slowest


class EnvironmentMissing(RuntimeError):
    """The litert-torch environment is not there."""


def python() -> Path:
    """The litert-torch environment's Python; EnvironmentMissing says how to make it."""
    named = os.environ.get(ENVIRONMENT)
    path = Path(named) if named else ROOT / VENV / "bin" / "python"
    if not path.is_file():
        how = f"{ENVIRONMENT} names it" if named else f"`make setup` creates it, or set {ENVIRONMENT}"
        raise EnvironmentMissing(f"PyTorch's LiteRT export runs in the litert-torch environment, and {path} is "
                                 f"not there ({how}; README: LiteRT)")
    return path


def convert(model, desc, generated: Path, options: dict, blocks: bool, output: str, quantize: str) -> bytes:
    """The flatbuffer of `model` (the generated PyTorch model of `desc` from file `generated`, built with
    `options`) from litert-torch; raises RuntimeError with the converter's message."""
    from safetensors.torch import save_file

    interpreter = python()
    with tempfile.TemporaryDirectory(prefix="mnforge-litert-torch-") as tmp:
        folder = Path(tmp)
        save_file({name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()},
                  folder / "weights.safetensors")
        request = {"generated": str(generated), "variant": desc.variant, "flavor": desc.flavor,
                   "options": options, "resolution": list(desc.resolution), "blocks": blocks, "output_name": output,
                   "quantize": quantize, "weights": str(folder / "weights.safetensors"),
                   "output": str(folder / "model.tflite"), "result": str(folder / "result.json")}
        (folder / "request.json").write_text(json.dumps(request))
        try:
            proc = subprocess.run([str(interpreter), "-m", "conformance.litert.torch_convert", str(folder / "request.json")],
                                  cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"litert-torch did not convert {desc.variant} in {TIMEOUT} s") from None
        result_file = folder / "result.json"
        if not result_file.exists():
            tail = "\n".join(proc.stderr.splitlines()[-10:])
            raise RuntimeError(f"the litert-torch process exited with code {proc.returncode}:\n{tail}")
        result = json.loads(result_file.read_text())
        if "error" in result:
            raise RuntimeError(f"litert-torch: {result['error']}")
        return (folder / "model.tflite").read_bytes()
