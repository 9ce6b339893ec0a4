"""Keras 3: generated/keras3, on whichever backend KERAS_BACKEND names (set by the worker).

Layouts (conformance/frameworks/keras_layout.py): Conv2D kernel (kh, kw, in, out), DepthwiseConv2D kernel
(kh, kw, C, 1), Dense kernel (in, out), BatchNormalization gamma / beta / moving_mean / moving_variance; a
linear layer of the spec computed as a 1x1 Conv2D (fc_layout: conv1x1) has kernel (1, 1, in, out).
Layer names are canonical names with "-" for "." (Keras on the PyTorch backend makes layer names part of
torch parameter names, which cannot contain ".").
"""

from __future__ import annotations

import numpy as np

from conformance.frameworks import keras_layout
from conformance.frameworks.protocol import MacCount
from conformance.weights import WeightError
from generators.location import family_module

# The spec's linear layers (spec/resolve.py: the layers after pooling) by Keras layer name. Where the flavor's
# fc_layout is conv1x1 the generated model computes them as 1x1 Conv2D layers; their neutral weight is
# (out, in) all the same.
LINEAR_LAYERS = frozenset({"fc", "fc-linear", "classifier"})


class Adapter:
    device = "cpu"  # on a GPU run Keras uses the GPU its backend sees

    def __init__(self):
        import keras

        self.keras = keras
        self.run_key = "keras" if keras.backend.backend() == "tensorflow" else f"keras-{keras.backend.backend()}"
        # (model, its block model), for the latest model only, matched by identity: a cache keyed by id()
        # once handed a freed MobileNetV3's block model to a MobileNetV4 that reused its id.
        self._block_model: tuple[object, object] | None = None
        self._modules: dict[str, object] = {}  # variant (the name of its model) -> its generated module

    def build(self, family: str, variant: str, flavor: str, num_classes: int, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False):
        if dtype != "float32":
            raise ValueError("the Keras adapter runs float32 only; the float64 reference is PyTorch")
        module = self._modules[variant] = family_module("keras", family)
        return module.VARIANTS[variant](num_classes=num_classes, flavor=flavor, input_shape=(*resolution, 3))

    def _to_neutral(self, layer, variable_name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
        try:
            neutral, value = keras_layout.to_neutral(layer, variable_name, value)
        except KeyError:
            raise WeightError(f"{layer.name}: no neutral layout for {type(layer).__name__}.{variable_name}") from None
        if layer.name in LINEAR_LAYERS and value.ndim == 4:  # a 1x1 Conv2D head (fc_layout: conv1x1)
            value = keras_layout.conv1x1_to_linear(value)
        return neutral, value

    def _from_neutral(self, layer, variable_name: str, value: np.ndarray) -> np.ndarray:
        return keras_layout.from_neutral(layer, variable_name, value)

    def _variables(self, model):
        """(canonical tensor name, layer, keras variable) for every weight of the model."""
        for layer in model.layers:
            for variable in layer.weights:
                neutral, _ = self._to_neutral(layer, variable.name, np.broadcast_to(np.float32(0), variable.shape))
                yield f"{layer.name.replace('-', '.')}.{neutral}", layer, variable

    def tensors(self, model) -> dict[str, np.ndarray]:
        return {name: self._to_neutral(layer, var.name, np.asarray(self.keras.ops.convert_to_numpy(var.value)))[1]
                for name, layer, var in self._variables(model)}

    def shapes(self, model) -> dict[str, tuple[int, ...]]:
        return {name: self._to_neutral(layer, var.name, np.broadcast_to(np.float32(0), var.shape))[1].shape
                for name, layer, var in self._variables(model)}

    def trainable(self, model) -> dict[str, int]:
        return {name: int(np.prod(var.shape)) for name, _, var in self._variables(model) if var.trainable}

    def load(self, model, tensors: dict[str, np.ndarray]) -> None:
        for name, layer, variable in self._variables(model):
            value = self._from_neutral(layer, variable.name, np.asarray(tensors[name], dtype=np.float32))
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightError(f"{name}: shape {value.shape} in Keras layout, the layer has {tuple(variable.shape)}")
            variable.assign(value)

    def forward_blocks(self, model, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
        if self._block_model is None or self._block_model[0] is not model:  # once per model: compiled once
            module = self._modules[model.name]
            self._block_model = (model, module.forward_intermediates(model))
        outputs = self._block_model[1].predict_on_batch(images_nchw.transpose(0, 2, 3, 1))
        return {name: _to_nchw(np.asarray(value)) for name, value in outputs.items()}

    def logits(self, model, images_nchw: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(images_nchw.transpose(0, 2, 3, 1)))

    def logits_at(self, model, desc, resolution: tuple[int, int], batch: int) -> np.ndarray:
        """A functional model has a static input shape: build one for this resolution."""
        other = self.build(desc.family, desc.variant, desc.flavor, desc.num_classes, resolution)
        return self.logits(other, np.zeros((batch, 3, *resolution), np.float32))

    def count_macs(self, model, resolution: tuple[int, int]) -> MacCount:
        """MACs from Keras' own layer objects: each Conv2D / DepthwiseConv2D / Dense layer's kernel size
        times the number of output positions Keras computed for it (its symbolic output shape)."""
        layers = self.keras.layers
        macs = 0
        for layer in model.layers:
            if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
                # kernel: kh * kw * in * out (conv), kh * kw * C * 1 (depthwise), in * out (dense)
                positions = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) > 2 else 1
                macs += positions * int(np.prod(layer.kernel.shape))
            elif type(layer).__name__ == "MultiQueryAttention":
                # two matrix products per query head: L x dk by dk x S, then L x S by S x dv
                query, key, value = (tensor.shape for tensor in layer.input)
                heads, queries, keys = layer.heads, int(np.prod(query[1:3])), int(np.prod(key[1:3]))
                macs += heads * queries * keys * (key[-1] + value[-1])
        return MacCount("Keras layer kernels x output positions (+ attention products from layer shapes)", macs)


def _to_nchw(value: np.ndarray) -> np.ndarray:
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
