"""One framework in one process: `python -m conformance.worker REQUEST.json`.

The runner (conformance/runner.py) writes a request naming the framework and the variants; the worker
builds each generated model once, then for each variant: counts its parameters per layer, checks its
tensors against the spec, loads the neutral weights and exports them again (bit-exact round trip),
runs every block on the shared input, counts MACs with the framework's own counter, and writes one
JSON result and one .npz of block outputs per variant (atomically), so that a crash loses only the
variant it happened in. Imports of a framework happen here and nowhere else.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    framework = request["framework"]  # a run key: generators.frameworks.RUNS
    from conformance.frameworks import set_up_process

    dtypes = {job.get("dtype", "float32") for job in request["jobs"]}
    set_up_process(framework, "float64" if "float64" in dtypes else "float32",  # before any framework import
                   onnx_export=any(job.get("onnx") for job in request["jobs"]))

    import numpy as np

    from conformance import weights as neutral
    from conformance.frameworks import adapter as get_adapter
    from conformance.results import WorkerResult, outputs_path
    from generators.frameworks import RUNS
    from spec import describe, load_spec

    start = time.perf_counter()
    out = Path(request["out"])
    device_error = _use_device(framework, request.get("device", "cpu"))
    if device_error:  # every job fails with the same clear message; the CLI reports it and stops
        out.mkdir(parents=True, exist_ok=True)
        for job in request["jobs"]:
            _write_result(out, WorkerResult(framework, job["variant"], job.get("dtype", "float32"),
                                            error=device_error, device_error=True))
        return 3
    adapter = get_adapter(framework)
    if request.get("device") == "gpu":
        adapter.device = "cuda"  # PyTorch places models and inputs itself; the others use the GPU they see
    loaded = load_spec(request["spec"])
    out.mkdir(parents=True, exist_ok=True)
    inputs = np.load(request["inputs"]) if request.get("inputs") else None  # the eval and training batches
    images = inputs["images"] if inputs is not None else None
    import_s = time.perf_counter() - start
    for job in request["jobs"]:
        result = WorkerResult(framework, job["variant"], job.get("dtype", "float32"), job["flavor"], import_s)
        timings = result.timings
        try:
            desc = describe(loaded, job["variant"], job["flavor"], tuple(job["resolution"]), job["num_classes"])
            t = time.perf_counter()
            model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution,
                                  result.dtype, abstract=bool(job.get("weights")))
            timings["build"] = time.perf_counter() - t
            t = time.perf_counter()
            shapes = adapter.shapes(model)
            result.tensor_shapes = {name: list(shape) for name, shape in shapes.items()}
            result.trainable = adapter.trainable(model)
            expected = neutral.expected_tensors(desc)
            result.structure_error = _error_text(neutral.check_shapes, shapes, expected, f"{framework} model")
            if job.get("weights"):
                weights, _ = neutral.load(job["weights"])
                neutral.check_tensors(weights, expected, job["weights"])
                adapter.load(model, weights)
                exported = adapter.tensors(model)
                result.round_trip = _round_trip(weights, exported)
                if job.get("export"):
                    neutral.save(Path(job["export"]), exported,
                                 {"variant": desc.variant, "flavor": desc.flavor, "num_classes": str(desc.num_classes),
                                  "exported_by": framework})
            timings["weights"] = time.perf_counter() - t
            blocks = None
            if images is not None and (job.get("forward", True) or job.get("onnx") or job.get("litert")):
                t = time.perf_counter()
                blocks = adapter.forward_blocks(model, images)
                timings["forward"] = time.perf_counter() - t
                result.block_shapes = {name: list(value.shape) for name, value in blocks.items()}
                _save_npz(outputs_path(out, result.variant, framework, result.dtype), blocks)
            if job.get("count_macs"):
                t = time.perf_counter()
                result.macs = adapter.count_macs(model, desc.resolution)
                timings["macs"] = time.perf_counter() - t
            if job.get("onnx") and blocks is not None:
                t = time.perf_counter()
                from conformance.onnx.export import EXPORTERS

                if RUNS[framework].native and framework in EXPORTERS:
                    try:
                        result.onnx = _onnx(RUNS[framework].framework, adapter, model, desc, job, images,
                                            blocks[desc.output])
                    except Exception as exc:  # the model built and ran: a failed export fails the onnx check
                        result.onnx_error = f"{type(exc).__name__}: {exc}"
                        result.traceback = traceback.format_exc(limit=6)
                else:
                    result.onnx_skipped = f"{framework}: ONNX export is checked from {_exported_from(EXPORTERS)}"
                timings["onnx"] = time.perf_counter() - t
            if job.get("litert") and blocks is not None:
                t = time.perf_counter()
                from conformance.litert.export import EXPORTERS as LITERT_EXPORTERS

                if RUNS[framework].native and RUNS[framework].framework.key in LITERT_EXPORTERS:
                    # the model built and ran: a failed export fails the litert check
                    try:
                        result.litert = _litert(RUNS[framework].framework, model, desc, job, images, out, framework)
                    except Exception as exc:  # noqa: BLE001
                        result.litert_error = f"{type(exc).__name__}: {exc}"
                        result.traceback = traceback.format_exc(limit=6)
                else:
                    result.litert_skipped = (f"{framework}: LiteRT export is checked from "
                                             f"{_exported_from(LITERT_EXPORTERS)}")
                timings["litert"] = time.perf_counter() - t
            int8 = (job.get("litert") or {}).get("int8")  # a variant chosen for int8, in a run that exports it
            if int8 and blocks is not None:
                t = time.perf_counter()
                if "error" in int8:  # the re-estimation of its BatchNorm statistics (runner.reestimate)
                    result.litert_int8_error = int8["error"]
                else:
                    try:
                        result.litert_int8 = _litert_int8(RUNS[framework].framework, adapter, desc, job)
                    except Exception as exc:  # noqa: BLE001
                        result.litert_int8_error = f"{type(exc).__name__}: {exc}"
                        result.traceback = traceback.format_exc(limit=6)
                timings["litert_int8"] = time.perf_counter() - t
            if job.get("logits_at"):
                t = time.perf_counter()
                result.logits_shapes = {
                    f"{h}x{w}": list(adapter.logits_at(model, desc, (h, w), batch=2).shape)
                    for h, w in job["logits_at"]}
                timings["logits_at"] = time.perf_counter() - t
            if job.get("train"):
                # training builds its own models: this one and its tensors go first (MobileNetV5's 300M in
                # float64: 2.4 GB each)
                model = weights = exported = blocks = None
                t = time.perf_counter()
                result.train = run_training(adapter, loaded, desc, job, inputs, out)
                timings["train"] = time.perf_counter() - t
        except Exception as exc:  # reported per variant; the worker goes on with the next one
            result.error = f"{type(exc).__name__}: {exc}"
            result.traceback = traceback.format_exc(limit=6)
        _write_result(out, result)
        print(f"{framework} {job['variant']} done", flush=True)
    return 0


def _exported_from(exporters: dict) -> str:
    """The runs an exporter map exports from (a framework's native run), as a skipped export names them."""
    from generators.frameworks import RUNS

    return ", ".join(f"{r.key} ({r.title})" for r in RUNS.values() if r.native and r.key in exporters)


def run_training(adapter, loaded, desc, job: dict, inputs, out: Path) -> dict:
    """Training-mode parity (conformance/training.py). The float64 reference computes everything and writes
    it; a float32 run computes the training-mode forward, the running statistics and dropout; a float64
    run the forward, running statistics, gradients and optimizer steps. Each non-reference run then waits
    for the reference's file and returns the comparison's figures."""
    import numpy as np

    from conformance import training
    from conformance import weights as neutral
    from spec import describe
    from spec.files import atomic_npz
    from spec.resolve import flavor_values

    settings = job["train"]
    role = settings["role"]  # "reference", "float32" or "float64"
    images = inputs["train_images"]
    resolution = tuple(images.shape[2:])
    at = describe(loaded, desc.variant, desc.flavor, resolution, desc.num_classes)
    labels = training.encoder_labels(inputs["train_labels"], at)
    weights, _ = neutral.load(job["weights"])
    dtype = job.get("dtype", "float32")
    timings: dict[str, float] = {}

    def fresh(dropout: float | None = 0.0, dtype: str = dtype):
        model = adapter.build(at.family, at.variant, at.flavor, at.num_classes, at.resolution, dtype, abstract=True,
                              dropout=dropout)
        adapter.load(model, weights)
        return model

    def train_step(model):
        """One training step: its TrainStep, and the running statistics after it."""
        step = adapter.train_step(model, images, labels)
        return step, {name: value for name, value in adapter.tensors(model).items() if neutral.is_state(name)}

    t = time.perf_counter()
    step, statistics = train_step(fresh())
    timings["step"] = time.perf_counter() - t

    def fits():
        """(optimizer, its steps, the eval logits after them) for each optimizer the run was asked for
        (training.optimizers). The steps come one at a time (adapter.fit) and a caller drops each: 3 steps
        of MobileNetV5's 300M parameters are 7.2 GB in float64. `logits()` after the last step. None in
        float32, whose gradients jump at activation kinks (training.py) and are compared in float64."""
        for optimizer in (o for o in training.OPTIMIZERS if o.name in settings["optimizers"]):
            t = time.perf_counter()
            model = fresh()
            yield optimizer.name, adapter.fit(model, images, labels, optimizer, training.TRAIN_STEPS), \
                (lambda model=model: adapter.logits(model, images))
            del model  # before the next one is built (the caller drops its steps and logits likewise)
            timings[optimizer.name] = time.perf_counter() - t

    figures: dict = {"role": role, "resolution": list(resolution), "batch": len(images), "loss": step.loss,
                     "timings": timings}
    reference_file = training.reference_path(out, desc.variant)
    if role == "reference":
        # the reference framework's own float32 error: where a block is ill-conditioned (training.float32_bounds)
        float32_errors = _float32_errors(step, statistics, *train_step(fresh(dtype="float32")), weights)
        with atomic_npz(reference_file) as add:  # written as computed: only one optimizer's steps in memory
            for group, arrays in (("", float32_errors), ("blocks/", step.blocks), ("grad/", step.gradients),
                                  ("stats/", statistics)):
                for n, v in arrays.items():
                    add(f"{group}{n}", v)
            add("loss", np.float64(step.loss))
            del step
            for name, steps, logits in fits():
                for i, params in enumerate(steps):
                    for n, v in params.items():
                        add(f"{name}{i}/{n}", v)
                    del params
                if name == "sgd":
                    add("sgd_eval_logits", logits())
                del steps, logits
        return figures
    if role == "float32" and not at.encoder:  # an encoder has no dropout
        rate = flavor_values(loaded.spec, at.family, at.flavor)[0].dropout
        t = time.perf_counter()
        model = fresh(dropout=None)
        samples = [adapter.train_outputs(model, images, seed) for seed in range(training.DROPOUT_SAMPLES)]
        figures["dropout"] = training.dropout_figures(samples, list(at.block_shapes), weights["classifier.weight"],
                                                      weights["classifier.bias"], rate)
        timings["dropout"] = time.perf_counter() - t
    with _reference_file(reference_file, out, desc.variant, settings) as reference:
        if reference is None:
            figures["reference_missing"] = True
            return figures
        figures |= _compare_training(reference, step, statistics, weights, dtype, at.output)
        del step
        for name, steps, logits in fits():
            figures[name] = _compare_optimizer(reference, name, steps, logits, weights, dtype)
            del steps, logits
    return figures


def _float32_errors(step, statistics: dict, step32, statistics32: dict, weights: dict) -> dict:
    """Per block of the training-mode forward and per running statistic, the float32 step's error against
    the float64 one (`step`, `statistics`), as the reference file stores them."""
    import numpy as np

    from conformance import training

    arrays = {f"float32/blocks/{n}": np.float64(training.relative(step32.blocks[n], ref, ref))
              for n, ref in step.blocks.items()}
    stats = training.change_errors(statistics32, statistics, 0.0, before={n: weights[n] for n in statistics}, stores=1)
    return arrays | {f"float32/stats/{n}": np.float64(e) for n, e in stats.errors.items()}


@contextmanager
def _reference_file(path: Path, out: Path, variant: str, settings: dict):
    """The reference run's training file for `variant` once written, open: each array is read when asked
    for (a float32 run needs the forward's and statistics', not the optimizer steps'). None if that run
    finished the variant without one (its result says why) or never wrote it within the wait."""
    import numpy as np

    from conformance.results import result_path

    deadline = time.perf_counter() + settings.get("wait_s", 600)
    written = result_path(out, variant, settings["reference_run"], settings["reference_dtype"])
    while time.perf_counter() < deadline:
        if path.exists():
            with np.load(path) as data:
                yield data
            return
        if written.exists():
            break
        time.sleep(0.2)
    yield None


def _compare_training(reference, step, statistics: dict, weights: dict, dtype: str, output: str) -> dict:
    """The training-mode forward, the running statistics, and in float64 the gradients, against the
    reference file. `output`: the stage whose output the loss reads (the logits, or an encoder's map)."""
    import numpy as np

    from conformance import training

    tolerance = training.tolerance(dtype)
    blocks_ref = _group(reference, "blocks")
    order = list(blocks_ref)
    blocks = {name: training.relative(step.blocks[name], ref, ref) if name in step.blocks
              and step.blocks[name].shape == ref.shape else float("inf") for name, ref in blocks_ref.items()}
    stats_ref = _group(reference, "stats")
    # float32: each block and statistic as conditioned as the reference's own float32 arithmetic allows
    blocks_allowed = {name: tolerance for name in blocks_ref}
    stats_allowed = {name: tolerance for name in stats_ref}
    if dtype != "float64":
        blocks_allowed |= training.float32_bounds(_group(reference, "float32/blocks"))
        stats_allowed |= training.float32_bounds(_group(reference, "float32/stats"))
    first_block = next((name for name in order if not blocks[name] <= blocks_allowed[name]), None)
    top1 = bool(np.array_equal(training.decisions(step.blocks[output]), training.decisions(blocks_ref[output])))
    statistics_errors = training.change_errors(statistics, stats_ref, stats_allowed,
                                               before={n: weights[n] for n in stats_ref}, stores=1)
    result = {
        "tolerance": tolerance,
        "loss_reference": float(reference["loss"]),
        "forward": {"blocks": blocks, "allowed": blocks_allowed, "first_diverging": first_block, "top1_same": top1,
                    "output": output},
        "statistics": _section(statistics_errors, order),
    }
    if dtype == "float64":  # float32 gradients jump at activation kinks: compared in float64 only (training.py)
        result["gradients"] = _section(training.change_errors(step.gradients, _group(reference, "grad"), tolerance),
                                       order, backward=True)
    return result


def _compare_optimizer(reference, name: str, steps, logits, weights: dict, dtype: str) -> dict:
    """One optimizer's steps, each compared as it comes (adapter.fit), and after SGD the fine-tuned model's
    eval logits (`logits()`), against the reference's."""
    import numpy as np

    from conformance import training

    order = [n[len("blocks/"):] for n in reference if n.startswith("blocks/")]
    # Adam turns a gradient that is float64 rounding into a step of any size (training.ZERO_GRADIENT)
    zero = training.zero_gradient_tensors(_group(reference, "grad")) if name == "adamw" else []
    tolerance = training.tolerance(dtype, optimizer=True)
    per_step = []
    for i, params in enumerate(steps):
        ref = {n: v for n, v in _group(reference, f"{name}{i}").items() if n not in zero}
        errors = training.change_errors(params, ref, tolerance, before={n: weights[n] for n in ref}, stores=i + 1)
        per_step.append(_section(errors, order, backward=True))
        del params, ref
    result = {"steps": per_step, "excluded": zero, "tolerance": tolerance}
    if name == "sgd":
        eval_logits, ref_logits = logits(), reference["sgd_eval_logits"]
        result["eval_logits_rel"] = training.relative(eval_logits, ref_logits, ref_logits)
        result["eval_top1_same"] = bool(np.array_equal(training.decisions(eval_logits),
                                                       training.decisions(ref_logits)))
    return result


def _group(reference, prefix: str) -> dict:
    """The reference's arrays under `prefix/`, by the name after it (from an open .npz: read now).
    `reference`: a mapping of names to arrays, in the order the reference wrote them."""
    return {name[len(prefix) + 1:]: reference[name] for name in reference if name.startswith(prefix + "/")}


def _section(errors, order: list[str], backward: bool = False) -> dict:
    from conformance import training

    blocks, first = training.per_block(errors, order, backward)
    worst = max(errors.errors, key=lambda n: errors.errors[n] / errors.allowed[n]) if errors.errors else None
    section = {"per_block": blocks, "first_diverging": first, "tensors": len(errors.errors),
               "failing": errors.failing[:10], "failing_count": len(errors.failing), "floor": errors.floor,
               "worst": {"tensor": worst, "error": errors.errors[worst], "allowed": errors.allowed[worst]}
               if worst else None}
    return section


def _use_device(framework: str, device: str) -> str | None:
    """On "gpu": check that this framework sees a GPU and turn TF32 off, so that the GPU run computes in
    full float32 and passes the CPU tolerances. Returns an error message, or None."""
    if device == "cpu":
        return None
    from generators.frameworks import run

    library = run(framework).library
    if library == "torch":
        import torch

        if not torch.cuda.is_available():
            return f"--device gpu: {framework}: PyTorch sees no CUDA device (torch.cuda.is_available() is False)"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif library == "jax":
        import jax

        try:
            jax.devices("gpu")
        except RuntimeError as exc:
            return f"--device gpu: {framework}: JAX sees no GPU ({exc})"
        jax.config.update("jax_default_matmul_precision", "highest")
    else:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return f"--device gpu: {framework}: TensorFlow sees no GPU (tensorflow-cpu, or no CUDA device)"
        tf.config.experimental.enable_tensor_float_32_execution(False)
    return None


def _onnx(base, adapter, model, desc, job: dict, images, own_logits):
    """Export (or reuse the export cached under the same content hash), validate, run in ONNX Runtime.
    `base`: the framework (generators.frameworks.Framework) of a native run."""

    import numpy as np
    import onnx

    from conformance.export_cache import cached_export
    from conformance.frameworks.protocol import to_nchw
    from conformance.onnx import export as onnx_export
    from conformance.onnx.from_onnx import canonicalize
    from conformance.results import OnnxResult
    from generators.location import family_module

    generated = Path(family_module(base.key, desc.family).__file__)
    folder = Path(job["onnx"]["dir"])
    path = folder / f"{desc.variant}.{desc.flavor}.{base.key}.onnx"
    key = onnx_export.cache_key(generated, Path(job["weights"]), desc.flavor, desc.resolution)
    cached, export_s = cached_export(path, key, lambda: onnx_export.export(base.key, model, desc.resolution, path))
    validated = onnx_export.validate(path)
    native = images.transpose(0, 2, 3, 1) if base.channels_last else images
    scale = float(np.max(np.abs(own_logits))) or 1.0
    neutral = to_nchw if base.channels_last else np.asarray  # an encoder's output is a feature map
    ort_logits = neutral(onnx_export.run_onnxruntime(path, native))
    reference_error = None
    if job["onnx"].get("reference_evaluator"):
        reference = neutral(onnx_export.run_reference_evaluator(path, native))
        reference_error = float(np.max(np.abs(reference - own_logits))) / scale
    return OnnxResult(
        path=str(path), layout=base.layout, opset=validated["opset"], cached=cached, export_s=export_s,
        ops=validated["ops"], initializer_values=validated["initializer_values"],
        canonical=canonicalize(onnx.load(str(path)), base.layout).summary(),
        ort_rel_error=float(np.max(np.abs(ort_logits - own_logits))) / scale,
        ort_top1_same=bool(np.array_equal(ort_logits.argmax(-1), own_logits.argmax(-1))),
        reference_evaluator_rel_error=reference_error)


def _litert(base, model, desc, job: dict, images, out: Path, run_key: str):
    """Export with every block as an output (or reuse the export cached under the same content hash), count
    its ops, run it in the LiteRT interpreter on the shared input and write the outputs (neutral layout)
    for the checks, which compare them with the framework's and the float64 reference's.
    `base`: the framework (generators.frameworks.Framework) of a native run."""
    from conformance.export_cache import cached_export
    from conformance.frameworks.protocol import to_nchw
    from conformance.litert import export as litert_export
    from conformance.results import LiteRTResult, litert_outputs_path
    from generators.location import family_module

    generated = Path(family_module(base.key, desc.family).__file__)

    def exported(blocks: bool) -> tuple[Path, bool, float]:
        path = Path(job["litert"]["dir"]) / (f"{desc.variant}.{desc.flavor}.{base.key}."
                                             f"{'blocks' if blocks else litert_export.OUTPUT}.tflite")
        key = litert_export.cache_key(generated, Path(job["weights"]), desc.flavor, desc.resolution, blocks=blocks)
        return (path, *cached_export(path, key, lambda: litert_export.export(base.key, model, desc, path, blocks)))

    path, cached, export_s = exported(blocks=True)
    if base.key in litert_export.OP_RULES_ON_DEPLOYABLE:
        deployable, deployable_cached, deployable_s = exported(blocks=False)
        histogram = litert_export.ops(deployable)
        cached, export_s = cached and deployable_cached, export_s + deployable_s
    else:
        histogram = litert_export.ops(path)
    t = time.perf_counter()
    outputs = litert_export.run(path, images.transpose(0, 2, 3, 1))
    run_s = time.perf_counter() - t
    target = litert_outputs_path(out, desc.variant, run_key)
    _save_npz(target, {name: to_nchw(value) for name, value in outputs.items()})
    return LiteRTResult(path=str(path), cached=cached, export_s=export_s, ops=histogram,
                        problems=litert_export.op_problems(histogram, desc), outputs=str(target), run_s=run_s)


def _litert_int8(base, adapter, desc, job: dict):
    """A variant's int8 job (runner.reestimate): from its re-estimated weights, a full-integer LiteRT export
    with every block an output (or the one cached under the same content hash), its op rules and its report
    against this framework's float32 model of the same weights (conformance/litert/quantized.py); with
    --onnx, ONNX Runtime's int8 of the same weights beside it. `base`: the framework of a native run."""
    from conformance import weights as neutral
    from conformance.export_cache import cached_export
    from conformance.litert import export as litert_export
    from conformance.litert import quantized
    from conformance.results import LiteRTInt8Result
    from generators.location import family_module

    int8 = job["litert"]["int8"]
    weights, count = Path(int8["weights"]), int8["calibration"]
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution, abstract=True)
    adapter.load(model, neutral.load(weights)[0])
    generated = Path(family_module(base.key, desc.family).__file__)
    path = Path(job["litert"]["dir"]) / f"{desc.variant}.{desc.flavor}.{base.key}.int8.blocks.tflite"
    key = litert_export.cache_key(generated, weights, desc.flavor, desc.resolution, blocks=True, quantize="int8",
                                  calibration_images=count, bn_stats="calibration")
    cached, export_s = cached_export(path, key, lambda: litert_export.export(
        base.key, model, desc, path, blocks=True, quantize="int8",
        calibration=quantized.calibration_images_nhwc(count, desc.resolution)))
    report = quantized.report(base.key, adapter, model, desc, path, "int8", count, int8["held_out"])
    ort = ort_error = None
    if job.get("onnx"):
        try:
            ort = _ort_int8(base, model, desc, Path(job["onnx"]["dir"]), generated, weights, count, int8["held_out"])
        except Exception as exc:  # noqa: BLE001
            ort_error = f"{type(exc).__name__}: {exc}"  # LiteRT's figures stand; the check fails with this
    return LiteRTInt8Result(path=str(path), cached=cached, export_s=export_s, ops=litert_export.ops(path),
                            problems=quantized.problems(path, desc, "int8"), report=report, ort=ort,
                            ort_error=ort_error)


def _ort_int8(base, model, desc, folder: Path, generated: Path, weights: Path, count: int, held_out: int):
    """ONNX Runtime's static int8 (QDQ) of this framework's ONNX export of `weights` (the re-estimated ones),
    on `count` calibration images, and its report on `held_out` held-out images
    (conformance/onnx/quantize.py); the float export and the quantized file each kept in the ONNX cache
    under a content hash."""
    from conformance.export_cache import cached_export
    from conformance.onnx import export as onnx_export
    from conformance.onnx import quantize as onnx_quantize
    from conformance.results import OrtInt8Result

    stem = f"{desc.variant}.{desc.flavor}.{base.key}.reestimated"
    float_path, int8_path = folder / f"{stem}.onnx", folder / f"{stem}.int8.onnx"
    float_cached, float_s = cached_export(
        float_path, onnx_export.cache_key(generated, weights, desc.flavor, desc.resolution),
        lambda: onnx_export.export(base.key, model, desc.resolution, float_path))

    def quantize() -> float:
        t = time.perf_counter()
        onnx_quantize.quantize(float_path, int8_path,
                               onnx_quantize.calibration_images_native(base.key, count, desc.resolution))
        return time.perf_counter() - t

    int8_cached, int8_s = cached_export(int8_path, onnx_quantize.cache_key(float_path, count), quantize)
    return OrtInt8Result(path=str(int8_path), cached=float_cached and int8_cached, seconds=float_s + int8_s,
                         report=onnx_quantize.report(float_path, int8_path, desc, base.key, count, held_out))


def _error_text(check, *args) -> str | None:
    from conformance.weights import WeightError

    try:
        check(*args)
    except WeightError as exc:
        return str(exc)
    return None


def _round_trip(weights: dict, exported: dict):
    """Neutral -> framework -> neutral must give the same bits (a float64 model: the same values)."""
    import numpy as np

    from conformance.results import RoundTrip

    differing = [name for name, value in weights.items()
                 if name not in exported or exported[name].shape != value.shape
                 or not np.array_equal(exported[name].astype(value.dtype), value)]
    return RoundTrip(len(weights), differing[:10], len(differing))


def _save_npz(path: Path, arrays: dict) -> None:
    from spec.files import atomic_npz

    with atomic_npz(path) as add:
        for name, value in arrays.items():
            add(name, value)


def _write_result(out: Path, result) -> None:
    from conformance.results import result_path
    from spec.files import atomic_write

    atomic_write(result_path(out, result.variant, result.framework, result.dtype), result.to_json())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
