"""What is timed against what. Importing this imports no framework (a worker's `factories` imports the
generated modules of its own framework).

A pair is a reference model (conformance/porting/references.py: library, builder, and the spec variant
and flavor that reproduce it) and the generated module that holds that variant. Adding a pair is one
row. A framework times the pairs whose references run in it, or in the framework it is set against
(generators/frameworks.py: `bench_against`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from conformance.porting.references import REFERENCES, Reference
from generators.frameworks import FRAMEWORKS


@dataclass(frozen=True)
class Pair:
    reference: Reference
    family: str  # the generated module: generated.<package>.<family>

    @property
    def variant(self) -> str:  # also the generated factory's name
        return self.reference.variant

    @property
    def flavor(self) -> str:
        return self.reference.flavor

    @property
    def label(self) -> str:
        return f"{self.reference.name} vs {self.variant} ({self.flavor})"

    def module(self, framework: str) -> str:
        return f"{FRAMEWORKS[framework].module_prefix}.{self.family}"


def _pair(name: str, family: str) -> Pair:
    """The pair of the porting table's reference `name` ("library:builder")."""
    return Pair(REFERENCES[name], family)


# PyTorch: generated vs torchvision / timm, in one process. Flax times the same variants and flavors
# (jitted) against these references' PyTorch times.
TORCH_PAIRS = (
    _pair("timm:mobilenetv1_100", "mobilenet_v1"),
    _pair("torchvision:mobilenet_v2", "mobilenet_v2"),
    _pair("torchvision:mobilenet_v3_large", "mobilenet_v3"),
    _pair("torchvision:mobilenet_v3_small", "mobilenet_v3"),
    _pair("timm:mobilenetv4_conv_small", "mobilenet_v4"),
    _pair("timm:mobilenetv4_conv_medium", "mobilenet_v4"),
    _pair("timm:mobilenetv4_hybrid_medium", "mobilenet_v4"),
)

# Keras (TensorFlow backend): generated vs keras.applications, built as conformance/porting/keras_refs.py
# builds them: logits (classifier_activation=None) and, for V3, include_preprocessing=False, because
# the generated models take normalised input and have no Rescaling layer.
KERAS_PAIRS = (
    _pair("keras-applications:MobileNet_100", "mobilenet_v1"),
    _pair("keras-applications:MobileNetV2_100", "mobilenet_v2"),
    _pair("keras-applications:MobileNetV3Large_100", "mobilenet_v3"),
    _pair("keras-applications:MobileNetV3Small_100", "mobilenet_v3"),
)

PAIRS = {key: tuple(p for p in TORCH_PAIRS + KERAS_PAIRS if p.reference.framework == (f.bench_against or key))
         for key, f in FRAMEWORKS.items()}


def factories(framework: str, names: list[str]) -> tuple[list[tuple[Pair, Callable]], list[dict]]:
    """In a worker: the pairs named (by reference) with their generated factories, and the pairs skipped
    because the generated module has no such factory."""
    chosen = {p.reference.name: p for p in PAIRS[framework]}
    found, skipped = [], []
    for name in names:
        pair = chosen[name]
        factory = getattr(importlib.import_module(pair.module(framework)), pair.variant, None)
        if factory is None:
            skipped.append({"pair": pair.label, "why": f"{pair.module(framework)} has no {pair.variant}"})
        else:
            found.append((pair, factory))
    return found, skipped

