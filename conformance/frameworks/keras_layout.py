"""Keras weight layouts <-> the neutral layout (PyTorch's), for the generated Keras models
(keras_adapter.py) and keras.applications (conformance/porting/keras_refs.py) alike.

Conv2D kernel (kh, kw, in, out) (a linear layer of the spec stored as a 1x1 Conv2D: (1, 1, in, out) from
neutral (out, in)), DepthwiseConv2D kernel (kh, kw, C, 1), Dense kernel (in, out),
BatchNormalization gamma / beta / moving_mean / moving_variance; RMSNormalization scale; biases and a
LayerScale's gamma as they are.
"""

from __future__ import annotations

import numpy as np

# Keras BatchNormalization variable name -> neutral tensor name.
BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def kernel_to_neutral(layer, value: np.ndarray) -> np.ndarray:
    from keras import layers

    if isinstance(layer, layers.DepthwiseConv2D):
        return value.transpose(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
    if isinstance(layer, layers.Conv2D):
        return value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    if isinstance(layer, layers.Dense):
        return value.T  # (in, out) -> (out, in)
    raise KeyError(type(layer).__name__)


def kernel_from_neutral(layer, value: np.ndarray) -> np.ndarray:
    from keras import layers

    if isinstance(layer, layers.DepthwiseConv2D):
        return value.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D):
        if value.ndim == 2:  # a linear layer of the spec computed as a 1x1 convolution (fc_layout: conv1x1)
            value = value[:, :, None, None]
        return value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    return value.T


def conv1x1_to_linear(value: np.ndarray) -> np.ndarray:
    """A 1x1 convolution's neutral weight (out, in, 1, 1) as the linear layer it computes: (out, in)."""
    if value.shape[2:] != (1, 1):
        raise ValueError(f"not a 1x1 convolution: weight {value.shape}")
    return value.reshape(value.shape[:2])


def to_neutral(layer, variable_name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """(neutral tensor name, value in the neutral layout) of one variable of `layer`; KeyError if none."""
    from keras import layers

    if isinstance(layer, layers.BatchNormalization):
        return BN_NAMES[variable_name], value
    if isinstance(layer, layers.RMSNormalization):
        return "weight", value  # its scale
    if variable_name in ("bias", "gamma"):  # gamma: the per-channel LayerScale
        return variable_name, value
    return "weight", kernel_to_neutral(layer, value)


def from_neutral(layer, variable_name: str, value: np.ndarray) -> np.ndarray:
    from keras import layers

    if isinstance(layer, (layers.BatchNormalization, layers.RMSNormalization)) or variable_name in ("bias", "gamma"):
        return value
    return kernel_from_neutral(layer, value)
