"""One adapter per framework: build a generated model, move neutral weights in and out, run it.

Each adapter imports its framework only when used, and each runs in its own worker process
(conformance/worker.py): TensorFlow and torchvision must never share an interpreter.
"""

from __future__ import annotations

import importlib

# name -> (module, KERAS_BACKEND or None). "keras" is Keras 3 on TensorFlow.
FRAMEWORKS = {
    "torch": ("conformance.frameworks.torch_adapter", None),
    "keras": ("conformance.frameworks.keras_adapter", "tensorflow"),
    "keras-jax": ("conformance.frameworks.keras_adapter", "jax"),
    "keras-torch": ("conformance.frameworks.keras_adapter", "torch"),
    "flax": ("conformance.frameworks.flax_adapter", None),
}


def adapter(name: str):
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown framework {name!r}; expected one of {', '.join(FRAMEWORKS)}")
    return importlib.import_module(FRAMEWORKS[name][0]).Adapter()
