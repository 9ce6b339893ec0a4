"""The one list of frameworks: what is generated for each, and how each one is run and checked.

A *framework* is a target of the generators (one template folder, one package under generated/, one
adapter). A *run* is a framework on one compute library: Keras 3 runs on TensorFlow, JAX and PyTorch.
Every other module (generators, conformance runner and workers, ONNX export, porting, the CLI, bench)
reads these tables; none keeps a list of its own. Adding a framework is one entry here, one template
folder generators/templates/<key>/ and one adapter module (README: "Add a framework").

Nothing here imports a framework: the entries are names, imported by the worker process that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Framework:
    key: str  # the one vocabulary: CLI flags, template folder, report columns, weight format name
    title: str  # for people: headers, reports
    package: str  # generated/<package>/<family>.py
    layout: str  # image layout of the generated models: "NCHW" or "NHWC"
    onnx_exporter: str  # what `mnforge onnx` uses for this framework
    weights_suffix: str  # the framework's own weight file (port --to KEY:PATH; the format is named KEY)
    adapter: str  # module with the conformance adapter (conformance/frameworks/protocol.py)
    # bench/: the framework whose reference models this one's benchmark is set against (timed in that
    # framework's process just before); None: its own references, in its own process.
    bench_against: str | None = None

    @property
    def channels_last(self) -> bool:
        return self.layout == "NHWC"

    @property
    def module_prefix(self) -> str:
        """Import path of the generated package: `generated.pytorch`."""
        return f"generated.{self.package}"


@dataclass(frozen=True)
class Run:
    key: str  # "keras-jax": the framework's key, then the backend where it is not the framework's own
    framework: Framework
    library: str  # the library that computes: "torch", "tensorflow" or "jax" (GPU setup, import rules)
    keras_backend: str | None = None  # KERAS_BACKEND for this run's worker process
    color: str = "#555555"  # its line in report.html's error plots
    # Seconds of `conform --all` on 2 cores: workers start most costly first, so that the last to start
    # is a short one.
    start_cost: float = 0.0
    # Computes float64 throughout when asked (training parity compares gradients in float64). Keras on JAX
    # and on PyTorch does not: its BatchNormalization computes in backend.result_type(dtype, "float32"),
    # which is float32 there for float64 inputs (Keras 3.15; 2.5e-7 off in eval mode).
    float64: bool = True

    @property
    def native(self) -> bool:
        """The framework on its own library: the run that `port`, `run` and `onnx` use and whose ONNX
        export the conformance checks (Keras exports through tf2onnx, from TensorFlow)."""
        return self.key == self.framework.key

    @property
    def title(self) -> str:
        return f"{self.framework.title} on {self.library}" if self.keras_backend else self.framework.title


TORCH = Framework("torch", "PyTorch", "pytorch", "NCHW", "torch.onnx.export (dynamo)", ".pt",
                  "conformance.frameworks.torch_adapter")
KERAS = Framework("keras", "Keras 3", "keras3", "NHWC", "tf2onnx (TensorFlow backend)", ".weights.h5",
                  "conformance.frameworks.keras_adapter")
FLAX = Framework("flax", "Flax NNX", "flax_nnx", "NHWC", "jax2onnx", ".msgpack",
                 "conformance.frameworks.flax_adapter", bench_against="torch")

FRAMEWORKS: dict[str, Framework] = {f.key: f for f in (TORCH, KERAS, FLAX)}

RUNS: dict[str, Run] = {r.key: r for r in (
    Run("torch", TORCH, "torch", color="#1f77b4", start_cost=5),
    Run("keras", KERAS, "tensorflow", keras_backend="tensorflow", color="#d62728", start_cost=40),
    Run("keras-jax", KERAS, "jax", keras_backend="jax", color="#ff7f0e", start_cost=140, float64=False),
    Run("keras-torch", KERAS, "torch", keras_backend="torch", color="#9467bd", start_cost=12, float64=False),
    Run("flax", FLAX, "jax", color="#2ca02c", start_cost=70),
)}

# The float64 run that every other run is compared with.
REFERENCE_RUN = "torch"


def framework(key: str) -> Framework:
    if key not in FRAMEWORKS:
        raise ValueError(f"unknown framework {key!r}; expected one of {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[key]


def run(key: str) -> Run:
    if key not in RUNS:
        raise ValueError(f"unknown framework run {key!r}; expected one of {', '.join(RUNS)}")
    return RUNS[key]
