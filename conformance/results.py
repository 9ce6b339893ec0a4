"""What a conformance worker measured for one variant: typed, written by the worker (conformance/worker.py)
as JSON, read back by the runner and used by the checks and reports. Field names are the JSON keys;
fields a job did not measure are None (absent from the file).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.frameworks.protocol import MacCount
from conformance.quantization import QuantizationReport


def result_path(out: Path, variant: str, run_key: str, dtype: str) -> Path:
    """Where a worker writes a variant's WorkerResult."""
    return Path(out) / f"{variant}.{run_key}.{dtype}.json"


def outputs_path(out: Path, variant: str, run_key: str, dtype: str) -> Path:
    """Where a worker writes a variant's block outputs (.npz: block name -> array)."""
    return Path(out) / f"{variant}.{run_key}.{dtype}.npz"


def litert_outputs_path(out: Path, variant: str, run_key: str) -> Path:
    """Where a worker writes the LiteRT interpreter's outputs of a variant's export (.npz: block name ->
    array, the neutral layout)."""
    return Path(out) / f"{variant}.{run_key}.litert.npz"


def _to_json(obj) -> dict:
    """A dataclass as a JSON-ready dict, leaving out fields at None."""
    return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None}


@dataclass(frozen=True)
class RoundTrip:
    """Neutral -> framework -> neutral: the same bits (a float64 model: the same values)."""

    tensors: int
    differing: list[str]  # the first ten
    differing_count: int

    @property
    def ok(self) -> bool:
        return self.differing_count == 0


@dataclass(frozen=True)
class OnnxResult:
    """An ONNX export of one framework's model: validated, run in ONNX Runtime against the framework."""

    path: str
    layout: str  # of the `images` input: the framework's own (generators/frameworks.py)
    opset: int | None  # the opset the file declares
    cached: bool  # reused an export under the same content hash
    export_s: float
    ops: dict[str, int]  # op histogram of the graph after shape inference
    initializer_values: int
    canonical: dict[str, Any]  # conformance/onnx/canonical.py: Canonical.summary()
    ort_rel_error: float  # ONNX Runtime against the framework's own logits, relative to their max
    ort_top1_same: bool
    reference_evaluator_rel_error: float | None = None  # onnx.reference, where asked for

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass(frozen=True)
class LiteRTResult:
    """A float LiteRT export of one framework's model, with every block as an output (conformance/litert),
    run in the LiteRT interpreter on the shared input."""

    path: str
    cached: bool  # reused an export under the same content hash
    export_s: float
    ops: dict[str, int]  # op histogram of the flatbuffer
    problems: list[str]  # conformance.litert.export.op_problems: forbidden ops, hard-swish not native
    outputs: str  # .npz of the interpreter's outputs (litert_outputs_path)
    run_s: float  # the interpreter's seconds on the shared input

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass(frozen=True)
class OrtInt8Result:
    """ONNX Runtime's static int8 (QDQ) of the same framework's ONNX export, from the same weights and
    calibration images as the LiteRT int8 export beside it (conformance/onnx/quantize.py)."""

    path: str
    cached: bool  # reused the float export and its quantization under the same content hashes
    seconds: float  # export and quantization; 0 when cached
    report: QuantizationReport  # the logits only: the export has one output


@dataclass(frozen=True)
class LiteRTInt8Result:
    """A full-integer LiteRT export of one framework's model, every block an output, from the run's weights
    with their BatchNorm statistics re-estimated on the calibration images (conformance/calibration.py),
    and its report against the framework's own float32 model (conformance/litert/quantized.py)."""

    path: str
    cached: bool  # reused an export under the same content hash
    export_s: float
    ops: dict[str, int]  # op histogram of the flatbuffer
    problems: list[str]  # the int8 op rules it breaks (conformance.litert.quantized.problems)
    report: QuantizationReport
    ort: OrtInt8Result | None = None  # with --onnx
    ort_error: str | None = None  # the exception that ended ORT's int8 export, quantization or run

    def to_json(self) -> dict:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> LiteRTInt8Result:
        ort = data.get("ort")
        if ort is not None:
            ort = OrtInt8Result(**{**ort, "report": QuantizationReport.from_json(ort["report"])})
        return cls(**{**data, "report": QuantizationReport.from_json(data["report"]), "ort": ort})


@dataclass
class WorkerResult:
    """One variant in one worker (a run of generators.frameworks.RUNS, in one dtype)."""

    framework: str  # the run key
    variant: str
    dtype: str = "float32"
    flavor: str | None = None
    import_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    tensor_shapes: dict[str, list[int]] | None = None  # canonical tensor name -> shape, neutral layout
    trainable: dict[str, int] | None = None  # canonical tensor name -> trainable elements
    structure_error: str | None = None  # names and shapes against the spec; None: as the spec
    round_trip: RoundTrip | None = None
    block_shapes: dict[str, list[int]] | None = None  # block name -> output shape on the shared input
    macs: MacCount | None = None
    onnx: OnnxResult | None = None
    onnx_skipped: str | None = None  # why this run exports no ONNX
    onnx_error: str | None = None  # the exception that ended the ONNX export or its validation
    litert: LiteRTResult | None = None
    litert_skipped: str | None = None  # why this run exports no LiteRT
    litert_error: str | None = None  # the exception that ended the LiteRT export or its run
    litert_int8: LiteRTInt8Result | None = None  # conform --litert on a variant chosen for int8
    litert_int8_error: str | None = None  # the exception that ended the int8 export or its report
    logits_shapes: dict[str, list[int]] | None = None  # "HxW" -> logits shape
    train: dict | None = None  # training-mode parity figures (conformance/training.py; worker.run_training)
    error: str | None = None  # the exception that ended this variant's job
    traceback: str | None = None
    device_error: bool = False  # --device gpu, and this framework sees no GPU: the CLI stops

    def to_json(self) -> str:
        data = _to_json(self)
        if not self.device_error:
            del data["device_error"]
        return json.dumps(data, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        data = json.loads(text)
        for name, kind in (("round_trip", RoundTrip), ("macs", MacCount), ("onnx", OnnxResult),
                           ("litert", LiteRTResult)):
            if data.get(name) is not None:
                data[name] = kind(**data[name])
        if data.get("litert_int8") is not None:
            data["litert_int8"] = LiteRTInt8Result.from_json(data["litert_int8"])
        return cls(**data)
