"""int8 LiteRT (issue 15, int8 parity): full-integer post-training quantization of Keras and Flax exports, the
report against the float model, a planted int8-hostile defect that the per-block report names, and ONNX
Runtime's static QDQ int8 on the same weights and images.

The defect is the classic one that cross-layer equalization undoes: channel 0 of MobileNetV2 0.35's first
block output is scaled ×1000 (its BatchNorm's scale and shift) and the next block's expand conv reads it
÷1000, so the float network computes the same function, but the int8 tensor between them takes its one
scale from the outlier channel and rounds the other 7 channels to a few levels. blocks.0's own SQNR stays
high (the outlier channel holds almost all its energy and is itself rounded finely); the loss appears at
blocks.1, the first block that reads the crushed channels with full weight: the report must name blocks.1.
The same weights without the defect: no block is named. (Measured: blocks.0 32 dB, blocks.1 −2 dB, a loss
of 34 dB, in Keras and Flax; the clean model's largest loss 7.0 dB.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import weights as neutral
from conformance.cli import main as cli
from conformance.litert import command
from conformance.litert.export import FORBIDDEN, OUTPUT, float_ops, ops, run
from conformance.quantization import BEST_INT8_DB, LOSS_THRESHOLD_DB, compare, quantize_dequantize, sqnr_db
from spec import describe, load_spec

SPEC = load_spec()
VARIANT = "mobilenet_v2_035"
RESOLUTION = (64, 48)
DEFECT_BLOCK, DEFECT_SCALE, DEFECT_READER = "blocks.0.project.bn", "blocks.0", "blocks.1.expand.conv"
ROOT = Path(__file__).resolve().parents[1]


def _weights(path: Path, planted: bool) -> Path:
    desc = describe(SPEC, VARIANT, "tf", RESOLUTION)
    tensors = neutral.random_weights(desc, seed=0)
    if planted:
        tensors[f"{DEFECT_BLOCK}.weight"][0] *= 1000.0
        tensors[f"{DEFECT_BLOCK}.bias"][0] *= 1000.0
        tensors[f"{DEFECT_READER}.weight"][:, 0] /= 1000.0
    neutral.save(path, tensors, {"variant": VARIANT, "flavor": "tf", "num_classes": "1000"})
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The clean model, int8 from Keras, and the planted one from Keras and Flax, BatchNorm statistics
    re-estimated; and the CLI's dynamic-range export of the clean one (its text kept)."""
    work = tmp_path_factory.mktemp("int8")
    desc = describe(SPEC, VARIANT, "tf", RESOLUTION)
    done = {"clean": command.export(SPEC, desc, "keras", work / "clean.tflite", flavor="tf", quantize="int8",
                                    weights=_weights(work / "clean.safetensors", planted=False),
                                    bn_stats="calibration")}
    # the planted model's statistics re-estimated once, for both exporters (as conform will)
    request = command.request_of(SPEC, desc, "tf", _weights(work / "planted.safetensors", planted=True), 64, 32)
    calibrated = command.calibrate(request, desc, work / "planted-calibrated.safetensors")
    for framework in ("keras", "flax"):
        done[f"planted-{framework}"] = command.export(SPEC, desc, framework, work / f"planted-{framework}.tflite",
                                                      flavor="tf", weights=calibrated, quantize="int8",
                                                      bn_stats="weights")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(["litert", VARIANT, "--framework", "keras", "--resolution", "64x48", "--quantize", "dynamic",
                    "--weights", str(work / "clean.safetensors"), "-o", str(work / "dynamic.tflite")])
    done["cli"] = (code, err.getvalue())
    return done


def test_the_clean_model_has_no_block_below_the_threshold(exports):
    report = exports["clean"].report
    print("\n".join(report.lines()))
    assert exports["clean"].bn_stats == "calibration" and not exports["clean"].problems
    assert list(report.sqnr_db) == list(describe(SPEC, VARIANT, "tf", RESOLUTION).block_shapes)
    assert report.first_below is None, report.loss_db
    assert report.mode == "int8" and report.calibration == 64 and report.held_out == 32
    assert 38 < report.input_sqnr_db < 42  # standard normal input rounded on 256 levels over about ±4.5σ


@pytest.mark.parametrize("framework", ["keras", "flax"])
def test_the_planted_outlier_is_named_by_the_per_block_report(exports, framework):
    report = exports[f"planted-{framework}"].report
    print("\n".join(report.lines()))
    assert report.first_below == "blocks.1", report.first_below
    # blocks.0 holds the outlier: its SQNR stays above 25 dB (the outlier channel has nearly all the energy)
    assert report.sqnr_db[DEFECT_SCALE] > 25.0 and report.loss_db[DEFECT_SCALE] <= LOSS_THRESHOLD_DB
    # blocks.1 reads the crushed channels: it loses far more than any clean block (measured 34 dB)
    assert report.loss_db["blocks.1"] > 2 * LOSS_THRESHOLD_DB, report.loss_db


def test_the_defect_costs_the_logits_too(exports):
    """Measured: mean KL 0.080 clean, 0.223 planted; the logits' SQNR 6.2 and 1.7 dB (random weights: the
    float network itself takes an input perturbation of 38 dB down to about 7 dB, README, LiteRT)."""
    clean, planted = exports["clean"].report, exports["planted-keras"].report
    assert planted.mean_kl > 2 * clean.mean_kl, (planted.mean_kl, clean.mean_kl)
    assert planted.sqnr_db["classifier"] < clean.sqnr_db["classifier"] - 3.0


def test_the_cli_prints_the_report(exports):
    code, text = exports["cli"]
    print(text)
    assert code == 0, text
    assert "dynamic-range (int8 weights, float32 activations)" in text
    assert "BatchNorm statistics: the weights' own" in text  # --weights given, no --bn-stats
    assert "dynamic vs keras (float32), 32 held-out images (weights only, no calibration)" in text, text
    assert "top-1 agreement" in text and "input not rounded" in text
    for block in describe(SPEC, VARIANT, "tf", RESOLUTION).block_shapes:  # every block, in network order
        assert f"  {block} " in text


def test_int8_file_is_valid_and_runs_in_the_litert_interpreter(exports):
    from ai_edge_litert.interpreter import Interpreter

    path = exports["clean"].path
    histogram = ops(path)
    assert histogram["QUANTIZE"] == 1 and histogram["DEQUANTIZE"] == 1, histogram  # float32 input and output
    assert not [n for n in histogram if n in FORBIDDEN or n.startswith("Flex")], histogram
    assert float_ops(path) == [] and not exports["clean"].problems  # every op int8
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (image,), (logits,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert image["dtype"] == np.float32 and tuple(image["shape"]) == (1, *RESOLUTION, 3)
    assert logits["dtype"] == np.float32 and tuple(logits["shape"]) == (1, 1000)
    int8 = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
    assert len(int8) > 50, "weights and activations are int8"
    out = run(path, np.random.default_rng(7).normal(size=(2, *RESOLUTION, 3)).astype(np.float32))
    assert list(out) == [OUTPUT] and out[OUTPUT].shape == (2, 1000) and np.all(np.isfinite(out[OUTPUT]))


@pytest.mark.parametrize("argv, named", [
    (["--quantize", "int4"], "--quantize 'int4'"),
    (["--quantize", "int8", "--calibration", "0"], "--calibration 0"),
    (["--quantize", "int8", "--bn-stats", "running"], "--bn-stats 'running'"),
])
def test_bad_quantize_options_are_one_line_and_exit_code_2(capsys, tmp_path, argv, named):
    assert cli(["litert", VARIANT, "--framework", "keras", *argv, "-o", str(tmp_path / "m.tflite")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert not list(tmp_path.iterdir())


def test_report_arithmetic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 5, 5))
    noisy = x + 0.01 * rng.normal(size=x.shape)
    assert abs(sqnr_db(x, noisy) - 40.0) < 0.5  # noise at 1% of the RMS: 40 dB
    # an input rounded on 256 levels over ±4.5σ: about 40 dB (BEST_INT8_DB is a full-scale sine's 49.9 dB)
    assert 38 < sqnr_db(x, quantize_dequantize(x, 9.0 / 256, 0)) < 42 < BEST_INT8_DB
    logits = rng.normal(size=(4, 10))
    report = compare({"a": x, "b": x, "classifier": logits}, {"a": noisy, "b": x + 0.5 * rng.normal(size=x.shape),
                     "classifier": logits + 1e-3}, "classifier", mode="int8", against="test", calibration=1,
                     input_sqnr_db=45.0)
    assert report.loss_db["a"] == pytest.approx(45.0 - report.sqnr_db["a"], abs=1e-3)
    assert report.first_below == "b" and report.top1_agreement == 1.0 and report.mean_kl < 1e-6
    assert report.worst[0] == "b"
    capped = compare({"a": x}, {"a": noisy}, None, mode="dynamic", against="test", calibration=0,
                     input_sqnr_db=float("inf"))  # a float input: the first block measured against 49.9 dB
    assert capped.loss_db["a"] == pytest.approx(BEST_INT8_DB - capped.sqnr_db["a"], abs=1e-3)
    assert capped.top1_agreement is None and capped.first_below is None


def test_a_block_after_the_pool_is_measured_from_the_lowest_sqnr_before_it():
    """The global pool averages the noise over every position and keeps each channel's mean, so its SQNR
    rises; a BatchNorm after it (MobileNetV4's fc) takes the mean out and falls back (in float64, without
    quantization: 11.5 dB, MobileNetV4-Conv-Small at 224x192). Measured from the lowest SQNR before it, that
    fall is no loss; a head that falls 10 dB below the last conv is named."""
    rng = np.random.default_rng(4)
    conv = rng.normal(size=(16, 8, 7, 6))
    conv_int8 = conv + 0.1 * rng.normal(size=conv.shape)  # 20 dB
    pool, pool_int8 = conv.mean(axis=(2, 3)) + 3.0, conv_int8.mean(axis=(2, 3)) + 3.0  # a mean over the images
    mean = pool.mean(axis=0)
    fc, fc_int8 = pool - mean, pool_int8 - mean  # the BatchNorm's centring: the noise stays, the mean goes

    def report(fc_quantized):
        return compare({"last_conv": conv, "pool": pool, "fc": fc}, {"last_conv": conv_int8, "pool": pool_int8,
                       "fc": fc_quantized}, None, mode="int8", against="test", calibration=1, input_sqnr_db=25.0)

    clean = report(fc_int8)
    assert clean.sqnr_db["pool"] - clean.sqnr_db["fc"] > LOSS_THRESHOLD_DB  # what the previous block's rule named
    assert clean.first_below is None and clean.loss_db["fc"] < 3.0, clean.loss_db
    broken = report(fc + 30 * (fc_int8 - fc))  # 29.5 dB more noise than it received
    assert broken.first_below == "fc" and broken.loss_db["fc"] > LOSS_THRESHOLD_DB, broken.loss_db


RE_ESTIMATE = """
import json, sys
import numpy as np
from conformance.frameworks import adapter, set_up_process
set_up_process("torch")
import torch
from conformance import calibration
from spec import describe, load_spec
desc = describe(load_spec(), sys.argv[1], "tf", (64, 48))
a = adapter("torch")
model = a.build(desc.family, desc.variant, desc.flavor, 1000, desc.resolution, dtype="float64")
images = calibration.images(16, desc.resolution, calibration.CALIBRATION_SEED)
names = calibration.reestimate_batch_norm(model, images)
worst = []
def check(name):
    def hook(module, inputs, output):
        standard = (output - module.bias[None, :, None, None]) / module.weight[None, :, None, None]
        expected = module.running_var / (module.running_var + module.eps)  # epsilon's share of the variance
        worst.append((float(standard.mean(dim=(0, 2, 3)).abs().max()),
                      float((standard.var(dim=(0, 2, 3), unbiased=False) / expected - 1).abs().max())))
    return hook
for name, module in model.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
        module.register_forward_hook(check(name))
with torch.no_grad():
    model(torch.from_numpy(images).double())
print(json.dumps({"names": names, "worst": worst}))
"""


def test_batch_norm_statistics_are_those_of_each_input_on_the_calibration_images():
    """Re-estimated in float64 PyTorch: each BatchNorm then standardizes its own input on the calibration set
    (mean 0, variance var / (var + epsilon) before its scale and shift, up to float64 rounding)."""
    proc = subprocess.run([sys.executable, "-c", RE_ESTIMATE, VARIANT], check=False, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    desc = describe(SPEC, VARIANT, "tf", RESOLUTION)
    assert found["names"] == [layer.name for layer in desc.layers if layer.kind == "batch_norm"]
    for mean, var in found["worst"]:
        assert mean < 1e-9 and var < 1e-9, (mean, var)


def test_onnx_runtime_int8_is_qdq_and_reported_on_the_logits(tmp_path):
    """ORT's static QDQ quantization of the Keras ONNX export, with the same re-estimated weights and images."""
    from conformance.onnx.quantize import ops as onnx_ops
    from conformance.porting.port import run_worker
    from conformance.quantization import QuantizationReport

    desc = describe(SPEC, VARIANT, "tf", RESOLUTION)
    request = command.request_of(SPEC, desc, "tf", _weights(tmp_path / "w.safetensors", planted=False), 64, 32)
    weights = command.calibrate(request, desc, tmp_path / "calibrated.safetensors")
    result = run_worker({**request, "weights": str(weights), "op": "ort_int8", "framework": "keras",
                         "path": str(tmp_path / "int8.onnx")}, "keras", "ORT int8")
    histogram = onnx_ops(tmp_path / "int8.onnx")
    assert histogram["QuantizeLinear"] > 50 and histogram["DequantizeLinear"] > 50, histogram
    report = QuantizationReport.from_json(result["report"])
    print("\n".join(report.lines()))
    assert list(report.sqnr_db) == ["classifier"] and not report.loss_db and report.first_below is None
    assert 38 < report.input_sqnr_db < 42 and report.top1_agreement is not None and report.mean_kl >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated.safetensors", "int8.onnx", "w.safetensors"]


def test_the_side_by_side_table_has_a_row_per_variant():
    from conformance.int8_table import Int8Row, table

    rng = np.random.default_rng(1)
    x, logits = rng.normal(size=(4, 8, 3, 3)), rng.normal(size=(4, 10))
    litert = compare({"stem": x, "classifier": logits}, {"stem": x + 0.01, "classifier": logits + 0.1}, "classifier",
                     mode="int8", against="keras (float32)", calibration=64, input_sqnr_db=40.0)
    ort = compare({"classifier": logits}, {"classifier": logits + 0.2}, "classifier", mode="int8 (ORT, QDQ)",
                  against="ORT float32", calibration=64, input_sqnr_db=40.0, every_block=False)
    lines = table([Int8Row("v", litert, 1.0, ort, 2.0)]).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| v | 100% |") and lines[2].count("|") == lines[0].count("|")
    assert "18.2 dB (classifier)" in lines[2] and "| classifier | 1.0 |" in lines[2]  # +0.1 on the logits: named


FLOAT_ISLAND = """
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
from conformance.litert.export import _convert, float_ops

@tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
def forward(x):
    return {"logits": tf.math.sin(tf.nn.conv2d(x, tf.ones((3, 3, 3, 4)), 1, "SAME")) + 1.0}

holder = tf.Module()
holder.forward = forward
converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], holder)
images = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
Path(sys.argv[1]).write_bytes(_convert(converter, "int8", images))
print(float_ops(Path(sys.argv[1])))
"""


def test_an_op_without_an_int8_kernel_is_named_as_running_in_float(tmp_path):
    """SIN has no int8 kernel: the converter keeps it in float between a DEQUANTIZE and a QUANTIZE rather
    than failing, so the int8 op rule reads the graph."""
    proc = subprocess.run([sys.executable, "-c", FLOAT_ISLAND, str(tmp_path / "sin.tflite")], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['SIN']", proc.stdout


def test_a_named_likely_cause_or_an_op_in_float_fails_the_int8_check_and_the_report_says_where():
    """conform's int8 check (checks._litert_int8_checks) on three results as the Keras worker writes them
    (through JSON, as the runner reads them): a block that loses more than the threshold and an op left in
    float each fail it; the report's verdict names the variant and where, its table has every row."""
    from types import SimpleNamespace

    from conformance.checks import _litert_int8_checks
    from conformance.report import check_from_json, int8_summary
    from conformance.results import LiteRTInt8Result, WorkerResult

    rng = np.random.default_rng(2)
    x, logits = rng.normal(size=(4, 8, 3, 3)), rng.normal(size=(4, 10))
    small, large = 0.01 * rng.normal(size=x.shape), 0.5 * rng.normal(size=x.shape)

    def report(blocks_1_noise):
        return compare({"blocks.0": x, "blocks.1": x, "classifier": logits},
                       {"blocks.0": x + small, "blocks.1": x + blocks_1_noise, "classifier": logits + 0.01}, "classifier",
                       mode="int8", against="keras (float32)", calibration=64, input_sqnr_db=40.0)

    planted, clean = report(large), report(small)
    assert planted.first_below == "blocks.1" and clean.first_below is None
    exports = {"a": LiteRTInt8Result("a.tflite", False, 2.5, {"CONV_2D": 3}, [], planted),
               "b": LiteRTInt8Result("b.tflite", True, 0.0, {"CONV_2D": 3, "SIN": 1}, ["SIN in float (no int8 kernel)"],
                                     clean),
               "c": LiteRTInt8Result("c.tflite", True, 0.0, {"CONV_2D": 3}, [], clean)}
    results = {}
    for variant, export in exports.items():
        written = WorkerResult("keras", variant, litert_int8=export).to_json()
        results[(variant, "keras")] = WorkerResult.from_json(written)
        assert results[(variant, "keras")].litert_int8 == export
    checks = [c for v in exports for c in _litert_int8_checks(v, SimpleNamespace(results=results), ["keras"])]
    assert [c.ok for c in checks] == [False, False, True], [c.summary for c in checks]
    loss = planted.loss_db["blocks.1"]
    assert f"likely cause: blocks.1 (loses {loss:.1f} dB); FAIL: quantizes poorly at blocks.1" in checks[0].summary
    header, rows, verdict = int8_summary([check_from_json(json.loads(json.dumps(c.to_json()))) for c in checks])
    assert verdict == [f"a quantizes poorly at blocks.1: it loses {loss:.1f} dB, over the 10 dB threshold.",
                       "b breaks the int8 op rules: SIN in float (no int8 kernel)."]
    assert [row[0] for row in rows] == ["a", "b", "c"] and all(len(row) == len(header) for row in rows)
    assert rows[0][6] == "blocks.1" and rows[0][7] == "2.5" and rows[1][7] == "cached" and rows[0][8:] == ["–"] * 4


@pytest.mark.slow
def test_conform_names_the_planted_outlier_and_says_the_variant_quantizes_poorly(tmp_path):
    """The planted defect through `conform --litert` (Keras alone, no float64 reference): the float LiteRT
    check passes (the float function is unchanged), the int8 check fails naming blocks.1, and the report
    says so."""
    from conformance.checks import evaluate
    from conformance.report import write_reports
    from conformance.runner import Options, RunConfig, execute, prepare

    prepare(SPEC, [VARIANT], "tf", RESOLUTION, 1000, tmp_path)
    _weights(tmp_path / "weights" / f"{VARIANT}.safetensors", planted=True)  # in place of the run's own
    options = Options(outputs=False, count_macs=False, litert=True, litert_int8=(VARIANT,))
    result = execute(RunConfig.for_frameworks(SPEC, [VARIANT], ["keras"], "tf", RESOLUTION, options, work=tmp_path))
    checks = evaluate(SPEC, result)
    (float_check,) = [c for c in checks if c.name == "litert"]
    (int8,) = [c for c in checks if c.name == "litert_int8"]
    print(int8.summary)
    assert float_check.ok, float_check.summary
    assert not int8.ok and int8.figures["report"]["first_below"] == "blocks.1", int8.summary
    write_reports(tmp_path / "report", SPEC, result, checks)
    assert f"- {VARIANT} quantizes poorly at blocks.1: it loses" in (tmp_path / "report" / "report.md").read_text()
