"""ONNX on user specs (issue 12, item 6): the spec shapes random specs found that V1-V4 never use, each
through the whole ONNX check (export, checker, ONNX Runtime, canonical graph equal to the spec's and to
each other) in PyTorch, Keras and Flax, from tests/data/onnx_user_specs.yaml:
  * an mqa block after a block without a residual add (its BatchNorm folds into that block's last conv,
    by the one folding rule both sides share, canonical.fold_affines), with and without a residual add
    of its own (with one, the BatchNorm's input has two readers and stays an affine op);
  * a GELU stem read by a one-head mqa block (TensorFlow moves the BatchNorm's scale into GELU's erfc
    factor; the canonical form takes a per-channel scale out of a product);
  * a table that opens with mqa rows of one head (torch.export asked whether the batch was 1);
  * an RMSNorm family (issue 14): each exporter writes x / sqrt(mean over channels of x^2 + eps) times a
    scale its own way, all read as one `rms_norm` op and an `affine`.
And each fix leaves the comparison as strict: a BatchNorm deleted, a GELU that is not GELU, a per-channel
scale moved inside the activation, a nonlinearity on a one-class classifier are still caught and named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conformance.checks import OUTPUT_TOLERANCE, evaluate
from conformance.onnx.canonical import Op, compare, finalize, fold_affines
from conformance.onnx.export import run_onnxruntime
from conformance.onnx.from_onnx import canonicalize
from conformance.onnx.from_spec import from_spec
from conformance.runner import Options, RunConfig, execute
from generators import location
from generators.frameworks import FRAMEWORKS as FRAMEWORK_REGISTRY
from spec import describe, load_spec

SPEC_FILE = Path(__file__).parent / "data" / "onnx_user_specs.yaml"
LOADED = load_spec(SPEC_FILE)
VARIANTS = ["onnx_mqa_grow", "onnx_mqa_residual", "onnx_gelu_stem", "onnx_mqa_first", "onnx_rms_norm"]
FRAMEWORKS = list(FRAMEWORK_REGISTRY)
RESOLUTION = (64, 48)
NUM_CLASSES = 10


def _desc(variant):
    return describe(LOADED, variant, "tf", RESOLUTION, NUM_CLASSES)


@pytest.fixture(scope="module")
def onnx_checks(tmp_path_factory):
    """One run: every variant exported from every framework (one worker start per framework)."""
    work = tmp_path_factory.mktemp("onnx_user_specs")
    generated = location.generated_dir(LOADED, override=work / "generated")
    options = Options(outputs=False, count_macs=False, onnx=True)
    result = execute(RunConfig.for_frameworks(LOADED, VARIANTS, FRAMEWORKS, "tf", RESOLUTION, options,
                                              num_classes=NUM_CLASSES, work=work / "run", generated=generated))
    return [c for c in evaluate(LOADED, result) if c.name in ("onnx", "build")]


def _export(checks, variant, framework) -> onnx.ModelProto:
    (check,) = [c for c in checks if c.variant == variant and c.subject == framework and c.name == "onnx"]
    return onnx.load(check.figures["path"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_user_spec_exports_as_the_spec(onnx_checks, variant, framework):
    checks = [c for c in onnx_checks if c.variant == variant and c.subject == framework]
    assert [c.name for c in checks] == ["build", "onnx"], [(c.name, c.summary) for c in checks]
    check = checks[1]
    assert check.ok and check.graph_equals_spec, check.summary
    assert check.figures["ort_rel_error"] <= OUTPUT_TOLERANCE, check.summary
    assert check.figures["canonical"]["macs"] == _desc(variant).macs


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_three_canonical_graphs_are_equal(onnx_checks, variant):
    pairs = [c for c in onnx_checks if c.variant == variant and "~" in c.subject]
    assert {c.subject for c in pairs} == {"flax~keras", "flax~torch", "keras~torch"}
    assert all(c.ok for c in pairs), [c.summary for c in pairs if not c.ok]


# ---- 1. the attention block's BatchNorm: folded only where nothing else reads its input ----------------

def test_mqa_batchnorm_folds_only_without_a_second_reader(onnx_checks):
    # grow: the uib before it has no residual add, the mqa none either -> the BatchNorm folds into the
    # uib's projection in every export and in the spec. residual: the mqa's own add reads the same
    # input -> one affine op, in every export and in the spec.
    for variant, affines in (("onnx_mqa_grow", 0), ("onnx_mqa_residual", 1)):
        assert from_spec(_desc(variant)).histogram().get("affine", 0) == affines
        for framework in FRAMEWORKS:
            (check,) = [c for c in onnx_checks if c.variant == variant and c.subject == framework
                        and c.name == "onnx"]
            assert check.figures["canonical"]["ops"].get("affine", 0) == affines, (variant, framework)


def _bypass(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """`model` without `node`: its readers read its first input instead."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    (out,), source = node.output, node.input[0]
    for other in model.graph.node:
        other.input[:] = [source if name == out else name for name in other.input]
    kept = [n for n in model.graph.node if n.output[0] != out]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def test_a_missing_attention_batchnorm_is_named(onnx_checks):
    # PyTorch writes the mqa BatchNorm as a BatchNormalization node; without it the graph no longer has
    # the spec's affine op (the residual add reads the same conv output, so nothing may fold it).
    model = _export(onnx_checks, "onnx_mqa_residual", "torch")
    (bn,) = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    difference = compare(from_spec(_desc("onnx_mqa_residual")), canonicalize(_bypass(model, bn), "NCHW"),
                         ("spec", "torch"))
    assert difference is not None and "spec affine(channels=24)" in difference, difference


def test_a_wrong_channel_count_is_named(onnx_checks, tmp_path):
    # The export of `c: 40` against the same spec with `c: 48`: the attention block's output conv differs.
    text = SPEC_FILE.read_text()
    assert text.count("c: 40}") == 1
    wider = tmp_path / "wider.yaml"
    wider.write_text(text.replace("c: 40}", "c: 48}"))
    spec = from_spec(describe(load_spec(wider), "onnx_mqa_grow", "tf", RESOLUTION, NUM_CLASSES))
    difference = compare(spec, canonicalize(_export(onnx_checks, "onnx_mqa_grow", "keras"), "NHWC"), ("spec", "keras"))
    assert difference is not None and "spec conv(group=1, in=32, k=1, out=48" in difference, difference


def test_fold_affines_folds_only_into_a_single_reader():
    # conv -> affine -> (conv, add with the conv's input): the affine folds (one reader of the conv)
    ops = [Op("conv", {"k": 1, "s": 1, "pads": (0, 0, 0, 0), "group": 1, "in": 3, "out": 8}, []),
           Op("affine", {"channels": 8}, [0]), Op("affine", {"channels": 8}, [1]), Op("add", {}, [0, 2])]
    fold_affines(ops, outputs=(3,))  # the second affine's host (the conv) is read by the add too
    assert [op.kind for op in finalize(ops)] == ["conv", "affine", "add"]
    ops = [Op("conv", {"k": 1, "s": 1, "pads": (0, 0, 0, 0), "group": 1, "in": 3, "out": 8}, []),
           Op("affine", {"channels": 8}, [0]), Op("affine", {"channels": 8}, [1]), Op("act", {"fn": "relu"}, [2])]
    fold_affines(ops, outputs=(3,))  # a chain with one reader each: both fold, into the conv
    assert [op.kind for op in finalize(ops)] == ["conv", "act"] and ops[0].folded


# ---- 2. GELU, wherever TensorFlow puts the next BatchNorm's scale ------------------------------------

def _erfc_factor(model: onnx.ModelProto):
    """Keras' GELU 0.5 x * erfc(-x / sqrt 2), erfc written 1 - Erf (export._replace_erfc): its Erf, its
    Sub, and the Mul that reads the Sub."""
    (erf,) = [n for n in model.graph.node if n.op_type == "Erf"]
    (sub,) = [n for n in model.graph.node if n.op_type == "Sub" and erf.output[0] in n.input]
    (mul,) = [n for n in model.graph.node if n.op_type == "Mul" and sub.output[0] in n.input]
    return erf, sub, mul


def _per_channel(model: onnx.ModelProto, node: onnx.NodeProto) -> list[str]:
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [i for i in node.input if i in constants and constants[i].size > 1]


def test_keras_gelu_carries_the_batchnorm_scale_in_its_erfc_factor(onnx_checks):
    # As tf2onnx writes the stem: 0.5 x * (erfc(-x / sqrt 2) * s), then + b; s and b the mqa BatchNorm's.
    model = _export(onnx_checks, "onnx_gelu_stem", "keras")
    _, _, mul = _erfc_factor(model)
    assert _per_channel(model, mul), "the BatchNorm scale is no longer in GELU's erfc factor: nothing tested"
    sequence = canonicalize(model, "NHWC").sequence()
    assert sequence[:3] == ["conv(group=1, in=3, k=5, out=16, pads=(1, 1, 2, 2), s=2)", "act(fn=gelu)",
                            "affine(channels=16)"], sequence


def _edited(checks, variant, framework) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(_export(checks, variant, framework).SerializeToString())


def test_a_gelu_that_is_not_gelu_is_named(onnx_checks):
    # erfc written 1 - sigmoid: not GELU, whatever scale follows
    model = _edited(onnx_checks, "onnx_gelu_stem", "keras")
    erf, _, _ = _erfc_factor(model)
    erf.op_type = "Sigmoid"
    difference = compare(from_spec(_desc("onnx_gelu_stem")), canonicalize(model, "NHWC"), ("spec", "keras"))
    assert difference is not None and "spec act(fn=gelu) vs keras act(fn=unknown(" in difference, difference


def test_a_per_channel_scale_inside_gelu_is_not_taken_out(onnx_checks):
    # The BatchNorm's scale moved from the erfc factor onto erf's input (erfc(-s x / sqrt 2)): that is not
    # GELU then a scale, and the canonical graph must not read it so.
    model = _edited(onnx_checks, "onnx_gelu_stem", "keras")
    erf, _, mul = _erfc_factor(model)
    (scale,) = _per_channel(model, mul)
    ones = numpy_helper.from_array(np.ones_like(numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == scale))), f"{scale}__ones")
    model.graph.initializer.append(ones)
    mul.input[:] = [ones.name if name == scale else name for name in mul.input]
    moved = helper.make_node("Mul", [erf.input[0], scale], [f"{erf.input[0]}__scaled"])
    erf.input[0] = moved.output[0]
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(erf), moved)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    difference = compare(from_spec(_desc("onnx_gelu_stem")), canonicalize(model, "NHWC"), ("spec", "keras"))
    assert difference is not None and "spec act(fn=gelu) vs keras act(fn=" in difference, difference


# ---- 3. PyTorch: mqa rows of one head export with a dynamic batch -------------------------------------

def test_torch_export_of_one_head_mqa_runs_at_any_batch(onnx_checks, tmp_path):
    check = next(c for c in onnx_checks if c.variant == "onnx_mqa_first" and c.subject == "torch"
                 and c.name == "onnx")
    model = onnx.load(check.figures["path"])
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 3, *RESOLUTION)).astype(np.float32)
        assert run_onnxruntime(Path(check.figures["path"]), x).shape == (batch, NUM_CLASSES)


# ---- a one-class classifier: its bias is that channel's affine, not an activation --------------------

def _classifier_graph(classes: int, after: str | None = None) -> onnx.ModelProto:
    """features (N, 8) -> MatMul -> Add(bias) [-> `after`]: a classifier as tf2onnx and jax2onnx write it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, classes)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    if after:
        nodes.append(helper.make_node(after, ["z"], ["out"]))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("out" if after else "z", onnx.TensorProto.FLOAT,
                                                             [None, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("classes", [1, 3])
def test_a_one_class_bias_is_the_linear_layers_bias(classes):
    assert canonicalize(_classifier_graph(classes), "NC").sequence() == [f"linear(in=8, out={classes})"]


def test_a_nonlinearity_on_one_class_logits_is_named():
    assert canonicalize(_classifier_graph(1, "Relu"), "NC").sequence() == ["linear(in=8, out=1)", "act(fn=relu)"]


def test_contiguous_conv_inputs_leaves_no_hook_behind():
    import torch

    from conformance.onnx.export import _contiguous_conv_inputs

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 8, 8, 3).permute(0, 3, 1, 2)  # channels-last strides
    with _contiguous_conv_inputs(model):
        seen = []
        model[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
        model(x)
    assert seen == [True]  # registered after ours: it sees the contiguous input
    model[0]._forward_pre_hooks.clear()
    with _contiguous_conv_inputs(model):
        assert all(len(m._forward_pre_hooks) == 1 for m in (model[0], model[2]))
    assert not any(m._forward_pre_hooks for m in model)


# ---- 4. RMSNorm: one canonical op whichever way the exporter writes it ---------------------------------

def test_each_exporter_writes_rmsnorm_its_own_way(onnx_checks):
    """PyTorch: x * (1 / sqrt(mean(x^2) + eps)), then the scale; Keras (tf2onnx): the scale multiplies the
    statistic's factor before the product; Flax (jax2onnx): x / sqrt(mean(x^2) + eps), then the scale. All
    three read as the spec's conv, rms_norm, affine, activation."""
    forms = {}
    for framework in FRAMEWORKS:
        model = _export(onnx_checks, "onnx_rms_norm", framework)
        ops = [n.op_type for n in model.graph.node]
        forms[framework] = ("Reciprocal" in ops, "Div" in ops)
        sequence = canonicalize(model, FRAMEWORK_REGISTRY[framework].layout).sequence()
        assert sequence[:4] == ["conv(group=1, in=3, k=3, out=24, pads=(0, 0, 1, 1), s=2)",
                                "rms_norm(channels=24, epsilon=1e-06)", "affine(channels=24)",
                                "act(fn=gelu_tanh)"], (framework, sequence[:4])
    assert forms == {"torch": (True, False), "keras": (True, False), "flax": (False, True)}, forms


def _rms_statistic(model: onnx.ModelProto):
    """The stem RMSNorm's ReduceMean and the Add of its epsilon."""
    mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    add = next(n for n in model.graph.node if n.op_type == "Add" and mean.output[0] in n.input)
    return mean, add


def test_a_wrong_rmsnorm_epsilon_is_named(onnx_checks):
    model = _edited(onnx_checks, "onnx_rms_norm", "torch")
    _, add = _rms_statistic(model)
    (epsilon,) = [i for i in model.graph.initializer if i.name in add.input]
    epsilon.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(epsilon), 1e-3), epsilon.name))
    difference = compare(from_spec(_desc("onnx_rms_norm")), canonicalize(model, "NCHW"), ("spec", "torch"))
    assert difference is not None and ("spec rms_norm(channels=24, epsilon=1e-06) vs torch rms_norm(channels=24, "
                                       "epsilon=0.001)") in difference, difference


def test_a_norm_over_the_wrong_axes_is_not_an_rmsnorm(onnx_checks):
    # The mean over H and W instead of the channels: a different function (a pool and a gate), not an RMSNorm.
    model = _edited(onnx_checks, "onnx_rms_norm", "torch")
    mean, _ = _rms_statistic(model)
    (axes,) = [i for i in model.graph.initializer if i.name in mean.input[1:]]
    axes.CopyFrom(numpy_helper.from_array(np.array([2, 3], np.int64), axes.name))
    del model.graph.value_info[:]  # the shapes the export inferred: stale now
    difference = compare(from_spec(_desc("onnx_rms_norm")), canonicalize(model, "NCHW"), ("spec", "torch"))
    assert difference is not None and "spec rms_norm(channels=24, epsilon=1e-06) vs torch " in difference, difference
