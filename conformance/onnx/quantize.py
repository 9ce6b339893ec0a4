"""int8 for ONNX Runtime: static post-training quantization of an export in QDQ form
(`onnxruntime.quantization.quantize_static`), calibrated on the same images as LiteRT's int8 export
(conformance/calibration.py) and measured with the same report (conformance/quantization.py).

Settings, chosen to match LiteRT's full-integer quantization: int8 weights, one scale per output channel
(`per_channel`); int8 activations with a zero point (asymmetric), one scale per tensor, from the min/max
the calibration images reach (`CalibrationMethod.MinMax`); QuantizeLinear/DequantizeLinear pairs around
every quantized tensor (QDQ), which ORT's CPU provider fuses into integer kernels. The input and output
stay float32, as in the LiteRT export. Only the logits are compared (the export has one output), so the
report has top-1 agreement, KL and the logits' SQNR, and names no block.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from conformance import calibration, quantization
from conformance.export_cache import content_key
from conformance.onnx.export import INPUT
from spec.files import atomic_write


def quantize(float_path: Path, int8_path: Path, calibration_native: np.ndarray) -> None:
    """Write `float_path` quantized statically to int8 (QDQ) to `int8_path`, atomically; the calibration
    images in the model's input layout, fed one at a time."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Images(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration_native)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {INPUT: np.ascontiguousarray(image[None], dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="mnforge-ort-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(float_path), str(out), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        atomic_write(Path(int8_path), out.read_bytes())


def cache_key(float_path: Path, calibration_images: int) -> str:
    """Content hash of what `quantize`'s file depends on (conformance/export_cache.py): the float export, this
    module (the settings), and the calibration images: their count, their seed and the module that draws them."""
    return content_key([float_path, Path(__file__), Path(calibration.__file__)],
                       ["int8", calibration_images, calibration.CALIBRATION_SEED])


def native_images(framework: str, count: int, resolution: tuple[int, int], seed: int) -> np.ndarray:
    """`count` images of conformance/calibration.py from `seed`, in the input layout of `framework`'s export."""
    from generators.frameworks import framework as framework_entry

    images = calibration.images(count, resolution, seed)
    return images.transpose(0, 2, 3, 1) if framework_entry(framework).channels_last else images


def calibration_images_native(framework: str, count: int, resolution: tuple[int, int]) -> np.ndarray:
    return native_images(framework, count, resolution, calibration.CALIBRATION_SEED)


def report(float_path: Path, int8_path: Path, desc, framework: str, calibration_images: int,
           held_out: int) -> quantization.QuantizationReport:
    """The int8 model at `int8_path` against its float model at `float_path`, both in ONNX Runtime, on
    `held_out` held-out images: the logits only (the export has no block outputs, so no block is named)."""
    from conformance.onnx.export import run_onnxruntime

    images = native_images(framework, held_out, desc.resolution, calibration.HELD_OUT_SEED)
    output = desc.output
    return quantization.compare({output: run_onnxruntime(float_path, images)},
                                {output: run_onnxruntime(int8_path, images)}, None if desc.encoder else output,
                                mode="int8 (ORT, QDQ)", against=f"ORT float32 ({framework} export)",
                                calibration=calibration_images,
                                input_sqnr_db=quantization.input_sqnr_db(images, input_quantization(int8_path)),
                                every_block=False)


def input_quantization(path: Path) -> tuple[float, int] | None:
    """(scale, zero point) of the QuantizeLinear that reads the graph's input, through the layout ops an
    exporter puts first (tf2onnx: a Transpose of NHWC to NCHW), or None."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    values = {INPUT}  # the input and its copies in another layout
    for node in model.graph.node:  # topologically sorted
        if node.input and node.input[0] in values:
            if node.op_type == "QuantizeLinear":
                return float(constants[node.input[1]]), int(constants[node.input[2]])
            if node.op_type in LAYOUT_OPS:
                values.update(node.output)
    return None


LAYOUT_OPS = ("Transpose", "Identity", "Reshape")  # move values, do not change them


def ops(path: Path) -> dict[str, int]:
    import onnx

    histogram: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        histogram[node.op_type] = histogram.get(node.op_type, 0) + 1
    return dict(sorted(histogram.items()))
