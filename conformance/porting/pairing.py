"""Pair a reference implementation's layers with the spec's canonical layers, and convert tensors.

A reference (torchvision, timm, keras.applications) lists its layers with weights in the order it runs
them; the spec's description lists the canonical layers in the same order. They are paired one to one,
and each pair is checked: the kinds must agree (a 1x1 convolution may stand for a linear layer where the
reference stores its head as `conv1x1`) and every converted tensor must have the canonical shape. Any
mismatch is an error naming both layers and both shapes, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from conformance.weights import WeightError, check_tensors, expected_tensors
from spec.resolve import Description

# Reference layer kinds: conv, depthwise_conv, batch_norm, rms_norm, linear, layer_scale.
COMPATIBLE = {
    "layer_scale": {"layer_scale"},
    "rms_norm": {"rms_norm"},
    "conv": {"conv"},
    "depthwise_conv": {"depthwise_conv"},
    "batch_norm": {"batch_norm"},
    "linear": {"linear", "conv"},  # a head stored as a 1x1 convolution (fc_layout: conv1x1)
}


@dataclass
class ReferenceLayer:
    """One layer of a reference model, its tensors already in the neutral layout (PyTorch's)."""

    name: str  # the reference's own name (state-dict prefix or Keras layer name)
    kind: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # neutral tensor name (weight, bias, ...) -> array


def canonical_layers(desc: Description):
    return [layer for layer in desc.layers if layer.params or layer.state]  # the layers with weights


def pair(desc: Description, reference: list[ReferenceLayer], source: str) -> list[tuple[str, ReferenceLayer]]:
    """(canonical layer name, reference layer) in order; WeightError on any disagreement."""
    ours = canonical_layers(desc)
    if len(ours) != len(reference):
        raise WeightError(
            f"{source}: {len(reference)} layers with weights, the spec's {desc.variant} ({desc.flavor} flavor) has "
            f"{len(ours)}; is it another variant or flavor? {_first_difference(ours, reference)}")
    pairs = []
    for layer, ref in zip(ours, reference):
        if ref.kind not in COMPATIBLE[layer.kind]:
            raise WeightError(f"{source}: layer {ref.name} is a {ref.kind}, the spec's {layer.name} a {layer.kind}")
        pairs.append((layer.name, ref))
    return pairs


def _first_difference(ours, reference) -> str:
    for i, (layer, ref) in enumerate(zip(ours, reference)):
        if ref.kind not in COMPATIBLE[layer.kind]:
            return f"First difference at layer {i}: {ref.name} ({ref.kind}) vs {layer.name} ({layer.kind})."
    return ""


def to_neutral(desc: Description, reference: list[ReferenceLayer], source: str) -> dict[str, np.ndarray]:
    """The reference's tensors under canonical names, checked against the spec (names, shapes, values)."""
    tensors: dict[str, np.ndarray] = {}
    expected = expected_tensors(desc)
    for name, ref in pair(desc, reference, source):
        for tensor, value in ref.tensors.items():
            key = f"{name}.{tensor}"
            if key in expected and value.ndim == 4 and len(expected[key]) == 2:
                value = value.reshape(value.shape[:2])  # 1x1 conv head -> linear (out, in)
            if key in expected and tuple(value.shape) != expected[key]:
                raise WeightError(f"{source}: {ref.name}.{tensor} has shape {tuple(value.shape)}; the spec's {key} "
                                  f"is {expected[key]}")
            tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    check_tensors(tensors, expected, source)
    return tensors


def from_neutral(desc: Description, reference: list[ReferenceLayer], tensors: dict[str, np.ndarray],
                 target: str) -> list[ReferenceLayer]:
    """The reference's layers filled with the neutral tensors (in the neutral layout, reshaped to the
    reference's own shapes where it stores a linear layer as a 1x1 convolution)."""
    check_tensors(tensors, expected_tensors(desc), "neutral weights")
    filled = []
    for name, ref in pair(desc, reference, target):
        values = {}
        for tensor, own in ref.tensors.items():
            value = tensors[f"{name}.{tensor}"]
            values[tensor] = value.reshape(own.shape) if value.size == own.size else value
        filled.append(ReferenceLayer(ref.name, ref.kind, values))
    return filled
