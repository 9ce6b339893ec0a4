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


def set_up_process(key: str, dtype: str = "float32") -> None:
    """Before the run's framework is imported: KERAS_BACKEND for a Keras run, in this process only; for a
    float64 run on JAX, 64-bit arrays (JAX makes every array 32-bit unless told at import)."""
    backend = run(key).keras_backend
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    if dtype == "float64" and run(key).library == "jax":
        os.environ["JAX_ENABLE_X64"] = "1"


def adapter(key: str) -> FrameworkAdapter:
    """The adapter of the run `key` (generators.frameworks.RUNS), in a process set up for it."""
    run_ = run(key)
    instance = importlib.import_module(run_.framework.adapter).Adapter()
    if instance.run_key != key:
        raise RuntimeError(f"the {run_.framework.adapter} adapter serves {instance.run_key!r}, not {key!r} "
                           "(call set_up_process before the framework is imported)")
    return instance
