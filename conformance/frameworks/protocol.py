"""What every framework adapter does: the contract between a worker process and one framework.

An adapter builds a generated model, moves neutral weights (conformance/weights.py: canonical names,
PyTorch layout) in and out of it, runs it, and counts its MACs with the framework's own tools. It keeps
its own bookkeeping (layer names, layouts, compiled functions): the generated files carry no hooks for it.
Which adapter serves which framework is written once, in generators/frameworks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class MacCount:
    """A framework's own MAC count of one forward pass of one image."""

    counter: str  # what counted, for the report
    macs: int
    # Kernel taps that fall into a convolution's own zero padding and that the counter skips (XLA): the
    # check compares with the spec's MACs minus these.
    padding_taps: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FrameworkAdapter(Protocol):
    run_key: str  # the run it serves: generators.frameworks.RUNS
    device: str  # "cpu", or "cuda" / "gpu" where the worker places models itself

    def build(self, family: str, variant: str, flavor: str, num_classes: int, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False) -> Any:
        """A generated model in eval mode; `abstract`: weights will be loaded, skip a costly random init."""

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
