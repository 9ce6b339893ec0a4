"""One adapter per framework: build a generated model, move neutral weights in and out, run it.

Which module serves which run, and with which Keras backend, is read from generators/frameworks.py.
Each adapter imports its framework only when used, and each runs in its own worker process
(conformance/worker.py, conformance/porting/worker.py): TensorFlow and torchvision must never share an
interpreter.
"""

from __future__ import annotations

import importlib
import os

from conformance.frameworks.protocol import FrameworkAdapter
from generators.frameworks import run


def set_up_process(key: str, dtype: str = "float32", onnx_export: bool = False) -> None:
    """Before the run's framework is imported: KERAS_BACKEND for a Keras run, in this process only; for a
    float64 run on JAX, 64-bit arrays (JAX makes every array 32-bit unless told at import); for a process
    that exports ONNX from TensorFlow, the pure-Python protobuf.

    Why: tf2onnx 1.17 rewrites every node's attributes after each of its optimizer passes (about 36), and
    under protobuf's default upb backend a message keeps what it drops until it is freed, so each pass keeps
    another copy of every weight: the export of MobileNetV5 Base (83 M params, 330 MB) peaked at 12.5 GB,
    with pure-Python protobuf at 6.4 GB (and 2.2x faster); the 300M encoder needs 20 GB even so. Small
    models export up to 2x slower this way (MobileNetV3-Large: 7.8 s instead of 3.7 s)."""
    backend = run(key).keras_backend
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    if dtype == "float64" and run(key).library == "jax":
        os.environ["JAX_ENABLE_X64"] = "1"
    if onnx_export and run(key).library == "tensorflow":
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"


def adapter(key: str) -> FrameworkAdapter:
    """The adapter of the run `key` (generators.frameworks.RUNS), in a process set up for it."""
    run_ = run(key)
    instance = importlib.import_module(run_.framework.adapter).Adapter()
    if instance.run_key != key:
        raise RuntimeError(f"the {run_.framework.adapter} adapter serves {instance.run_key!r}, not {key!r} "
                           "(call set_up_process before the framework is imported)")
    return instance
