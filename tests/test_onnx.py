"""ONNX: the smallest variant of each family exported from PyTorch, Keras and Flax at opset 18, passing
onnx.checker (full check), running in ONNX Runtime and in ONNX's reference evaluator with the same
logits as the framework itself (relative error <= 1e-4), and with canonical graphs equal to the spec's
and to each other; a mis-exported graph is caught and the differing node named. MobileNetV4-Hybrid-Medium
(attention, layer scale, BatchNorm on the fc) the same way, without the slow reference evaluator; GELU
in every form the exporters write it; the other V4 and EdgeTPU variants in the slow tier."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conformance.checks import OUTPUT_TOLERANCE, evaluate
from conformance.cli import main as cli
from conformance.onnx.canonical import compare
from conformance.onnx.export import BATCH, INPUT, OPSET, OUTPUT, run_onnxruntime
from conformance.onnx.from_onnx import canonicalize
from conformance.onnx.from_spec import from_spec
from conformance.runner import Options, RunConfig, execute
from generators.frameworks import FRAMEWORKS as FRAMEWORK_REGISTRY
from spec import describe, load_spec

SPEC = load_spec()
SMALLEST = ["mobilenet_v1_025", "mobilenet_v2_035", "mobilenet_v3_small_035"]
HYBRID = "mobilenet_v4_hybrid_medium"  # Mobile MQA (both kv strides), layer scale, fc with BatchNorm
FRAMEWORKS = list(FRAMEWORK_REGISTRY)


def _onnx_run(tmp_path_factory, variants, reference_evaluator=()):
    options = Options(outputs=False, count_macs=False, onnx=True, onnx_reference_evaluator=tuple(reference_evaluator))
    result = execute(RunConfig.for_frameworks(SPEC, variants, FRAMEWORKS, "tf", (224, 192), options,
                                              work=tmp_path_factory.mktemp("onnx")))
    return [c for c in evaluate(SPEC, result) if c.name in ("onnx", "build")]


@pytest.fixture(scope="module")
def onnx_checks(tmp_path_factory):
    # One run (one worker start per framework) for all four; onnx.reference only on the small ones.
    return _onnx_run(tmp_path_factory, [*SMALLEST, HYBRID], SMALLEST)


def _assert_exported_as_the_spec(checks, variant, framework, reference_evaluator=True):
    checks = [c for c in checks if c.variant == variant and c.subject == framework]
    assert [c.name for c in checks] == ["build", "onnx"], [(c.name, c.summary) for c in checks]
    onnx_check = checks[1]
    assert onnx_check.ok, onnx_check.summary
    assert onnx_check.figures["opset"] == OPSET
    assert onnx_check.figures["ort_rel_error"] <= OUTPUT_TOLERANCE, onnx_check.summary
    if reference_evaluator:
        assert onnx_check.figures["reference_evaluator_rel_error"] <= OUTPUT_TOLERANCE
    assert onnx_check.graph_equals_spec, onnx_check.summary
    spec_desc = describe(SPEC, variant, "tf", (224, 192))
    assert onnx_check.figures["canonical"]["macs"] == spec_desc.macs
    return onnx_check


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("variant", SMALLEST)
def test_export_checker_runtime_and_reference_evaluator(onnx_checks, variant, framework):
    _assert_exported_as_the_spec(onnx_checks, variant, framework)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_v4_hybrid_attention_exports_as_the_spec(onnx_checks, framework):
    onnx_check = _assert_exported_as_the_spec(onnx_checks, HYBRID, framework, reference_evaluator=False)
    print(f"{HYBRID} from {framework}: {onnx_check.summary}")
    ops = onnx_check.figures["canonical"]["ops"]
    # 8 attention blocks: each a BatchNorm on its input (affine), two products and a softmax
    assert (ops["affine"], ops["matmul"], ops["softmax"]) == (8, 16, 8), ops
    sequence = onnx_check.figures["canonical"]["sequence"]
    assert sequence.count("matmul(scale=0.125)") == 8 and sequence.count("matmul(scale=1.0)") == 8, sequence


def test_the_attention_scale_is_one_canonical_attribute_wherever_the_exporter_puts_it(onnx_checks):
    # PyTorch scales queries and keys by sqrt(1/sqrt(64)) each; Keras and Flax scale the scores: equal graphs.
    where = {}
    for framework in FRAMEWORKS:
        (check,) = [c for c in onnx_checks if c.variant == HYBRID and c.subject == framework and c.name == "onnx"]
        model = onnx.load(check.figures["path"])
        producers = {o: n for n in model.graph.node for o in n.output}
        softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
        where[framework] = producers[softmax.input[0]].op_type  # MatMul: scale before; Mul: on the scores
    assert where == {"torch": "MatMul", "keras": "Mul", "flax": "Mul"}, where
    pairs = [c for c in onnx_checks if c.variant == HYBRID and "~" in c.subject]
    assert len(pairs) == 3 and all(c.ok for c in pairs), [c.summary for c in pairs]


@pytest.mark.parametrize("variant", [*SMALLEST, HYBRID])
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


def _runtime_error(good_path, broken_model, tmp_path, seed: int) -> float:
    """Relative error of the logits of `broken_model` against the export at `good_path`, in ONNX Runtime."""
    broken = tmp_path / "broken.onnx"
    onnx.save(broken_model, str(broken))
    x = np.random.default_rng(seed).normal(size=(2, 3, 224, 192)).astype(np.float32)
    good, bad = run_onnxruntime(good_path, x), run_onnxruntime(broken, x)
    return float(np.max(np.abs(bad - good)) / np.max(np.abs(good)))


def test_hard_sigmoid_with_the_onnx_default_alpha_fails_the_runtime_gate(torch_v3_export, tmp_path):
    model = onnx.load(str(torch_v3_export))
    gates = [n for n in model.graph.node if n.op_type == "HardSigmoid"]
    assert len(gates) == 9  # the squeeze-excite gates of V3-Small
    for node in gates:  # an exporter that drops alpha: ONNX's default 0.2, the known silent bug
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("alpha", 0.2))
    error = _runtime_error(torch_v3_export, model, tmp_path, seed=1)
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


def test_an_attention_scaled_wrongly_is_named_and_fails_the_runtime_gate(onnx_checks, tmp_path):
    (check,) = [c for c in onnx_checks if c.variant == HYBRID and c.subject == "torch" and c.name == "onnx"]
    path = check.figures["path"]
    model = onnx.load(path)
    producers = {o: n for n in model.graph.node for o in n.output}
    scores = [n for n in model.graph.node if n.op_type == "MatMul" and producers[n.input[0]].op_type == "Mul"]
    assert len(scores) == 8  # one per attention block: q * sqrt(scale) @ (k * sqrt(scale))^T
    for node in scores:  # an exporter that forgets the queries' half of the scale
        node.input[0] = producers[node.input[0]].input[0]
    error = _runtime_error(path, model, tmp_path, seed=2)
    print(f"attention scale sqrt(1/8) instead of 1/8: logits relative error {error:.2e}")
    assert error > 10 * OUTPUT_TOLERANCE, f"relative error {error:.2e}: too close to the {OUTPUT_TOLERANCE} gate"
    expected = from_spec(describe(SPEC, HYBRID, "tf", (224, 192)))
    difference = compare(expected, canonicalize(model, "NCHW"), ("spec", "export"))
    assert difference is not None and "spec matmul(scale=0.125) vs export matmul(scale=0.35355)" in difference, \
        difference


def _activation_model(steps, opset=OPSET):
    """images (NCHW) -> 1x1 conv -> `steps` (onnx.helper nodes reading "x", writing "logits")."""
    from onnx import TensorProto, helper, numpy_helper

    constants = {"w": np.random.default_rng(3).normal(size=(4, 3, 1, 1)).astype(np.float32),
                 "half": np.float32(0.5), "one": np.float32(1.0), "root_half": np.float32(2 ** -0.5)}
    constants = {k: v for k, v in constants.items() if k == "w" or any(k in step.input for step in steps)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["x"]), *steps], "activation",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [BATCH, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, 4, 8, 8])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


GELU_FORMS = {  # GELU as PyTorch, Flax (jax.nn.gelu, approximate=False) and ONNX's own op write it
    "torch": [("Mul", ["x", "root_half"], ["a"]), ("Erf", ["a"], ["b"]), ("Add", ["b", "one"], ["c"]),
              ("Mul", ["x", "c"], ["d"]), ("Mul", ["d", "half"], ["logits"])],
    "flax": [("Mul", ["x", "half"], ["a"]), ("Mul", ["x", "root_half"], ["b"]), ("Erf", ["b"], ["c"]),
             ("Add", ["c", "one"], ["d"]), ("Mul", ["a", "d"], ["logits"])],
    "onnx Gelu (opset 20)": [("Gelu", ["x"], ["logits"])],
}


@pytest.mark.parametrize("form", GELU_FORMS)
def test_gelu_is_one_canonical_activation_in_every_form(form):
    from onnx import helper

    opset = 20 if form.startswith("onnx") else OPSET
    model = _activation_model([helper.make_node(op, i, o) for op, i, o in GELU_FORMS[form]], opset)
    canonical = canonicalize(model, "NCHW")
    assert canonical.sequence()[-1] == "act(fn=gelu)", canonical.sequence()


def test_tanh_approximated_gelu_is_gelu_tanh_not_gelu():
    # The probe grid tells the two apart (they differ by up to 4.7e-4): ONNX's Gelu with approximate="tanh"
    # is the spec's gelu_tanh (MobileNetV5), never the exact gelu.
    from onnx import helper

    for approximate, name in (("tanh", "gelu_tanh"), ("none", "gelu")):
        model = _activation_model([helper.make_node("Gelu", ["x"], ["logits"], approximate=approximate)], 20)
        assert canonicalize(model, "NCHW").sequence()[-1] == f"act(fn={name})"


def test_tensorflow_erfc_is_rewritten_to_onnx_ops_with_the_same_values(tmp_path):
    # tf2onnx copies TensorFlow's Erfc (exact GELU: 0.5 x erfc(-x / sqrt 2)) into the graph; ONNX has no Erfc.
    import math

    from onnx import helper

    from conformance.onnx.export import _replace_erfc

    model = _activation_model([
        helper.make_node("Mul", ["x", "half"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Mul", ["b", "root_half"], ["c"]), helper.make_node("Erfc", ["c"], ["d"]),
        helper.make_node("Mul", ["a", "d"], ["logits"])])
    with pytest.raises(onnx.checker.ValidationError, match="Erfc"):
        onnx.checker.check_model(model, full_check=True)
    _replace_erfc(model)
    onnx.checker.check_model(model, full_check=True)
    assert canonicalize(model, "NCHW").sequence()[-1] == "act(fn=gelu)"
    path = tmp_path / "gelu.onnx"
    onnx.save(model, str(path))
    images = np.random.default_rng(4).normal(size=(2, 3, 8, 8)).astype(np.float32)
    x = np.einsum("oi,bihw->bohw", onnx.numpy_helper.to_array(model.graph.initializer[0])[:, :, 0, 0], images)
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    error = float(np.max(np.abs(run_onnxruntime(path, images) - exact)))
    assert error < 1e-5, f"max abs error {error:.2e}"


def _attention_model(form: str):
    """A two-head attention over a 4x4 map with one shared key / value head (key and value dim 4), written
    as Einsums scaling the scores, or as MatMuls scaling queries and keys by sqrt(1/2) each (as PyTorch)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    constants = {name: rng.normal(size=shape).astype(np.float32) for name, shape in
                 (("wq", (8, 3, 1, 1)), ("wk", (4, 3, 1, 1)), ("wv", (4, 3, 1, 1)), ("wo", (3, 8, 1, 1)))}
    constants.update(q_shape=np.array([0, 2, 4, 16]), kv_shape=np.array([0, 4, 16]), out_shape=np.array([0, 8, 4, 4]),
                     scale=np.float32(0.5), root_scale=np.float32(0.5 ** 0.5), axis=np.array([1]))
    node = helper.make_node
    nodes = [node("Conv", ["images", w], [w[1]]) for w in ("wq", "wk", "wv")]
    nodes += [node("Reshape", ["q", "q_shape"], ["q4"]), node("Reshape", ["k", "kv_shape"], ["k3"]),
              node("Reshape", ["v", "kv_shape"], ["v3"])]  # q4: (b, head, d, l); k3, v3: (b, d, s)
    if form == "einsum":
        nodes += [node("Einsum", ["q4", "k3"], ["scores"], equation="bhdl,bds->bhls"),
                  node("Mul", ["scores", "scale"], ["scaled"]), node("Softmax", ["scaled"], ["weights"]),
                  node("Einsum", ["weights", "v3"], ["heads"], equation="bhls,bds->bhdl")]
    else:
        nodes += [node("Transpose", ["q4"], ["qt"], perm=[0, 1, 3, 2]), node("Mul", ["qt", "root_scale"], ["qs"]),
                  node("Unsqueeze", ["k3", "axis"], ["k4"]), node("Mul", ["k4", "root_scale"], ["ks"]),
                  node("MatMul", ["qs", "ks"], ["scores"]), node("Softmax", ["scores"], ["weights"]),
                  node("Unsqueeze", ["v3", "axis"], ["v4"]), node("Transpose", ["v4"], ["vt"], perm=[0, 1, 3, 2]),
                  node("MatMul", ["weights", "vt"], ["heads_t"]),
                  node("Transpose", ["heads_t"], ["heads"], perm=[0, 1, 3, 2])]
    nodes += [node("Reshape", ["heads", "out_shape"], ["y"]), node("Conv", ["y", "wo"], ["logits"])]
    graph = helper.make_graph(
        nodes, form, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [BATCH, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, 3, 4, 4])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_attention_as_einsums_or_matmuls_is_one_canonical_form_with_the_spec_macs(tmp_path):
    canonical = {form: canonicalize(_attention_model(form), "NCHW") for form in ("einsum", "matmul")}
    assert compare(canonical["einsum"], canonical["matmul"], ("einsum", "matmul")) is None
    sequence = canonical["matmul"].sequence()
    assert "matmul(scale=0.5)" in sequence and "matmul(scale=1.0)" in sequence and "softmax()" in sequence, sequence
    convs = 16 * (8 + 4 + 4) * 3 + 16 * 3 * 8
    assert canonical["einsum"].macs == convs + 2 * 16 * 16 * (4 + 4)  # heads * L * S * (dk + dv), as spec/resolve.py
    outputs = []
    for form in ("einsum", "matmul"):  # ... and they compute the same thing
        onnx.checker.check_model(_attention_model(form), full_check=True)
        onnx.save(_attention_model(form), str(tmp_path / f"{form}.onnx"))
        outputs.append(run_onnxruntime(tmp_path / f"{form}.onnx", np.ones((2, 3, 4, 4), np.float32)))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


V4_AND_EDGETPU = ["mobilenet_v4_conv_small", "mobilenet_v4_hybrid_large", "mobilenet_edgetpu_075"]


@pytest.fixture(scope="module")
def v4_onnx_checks(tmp_path_factory):
    return _onnx_run(tmp_path_factory, V4_AND_EDGETPU)


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("variant", V4_AND_EDGETPU)
def test_v4_and_edgetpu_export_as_the_spec(v4_onnx_checks, variant, framework):
    onnx_check = _assert_exported_as_the_spec(v4_onnx_checks, variant, framework, reference_evaluator=False)
    print(f"{variant} from {framework}: {onnx_check.summary}")
    pairs = [c for c in v4_onnx_checks if c.variant == variant and c.subject.startswith(f"{framework}~")]
    assert all(c.ok for c in pairs), [c.summary for c in pairs if not c.ok]


NCHW, NHWC = ("N", "C", "H", "W"), ("N", "H", "W", "C")


@pytest.mark.parametrize("layout, before, after, moved", [
    (NHWC, (2, 5, 7, 1), (2, 1, 5, 7), NCHW),   # one channel: tf2onnx's Reshape for the NHWC -> NCHW Transpose
    (NCHW, (2, 1, 5, 7), (2, 5, 7, 1), NHWC),
    (NHWC, (2, 1, 1, 8), (2, 8, 1, 1), NCHW),   # one pixel
    (NCHW, (2, 8, 1, 1), (2, 1, 1, 8), NHWC),
    (NHWC, (2, 5, 7, 3), (2, 3, 5, 7), None),   # same sizes as a Transpose, but the data would move: a real reshape
    (NHWC, (2, 5, 1, 3), (2, 3, 5, 1), None),   # one of H, W is 1: still moves C past the other
    (NHWC, (2, 5, 7, 1), (2, 35, 1, 1), None),  # sizes of no Transpose
    (NHWC, (2, 5, 7, 1), (2, 35), None),        # a flatten
    (NCHW, (2, 1, 5, 7), (2, 1, 5, 7), NCHW),   # its own shape: nothing moves (tf2onnx's cancelled pair)
    (NHWC, (2, 5, 7, 3), (2, 5, 7, 3), NHWC),
    (NCHW, (2, 1, 1, 1), (2, 1, 1, 1), NHWC),   # one value: tf2onnx's Reshape for a Transpose, read as one
    (NCHW, (2, None, 5, 7), (2, None, 5, 7), None),  # an unknown size proves nothing
    (NHWC, (2, None, 7, 1), (2, 1, 5, 7), None),  # an unknown size proves nothing
    (None, (2, 5, 7, 1), (2, 1, 5, 7), None),   # no layout to move
])
def test_a_reshape_reads_as_a_transpose_only_where_it_moves_axes_of_size_one_or_none(layout, before, after, moved):
    from conformance.onnx.from_onnx import _moved_ones

    assert _moved_ones(layout, before, after) == moved
