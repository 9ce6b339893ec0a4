"""ONNX export of the generated models, validation, and ONNX Runtime parity (runs in a framework worker).

One opset for all three exporters, stated here: 18 (HardSigmoid and HardSwish are native ops from
opset 14; tf2onnx 1.17 goes up to 18). Every exported graph has one input `images` with a dynamic batch
axis and one output `logits`. Layouts are each framework's own (generators/frameworks.py: `layout`):
`images` is NCHW from PyTorch (torch.onnx.export, dynamo) and NHWC from Keras (tf2onnx, TensorFlow
backend) and Flax NNX (jax2onnx). The exporter of framework KEY is `_export_KEY` below.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from conformance.export_cache import content_key
from generators.frameworks import FRAMEWORKS
from generators.frameworks import framework as framework_entry
from spec.files import atomic_write

OPSET = 18
INPUT, OUTPUT, BATCH = "images", "logits", "batch"


def cache_key(generated_file: Path, weights: Path, flavor: str, resolution: tuple[int, int]) -> str:
    """Content hash of what an export depends on: the generated code, the weights, opset, flavor, size,
    and this module (a fix to an exporter's output invalidates the exports made without it)."""
    return content_key([generated_file, weights, Path(__file__)], [OPSET, flavor, list(resolution)])


def export(framework: str, model, resolution: tuple[int, int], path: Path) -> float:
    """Write `model` as ONNX to `path` (atomically); returns the export's seconds."""
    start = time.perf_counter()
    key = framework_entry(framework).key
    if key not in EXPORTERS:
        raise ValueError(f"no ONNX export for {key!r}; exported are {', '.join(EXPORTERS)}")
    proto = EXPORTERS[key](model, resolution, Path(path))
    _normalise_io(proto)
    atomic_write(Path(path), proto.SerializeToString())
    return time.perf_counter() - start


def _export_torch(model, resolution, path: Path):
    import torch

    example = torch.zeros(1, 3, *resolution, dtype=next(model.parameters()).dtype)
    batch = torch.export.Dim(BATCH, min=1, max=4096)
    with _contiguous_conv_inputs(model):
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes=({0: batch},), verbose=False)
    return program.model_proto


@contextmanager
def _contiguous_conv_inputs(model):
    """While exporting, every convolution of `model` reads its input contiguous (memory layout only: the
    values, and so the ONNX graph, are the same; ONNX has no strides).

    Why: a conv that reads a strided view makes torch.export's trace ask whether the dynamic batch is 1.
    The Mobile MQA block's output projection reads its attention output transposed and reshaped, a view
    with channels-last strides; with one query head (`heads: 1`) the fake convolution's choice of memory
    format for it depends on whether the batch axis (size 1 in the example) is 1, guards on it, and
    torch.export reports the batch axis specialised: torch.onnx's retry with the suggested range ends in
    "UserError: Invalid ranges [2:1]". An example batch of 2 instead traces the channels-last path, and
    the exported head then reads the pooled features through an as_strided Gather."""
    import torch

    def contiguous(module, args):
        return (args[0].contiguous(), *args[1:])

    hooks = [m.register_forward_pre_hook(contiguous) for m in model.modules()
             if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _export_keras(model, resolution, path: Path):
    import onnx

    model.predict_on_batch(np.zeros((1, *resolution, 3), np.float32))  # Keras exports only a called model
    tmp = path.with_name(f".{path.name}.keras-export.onnx")
    try:
        model.export(str(tmp), format="onnx", opset_version=OPSET, verbose=False)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    _replace_erfc(proto)
    return proto


def _replace_erfc(proto) -> None:
    """tf2onnx 1.17 has no converter for TensorFlow's Erfc (exact GELU: 0.5 x erfc(-x / sqrt 2)) and copies
    it into the graph as `Erfc`, which is no ONNX op (the checker and ONNX Runtime reject it). Write
    1 - Erf(x) in its place."""
    import onnx

    graph = proto.graph
    if not any(node.op_type == "Erfc" and node.domain in ("", "ai.onnx") for node in graph.node):
        return
    one = "erfc_one"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.0, np.float32), one))
    nodes = []
    for node in graph.node:
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        erf = f"{node.output[0]}__erf"
        nodes.append(onnx.helper.make_node("Erf", [node.input[0]], [erf], name=f"{node.name}__erf"))
        nodes.append(onnx.helper.make_node("Sub", [one, erf], [node.output[0]], name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)


def _export_flax(model, resolution, path: Path):
    from jax2onnx import to_onnx

    proto = to_onnx(model, inputs=[(BATCH, *resolution, 3)], opset=OPSET, input_names=[INPUT],
                    output_names=[OUTPUT], return_mode="proto")
    # jax2onnx 0.17 records value_info shapes in the wrong layout around its NHWC <-> NCHW transposes,
    # which the full checker rejects; the nodes are right. Drop the hints; shape inference redoes them.
    del proto.graph.value_info[:]
    return proto


# framework key -> its exporter, `_export_KEY`: (model, resolution, target path) -> ModelProto. A framework
# without one is not exported (`mnforge onnx` refuses it, `conform --onnx` skips it).
EXPORTERS = {key: globals()[f"_export_{key}"] for key in FRAMEWORKS if f"_export_{key}" in globals()}


def _normalise_io(proto) -> None:
    """One input named `images`, one output named `logits`, batch axis named `batch`."""
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected one input and one output, got {[i.name for i in inputs]} -> "
                         f"{[o.name for o in graph.output]}")
    _rename(graph, inputs[0].name, INPUT)
    _rename(graph, graph.output[0].name, OUTPUT)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH


def _rename(graph, old: str, new: str) -> None:
    if old == new:
        return
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def validate(path: Path) -> dict:
    """onnx.checker with full_check (which runs strict shape inference); op histogram of the graph."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    histogram: dict[str, int] = {}
    for node in inferred.graph.node:
        histogram[node.op_type] = histogram.get(node.op_type, 0) + 1
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {"opset": opsets.get("ai.onnx"), "ops": dict(sorted(histogram.items())),
            "initializer_values": int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))}


def run_onnxruntime(path: Path, images_native: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(images_native, dtype=np.float32)})[0]


def run_reference_evaluator(path: Path, images_native: np.ndarray) -> np.ndarray:
    """onnx.reference: ONNX's own pure-Python semantics, to catch runtime-specific mapping bugs."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    return evaluator.run([OUTPUT], {INPUT: np.ascontiguousarray(images_native, dtype=np.float32)})[0]
