"""What is timed against what. Importing this imports no framework (a worker's `factories` imports the
generated modules of its own framework).

A pair is a reference model (conformance/porting/references.py: library, builder, and the spec variant
and flavor that reproduce it) and the generated module that holds that variant. Adding a pair is one
row. MobileNetV4 rows are listed already: a pair whose generated module does not exist yet is skipped
(found with importlib, nothing imported), so they run as soon as the generated code lands.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from conformance.porting.references import REFERENCES, Reference

PACKAGES = {"torch": "pytorch", "keras": "keras3", "flax": "flax_nnx"}


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
        return f"generated.{PACKAGES[framework]}.{self.family}"

    def generated_exists(self, framework: str) -> bool:
        return importlib.util.find_spec(self.module(framework)) is not None


def _pair(name: str, family: str, variant: str | None = None, flavor: str | None = None) -> Pair:
    """A pair for the reference `name` ("library:builder"): the porting table's entry where it has one,
    else (a reference the porting table does not list yet) one built from `variant` and `flavor`."""
    if name in REFERENCES:
        return Pair(REFERENCES[name], family)
    library, builder = name.split(":")
    return Pair(Reference(name, library, variant, flavor, builder), family)


# PyTorch: generated vs torchvision / timm, in one process. Flax times the same variants and flavors
# (jitted) against these references' PyTorch times.
TORCH_PAIRS = (
    _pair("timm:mobilenetv1_100", "mobilenet_v1"),
    _pair("torchvision:mobilenet_v2", "mobilenet_v2"),
    _pair("torchvision:mobilenet_v3_large", "mobilenet_v3"),
    _pair("torchvision:mobilenet_v3_small", "mobilenet_v3"),
    _pair("timm:mobilenetv4_conv_small", "mobilenet_v4", "mobilenet_v4_conv_small", "timm"),
    _pair("timm:mobilenetv4_conv_medium", "mobilenet_v4", "mobilenet_v4_conv_medium", "timm"),
    _pair("timm:mobilenetv4_hybrid_medium", "mobilenet_v4", "mobilenet_v4_hybrid_medium", "timm"),
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

PAIRS = {"torch": TORCH_PAIRS, "keras": KERAS_PAIRS, "flax": TORCH_PAIRS}


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


def pairs(framework: str) -> tuple[list[Pair], list[Pair]]:
    """(pairs to run, pairs skipped because their generated module does not exist) for `framework`."""
    run, skipped = [], []
    for pair in PAIRS[framework]:
        (run if pair.generated_exists(framework) else skipped).append(pair)
    return run, skipped
