"""keras.applications references: build them (weights=None: nothing downloaded), list their layers, and
move weights between them and the neutral form. Runs in a Keras process.

Built without the softmax (classifier_activation=None: logits) and, for V3, without the built-in
Rescaling layer (include_preprocessing=False): the generated models take already-normalised input,
so a keras.applications V3 user feeds `x / 127.5 - 1` where they fed raw pixels before.
"""

from __future__ import annotations

import numpy as np

from conformance.porting.pairing import ReferenceLayer, from_neutral, to_neutral
from conformance.porting.references import Reference
from spec.resolve import Description

BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def build(ref: Reference, input_shape=(224, 224, 3)):
    import keras

    keras.utils.set_random_seed(0)  # the random initialisation is the same in every run
    kwargs = dict(ref.kwargs)
    if ref.builder.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = False
    constructor = getattr(keras.applications, ref.builder)
    return constructor(input_shape=input_shape, weights=None, classifier_activation=None, **kwargs)


def layers(model) -> list[ReferenceLayer]:
    from keras import layers as kl

    out = []
    for layer in model.layers:
        values = {w.name: np.asarray(w.numpy()) for w in layer.weights}
        if isinstance(layer, kl.DepthwiseConv2D):
            out.append(ReferenceLayer(layer.name, "depthwise_conv", {"weight": values["kernel"].transpose(2, 3, 0, 1)}))
        elif isinstance(layer, kl.Conv2D):
            tensors = {"weight": values["kernel"].transpose(3, 2, 0, 1)}
            if "bias" in values:
                tensors["bias"] = values["bias"]
            out.append(ReferenceLayer(layer.name, "conv", tensors))
        elif isinstance(layer, kl.BatchNormalization):
            out.append(ReferenceLayer(layer.name, "batch_norm", {BN[k]: v for k, v in values.items()}))
        elif isinstance(layer, kl.Dense):
            out.append(ReferenceLayer(layer.name, "linear", {"weight": values["kernel"].T, "bias": values["bias"]}))
    return out


def import_model(ref: Reference, desc: Description, model) -> dict[str, np.ndarray]:
    return to_neutral(desc, layers(model), ref.name)


def export_into(ref: Reference, desc: Description, model, tensors: dict[str, np.ndarray]) -> None:
    """Neutral tensors -> the keras.applications model's own variables (then save_weights as usual)."""
    from keras import layers as kl

    by_name = {layer.name: layer for layer in model.layers}
    for filled in from_neutral(desc, layers(model), tensors, ref.name):
        layer = by_name[filled.name]
        for variable in layer.weights:
            if isinstance(layer, kl.BatchNormalization):
                value = filled.tensors[BN[variable.name]]
            elif variable.name == "bias":
                value = filled.tensors["bias"]
            elif isinstance(layer, kl.DepthwiseConv2D):
                value = filled.tensors["weight"].transpose(2, 3, 0, 1)
            elif isinstance(layer, kl.Conv2D):
                value = filled.tensors["weight"].reshape(variable.shape[3], variable.shape[2], *variable.shape[:2])
                value = value.transpose(2, 3, 1, 0)
            else:
                value = filled.tensors["weight"].T
            variable.assign(value.astype(np.float32))
