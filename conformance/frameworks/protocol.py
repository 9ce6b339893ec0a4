"""What every framework adapter does: the contract between a worker process and one framework.

An adapter builds a generated model, moves neutral weights (conformance/weights.py: canonical names,
PyTorch layout) in and out of it, runs it, and counts its MACs with the framework's own tools. It keeps
its own bookkeeping (layer names, layouts, compiled functions): the generated files carry no hooks for it.
Which adapter serves which framework is written once, in generators/frameworks.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class MacCount:
    """A framework's own MAC count of one forward pass of one image."""

    counter: str  # what counted, for the report
    macs: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer, in PyTorch's conventions; each adapter builds its framework's own (torch.optim,
    keras.optimizers, optax through nnx.Optimizer) and converts where that framework's differ."""

    name: str  # "sgd" or "adamw"
    learning_rate: float
    momentum: float = 0.0  # sgd: buf = momentum * buf + g; p -= lr * buf (no dampening, not Nesterov)
    beta1: float = 0.9  # adamw
    beta2: float = 0.999
    epsilon: float = 1e-8  # added to sqrt(v) after the bias correction, as torch.optim.AdamW and optax
    weight_decay: float = 0.0  # adamw: decoupled, p -= lr * weight_decay * p

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainStep:
    """One training-mode forward and backward pass (no optimizer step)."""

    blocks: dict[str, np.ndarray]  # every block's output with batch statistics, NCHW or (batch, C)
    loss: float  # mean softmax cross-entropy on the labels
    gradients: dict[str, np.ndarray]  # of every trainable tensor, by canonical name, in the neutral layout


def classifier_options(num_classes: int | None, dropout: float | None) -> dict:
    """A generated factory's classifier arguments: none for an encoder (num_classes None), which has no
    classifier and no dropout; `dropout` only when given (None: the flavor's rate)."""
    if num_classes is None:
        return {}
    return {"num_classes": num_classes, **({} if dropout is None else {"dropout": dropout})}


def to_nchw(value: np.ndarray) -> np.ndarray:
    """A channels-last (NHWC) feature map in the neutral layout, NCHW; (batch, features) as it is."""
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value


@runtime_checkable
class FrameworkAdapter(Protocol):
    run_key: str  # the run it serves: generators.frameworks.RUNS
    device: str  # "cpu", or "cuda" / "gpu" where the worker places models itself

    def build(self, family: str, variant: str, flavor: str, num_classes: int | None, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False, dropout: float | None = None) -> Any:
        """A generated model in eval mode; `abstract`: weights will be loaded, skip a costly random init;
        `dropout`: the rate before the classifier (None: the flavor's). num_classes None: an encoder."""

    def shapes(self, model: Any) -> dict[str, tuple[int, ...]]:
        """Every tensor (parameters and BatchNorm state) by canonical name, in the neutral layout."""

    def trainable(self, model: Any) -> dict[str, int]:
        """Element count of every trainable tensor by canonical name."""

    def tensors(self, model: Any) -> dict[str, np.ndarray]:
        """Every tensor by canonical name, in the neutral layout."""

    def load(self, model: Any, tensors: dict[str, np.ndarray]) -> None:
        """Assign neutral tensors; a shape mismatch raises conformance.weights.WeightError."""

    def forward_blocks(self, model: Any, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
        """Every block's output by canonical block name, in order, as NCHW (or (batch, C)) arrays."""

    def logits(self, model: Any, images_nchw: np.ndarray) -> np.ndarray:
        """(batch, classes)."""

    def logits_at(self, model: Any, desc: Any, resolution: tuple[int, int], batch: int) -> np.ndarray:
        """Logits of zeros at another resolution (a functional Keras model is rebuilt for it)."""

    def count_macs(self, model: Any, resolution: tuple[int, int]) -> MacCount:
        """MACs of one image at `resolution`, counted by the framework's own means."""

    def train_step(self, model: Any, images_nchw: np.ndarray, labels: np.ndarray) -> TrainStep:
        """One training-mode forward (batch statistics; the running statistics updated once) and the
        gradients of the mean softmax cross-entropy on `labels`. Leaves the model in eval mode."""

    def fit(self, model: Any, images_nchw: np.ndarray, labels: np.ndarray, optimizer: OptimizerConfig,
            steps: int) -> Iterator[dict[str, np.ndarray]]:
        """`steps` training steps on the one batch with the framework's own optimizer, yielding after each
        every trainable tensor by canonical name in the neutral layout (one step at a time: a caller keeps
        what it needs). Leaves the model in eval mode once the last is taken."""

    def train_outputs(self, model: Any, images_nchw: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Every block's output in training mode with dropout active, its masks drawn from `seed`.
        Leaves the model in eval mode."""
