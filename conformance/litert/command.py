"""`mnforge litert` in the main process: the workers it starts and what they found, as one result.

A quantized export first re-estimates the BatchNorm statistics (conformance/calibration.py) in a PyTorch
worker, once, into a neutral file in a temporary folder; the exporting framework's worker then loads that
file, exports, and reports (conformance/quantization.py). Usable from Python (tests, later `conform`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from conformance import calibration
from conformance.litert.export import check_exported, check_quantize
from conformance.quantization import QuantizationReport

BN_STATS = ("calibration", "weights")


@dataclass(frozen=True)
class LiteRTExport:
    """What one export wrote and measured."""

    path: Path
    quantize: str
    bn_stats: str | None  # quantized: "calibration" (re-estimated) or "weights" (the weights' own)
    seconds: float  # the deployable file's export
    ops: dict[str, int]
    problems: list[str]  # op rules the graph breaks (export.op_problems)
    shape: list[int]  # the output's, batch first
    abs_error: float  # the interpreter's logits vs the framework's own, 2 images
    rel_error: float
    top1_same: bool | None
    report: QuantizationReport | None  # quantized only


def check_options(quantize: str, calibration_images: int, held_out: int, bn_stats: str | None,
                  framework: str | None = None) -> None:
    """Raise ValueError naming the option that is out of range (or that `framework` does not export)."""
    check_quantize(quantize, framework)
    for option, value in (("--calibration", calibration_images), ("--held-out", held_out)):
        if value < 1:
            raise ValueError(f"{option} {value}: expected at least 1 image")
    if bn_stats is not None and bn_stats not in BN_STATS:
        raise ValueError(f"--bn-stats {bn_stats!r}: expected {' or '.join(BN_STATS)}")


def calibrate(request: dict, desc, neutral: Path) -> Path:
    """The request's weights (or the model's own initialisation) with the BatchNorm statistics re-estimated
    on the calibration images, written to `neutral`: once, in PyTorch, for every exporter to load."""
    from conformance.porting.port import run_worker

    run_worker({**request, "op": "calibrate", "framework": "torch", "neutral": str(neutral)}, "torch",
               f"re-estimating the BatchNorm statistics of {desc.variant}")
    return neutral


def request_of(loaded, desc, flavor: str, weights: Path | None, calibration_images: int, held_out: int) -> dict:
    """What every worker step of one export is told."""
    return {"spec": str(loaded.path), "variant": desc.variant, "flavor": flavor, "num_classes": desc.num_classes,
            "resolution": list(desc.resolution), "weights": str(weights) if weights else None,
            "calibration": calibration_images, "held_out": held_out}


def export(loaded, desc, framework: str, path: Path, *, flavor: str, weights: Path | None = None,
           quantize: str = "none", calibration_images: int = calibration.CALIBRATION_IMAGES,
           held_out: int = calibration.HELD_OUT_IMAGES, bn_stats: str | None = None) -> LiteRTExport:
    """Export `desc` from `framework` to `path` (atomically), quantized as asked; `bn_stats` None: re-estimated
    for the model's own initialisation, the weights' own with `weights`."""
    from conformance.porting.port import run_worker

    check_exported(framework)
    check_options(quantize, calibration_images, held_out, bn_stats, framework)
    quantized = quantize != "none"
    bn_stats = (bn_stats or ("weights" if weights else "calibration")) if quantized else None
    request = request_of(loaded, desc, flavor, weights, calibration_images, held_out)
    with tempfile.TemporaryDirectory(prefix="mnforge-litert-") as tmp:
        if bn_stats == "calibration":
            request["weights"] = str(calibrate(request, desc, Path(tmp) / "calibrated.safetensors"))
        result = run_worker({**request, "op": "litert", "framework": framework, "path": str(path),
                             "quantize": quantize},
                            framework, f"exporting {desc.variant} from {framework} to LiteRT")
    report = QuantizationReport.from_json(result["report"]) if quantized else None
    return LiteRTExport(path=Path(path), quantize=quantize, bn_stats=bn_stats, seconds=result["seconds"],
                        ops=result["ops"], problems=result["problems"], shape=result["shape"],
                        abs_error=result["abs_error"], rel_error=result["rel_error"], top1_same=result["top1_same"],
                        report=report)
