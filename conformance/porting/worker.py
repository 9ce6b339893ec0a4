"""A port step in one framework's process: `python -m conformance.porting.worker REQUEST.json`.

Operations (the request's "op"):
  read       a file in `format` -> the neutral file `neutral` (checked against the spec)
  write      the neutral file -> a file in `format` (atomically, with metadata)
  run        weights in a generated format -> logits of the generated model on an .npy input
  reference  build a reference model with random weights and random BatchNorm statistics, save it in
             its own format, and save its logits on an input (tests; nothing is downloaded)
  onnx       export a generated model to ONNX and validate it
  litert     export a generated model to LiteRT (float or quantized), count its ops, compare it with the
             framework's own output (quantized: the report of conformance/quantization.py)
  ort_int8   export to ONNX, quantize statically for ONNX Runtime (QDQ int8), report as `litert` does
  calibrate  (PyTorch) re-estimate the BatchNorm statistics on the calibration images and write the
             neutral file `neutral` (conformance/calibration.py)
The worker writes `{"ok": true, ...}` or `{"error": "..."}` to the request's "result" path.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

# The order in which a reference model's BatchNorm tensors are drawn (conformance/weights.py: random_batch_norm).
DRAW_ORDER = ("running_mean", "running_var", "weight", "bias")


class InputError(ValueError):
    """A request's input file that cannot be used (its message names the file)."""


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    result_path = Path(request["result"])
    try:
        if request.get("run"):
            from conformance.frameworks import set_up_process

            # KERAS_BACKEND, before any framework is imported
            set_up_process(request["run"], onnx_export=request["op"] in ("onnx", "ort_int8"))
        result = {"ok": True, **_dispatch(request)}
    except Exception as exc:  # reported to the caller, which prints it and writes nothing
        from conformance.weights import WeightError

        plain = isinstance(exc, (WeightError, KeyError, InputError))  # our own one-line messages
        result = {"error": str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc) if plain
                  else f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=5)}
    from spec.files import atomic_write

    atomic_write(result_path, json.dumps(result, default=str))
    return 0


def _dispatch(request: dict) -> dict:
    from conformance import weights as neutral
    from conformance.porting import formats
    from conformance.porting.references import reference
    from spec import describe, load_spec

    loaded = load_spec(request["spec"])
    desc = describe(loaded, request["variant"], request["flavor"], num_classes=request.get("num_classes", 1000))
    fmt, path = request.get("format"), Path(request.get("path", ""))
    ref = reference(request["reference"]) if request.get("reference") else None
    metadata = {"format": neutral.FORMAT, "variant": desc.variant, "flavor": desc.flavor,
                **formats.classes_metadata(desc)}
    op = request["op"]
    if op == "read":
        tensors = formats.read_format(fmt, path, desc, ref)
        neutral.save(Path(request["neutral"]), tensors, {**metadata, "source": f"{fmt}:{path.name}"})
        return {"tensors": len(tensors), "values": int(sum(v.size for v in tensors.values()))}
    if op == "write":
        tensors, _ = neutral.load(Path(request["neutral"]))
        formats.write_format(fmt, path, desc, tensors, ref)
        recorded = {k: v for k, v in metadata.items() if k != "format"}
        formats.write_sidecar(path, {**recorded, "weights_format": fmt, "written_by": "mnforge port",
                                     **({"reference": ref.name} if ref else {})})
        return {"tensors": len(tensors)}
    if op == "run":
        return _run(request, desc)
    if op == "reference":
        return _random_reference(request, desc, ref)
    if op == "onnx":
        return _export_onnx(request, desc)
    if op == "litert":
        return _export_litert(request, loaded)
    if op == "calibrate":
        return _calibrate(request, loaded)
    if op == "ort_int8":
        return _ort_int8(request, loaded)
    raise ValueError(f"unknown operation {op!r}")


def _run(request: dict, desc) -> dict:
    import io

    import numpy as np

    from conformance.frameworks import adapter as get_adapter
    from conformance.porting import formats
    from generators.frameworks import framework as framework_entry
    from spec.files import atomic_write

    framework = request["framework"]
    tensors = formats.read_weights(Path(request["path"]), framework, desc)
    try:  # port.check_input looked at the header; this is the data (never unpickled)
        images = np.load(request["input"], allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"--input {request['input']}: not a readable .npy array ({str(exc).splitlines()[0][:200]})")\
            from None
    channels_first = not framework_entry(framework).channels_last
    if images.ndim != 4 or images.shape[1 if channels_first else 3] != 3:
        layout = "NCHW (batch, 3, H, W)" if channels_first else "NHWC (batch, H, W, 3)"
        raise ValueError(f"input of shape {images.shape}: {framework} takes {layout}")
    size = tuple(images.shape[2:4] if channels_first else images.shape[1:3])
    adapter = get_adapter(framework)
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, size, abstract=True)
    adapter.load(model, tensors)
    nchw = images if channels_first else images.transpose(0, 3, 1, 2)
    logits = np.asarray(adapter.logits(model, np.ascontiguousarray(nchw, dtype=np.float32)))
    if logits.ndim == 4 and not channels_first:  # an encoder's map, in the layout its model returns
        logits = logits.transpose(0, 2, 3, 1)
    buffer = io.BytesIO()
    np.save(buffer, logits)
    atomic_write(Path(request["output"]), buffer.getvalue())
    return {"shape": list(logits.shape)}


def _export_onnx(request: dict, desc) -> dict:
    """Build the generated model (with the given weights, else its own initialisation), export, validate."""
    from conformance.frameworks import adapter as get_adapter
    from conformance.onnx import export as onnx_export
    from conformance.porting import formats

    framework = request["framework"]
    resolution = tuple(request["resolution"])
    adapter = get_adapter(framework)
    weights = request.get("weights")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, resolution,
                          abstract=bool(weights))
    if weights:
        adapter.load(model, formats.read_weights(Path(weights), framework, desc))
    seconds = onnx_export.export(framework, model, resolution, Path(request["path"]))
    return {"seconds": seconds, **onnx_export.validate(Path(request["path"]))}


def _build_for_export(request: dict, loaded):
    """The request's description, the adapter of its framework, and the generated model with the request's
    weights (else its own initialisation)."""
    from conformance.frameworks import adapter as get_adapter
    from conformance.porting import formats
    from spec import describe

    framework = request["framework"]
    desc = describe(loaded, request["variant"], request["flavor"], tuple(request["resolution"]),
                    request.get("num_classes", 1000))
    adapter = get_adapter(framework)
    weights = request.get("weights")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution,
                          abstract=bool(weights), dtype=request.get("dtype", "float32"))
    if weights:
        adapter.load(model, formats.read_weights(Path(weights), framework, desc))
    return desc, adapter, model


def _calibrate(request: dict, loaded) -> dict:
    """PyTorch, float64: the model with its BatchNorm statistics re-estimated on the calibration images,
    written as a neutral file (float32)."""
    from conformance import calibration

    desc, adapter, model = _build_for_export({**request, "dtype": "float64"}, loaded)
    return {"batch_norms": calibration.write_reestimated(adapter, model, desc, request["calibration"],
                                                         Path(request["neutral"]))}


def _export_litert(request: dict, loaded) -> dict:
    """Build the generated model (with the given weights, else its own initialisation), export it to LiteRT
    (output `logits`; quantized as the request says), count its ops, and compare the interpreter's output
    with the framework's own on a fixed random input (2 images, seed 0). Quantized: also the report of
    conformance/quantization.py, from a second export of the same model with every block as an output,
    on the held-out images, against the framework's own float32 model."""
    import tempfile

    import numpy as np

    from conformance import calibration
    from conformance.frameworks.protocol import to_nchw
    from conformance.litert import export as litert_export
    from conformance.litert import quantized

    framework = request["framework"]
    litert_export.check_exported(framework)
    quantize = request.get("quantize", "none")
    litert_export.check_quantize(quantize, framework)
    desc, adapter, model = _build_for_export(request, loaded)
    images = np.random.default_rng(0).normal(0.0, 1.0, (2, 3, *desc.resolution)).astype(np.float32)
    own = np.asarray(adapter.logits(model, images), np.float64)  # Keras exports only a called model
    path = Path(request["path"])
    # calibration images: int8 only (dynamic range quantizes the weights alone)
    count = request.get("calibration", calibration.CALIBRATION_IMAGES) if quantize == "int8" else 0
    nhwc = quantized.calibration_images_nhwc(count, desc.resolution) if count else None
    seconds = litert_export.export(framework, model, desc, path, quantize=quantize, calibration=nhwc)
    lite = to_nchw(litert_export.run(path, images.transpose(0, 2, 3, 1))[litert_export.OUTPUT]).astype(np.float64)
    error = float(np.max(np.abs(lite - own)))
    result = {"seconds": seconds, "ops": litert_export.ops(path), "problems": quantized.problems(path, desc, quantize),
              "abs_error": error, "rel_error": error / (float(np.max(np.abs(own))) or 1.0),
              "top1_same": None if desc.encoder else bool(np.array_equal(lite.argmax(-1), own.argmax(-1))),
              "shape": list(lite.shape)}
    if quantize != "none":
        with tempfile.TemporaryDirectory(prefix="mnforge-litert-") as tmp:
            blocks_path = Path(tmp) / "blocks.tflite"
            litert_export.export(framework, model, desc, blocks_path, blocks=True, quantize=quantize, calibration=nhwc)
            result["report"] = quantized.report(
                framework, adapter, model, desc, blocks_path, quantize, count,
                request.get("held_out", calibration.HELD_OUT_IMAGES)).to_json()
    return result


def _ort_int8(request: dict, loaded) -> dict:
    """The generated model exported to ONNX (float), quantized statically to int8 QDQ at `path` on the
    calibration images, and both run in ONNX Runtime on the held-out images: the report of the logits
    (conformance/quantization.py; the export has no block outputs)."""
    import tempfile
    import time

    from conformance import calibration
    from conformance.onnx import export as onnx_export
    from conformance.onnx import quantize as onnx_quantize

    framework = request["framework"]
    desc, _, model = _build_for_export(request, loaded)
    count = request.get("calibration", calibration.CALIBRATION_IMAGES)
    path = Path(request["path"])
    with tempfile.TemporaryDirectory(prefix="mnforge-ort-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        start = time.perf_counter()
        onnx_export.export(framework, model, desc.resolution, float_path)
        onnx_quantize.quantize(float_path, path, onnx_quantize.calibration_images_native(framework, count, desc.resolution))
        seconds = time.perf_counter() - start
        report = onnx_quantize.report(float_path, path, desc, framework, count,
                                      request.get("held_out", calibration.HELD_OUT_IMAGES))
    return {"seconds": seconds, "ops": onnx_quantize.ops(path), "report": report.to_json()}


def _random_reference(request: dict, desc, ref) -> dict:
    """Tests: a reference model with random weights, including random BatchNorm statistics (and layer scales,
    RMSNorm scales)."""
    import numpy as np

    from conformance.weights import random_batch_norm

    rng = np.random.default_rng(request.get("seed", 0))
    images = np.load(request["input"], allow_pickle=False)  # NCHW
    path = Path(request["path"])
    if ref.framework == "torch":
        import torch

        from conformance.porting import formats, torch_refs

        torch.set_num_threads(1)  # as the generated model's worker: the same reduction order in every conv
        model = torch_refs.build(ref)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    for tensor in DRAW_ORDER:  # a state dict's names are the neutral ones
                        value = random_batch_norm(rng, tensor, module.num_features)
                        getattr(module, tensor).copy_(torch.from_numpy(value))
                elif torch_refs.is_layer_scale(module):
                    # timm initialises it at 1e-5, which would hide the attention branch from the comparison
                    module.gamma.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, module.gamma.shape[0])))
                elif torch_refs.is_rms_norm(module):  # timm initialises the scale at 1: drawn as BatchNorm's is
                    module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, module.weight.shape[0])))
            logits = model(torch.from_numpy(images)).numpy()
        formats._torch_save(path, model.state_dict())
    else:
        import keras

        from conformance.porting import formats, keras_refs

        model = keras_refs.build(ref, (*images.shape[2:4], 3))
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                keras_names = {"running_mean": layer.moving_mean, "running_var": layer.moving_variance,
                               "weight": layer.gamma, "bias": layer.beta}
                for tensor in DRAW_ORDER:
                    keras_names[tensor].assign(random_batch_norm(rng, tensor, layer.gamma.shape[0]))
        logits = np.asarray(model.predict_on_batch(images.transpose(0, 2, 3, 1)))
        formats._save_keras_weights(model, path)
    np.save(request["logits"], logits)
    return {"shape": list(logits.shape)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
