"""LiteRT, float (issue 15): one small variant of each architecture family exported from Keras (TensorFlow
backend) and Flax NNX (PyTorch, litert-torch in its own environment: the slow tier) with every block as an
output, run in the LiteRT interpreter. Each graph has no TRANSPOSE, GATHER or Flex op, and one native
HARD_SWISH per hard-swish of the spec (PyTorch's: its deployable graph, export.OP_RULES_ON_DEPLOYABLE);
every block and the logits are within the outputs check's tolerance (relative to max |reference|, 1e-4,
as ONNX Runtime) of the framework's own and of the float64 reference, with the same top-1.
`mnforge litert` writes a deployable graph (output `logits`); a converter error writes nothing and names
the op; bad input is one line and exit code 2. From PyTorch: MobileNetV3-Small 0.35 by the CLI, its
dynamic-range export, and a small MobileNetV5 (tests/data/fusion_neck.yaml, from all three). Every other
variant, and MobileNetV5 Base: the slow tier.

int8 in conform (issue 15): the same run also exports each small variant (one per family) in int8 from
Keras, from its weights with the BatchNorm statistics re-estimated; its check passes (every op int8, no
block named as the likely cause) and the report has the LiteRT-int8-vs-ORT-int8 table; a second run
reuses the re-estimated weights and the export (content hash: the key covers the quantize mode and the
calibration) and adds ORT's int8 with --onnx. A planted defect failing the check: tests/test_quantize.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conformance import weights as neutral
from conformance.checks import OUTPUT_TOLERANCE, evaluate
from conformance.cli import main as cli
from conformance.export_cache import cached_export, content_key
from conformance.litert import command, torch_env
from conformance.litert.export import FORBIDDEN, OP_RULES_ON_DEPLOYABLE, OUTPUT, float_ops, ops, run
from conformance.quantization import LOSS_THRESHOLD_DB
from conformance.runner import HEAVY_PARAMS, Options, RunConfig, execute
from spec import describe, load_spec

SPEC = load_spec()
RESOLUTION = (64, 48)  # small and non-square: a swapped H and W shows as a wrong shape
SMALL = ["mobilenet_v1_025", "mobilenet_v2_035", "mobilenet_v3_small_035", "mobilenet_v4_conv_small",
         "mobilenet_edgetpu_075"]
EXPORTED = ["torch", "keras", "flax"]


def _litert_run(tmp_path_factory, variants, resolution, int8=(), frameworks=EXPORTED):
    work = tmp_path_factory.mktemp("litert")
    options = Options(count_macs=False, litert=True, litert_dir=str(work / "cache"), litert_int8=tuple(int8))
    result = execute(RunConfig.for_frameworks(SPEC, variants, frameworks, "tf", resolution, options,
                                              work=work))
    return result, evaluate(SPEC, result)


# PyTorch's exports (two a variant, in litert-torch's environment) are the slow part: `make test` has the
# small variants from Keras and Flax, and from PyTorch MobileNetV3-Small 0.35 (the CLI test below), a small
# MobileNetV5 and the dynamic-range export; the small variants from PyTorch are in the slow tier.
IN_MAKE_TEST = [f for f in EXPORTED if f != "torch"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Every small variant in float from Keras and Flax, and each also in int8 (one variant per family)."""
    return _litert_run(tmp_path_factory, SMALL, RESOLUTION, int8=SMALL, frameworks=IN_MAKE_TEST)


@pytest.fixture(scope="module")
def small_torch_run(tmp_path_factory):
    return _litert_run(tmp_path_factory, SMALL, RESOLUTION, frameworks=["torch"])


def _assert_float_export(run_and_checks, variant, framework, resolution):
    result, checks = run_and_checks
    (check,) = [c for c in checks if c.variant == variant and c.subject == framework and c.name == "litert"]
    print(f"{variant} {framework}: {check.summary}")
    assert check.ok, check.summary
    histogram = check.figures["ops"]
    assert not [name for name in histogram if name in FORBIDDEN or name.startswith("Flex")], histogram
    desc = describe(SPEC, variant, "tf", resolution)
    assert histogram.get("HARD_SWISH", 0) == sum(layer.activation == "hard_swish" for layer in desc.layers)
    assert histogram.get("CONV_2D") and histogram.get("DEPTHWISE_CONV_2D"), histogram
    for against in (framework, "float64"):
        figures = check.figures[f"vs_{against}"]
        assert figures["logits_rel"] <= OUTPUT_TOLERANCE and figures["first_diverging"] is None, figures
        assert set(figures["blocks"]) == set(desc.block_shapes), "every block exported and compared"
    # the outputs the check read are the interpreter's, in the neutral layout: the shapes of the spec
    with np.load(check.figures["outputs"]) as outputs:
        for name, shape in desc.block_shapes.items():
            expected = (2, shape[0]) if name in ("pool", "fc", "classifier") else (2, *shape)
            assert outputs[name].shape == expected, name
        if not desc.encoder:
            reference = result.outputs(variant, "torch:float64")["classifier"]
            assert np.array_equal(outputs["classifier"].argmax(-1), reference.argmax(-1))
    return check


@pytest.mark.parametrize("framework", IN_MAKE_TEST)
@pytest.mark.parametrize("variant", SMALL)
def test_float_export_has_builtin_ops_only_and_every_block_matches(small_run, variant, framework):
    _assert_float_export(small_run, variant, framework, RESOLUTION)


@pytest.mark.slow
@pytest.mark.parametrize("variant", SMALL)
def test_pytorch_float_export_has_builtin_ops_only_and_every_block_matches(small_torch_run, variant):
    _assert_float_export(small_torch_run, variant, "torch", RESOLUTION)


def test_hard_swish_is_the_native_op_in_mobilenet_v3(small_run):
    _, checks = small_run
    for framework in IN_MAKE_TEST:
        (check,) = [c for c in checks if c.variant == "mobilenet_v3_small_035" and c.subject == framework
                    and c.name == "litert"]
        assert check.figures["ops"]["HARD_SWISH"] == 19, check.figures["ops"]  # 19 hard-swish layers


@pytest.mark.slow
def test_pytorch_op_rules_are_read_from_its_deployable_graph(small_run, small_torch_run):
    """litert-torch's graph with every block as an output keeps ops a one-output graph does not (an NCHW pad
    between two TRANSPOSE): PyTorch's op rules are checked on the deployable graph, exported beside it and
    cached the same way; Keras's and Flax's on the graph with every block."""
    for variant in SMALL:
        for framework in EXPORTED:
            result, _ = small_torch_run if framework == "torch" else small_run
            litert = result.results[(variant, framework)].litert
            deployable = Path(litert.path).with_name(f"{variant}.tf.{framework}.{OUTPUT}.tflite")
            assert Path(litert.path).name == f"{variant}.tf.{framework}.blocks.tflite"
            assert deployable.exists() == (framework in OP_RULES_ON_DEPLOYABLE), deployable
            assert litert.ops == ops(deployable if framework in OP_RULES_ON_DEPLOYABLE else Path(litert.path))


@pytest.mark.parametrize("variant", SMALL)
def test_int8_in_conform_reports_every_block_from_reestimated_weights(small_run, variant):
    """conform --litert on a variant chosen for int8: the Keras run (runner.LITERT_INT8_RUNS) exports it in
    full-integer int8, every block an output, from the run's weights with BatchNorm re-estimated; the check
    passes: every op int8, no block loses more than the threshold (README: LiteRT)."""
    result, checks = small_run
    (check,) = [c for c in checks if c.variant == variant and c.name == "litert_int8"]
    print(check.summary)
    assert check.subject == "keras" and check.ok, check.summary
    assert result.results[(variant, "flax")].litert_int8 is None  # Keras' run exports int8, the others not
    info = result.results[(variant, "keras")].litert_int8
    desc = describe(SPEC, variant, "tf", RESOLUTION)
    report = info.report
    assert list(report.sqnr_db) == list(desc.block_shapes)  # every block, in network order
    assert report.first_below is None and max(report.loss_db.values()) <= LOSS_THRESHOLD_DB, report.loss_db
    assert report.mode == "int8" and report.calibration == 64 and report.held_out == 32
    assert 38 < report.input_sqnr_db < 42  # the graph rounds its float32 input once
    # float32 in, every block out: one QUANTIZE, a DEQUANTIZE per output, nothing else in float
    assert info.ops["QUANTIZE"] == 1 and info.ops["DEQUANTIZE"] == len(desc.block_shapes), info.ops
    assert float_ops(Path(info.path)) == [] and not info.problems
    # the weights it was exported from: the run's, with only the BatchNorm statistics re-estimated
    run_weights, _ = neutral.load(result.config.work / "weights" / f"{variant}.safetensors")
    reestimated, _ = neutral.load(Path(result.config.options.litert_dir) / f"{variant}.tf.reestimated.safetensors")
    changed = sorted(name for name in run_weights if not np.array_equal(run_weights[name], reestimated[name]))
    assert changed == sorted(name for name in run_weights if name.endswith(("running_mean", "running_var")))


def test_a_second_run_reuses_the_int8_export_and_puts_ort_int8_beside_it(small_run, tmp_path, monkeypatch):
    """The same variant, weights and size again: the re-estimated weights and the int8 export are reused
    (a re-estimation would fail here), and its report is the first run's; with --onnx, ONNX Runtime's int8
    of the same weights beside it, reported on the logits."""
    first, _ = small_run
    variant = "mobilenet_v3_small_035"

    def calibrate(*args):
        raise AssertionError("the re-estimated weights were not reused")

    monkeypatch.setattr(command, "calibrate", calibrate)
    options = Options(outputs=False, count_macs=False, litert=True, litert_dir=first.config.options.litert_dir,
                      litert_int8=(variant,), onnx=True, onnx_dir=str(tmp_path / "onnx"))
    again = execute(RunConfig.for_frameworks(SPEC, [variant], ["keras"], "tf", RESOLUTION, options,
                                             work=tmp_path / "work"))
    (check,) = [c for c in evaluate(SPEC, again) if c.name == "litert_int8"]
    print(check.summary)
    assert check.ok and check.summary.startswith("cached"), check.summary
    int8, before = again.results[(variant, "keras")].litert_int8, first.results[(variant, "keras")].litert_int8
    assert int8.cached and int8.export_s == 0.0 and int8.path == before.path
    assert int8.report == before.report  # the same file on the same held-out images
    assert int8.ort is not None and not int8.ort.cached and int8.ort_error is None
    ort = int8.ort.report
    assert list(ort.sqnr_db) == ["classifier"] and ort.calibration == 64 and 38 < ort.input_sqnr_db < 42
    assert "ORT int8: top-1 agreement" in check.summary


def test_the_report_has_the_int8_table_and_says_which_variants_quantize_poorly(small_run, tmp_path):
    from conformance.int8_table import HEADER
    from conformance.report import INT8_TITLE, write_reports

    result, checks = small_run
    write_reports(tmp_path, SPEC, result, checks)
    markdown, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    section = markdown.split(f"## {INT8_TITLE}\n")[1].split("\n## ")[0]
    assert "- No variant quantizes poorly" in section, section
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| mobilenet_")]
    assert [row[0].lstrip("| ") for row in rows] == SMALL and all(len(row) == len(HEADER) for row in rows)
    assert all(row[6] == "none" and row[-4:] == ["–", "–", "–", "– |"] for row in rows), rows  # no --onnx: no ORT
    assert f"<h2>{INT8_TITLE}</h2>" in html and all(f"<td>{variant}</td>" in html for variant in SMALL)


def test_int8_is_one_variant_per_architecture_of_the_selection_by_default():
    from conformance.cli import int8_variants, quick_variants

    every = list(SPEC.spec.variants())
    chosen, too_large = int8_variants(SPEC, every, None, litert=True)
    assert chosen + too_large == quick_variants(SPEC.spec)  # MobileNetV5's three come last
    assert too_large == ["mobilenet_v5_300m_encoder", "mobilenet_v5_300m", "mobilenet_v5_base"]
    # of a smaller selection: per architecture its width-1.0 variant, else its first in the spec
    assert int8_variants(SPEC, [*SMALL, "mobilenet_v1_050", "mobilenet_v3_large_075"], "architectures", True)[0] == [
        "mobilenet_v1_050", "mobilenet_v2_035", "mobilenet_v3_large_075", "mobilenet_v3_small_035",
        "mobilenet_v4_conv_small", "mobilenet_edgetpu_075"]
    assert int8_variants(SPEC, every, "all", True) == ([v for v in every if v not in too_large], too_large)
    assert int8_variants(SPEC, every, "none", True) == ([], []) == int8_variants(SPEC, every, None, False)


@pytest.mark.parametrize("argv, named", [
    (["--litert", "--litert-int8", "some"], "--litert-int8 'some': expected one of none, architectures, all"),
    (["--litert-int8", "all"], "--litert-int8 all: int8 is part of the LiteRT check; add --litert"),
])
def test_a_bad_litert_int8_choice_is_one_line_and_exit_code_2(capsys, argv, named):
    assert cli(["conform", "mobilenet_v1_025", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {named}"], lines


def test_nothing_is_reestimated_without_a_run_that_exports_int8(tmp_path, monkeypatch):
    from conformance.runner import reestimate

    def calibrate(*args):
        raise AssertionError("re-estimated for no int8 export")

    monkeypatch.setattr(command, "calibrate", calibrate)
    options = Options(litert=True, litert_int8=("mobilenet_v1_025",))
    assert reestimate(RunConfig.for_frameworks(SPEC, ["mobilenet_v1_025"], ["torch", "flax"], "tf", RESOLUTION,
                                               options, work=tmp_path)) == {}


def test_the_int8_cache_key_covers_the_quantize_mode_and_the_calibration(tmp_path):
    """A quantized export depends on its mode, the BatchNorm statistics' origin and, in int8, the calibration
    images; a float key covers the generated file, the weights and the converters' modules (PyTorch's two
    included), the flavor, size and outputs."""
    from conformance import calibration
    from conformance.litert import export

    generated, weights = tmp_path / "generated.py", tmp_path / "w.safetensors"
    generated.write_text("a")
    weights.write_bytes(b"w")

    def key(**quantized):
        return export.cache_key(generated, weights, "tf", (64, 48), blocks=True, **quantized)

    converters = [Path(export.__file__).with_name(name) for name in ("export.py", "torch_env.py", "torch_convert.py")]
    assert key() == content_key([generated, weights, *converters], ["blocks", "tf", [64, 48]])
    int8 = key(quantize="int8", calibration_images=64, bn_stats="calibration")
    assert int8 == key(quantize="int8", calibration_images=64, bn_stats="calibration")
    others = [key(), key(quantize="dynamic", bn_stats="calibration"),
              key(quantize="int8", calibration_images=32, bn_stats="calibration"),
              key(quantize="int8", calibration_images=64, bn_stats="weights")]
    assert len({int8, *others}) == 5
    # the re-estimated weights it starts from: their own key, with the number of calibration images
    assert calibration.cache_key(generated, weights, 64, "tf", (64, 48)) != \
        calibration.cache_key(generated, weights, 32, "tf", (64, 48))


def test_exports_are_cached_by_content_hash(tmp_path):
    source = tmp_path / "generated.py"
    source.write_text("a")
    target = tmp_path / "model.tflite"
    calls = []

    def export():
        calls.append(1)
        target.write_bytes(b"graph")
        return 1.5

    key = content_key([source], ["blocks", "tf", [64, 48]])
    assert cached_export(target, key, export) == (False, 1.5)
    assert cached_export(target, key, export) == (True, 0.0) and len(calls) == 1
    source.write_text("b")  # the generated code changed: exported again
    assert cached_export(target, content_key([source], ["blocks", "tf", [64, 48]]), export) == (False, 1.5)
    assert content_key([source], ["blocks", "tf", [64, 64]]) != content_key([source], ["blocks", "tf", [64, 48]])


def test_the_same_weights_written_by_two_runs_have_one_cache_key(tmp_path):
    """The safetensors writer orders its header's metadata by a hash map seeded per process: two runs
    wrote the same tensors as different bytes, and no ONNX or LiteRT export was reused across runs."""
    import subprocess
    import sys

    from conformance import weights as neutral

    write = ("import sys, numpy as np; from conformance import weights as w; "
             "w.save(sys.argv[1], {'a': np.arange(4, dtype=np.float32)}, "
             "{'variant': 'v', 'flavor': 'tf', 'num_classes': '10', 'extra': 'x'})")
    files = [tmp_path / f"process{i}.safetensors" for i in range(2)]
    for path in files:
        subprocess.run([sys.executable, "-c", write, str(path)], check=True)
    assert neutral.load(files[0])[1] == neutral.load(files[1])[1]
    assert content_key([files[0]], []) == content_key([files[1]], [])
    tensors, metadata = neutral.load(files[0])
    neutral.save(tmp_path / "other.safetensors", {"a": tensors["a"] + 1}, metadata)  # other values: another key
    assert content_key([tmp_path / "other.safetensors"], []) != content_key([files[0]], [])


def test_cli_writes_a_graph_with_one_logits_output(tmp_path, capsys):
    path = tmp_path / "v3.tflite"
    assert cli(["litert", "mobilenet_v3_small_035", "--framework", "keras", "--resolution", "64x48",
                "-o", str(path)]) == 0
    err = capsys.readouterr().err
    assert "HARD_SWISH 19" in err and "LiteRT vs keras" in err and "top-1 same" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v3.tflite"]  # no temporary file left
    histogram = ops(path)
    assert histogram["HARD_SWISH"] == 19 and not set(histogram) & set(FORBIDDEN), histogram
    images = np.random.default_rng(3).normal(size=(2, 64, 48, 3)).astype(np.float32)
    outputs = run(path, images)
    assert list(outputs) == [OUTPUT] and outputs[OUTPUT].shape == (2, 1000)


def test_a_converter_error_names_the_op_and_writes_nothing(tmp_path):
    """The worker of `mnforge litert`, with the Flax exporter replaced by one whose graph has an op LiteRT has
    no builtin for (a matrix determinant): one-line error naming it, no file, no temporary file."""
    request = {"spec": str(SPEC.path), "op": "litert", "variant": "mobilenet_v1_025", "flavor": "tf",
               "num_classes": 1000, "framework": "flax", "resolution": [32, 32], "path": str(tmp_path / "m.tflite"),
               "weights": None, "result": str(tmp_path / "result.json"), "run": "flax"}
    (tmp_path / "request.json").write_text(json.dumps(request))
    driver = textwrap.dedent(f"""
        import sys
        from conformance.litert import export

        def determinant(model, desc, blocks):
            import tensorflow as tf

            @tf.function(input_signature=[tf.TensorSpec((1, 4, 4), tf.float32)])
            def forward(x):
                return {{"logits": tf.linalg.det(x)}}

            holder = tf.Module()
            holder.forward = forward
            return tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], holder), holder

        export.EXPORTERS["flax"] = export._through_tensorflow(determinant)
        from conformance.porting.worker import main
        sys.exit(main([{str(tmp_path / "request.json")!r}]))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", driver], check=False, capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = json.loads((tmp_path / "result.json").read_text())["error"]
    assert "\n" not in error and "tf.MatrixDeterminant" in error and "no builtin op" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["request.json", "result.json"]


def test_cli_exports_from_pytorch_through_the_litert_torch_environment(tmp_path, capsys):
    path = tmp_path / "v3.tflite"
    assert cli(["litert", "mobilenet_v3_small_035", "--framework", "torch", "--flavor", "keras", "--resolution",
                "64x48", "-o", str(path)]) == 0
    err = capsys.readouterr().err
    assert "LiteRT vs torch" in err and "top-1 same" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v3.tflite"]  # the other environment's folder is gone
    histogram = ops(path)  # TF SAME pads (flavor keras) fold into the convolutions: no PAD, no TRANSPOSE
    assert histogram["HARD_SWISH"] == 19 and not set(histogram) & {*FORBIDDEN, "PAD"}, histogram
    outputs = run(path, np.random.default_rng(3).normal(size=(2, 64, 48, 3)).astype(np.float32))
    assert list(outputs) == [OUTPUT] and outputs[OUTPUT].shape == (2, 1000)


def test_pytorch_dynamic_range_has_int8_weights_and_float_activations(tmp_path, capsys):
    """--quantize dynamic from PyTorch (PT2E in litert-torch's environment): every convolution's and the
    classifier's weights int8 per output channel, the input, the output and no DEQUANTIZE in float32."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    path = tmp_path / "v1.tflite"
    assert cli(["litert", "mobilenet_v1_025", "--framework", "torch", "--quantize", "dynamic", "--resolution",
                "64x48", "-o", str(path)]) == 0
    err = capsys.readouterr().err
    assert "dynamic-range (int8 weights, float32 activations)" in err and "dynamic vs torch (float32)" in err, err
    histogram = ops(path)
    assert not set(histogram) & {*FORBIDDEN, "DEQUANTIZE", "QUANTIZE"}, histogram
    model = fu.read_model(str(path))
    (graph,) = model.subgraphs
    weighted = [op for op in graph.operators
                if fu.opcode_to_name(model, op.opcodeIndex) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(weighted) == 14 + 13 + 1  # stem and 13 pointwise, 13 depthwise, the classifier
    for op in weighted:
        weight = graph.tensors[op.inputs[1]]
        assert weight.type == fu.schema_fb.TensorType.INT8, fu.opcode_to_name(model, op.opcodeIndex)
        assert len(weight.quantization.scale) == weight.shape[0 if weight.shape[0] > 1 else -1]  # per channel
    assert all(graph.tensors[i].type == fu.schema_fb.TensorType.FLOAT32 for i in [*graph.inputs, *graph.outputs])


def test_pytorch_without_its_environment_says_how_to_make_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(torch_env.ENVIRONMENT, str(tmp_path / "no-such-python"))
    assert cli(["litert", "mobilenet_v1_025", "--framework", "torch", "--resolution", "32", "-o",
                str(tmp_path / "m.tflite")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "litert-torch environment" in lines[0] and "no-such-python" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_pytorch_op_without_a_lowering_is_named_and_nothing_is_written(tmp_path):
    """A generated module (file) whose network has an op litert-torch cannot lower (a matrix determinant),
    through the litert-torch environment and the PyTorch exporter: one-line error naming the ATen op, no
    file. Driven in a PyTorch process of its own, as the workers are."""
    generated = tmp_path / "determinant.py"
    generated.write_text(textwrap.dedent("""
        import torch

        class Determinant(torch.nn.Module):
            def forward(self, x):
                return torch.linalg.det(x[:, 0, :4, :4]).unsqueeze(-1)

            def forward_intermediates(self, x):
                return {"classifier": self(x)}

        VARIANTS = {"determinant": lambda flavor: Determinant()}
    """))
    driver = textwrap.dedent(f"""
        import types
        from pathlib import Path
        import torch
        from conformance.litert import export
        import generators.location

        generators.location.family_module = lambda key, family: types.SimpleNamespace(__file__={str(generated)!r})
        desc = types.SimpleNamespace(variant="determinant", flavor="tf", family="determinant", num_classes=None,
                                     resolution=(8, 8))
        try:
            export.export("torch", torch.nn.Module(), desc, Path({str(tmp_path / "m.tflite")!r}))
        except export.LiteRTError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", driver], check=False, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "LiteRT has no builtin op for aten._linalg_det.default", proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["determinant.py"]


@pytest.mark.parametrize("argv, named", [
    (["litert", "mobilenet_v9", "--framework", "keras"], "mobilenet_v9"),
    (["litert", "mobilenet_v1_025", "--framework", "torch", "--quantize", "int8"], "export int8 from keras or flax"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, argv, named):
    assert cli([*argv, "-o", str(tmp_path / "m.tflite")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert not list(tmp_path.iterdir())


def test_unknown_framework_is_refused_by_the_parser(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli(["litert", "mobilenet_v1_025", "--framework", "tflite", "-o", str(tmp_path / "m.tflite")])
    assert exit_.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


# The slow tier: every variant but MobileNetV5's (over HEAVY_PARAMS), at the conformance run's resolution.
EVERY = [v for v in SPEC.spec.variants() if describe(SPEC, v).params <= HEAVY_PARAMS and v not in SMALL]

HYBRID = [v for v in EVERY if any(layer.kind == "attention" for layer in describe(SPEC, v).layers)]


@pytest.fixture(scope="module")
def every_run(tmp_path_factory):
    """Every other variant in float, and in int8 too: `make conformance` quantizes one per architecture."""
    return _litert_run(tmp_path_factory, EVERY, (224, 192), int8=EVERY)


@pytest.mark.slow
@pytest.mark.parametrize("framework", EXPORTED)
@pytest.mark.parametrize("variant", EVERY)
def test_every_variant_exports_float(every_run, variant, framework):
    _assert_float_export(every_run, variant, framework, (224, 192))


@pytest.mark.slow
@pytest.mark.parametrize("variant", EVERY)
def test_every_variant_quantizes_to_int8_with_no_block_named(every_run, variant):
    result, checks = every_run
    (check,) = [c for c in checks if c.variant == variant and c.name == "litert_int8"]
    print(check.summary)
    assert check.subject == "keras" and check.ok, check.summary
    report = result.results[(variant, "keras")].litert_int8.report
    assert list(report.sqnr_db) == list(describe(SPEC, variant, "tf", (224, 192)).block_shapes)


@pytest.fixture(scope="module")
def hybrid_timm_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("litert-timm")
    options = Options(count_macs=False, litert=True, litert_dir=str(work / "cache"))
    result = execute(RunConfig.for_frameworks(SPEC, HYBRID, ["torch"], "timm", (224, 192), options, work=work))
    return result, evaluate(SPEC, result)


@pytest.mark.slow
@pytest.mark.parametrize("variant", HYBRID)
def test_pytorch_hybrids_export_without_transpose_in_the_timm_flavor(hybrid_timm_run, variant):
    _, checks = hybrid_timm_run
    (check,) = [c for c in checks if c.variant == variant and c.subject == "torch" and c.name == "litert"]
    assert check.ok and "TRANSPOSE" not in check.figures["ops"], check.summary
    assert check.figures["ops"]["BATCH_MATMUL"] > 0, check.figures["ops"]  # the attention, as matrix products


# MobileNetV5, small (tests/data/fusion_neck.yaml), in the tf flavor. Keras and Flax resample the fusion neck
# as products with a constant matrix per axis, so their graphs have no gather (GATHER_ND included) and no
# TRANSPOSE; at 72x40 the coarser map is upsampled by odd factors and the fused map resized
# bilinearly. From PyTorch, those odd factors are where litert-torch's nearest resize is not PyTorch's
# (torch_convert._nearest_as_pytorch: the neck diverged, rel. error 0.81), and Mobile MQA's TF-SAME pad
# before the key and value downsampling reads the map the query reads (torch_convert._constant_pad_in_nhwc:
# 3 TRANSPOSE without it).
NECK_SPEC = load_spec(Path(__file__).parent / "data" / "fusion_neck.yaml")


def test_a_small_mobilenet_v5_exports_without_gathers_or_transposes_from_every_framework(tmp_path):
    from generators import location

    options = Options(count_macs=False, litert=True, litert_dir=str(tmp_path / "cache"))
    generated = location.generated_dir(NECK_SPEC, override=tmp_path / "generated")
    result = execute(RunConfig.for_frameworks(NECK_SPEC, ["fusion_encoder"], EXPORTED, "tf", (72, 40),
                                              options, work=tmp_path, generated=generated))
    checks = [c for c in evaluate(NECK_SPEC, result) if c.name == "litert"]
    assert sorted(c.subject for c in checks) == sorted(EXPORTED)
    for check in checks:
        assert check.ok, check.summary
        histogram = check.figures["ops"]
        assert not set(histogram) & set(FORBIDDEN), histogram


# MobileNetV5 Base (83 M parameters; the 300M variants need more memory than the 23 GB this was measured on:
# README, MobileNetV5 in LiteRT) from all three, at 128x96: its fusion neck upsamples a 4x3 map to 8x6 (nearest)
# and the fused map to 16x16 (bilinear).
@pytest.fixture(scope="module")
def v5_run(tmp_path_factory):
    return _litert_run(tmp_path_factory, ["mobilenet_v5_base"], (128, 96))


@pytest.mark.slow
@pytest.mark.parametrize("framework", EXPORTED)
def test_mobilenet_v5_base_exports_float(v5_run, framework):
    _assert_float_export(v5_run, "mobilenet_v5_base", framework, (128, 96))
