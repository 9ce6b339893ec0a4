"""LiteRT (TFLite) export of the generated models, their op inventory, and runs in the LiteRT interpreter
(runs in a framework worker: the converter imports TensorFlow).

Both exporters end in `tf.lite.TFLiteConverter` with builtin ops only (no Flex ops, no custom ops):
Keras (TensorFlow backend) through `from_keras_model`, Flax NNX through `jax2tf.convert` wrapped in a
`tf.function` with a fixed NHWC float32 input, then `from_concrete_functions`. A graph has one NHWC
float32 input and named outputs in its signature: `logits` (the network's output; an encoder's feature
map, NHWC), or with `blocks` every stage's output by canonical block name (the conformance run compares
them block by block; the stage maps come out NHWC, pooled features and logits as (batch, features)).
The exporter of framework KEY is `_converter_KEY` below. Files are run with `ai_edge_litert`'s
interpreter (the pinned ai-edge-litert; `tf.lite.Interpreter` is deprecated), and their ops are read
from the flatbuffer with `ai_edge_litert.tools.flatbuffer_utils`, without TensorFlow.

Quantization (`quantize`, QUANTIZE_MODES) sets the converter's options between `_converter_KEY` and
`convert()`, in `_convert`:
  none     float32 weights and activations;
  dynamic  dynamic-range: int8 weights (per output channel), float32 activations;
  int8     full-integer post-training quantization: int8 weights and activations, calibrated on
           representative images (conformance/calibration.py), builtin int8 kernels only
           (TFLITE_BUILTINS_INT8; the converter still leaves an op without an int8 kernel in float between
           a DEQUANTIZE and a QUANTIZE: `float_ops` names it, an op rule of int8 graphs). Input and output
           stay float32: the converter puts a QUANTIZE after the input and a
           DEQUANTIZE before each output, so the file takes the same images and gives outputs comparable
           with the float model's (every block's, dequantized, for the per-block SQNR); a deployment that
           wants int8 I/O sets `inference_input_type` / `inference_output_type` to tf.int8 and drops them.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from conformance import calibration as calibration_set
from conformance.export_cache import content_key
from generators.frameworks import FRAMEWORKS
from generators.frameworks import framework as framework_entry
from spec.files import atomic_write

OUTPUT = "logits"  # the one output of a graph exported without `blocks`
# Ops a float graph must not have: layout transposes (EdgeTPU compilers reject TRANSPOSE; a MobileNet in
# NHWC needs none), gathers (an index lookup where a slice, resize or matrix product belongs; GATHER_ND is
# Flax's), and TensorFlow ops run through the Flex delegate (custom ops named Flex...; not in a builtin-only
# LiteRT runtime).
FORBIDDEN = ("TRANSPOSE", "GATHER", "GATHER_ND")
FLEX_PREFIX = "Flex"


class LiteRTError(ValueError):
    """A model LiteRT cannot express with builtin ops; the message names the op."""


def cache_key(generated_file: Path, weights: Path, flavor: str, resolution: tuple[int, int], blocks: bool,
              quantize: str = "none", calibration_images: int | None = None, bn_stats: str | None = None) -> str:
    """Content hash of what an export depends on (conformance/export_cache.py): the generated code, the
    weights, this module and PyTorch's converter's two (torch_env, torch_convert), the flavor, size and
    outputs; quantized, also the mode and where the weights' BatchNorm statistics came from
    (conformance/litert/command.py: BN_STATS); int8, also the calibration images: their count, their seed
    and the module that draws them."""
    here = Path(__file__)
    files = [generated_file, weights, here, here.with_name("torch_env.py"), here.with_name("torch_convert.py")]
    settings = ["blocks" if blocks else OUTPUT, flavor, list(resolution)]
    if quantize != "none":
        settings += [quantize, bn_stats]
    if quantize == "int8":
        files.append(Path(calibration_set.__file__))
        settings += [calibration_images, calibration_set.CALIBRATION_SEED]
    return content_key(files, settings)


def export(framework: str, model, desc, path: Path, blocks: bool = False, quantize: str = "none",
           calibration: np.ndarray | None = None) -> float:
    """Write `model` (a generated model of `desc`, in eval mode) as a LiteRT flatbuffer to `path`
    (atomically: a failure leaves nothing there), quantized as `quantize` says (int8: calibrated on
    `calibration`, NHWC float32 images); returns the export's seconds."""
    key = framework_entry(framework).key
    check_quantize(quantize, key)
    if quantize == "int8" and (calibration is None or not len(calibration)):
        raise ValueError("int8 quantization needs calibration images")
    start = time.perf_counter()
    check_exported(key)
    atomic_write(Path(path), EXPORTERS[key](model, desc, blocks, quantize, calibration))
    return time.perf_counter() - start


QUANTIZE_MODES = ("none", "dynamic", "int8")


# (framework key, mode) -> why that framework's exporter does not quantize so (measured, litert-torch 0.10.0).
NOT_QUANTIZED = {
    ("torch", "int8"): "litert-torch 0.10's full-integer (PT2E static) export makes the graph's input and outputs "
                       "int8 and leaves ops in float (MobileNetV3-Small 0.35: 32 QUANTIZE, 25 DEQUANTIZE, "
                       "2 TRANSPOSE); export int8 from keras or flax",
}


def check_quantize(mode: str, framework_key: str | None = None) -> None:
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"--quantize {mode!r}: expected one of {', '.join(QUANTIZE_MODES)}")
    if (framework_key, mode) in NOT_QUANTIZED:
        raise ValueError(f"--quantize {mode} --framework {framework_key}: {NOT_QUANTIZED[framework_key, mode]}")


def _convert(converter, quantize: str = "none", calibration: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops, no custom ops
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        def representative():  # one image per step: the graph's input has batch 1
            for image in calibration:
                yield [np.ascontiguousarray(image[None], dtype=np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        # Keras writes a SavedModel on the way and prints its signature: not this command's output
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as exc:  # the converter's errors are pages of MLIR diagnostics: name the op
        unsupported = unsupported_ops(str(exc))
        if unsupported:
            raise LiteRTError(f"LiteRT has no builtin {'int8 ' if quantize == 'int8' else ''}op for "
                              f"{', '.join(unsupported)} (Flex ops are not allowed in the export)") from None
        raise


def unsupported_ops(message: str) -> list[str]:
    """The TensorFlow ops a converter error names as having no LiteRT builtin, in order, once each."""
    found = re.findall(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op", message)
    for listed in re.findall(r"TF Select ops: ([A-Za-z0-9_, ]+)", message):
        found += [f"tf.{name.strip()}" for name in listed.split(",") if name.strip()]
    return list(dict.fromkeys(found))


def _converter_keras(model, desc, blocks: bool):
    import keras
    import tensorflow as tf

    from generators.location import family_module

    if blocks:
        graph = family_module("keras", desc.family).forward_intermediates(model)
    else:
        graph = keras.Model(model.inputs, {OUTPUT: model.outputs[0]}, name=f"{model.name}_{OUTPUT}")
    return tf.lite.TFLiteConverter.from_keras_model(graph), graph


def _converter_flax(model, desc, blocks: bool):
    import tensorflow as tf
    from flax import nnx
    from jax.experimental import jax2tf

    graphdef, state = nnx.split(model)

    def forward(image):  # NHWC
        network = nnx.merge(graphdef, state)
        return dict(network.forward_intermediates(image)) if blocks else {OUTPUT: network(image)}

    # jax2tf 0.10: native serialization and enable_xla are deprecated and ignored; no gradient is exported
    function = tf.function(jax2tf.convert(forward, with_gradient=False), autograph=False,
                           input_signature=[tf.TensorSpec((1, *desc.resolution, 3), tf.float32, name="image")])
    holder = tf.Module()  # the trackable that gives the flatbuffer its signature (named outputs)
    holder.forward = function
    return tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], holder), holder


def _export_torch(model, desc, blocks: bool, quantize: str, calibration: np.ndarray | None) -> bytes:
    """litert-torch, in its own environment (conformance/litert/torch_env.py); float or dynamic-range
    (int8 is refused before: NOT_QUANTIZED), so `calibration` is never needed."""
    from conformance.frameworks.protocol import classifier_options
    from conformance.litert import torch_env
    from generators.location import family_module

    generated = Path(family_module("torch", desc.family).__file__)
    try:
        return torch_env.convert(model, desc, generated, classifier_options(desc.num_classes, None), blocks, OUTPUT,
                                 quantize)
    except RuntimeError as exc:
        unsupported = unsupported_torch_ops(str(exc))
        if unsupported:
            raise LiteRTError(f"LiteRT has no builtin op for {', '.join(unsupported)}") from None
        raise


# Frameworks whose graph with every block as an output has ops its deployable graph (one output) does not:
# litert-torch's layout pass keeps an op that has no NHWC form and feeds a block output (the stem's
# explicit TF-SAME pad, the pool's mean) in NCHW, between two TRANSPOSE (MobileNetV3-Small 0.35, keras
# flavor: 3; its one-output graph: none). Their op rules are checked on the deployable graph.
OP_RULES_ON_DEPLOYABLE = ("torch",)


def unsupported_torch_ops(message: str) -> list[str]:
    """The PyTorch (ATen) ops a litert-torch error names as having no lowering, in order, once each."""
    return list(dict.fromkeys(re.findall(r"Lowering not found: (aten\.[A-Za-z0-9_.]+)", message)))


def _through_tensorflow(converter_of):
    """An exporter from a `_converter_KEY`: (model, desc, blocks) -> (converter, object to keep alive while
    converting), then `_convert`."""
    def export_flatbuffer(model, desc, blocks: bool, quantize: str, calibration: np.ndarray | None) -> bytes:
        converter, _keep = converter_of(model, desc, blocks)
        return _convert(converter, quantize, calibration)
    return export_flatbuffer


# framework key -> its exporter: (model, desc, blocks, quantize, calibration) -> the flatbuffer's bytes;
# `_converter_KEY` through TensorFlow's converter, or `_export_KEY`.
EXPORTERS = {key: (_through_tensorflow(globals()[f"_converter_{key}"]) if f"_converter_{key}" in globals()
                   else globals()[f"_export_{key}"]) for key in FRAMEWORKS}


def check_exported(key: str) -> None:
    """Raise ValueError unless framework `key` has a LiteRT exporter."""
    if key not in EXPORTERS:
        raise ValueError(f"no LiteRT export for {key!r}; exported are {', '.join(EXPORTERS)}")


def ops(path: Path) -> dict[str, int]:
    """How many times each op occurs in the flatbuffer, every subgraph; a custom op by its custom code
    (a Flex op: `Flex` and the TensorFlow op's name)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    names = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = fu.opcode_to_name(model, op.opcodeIndex)
            if name == "CUSTOM":
                code = model.operatorCodes[op.opcodeIndex].customCode
                name = code.decode() if isinstance(code, bytes) else str(code)
            names.append(name)
    return dict(sorted(Counter(names).items()))


def op_problems(histogram: dict[str, int], desc) -> list[str]:
    """What a float graph of `desc` must not have (FORBIDDEN, Flex ops), and that every hard-swish of the
    spec is the native HARD_SWISH op: one per layer whose activation is hard_swish."""
    problems = [f"{count} {name}" for name, count in histogram.items()
                if name in FORBIDDEN or name.startswith(FLEX_PREFIX)]
    expected = sum(layer.activation == "hard_swish" for layer in desc.layers)
    found = histogram.get("HARD_SWISH", 0)
    if found != expected:
        problems.append(f"{found} HARD_SWISH where the spec has {expected} hard-swish activations")
    return problems


def float_ops(path: Path) -> list[str]:
    """The ops of a full-integer (int8) graph that run in float: those reading a DEQUANTIZE's output. The
    converter leaves an op without an int8 kernel in float between a DEQUANTIZE and a QUANTIZE instead of
    failing (measured: SIN); a full-integer graph has one QUANTIZE after the input and one DEQUANTIZE
    before each output, and nothing reads a DEQUANTIZE."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    found = []
    for graph in model.subgraphs:
        dequantized = {op.outputs[0] for op in graph.operators
                       if fu.opcode_to_name(model, op.opcodeIndex) == "DEQUANTIZE"}
        found += [fu.opcode_to_name(model, op.opcodeIndex) for op in graph.operators
                  if dequantized.intersection(op.inputs)]
    return list(dict.fromkeys(found))


def input_quantization(path: Path) -> tuple[float, int] | None:
    """(scale, zero point) of the QUANTIZE that reads the graph's float input, or None (a float graph, or
    a dynamic-range one: its input is not quantized)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    graph = model.subgraphs[0]
    for op in graph.operators:
        if fu.opcode_to_name(model, op.opcodeIndex) == "QUANTIZE" and op.inputs[0] == graph.inputs[0]:
            quantization = graph.tensors[op.outputs[0]].quantization
            return float(quantization.scale[0]), int(quantization.zeroPoint[0])
    return None


def run(path: Path, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the flatbuffer's signature by name, for a batch of NHWC float32 images (one image
    per invocation: the graph's input has batch 1), on one thread."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    per_image = [runner(**{name: np.ascontiguousarray(image[None], dtype=np.float32)}) for image in images_nhwc]
    return {key: np.concatenate([np.asarray(out[key]) for out in per_image]) for key in per_image[0]}
