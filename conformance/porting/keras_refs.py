"""keras.applications references: build them (weights=None: nothing downloaded), list their layers, and
move weights between them and the neutral form. Runs in a Keras process.

Built without the softmax (classifier_activation=None: logits) and, for V3, without the built-in
Rescaling layer (include_preprocessing=False): the generated models take already-normalised input,
so a keras.applications V3 user feeds `x / 127.5 - 1` where they fed raw pixels before.
"""

from __future__ import annotations

import numpy as np

from conformance.frameworks.keras_layout import BN_NAMES, kernel_from_neutral, kernel_to_neutral
from conformance.porting.pairing import ReferenceLayer, from_neutral, to_neutral
from conformance.porting.references import Reference
from spec.resolve import Description


def build(ref: Reference, input_shape=(224, 224, 3)):
    import keras

    keras.utils.set_random_seed(0)  # the random initialisation is the same in every run
    kwargs = dict(ref.kwargs)
    if ref.builder.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = False
    constructor = getattr(keras.applications, ref.builder)
    return constructor(input_shape=input_shape, weights=None, classifier_activation=None, **kwargs)


def kind(layer) -> str | None:
    """The pairing kind of a Keras layer with weights ("batch_norm", "depthwise_conv", "conv", "linear"), else
    None. Also the kind of op that computes it: a head stored as a 1x1 Conv2D is a "conv" here, whatever the
    spec calls it, because TensorFlow may give a 1x1 convolution and a Dense layer different kernels."""
    from keras import layers as kl

    if isinstance(layer, kl.BatchNormalization):
        return "batch_norm"
    if isinstance(layer, kl.DepthwiseConv2D):
        return "depthwise_conv"
    if isinstance(layer, kl.Conv2D):
        return "conv"
    if isinstance(layer, kl.Dense):
        return "linear"
    return None


def layers(model) -> list[ReferenceLayer]:
    out = []
    for layer in model.layers:
        kind_ = kind(layer)
        if kind_ is None:
            continue
        values = {w.name: np.asarray(w.numpy()) for w in layer.weights}
        if kind_ == "batch_norm":
            out.append(ReferenceLayer(layer.name, kind_, {BN_NAMES[k]: v for k, v in values.items()}))
        else:
            tensors = {"weight": kernel_to_neutral(layer, values["kernel"])}
            if "bias" in values:
                tensors["bias"] = values["bias"]
            out.append(ReferenceLayer(layer.name, kind_, tensors))
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
                value = filled.tensors[BN_NAMES[variable.name]]
            elif variable.name == "bias":
                value = filled.tensors["bias"]
            elif isinstance(layer, kl.Conv2D) and not isinstance(layer, kl.DepthwiseConv2D):
                # a head stored as a linear layer fills a 1x1 conv: give the weight its (out, in, 1, 1) shape
                weight = filled.tensors["weight"].reshape(variable.shape[3], variable.shape[2], *variable.shape[:2])
                value = kernel_from_neutral(layer, weight)
            else:
                value = kernel_from_neutral(layer, filled.tensors["weight"])
            variable.assign(value.astype(np.float32))
