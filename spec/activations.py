"""Every activation the spec can name: its formula, and the op that computes it in each framework.

The one home of the formulas. The spec model takes its activation names from here, the generators
render each framework's op from here, and the ONNX canonicalisation names an exported elementwise
chain by comparing its values with `reference` on a probe grid. Every op is the framework's native one;
tests/test_generate.py holds each to `reference`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


@dataclass(frozen=True)
class Activation:
    formula: str  # for people (docstrings) and the spec's `hard_sigmoid` field
    reference: Callable[[np.ndarray], np.ndarray]  # the formula in float64 numpy
    torch: str  # a module expression: the generated PyTorch code holds activations as submodules
    keras: str  # a layer factory expression, called with `name=...`; "" for none
    flax: str  # a function of a jax.Array


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("max(x, 0)", lambda x: np.maximum(x, 0.0), "nn.ReLU(inplace=True)", "layers.ReLU",
                       "jax.nn.relu"),
    "relu6": Activation("min(max(x, 0), 6)", lambda x: np.clip(x, 0.0, 6.0), "nn.ReLU6(inplace=True)",
                        "functools.partial(layers.ReLU, 6.0)", "jax.nn.relu6"),
    "hard_swish": Activation("x * relu6(x + 3) / 6", lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
                             "nn.Hardswish(inplace=True)", 'functools.partial(layers.Activation, "hard_swish")',
                             "jax.nn.hard_swish"),
    # exact (erf), as torch.nn.GELU and keras' default; jax.nn.gelu defaults to the tanh approximation
    "gelu": Activation("x * (1 + erf(x / sqrt(2))) / 2", lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
                       "nn.GELU()", 'functools.partial(layers.Activation, "gelu")',
                       "functools.partial(jax.nn.gelu, approximate=False)"),
    # the tanh approximation (MobileNetV5, timm's `nn.GELU(approximate="tanh")`): up to 5e-4 from the exact
    # one, so a network trained with one is a different function under the other
    "gelu_tanh": Activation("x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))) / 2",
                            lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
                            'nn.GELU(approximate="tanh")',
                            "functools.partial(layers.Activation, functools.partial(keras.activations.gelu, "
                            "approximate=True))",
                            "functools.partial(jax.nn.gelu, approximate=True)"),
    "identity": Activation("x", lambda x: x, "nn.Identity()", "", "lambda x: x"),
    # The squeeze-excite gate. Not the old Keras 2 / ONNX default 0.2 * x + 0.5: flavors pin this formula.
    "hard_sigmoid": Activation("relu6(x+3)/6", lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0, "nn.Hardsigmoid()",
                               'functools.partial(layers.Activation, "hard_sigmoid")', "jax.nn.hard_sigmoid"),
}

# What may follow a layer in the spec's tables (hard_sigmoid is only the squeeze-excite gate).
LAYER_ACTIVATIONS = tuple(name for name in ACTIVATIONS if name != "hard_sigmoid")
HARD_SIGMOID_FORMULA = ACTIVATIONS["hard_sigmoid"].formula
