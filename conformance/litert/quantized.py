"""A quantized LiteRT export measured in the exporting framework's worker: its op rules and its report
against the framework's own float32 model (conformance/quantization.py). One rule for `mnforge litert
--quantize` (conformance/porting/worker.py) and `conform --litert` (conformance/worker.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conformance import calibration, quantization
from conformance.litert import export as litert_export


def calibration_images_nhwc(count: int, resolution: tuple[int, int]) -> np.ndarray:
    """The int8 converter's representative images (conformance/calibration.py), NHWC as the graph takes them."""
    return calibration.images(count, resolution, calibration.CALIBRATION_SEED).transpose(0, 2, 3, 1)


def problems(path: Path, desc, quantize: str) -> list[str]:
    """The op rules the graph at `path` breaks: the float rules (export.op_problems), and in an int8 graph
    every op left in float (export.float_ops)."""
    found = litert_export.op_problems(litert_export.ops(path), desc)
    if quantize == "int8":
        found += [f"{op} in float (no int8 kernel)" for op in litert_export.float_ops(path)]
    return found


def report(framework: str, adapter, model, desc, blocks_path: Path, quantize: str, calibration_images: int,
           held_out: int) -> quantization.QuantizationReport:
    """The quantized export at `blocks_path` (every block an output) against `model`, the framework's own
    float32 model, on `held_out` held-out images; `calibration_images`: how many calibrated it (0: none)."""
    from conformance.frameworks.protocol import to_nchw

    images = calibration.images(held_out, desc.resolution, calibration.HELD_OUT_SEED)
    own = adapter.forward_blocks(model, images)
    reference = {name: own[name] for name in desc.block_shapes}  # network order (Flax returns its dict sorted)
    quantized = {name: to_nchw(value)
                 for name, value in litert_export.run(blocks_path, images.transpose(0, 2, 3, 1)).items()}
    return quantization.compare(reference, quantized, None if desc.encoder else list(reference)[-1],
                                mode=quantize, against=f"{framework} (float32)", calibration=calibration_images,
                                input_sqnr_db=quantization.input_sqnr_db(
                                    images, litert_export.input_quantization(blocks_path)))
