"""ONNX: the smallest variant of each family exported from PyTorch, Keras and Flax at opset 18, passing
onnx.checker (full check), running in ONNX Runtime and in ONNX's reference evaluator with the same
logits as the framework itself (relative error <= 1e-4), and with canonical graphs equal to the spec's
and to each other; a mis-exported graph is caught and the differing node named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conformance.checks import OUTPUT_TOLERANCE, evaluate
from conformance.cli import main as cli
from conformance.onnx.canonical import canonicalize, compare, from_spec
from conformance.onnx.export import BATCH, INPUT, OPSET, OUTPUT, run_onnxruntime
from conformance.runner import Options, run
from spec import describe, load_spec

SPEC = load_spec()
SMALLEST = ["mobilenet_v1_025", "mobilenet_v2_035", "mobilenet_v3_small_035"]


@pytest.fixture(scope="module")
def onnx_checks(tmp_path_factory):
    result = run(SPEC, SMALLEST, ["torch", "keras", "flax"], "tf", (224, 192), work=tmp_path_factory.mktemp("onnx"),
                 options=Options(outputs=False, count_macs=False, onnx=True, onnx_reference_evaluator=tuple(SMALLEST)))
    return [c for c in evaluate(SPEC, result) if c.name in ("onnx", "build")]


@pytest.mark.parametrize("framework", ["torch", "keras", "flax"])
@pytest.mark.parametrize("variant", SMALLEST)
def test_export_checker_runtime_and_reference_evaluator(onnx_checks, variant, framework):
    checks = [c for c in onnx_checks if c.variant == variant and c.subject == framework]
    assert [c.name for c in checks] == ["build", "onnx"], [(c.name, c.summary) for c in checks]
    onnx_check = checks[1]
    assert onnx_check.ok, onnx_check.summary
    assert onnx_check.figures["opset"] == OPSET
    assert onnx_check.figures["reference_evaluator_rel_error"] <= OUTPUT_TOLERANCE
    assert "canonical graph = spec" in onnx_check.summary
    spec_desc = describe(SPEC, variant, "tf", (224, 192))
    assert onnx_check.figures["canonical"]["macs"] == spec_desc.macs


@pytest.mark.parametrize("variant", SMALLEST)
def test_the_three_canonical_graphs_are_equal(onnx_checks, variant):
    pairs = [c for c in onnx_checks if c.variant == variant and "~" in c.subject]
    assert {c.subject for c in pairs} == {"flax~keras", "flax~torch", "keras~torch"}
    assert all(c.ok for c in pairs), [c.summary for c in pairs if not c.ok]


@pytest.fixture(scope="module")
def torch_v3_export(tmp_path_factory):
    from conformance import weights as neutral

    folder = tmp_path_factory.mktemp("export")
    desc = describe(SPEC, "mobilenet_v3_small_100", "tf", (224, 192))
    neutral.save(folder / "w.safetensors", neutral.random_weights(desc, seed=5),
                 {"variant": desc.variant, "flavor": "tf"})  # seeded: the test sees the same network every run
    path = folder / "v3.onnx"
    assert cli(["onnx", "mobilenet_v3_small_100", "--framework", "torch", "--resolution", "224x192",
                "--weights", str(folder / "w.safetensors"), "-o", str(path)]) == 0
    return path


def test_cli_export_has_stable_names_and_dynamic_batch(torch_v3_export):
    model = onnx.load(str(torch_v3_export))
    (image,), (logits,) = model.graph.input, model.graph.output
    assert (image.name, logits.name) == (INPUT, OUTPUT)
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == [BATCH, 3, 224, 192]
    ops = {n.op_type for n in model.graph.node}
    assert {"HardSwish", "HardSigmoid"} <= ops
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 192)).astype(np.float32)
    assert run_onnxruntime(torch_v3_export, x).shape == (3, 1000)


def test_hard_sigmoid_with_the_onnx_default_alpha_fails_the_runtime_gate(torch_v3_export, tmp_path):
    model = onnx.load(str(torch_v3_export))
    gates = [n for n in model.graph.node if n.op_type == "HardSigmoid"]
    assert len(gates) == 9  # the squeeze-excite gates of V3-Small
    for node in gates:  # an exporter that drops alpha: ONNX's default 0.2, the known silent bug
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("alpha", 0.2))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 192)).astype(np.float32)
    good, bad = run_onnxruntime(torch_v3_export, x), run_onnxruntime(broken, x)
    error = float(np.max(np.abs(bad - good)) / np.max(np.abs(good)))
    print(f"alpha 0.2 on every gate: logits relative error {error:.2e}")
    assert error > 10 * OUTPUT_TOLERANCE, f"relative error {error:.2e}: too close to the {OUTPUT_TOLERANCE} gate"
    # ... and the canonical comparison names the node: not relu6(x + 3) / 6.
    expected = from_spec(describe(SPEC, "mobilenet_v3_small_100", "tf", (224, 192)))
    difference = compare(expected, canonicalize(model, "NCHW"), ("spec", "export"))
    assert difference is not None and "spec act(fn=hard_sigmoid) vs export act(fn=unknown(HardSigmoid" in difference, \
        difference


def test_asymmetric_padding_where_the_spec_says_symmetric_is_named(torch_v3_export):
    # The export uses TF SAME padding (tf flavor); torchvision's flavor of the same variant pads symmetrically.
    symmetric = from_spec(describe(SPEC, "mobilenet_v3_small_100", "torchvision", (224, 192)))
    difference = compare(symmetric, canonicalize(onnx.load(str(torch_v3_export)), "NCHW"), ("spec", "export"))
    assert difference is not None and "pads=(1, 1, 1, 1)" in difference and "pads=(0, 0, 1, 1)" in difference, \
        difference
