"""Training-mode parity (conformance/training.py, `mnforge conform --train`).

The comparison rules on synthetic numbers first (fast), then real runs: one variant per family passes in a
covering set of runs (the full matrix in the slow tier), and planted bugs (momentum inverted, a wrong
epsilon, a gradient stopped at the squeeze-excite gate) fail, each naming the first block where it shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance import training
from conformance.checks import Check, evaluate
from conformance.runner import REFERENCE, Options, RunConfig, Worker, execute
from generators import location
from spec import load_spec

# ---- the rules, on synthetic numbers ---------------------------------------------------------------


def test_errors_are_relative_to_the_reference_change_with_a_floor():
    before = {"a.weight": np.ones(4), "b.bias": np.zeros(4)}
    reference = {"a.weight": np.array([1.01, 1.0, 1.0, 0.99]), "b.bias": np.zeros(4)}
    # a's update is 0.01: an error of 1e-5 is 1e-3 of it, though 1e-5 of the parameter
    values = {"a.weight": reference["a.weight"] + 1e-5, "b.bias": np.full(4, 1e-7)}
    errors = training.change_errors(values, reference, 1e-4, before=before)
    assert errors.errors["a.weight"] == pytest.approx(1e-3, rel=1e-6)
    # b did not change: its error is measured against FLOOR x the largest change (1e-4), not against 0
    assert errors.floor == pytest.approx(training.FLOOR * 0.01)
    assert errors.errors["b.bias"] == pytest.approx(1e-7 / errors.floor)


def test_a_float32_store_is_allowed_half_an_ulp_per_step():
    before = {"w": np.full(3, 1.0)}
    reference = {"w": np.full(3, 1.0 + 1e-6)}
    values = {"w": np.float32(reference["w"])}  # rounded to float32: 1 ulp of 1.0 is 1.2e-7
    errors = training.change_errors(values, reference, 1e-4, before=before, stores=1)
    assert errors.errors["w"] > 1e-4  # the store's rounding, relative to a tiny update
    assert not errors.failing  # ... is allowed
    assert training.change_errors(values, reference, 1e-4, before=before, stores=0).failing == ["w"]
    # a float64 store is allowed float64's half ulp only
    assert training.change_errors({"w": np.float64(values["w"])}, reference, 1e-4, before=before, stores=1).failing


def test_a_missing_or_misshapen_tensor_fails():
    reference = {"w": np.ones(3), "v": np.ones(2)}
    errors = training.change_errors({"w": np.ones(4)}, reference, 1e-4)
    assert errors.failing == ["w", "v"]


def test_a_float32_bound_follows_the_reference_float32_conditioning_within_a_ceiling():
    # well-conditioned blocks keep FLOAT32_TOLERANCE; an ill-conditioned one (the reference's own float32
    # off by 3e-5 / 6e-5) is allowed CONDITIONING times that; none more than the ceiling
    bounds = training.float32_bounds({"stem": 2e-7, "pool": 3e-5, "fc": 6e-5, "broken": 0.5})
    assert bounds["stem"] == training.FLOAT32_TOLERANCE
    assert bounds["pool"] == pytest.approx(training.CONDITIONING * 3e-5)
    assert bounds["fc"] == pytest.approx(6e-4)
    assert bounds["broken"] == training.FLOAT32_CEILING
    # a wrong variance convention at the last BatchNorm (1 / (n - 1), n = 24) still fails by far
    assert 1 / 23 > 40 * training.FLOAT32_CEILING


def test_per_tensor_tolerances():
    reference = {"a": np.ones(3), "b": np.ones(3)}
    values = {"a": np.full(3, 1 + 5e-4), "b": np.full(3, 1 + 5e-4)}
    errors = training.change_errors(values, reference, {"a": 1e-4, "b": 1e-3})
    assert errors.failing == ["a"]
    assert errors.allowed == {"a": 1e-4, "b": 1e-3}


def test_sgd_trains_every_variant_and_adamw_the_first_of_each_float64_worker(tmp_path):
    from conformance.runner import _request

    loaded = load_spec()
    variants = ("mobilenet_v1_025", "mobilenet_v2_035", "mobilenet_v3_small_075")
    config = RunConfig(loaded, variants, (Worker("torch", "float64"), Worker("flax"), Worker("flax", "float64"),
                                          Worker("keras", "float64", variants=variants[1:])),
                       "keras", training.TRAIN_RESOLUTION, options=TRAINING, work=tmp_path)
    asked = {w.key: [(job["variant"], job["train"]["optimizers"]) for job in _request(config, w)["jobs"]]
             for w in config.workers}
    assert asked["torch:float64"] == [(v, ["sgd", "adamw"]) for v in variants]  # the reference: everything
    assert asked["flax"] == [(v, []) for v in variants]  # float32: no gradients compared, no steps
    assert asked["flax:float64"] == [(variants[0], ["sgd", "adamw"]), (variants[1], ["sgd"]), (variants[2], ["sgd"])]
    assert asked["keras:float64"] == [(variants[1], ["sgd", "adamw"]), (variants[2], ["sgd"])]


def test_float64_runs_other_than_the_reference_leave_out_variants_over_their_memory_limit():
    loaded = load_spec()
    variants = ("mobilenet_v1_025", "mobilenet_v5_300m_encoder", "mobilenet_v5_base", "mobilenet_v5_300m")
    assert training.float64_variants(loaded, variants) == ("mobilenet_v1_025", "mobilenet_v5_base")
    config = RunConfig.for_frameworks(loaded, variants, ("torch", "keras", "flax"), "tf", (96, 64), TRAINING)
    assert {w.key: w.variants for w in config.workers} == {
        "torch:float64": None, "torch": None, "keras": None, "flax": None,  # the reference and float32: every one
        "keras:float64": ("mobilenet_v1_025", "mobilenet_v5_base"), "flax:float64": ("mobilenet_v1_025", "mobilenet_v5_base")}
    only_300m = RunConfig.for_frameworks(loaded, variants[1:2], ("torch", "keras", "flax"), "tf", (96, 64), TRAINING)
    assert [w.key for w in only_300m.workers] == ["torch:float64", "torch", "keras", "flax"]


def test_the_first_diverging_block_is_named_in_network_order():
    order = ["stem", "blocks.0", "blocks.1", "pool", "classifier"]
    errors = training.TensorErrors(
        {"classifier.weight": 0.5, "blocks.1.expand.conv.weight": 0.2, "blocks.1.se.reduce.bias": 1e-6,
         "stem.conv.weight": 1e-6},
        dict.fromkeys(["classifier.weight", "blocks.1.expand.conv.weight", "blocks.1.se.reduce.bias",
                       "stem.conv.weight"], 1e-3), 0.0)
    blocks, first = training.per_block(errors, order)
    assert first == "blocks.1"
    assert list(blocks) == ["stem", "blocks.1", "classifier"]
    assert blocks["blocks.1"]["tensor"] == "blocks.1.expand.conv.weight"
    # gradients: from the loss back, where a wrong derivative shows first
    assert training.per_block(errors, order, backward=True)[1] == "classifier"


ORDER = ["stem", "pool", "classifier"]


def _dropout_samples(rate: float, inverted: bool, samples: int, seed: int = 0, where: str = "classifier"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 64))
    w, b = rng.normal(size=(10, 64)) * 0.1, rng.normal(size=10) * 0.1
    out = []
    for _ in range(samples):
        keep = rng.random(x.shape) >= rate
        dropped = x * keep / ((1 - rate) if inverted else 1.0)
        pool = dropped if where == "pool" else x
        out.append({"stem": np.ones((4, 2)), "pool": pool, "classifier": (dropped if where == "classifier" else x) @ w.T + b})
    return out, w, b


def test_dropout_at_the_flavors_rate_before_the_classifier_passes():
    samples, w, b = _dropout_samples(0.2, inverted=True, samples=training.DROPOUT_SAMPLES)
    figures = training.dropout_figures(samples, ORDER, w, b, 0.2)
    ok, summary = training.dropout_ok(figures)
    assert ok, summary
    assert figures["max_abs_z"] < training.Z_LIMIT and 0.25 <= figures["variance_ratio"] <= 4


def test_dropout_at_another_rate_fails():
    samples, w, b = _dropout_samples(0.2, inverted=True, samples=training.DROPOUT_SAMPLES)
    figures = training.dropout_figures(samples, ORDER, w, b, 0.001)  # the flavor says 0.001, the model drops 0.2
    assert not training.dropout_ok(figures)[0]
    assert figures["variance_ratio"] > 100


def test_dropout_that_reaches_an_earlier_block_fails_naming_it():
    samples, w, b = _dropout_samples(0.2, inverted=True, samples=8, where="pool")
    ok, summary = training.dropout_ok(training.dropout_figures(samples, ORDER, w, b, 0.2))
    assert not ok and "pool" in summary


def test_no_dropout_means_identical_passes():
    samples, w, b = _dropout_samples(0.0, inverted=True, samples=4)
    assert training.dropout_ok(training.dropout_figures(samples, ORDER, w, b, 0.0))[0]


# ---- real runs --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PLANT_VARIANT = "mobilenet_v3_small_100"  # squeeze-excite in blocks 0 and 3-10
TRAINING = Options(count_macs=False, train=True)
# Two flavors that are timm's but for one planted mistake each.
PLANTED_FLAVORS = """\
extends: bundled
flavors:
  timm_momentum_inverted:
    description: timm, with the BatchNorm momentum inverted (Keras' 0.9 read as PyTorch's).
    padding: symmetric
    batch_norm: {epsilon: 1.0e-5, momentum: 0.9}
    hard_sigmoid: relu6(x+3)/6
    dropout: 0.0
    fc_layout: linear
  timm_epsilon_1e3:
    description: timm, with TensorFlow's BatchNorm epsilon.
    padding: symmetric
    batch_norm: {epsilon: 1.0e-3, momentum: 0.1}
    hard_sigmoid: relu6(x+3)/6
    dropout: 0.0
    fc_layout: linear
"""
SE_GATE = "return x * self.gate(self.expand(self.act(self.reduce(scale))))"


def _by(checks, subject: str) -> dict[str, Check]:
    return {c.name: c for c in checks if c.subject == subject}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One run, three planted bugs: PyTorch float32 with the momentum inverted, Flax float32 with a wrong
    epsilon, Flax float64 with the gradient stopped at every squeeze-excite gate (a patched copy of the
    generated Flax file; the float64 reference imports the same folder, its PyTorch file untouched)."""
    work = tmp_path_factory.mktemp("planted")
    spec_file = work / "planted.yaml"
    spec_file.write_text(PLANTED_FLAVORS)
    loaded = load_spec(spec_file)
    generated = work / "generated"
    location.generated_dir(loaded, override=generated)  # rendered there, then patched
    flax_file = generated / "flax_nnx" / "mobilenet_v3.py"
    text = flax_file.read_text()
    assert text.count(SE_GATE) == 1
    flax_file.write_text(text.replace(SE_GATE, SE_GATE.replace("return x * ", "return x * jax.lax.stop_gradient(")
                                      + ")"))
    workers = (Worker(*REFERENCE), Worker("torch", flavor="timm_momentum_inverted"),
               Worker("flax", flavor="timm_epsilon_1e3"), Worker("flax", "float64"))
    result = execute(RunConfig(loaded, (PLANT_VARIANT,), workers, "timm", (96, 80), work=work / "run",
                               generated=generated, options=TRAINING))
    return evaluate(loaded, result)


def test_an_inverted_momentum_fails_the_running_statistics_naming_the_first_layer(planted):
    checks = _by(planted, "torch")
    assert checks["train_forward"].ok, checks["train_forward"].summary  # batch statistics: momentum unused
    stats = checks["running_stats"]
    assert not stats.ok
    assert stats.figures["first_diverging"] == "stem" and "first diverging block: stem" in stats.summary
    assert stats.figures["worst"]["error"] > 1e2 * stats.figures["worst"]["allowed"]  # by orders of magnitude


def test_a_wrong_epsilon_fails_the_training_forward_naming_the_stem(planted):
    forward = _by(planted, "flax")["train_forward"]
    assert not forward.ok
    assert forward.figures["first_diverging"] == "stem" and "first diverging block: stem" in forward.summary
    # 3.5e-4 at the stem, growing with every BatchNorm: 6.5e-3 at the logits (measured), float32 is 1e-6
    assert forward.figures["blocks"]["stem"] > training.FLOAT32_TOLERANCE
    assert forward.figures["blocks"]["classifier"] > 10 * training.FLOAT32_TOLERANCE


def test_a_gradient_stopped_at_the_gate_fails_naming_the_last_gated_block(planted):
    checks = _by(planted, "flax:float64")
    assert checks["train_forward"].ok, checks["train_forward"].summary  # the forward pass is the same
    gradients = checks["gradients"]
    assert not gradients.ok
    # from the loss back, the first block whose gradients differ is the last one with a gate
    assert gradients.figures["first_diverging"] == "blocks.10", gradients.summary
    assert all(gradients.figures["per_block"][b]["ratio"] <= 1.0 for b in ("last_conv", "classifier"))
    assert gradients.figures["per_block"]["blocks.10"]["error"] > 1e4 * training.FLOAT64_TOLERANCE
    assert not checks["sgd"].ok and not checks["adamw"].ok


# An RMSNorm family (issue 14; tests/data/onnx_user_specs.yaml): no running statistics, the same function in
# training and eval mode. Keras in float64 against the float64 reference; Flax in float32 with the epsilon
# planted wrong in its generated file (1e-3 for the spec's 1e-6).
RMS_SPEC = ROOT / "tests" / "data" / "onnx_user_specs.yaml"
RMS_EPSILON = "RMS_NORM_EPSILON = 1e-06"


@pytest.fixture(scope="module")
def rms_training(tmp_path_factory):
    work = tmp_path_factory.mktemp("rms")
    loaded = load_spec(RMS_SPEC)
    generated = work / "generated"
    location.generated_dir(loaded, override=generated)
    flax_file = generated / "flax_nnx" / "rms_repro.py"
    text = flax_file.read_text()
    assert text.count(RMS_EPSILON) == 1
    flax_file.write_text(text.replace(RMS_EPSILON, "RMS_NORM_EPSILON = 1e-03"))
    workers = (Worker(*REFERENCE), Worker("keras", "float64"), Worker("flax"))
    result = execute(RunConfig(loaded, ("onnx_rms_norm",), workers, "tf", (64, 48), work=work / "run",
                               generated=generated, options=TRAINING))
    return evaluate(loaded, result)


def test_an_rmsnorm_family_trains_the_same(rms_training):
    float64 = _by(rms_training, "keras:float64")
    failed = [f"{c.name}: {c.summary}" for c in float64.values() if not c.ok]
    assert not failed, failed
    assert float64["running_stats"].summary.endswith("none on either side")  # RMSNorm keeps none
    assert {"gradients", "sgd", "adamw"} <= set(float64)
    assert float64["gradients"].figures["worst"]["error"] < training.FLOAT64_TOLERANCE


def test_a_wrong_rmsnorm_epsilon_fails_the_training_forward_naming_the_stem(rms_training):
    forward = _by(rms_training, "flax")["train_forward"]
    assert not forward.ok
    assert forward.figures["first_diverging"] == "stem", forward.summary
    # An epsilon enters as eps / (2 mean(x^2)): 1e-3 against a mean square near 0.7 is 7e-4 at the stem
    # (measured), over the float32 bound; it compounds through the 14 norms: 8.8e-3 at the logits.
    assert forward.figures["blocks"]["stem"] > forward.figures["allowed"]["stem"]
    assert forward.figures["blocks"]["classifier"] > 10 * forward.figures["allowed"]["classifier"]


def test_zero_gradient_tensors_are_those_at_rounding_level():
    grads = {"a": np.array([1.0, -2.0]), "b.bias": np.array([3e-16]), "c": np.array([1e-4])}
    assert training.zero_gradient_tensors(grads) == ["b.bias"]


# The default tier: one variant per family, trained in PyTorch, and each run training at least one of them,
# two families (V1, V4) compared in float64 as well (gradients and optimizer steps): a covering set, since
# every family in every run costs 10 minutes on 2 cores and a float64 run in JAX or TensorFlow a minute
# or two per variant. The slow tier runs that full matrix, in two flavors.
TRAIN_COVERING = {  # flavor keras: the biased running variance (PyTorch's BatchNorm needs the subclass)
    "torch": None,  # every variant: PyTorch trains fast
    "keras": ("mobilenet_v1_025",),
    "keras:float64": ("mobilenet_v1_025",),
    "keras-jax": ("mobilenet_v1_025",),
    "keras-torch": ("mobilenet_v3_small_075", "mobilenet_edgetpu_075"),
    "flax": ("mobilenet_v2_035",),
    "flax:float64": ("mobilenet_v4_conv_small",),
}
FAMILIES_IN_FLOAT64 = {"mobilenet_v1", "mobilenet_v4"}


@pytest.fixture(scope="module")
def family_training(tmp_path_factory):
    loaded = load_spec()
    variants = tuple(dict.fromkeys(v for vs in TRAIN_COVERING.values() if vs for v in vs))
    workers = [Worker(*REFERENCE)]
    for key, only in TRAIN_COVERING.items():
        framework, _, dtype = key.partition(":")
        workers.append(Worker(framework, dtype or "float32", variants=only))
    result = execute(RunConfig(loaded, variants, tuple(workers), "keras", (96, 80),
                               work=tmp_path_factory.mktemp("family-training"), options=TRAINING))
    return loaded, result, evaluate(loaded, result)


def test_one_variant_per_family_trains_the_same_in_a_covering_set_of_runs(family_training):
    loaded, result, checks = family_training
    family = {v: loaded.spec.variants()[v][0] for v in result.variants}
    # every family but MobileNetV5: its smallest variant has 83 M params, and the reference keeps float64
    # parameters after every step (5 GB); its RMSNorm, gelu_tanh and fusion neck train in small specs
    # (tests/test_fusion_neck.py and the rms_training tests here)
    families = set(loaded.spec.families) - {"mobilenet_v5"}
    assert set(family.values()) == families
    trained = {(c.variant, c.subject) for c in checks if c.name == "train_forward"}
    assert {subject for _, subject in trained} == set(TRAIN_COVERING)  # every run
    assert {family[v] for v, subject in trained if subject == "torch"} == families
    assert {family[c.variant] for c in checks if c.name == "gradients"} == FAMILIES_IN_FLOAT64
    expected = {"train_forward", "running_stats", "gradients", "sgd", "adamw", "dropout"}
    assert expected <= {c.name for c in checks}
    failed = [f"{c.variant} {c.subject} {c.name}: {c.summary}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)
    # each variant's reference file is deleted once every run has read it (runner._run_phase)
    assert list(result.outputs_dir.glob("*.train-reference.npz")) == []
    assert len(list(result.outputs_dir.glob("*.json"))) == len(trained) + len(result.variants)  # and the reference's


def _one_variant_per_family(loaded) -> list[str]:
    """The first variant of each family with BatchNorm (MobileNetV5 has RMSNorm: no running statistics,
    nothing for the flavors' variance conventions to change; test_mobilenet_v5_trains_the_same_in_every_run)."""
    firsts: dict[str, str] = {}
    for variant, (family, _) in loaded.spec.variants().items():
        if family != "mobilenet_v5":
            firsts.setdefault(family, variant)
    return list(firsts.values())


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["keras", "torchvision"])  # biased and unbiased running variance
def test_one_variant_per_family_trains_the_same_in_every_run(tmp_path, flavor):
    from generators.frameworks import RUNS

    loaded = load_spec()
    result = execute(RunConfig.for_frameworks(loaded, _one_variant_per_family(loaded), tuple(RUNS), flavor,
                                              (96, 80), Options(count_macs=False, train=True), work=tmp_path))
    checks = evaluate(loaded, result)
    train = [c for c in checks if c.name in ("train_forward", "running_stats", "gradients", "sgd", "adamw", "dropout")]
    assert {c.subject for c in train if c.name == "gradients"} == {"keras:float64", "flax:float64"}
    failed = [f"{c.variant} {c.subject} {c.name}: {c.summary}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.slow
def test_mobilenet_v5_trains_the_same_in_every_run(tmp_path):
    """mobilenet_v5_base in every run, float64 included; the 300M encoder (its loss on the feature map's mean)
    in the reference and every float32 run, after base and one worker at a time (runner.HEAVY_PARAMS).
    The float64 runs of Keras and Flax leave the encoder out (training.FLOAT64_MAX_PARAMS): measured 23 min
    on 2 cores, the reference's peak 15.5 GB."""
    from generators.frameworks import RUNS

    loaded = load_spec()
    variants = ("mobilenet_v5_base", "mobilenet_v5_300m_encoder")
    result = execute(RunConfig.for_frameworks(loaded, variants, tuple(RUNS), "timm", (96, 80),
                                              Options(count_macs=False, train=True), work=tmp_path))
    checks = evaluate(loaded, result)
    failed = [f"{c.variant} {c.subject} {c.name}: {c.summary}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)
    float32_runs = set(RUNS)
    trained = {v: {c.subject for c in checks if c.name == "train_forward" and c.variant == v} for v in variants}
    assert trained["mobilenet_v5_base"] == float32_runs | {"keras:float64", "flax:float64"}
    assert trained["mobilenet_v5_300m_encoder"] == float32_runs
    assert {c.subject for c in checks if c.name == "gradients" and c.ok} == {"keras:float64", "flax:float64"}
