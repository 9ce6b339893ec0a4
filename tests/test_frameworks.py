"""Every variant in every framework, through the conformance workers (one process per framework).

Default tier: every variant but MobileNetV5's (HEAVY) in PyTorch: built, every tensor's name and shape as the spec, trainable
params and BatchNorm state per layer and in total equal to the spec, the neutral weights round-tripped
bit-exactly, and logits of shape (batch, num_classes) at every published resolution. Then one variant per
architecture but the four largest (COVERING: every block kind and head shape) in all five runs (Keras on
its three backends) with the spec's block shapes, each framework's own MAC counter, and outputs against
a float64 reference, in both padding conventions. The slow tier adds every variant in Keras and Flax,
the four largest in symmetric padding, HEAVY in PyTorch, and the output checks for every variant in every
run.
"""

from __future__ import annotations

import pytest

from conformance.checks import Check, evaluate
from conformance.cli import quick_variants
from conformance.runner import Options, RunConfig, execute, heavy
from generators.frameworks import RUNS
from spec import load_spec

SPEC = load_spec()
# MobileNetV5's three variants (83 to 296 M params; 20 to 44 GMACs even at 224x192) take minutes per
# framework on 2 cores, where the others take seconds: the slow tier has them. The default tier has their
# every new part (RMSNorm, gelu_tanh, stem bias, the fusion neck, encoders) in small specs:
# tests/test_fusion_neck.py and the RMSNorm tests.
HEAVY = [v for v in SPEC.spec.variants() if heavy(SPEC, v)]  # the runner's rule: one worker at a time
ALL_VARIANTS = list(SPEC.spec.variants())
LIGHT_VARIANTS = [v for v in ALL_VARIANTS if v not in HEAVY]
QUICK = [v for v in quick_variants(SPEC.spec) if v not in HEAVY]
# The default tier checks every block kind and head shape of QUICK; these four add only width and depth
# (their block kinds are in mobilenet_v3_small_100, mobilenet_v4_conv_small and mobilenet_v4_hybrid_medium)
# and cost half of QUICK's time: the slow tier has them.
LARGE = ("mobilenet_v3_large_100", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large",
         "mobilenet_v4_hybrid_large")
COVERING = [v for v in QUICK if v not in LARGE]
CORE = ("torch", "keras", "flax")
ALL_RUNS = tuple(RUNS)
EVERY_CHECK = {"build", "structure", "params", "round_trip", "shapes", "macs", "outputs"}


def _checks(tmp_path_factory, name, variants, frameworks, flavor, options=Options(), resolution=(224, 192),
            parallel=None):
    result = execute(RunConfig.for_frameworks(SPEC, variants, frameworks, flavor, resolution, options,
                                              work=tmp_path_factory.mktemp(name), parallel=parallel))
    checks = evaluate(SPEC, result)
    by_key: dict[tuple[str, str], list[Check]] = {}
    for check in checks:
        by_key.setdefault((check.variant, check.subject), []).append(check)
    return by_key


def _every_variant(tmp_path_factory, frameworks, variants=ALL_VARIANTS):
    return _checks(tmp_path_factory, "every", variants, frameworks, "tf",
                   Options(outputs=False, count_macs=False, published_resolutions=True))


@pytest.fixture(scope="session")
def every_variant_torch(tmp_path_factory):  # a PyTorch model builds in a fraction of a second
    return _every_variant(tmp_path_factory, ("torch",), LIGHT_VARIANTS)


@pytest.fixture(scope="session")
def heavy_variants_torch(tmp_path_factory):
    return _every_variant(tmp_path_factory, ("torch",), HEAVY)


@pytest.fixture(scope="session")
def every_variant_keras_flax(tmp_path_factory):
    return _every_variant(tmp_path_factory, ("keras", "flax"))


@pytest.fixture(scope="session")
def quick_same_padding(tmp_path_factory):
    return _checks(tmp_path_factory, "quick-tf", COVERING, ALL_RUNS, "tf")


@pytest.fixture(scope="session")
def quick_symmetric_padding(tmp_path_factory):
    return _checks(tmp_path_factory, "quick-torchvision", COVERING, CORE, "torchvision")


@pytest.fixture(scope="session")
def large_symmetric_padding(tmp_path_factory):
    return _checks(tmp_path_factory, "large-torchvision", LARGE, CORE, "torchvision")


@pytest.fixture(scope="session")
def full_matrix(tmp_path_factory):
    return _checks(tmp_path_factory, "all", ALL_VARIANTS, ALL_RUNS, "tf")


def _assert_all_ok(checks: list[Check] | None, expected_names: set[str]):
    assert checks, "no checks ran"
    names = {c.name for c in checks}
    assert expected_names <= names, f"checks missing: {expected_names - names}"
    failed = [f"{c.name}: {c.summary}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)


def _assert_builds(checks):
    _assert_all_ok(checks, {"build", "structure", "params", "round_trip", "resolutions"})
    params = next(c for c in checks if c.name == "params")
    assert "(spec" in params.summary  # the summary carries both figures


@pytest.mark.parametrize("variant", LIGHT_VARIANTS)
def test_builds_counts_and_resolutions(every_variant_torch, variant):
    _assert_builds(every_variant_torch.get((variant, "torch")))


@pytest.mark.slow
@pytest.mark.parametrize("variant", HEAVY)
def test_builds_counts_and_resolutions_heavy(heavy_variants_torch, variant):
    _assert_builds(heavy_variants_torch.get((variant, "torch")))


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["keras", "flax"])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_builds_counts_and_resolutions_in_keras_and_flax(every_variant_keras_flax, variant, framework):
    _assert_builds(every_variant_keras_flax.get((variant, framework)))


@pytest.mark.parametrize("framework", ALL_RUNS)
@pytest.mark.parametrize("variant", COVERING)
def test_same_padding_every_check(quick_same_padding, variant, framework):
    _assert_all_ok(quick_same_padding.get((variant, framework)), EVERY_CHECK)


@pytest.mark.parametrize("variant", COVERING)
def test_same_padding_pairs_agree(quick_same_padding, variant):
    pairs = [c for (v, subject), checks in quick_same_padding.items() if v == variant and "~" in subject
             for c in checks]
    assert len(pairs) == 10, [c.subject for c in pairs]
    _assert_all_ok(pairs, {"outputs"})


@pytest.mark.parametrize("framework", CORE)
@pytest.mark.parametrize("variant", COVERING)
def test_symmetric_padding_every_check(quick_symmetric_padding, variant, framework):
    _assert_all_ok(quick_symmetric_padding.get((variant, framework)), EVERY_CHECK)


@pytest.mark.slow
@pytest.mark.parametrize("framework", CORE)
@pytest.mark.parametrize("variant", LARGE)
def test_symmetric_padding_every_check_large(large_symmetric_padding, variant, framework):
    _assert_all_ok(large_symmetric_padding.get((variant, framework)), EVERY_CHECK)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ALL_RUNS)
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_full_matrix(full_matrix, variant, framework):
    _assert_all_ok(full_matrix.get((variant, framework)), EVERY_CHECK)


@pytest.mark.slow
def test_the_gemma_3n_encoder_at_its_published_768_in_every_run(tmp_path_factory):
    """MobileNetV5's 300M encoder as Gemma 3n runs it (SAME padding, 768x768: 16x16 from the neck's average
    pool, where 224x192 resamples bilinearly), one input batch through every run."""
    # One worker at a time: Keras on PyTorch keeps every layer's output of its eager functional forward until
    # the end, 15.3 GB at 768x768 for the batch of 2 (measured; TensorFlow and JAX free them as they go).
    checks = _checks(tmp_path_factory, "v5-768", ["mobilenet_v5_300m_encoder"], ALL_RUNS, "timm_tf",
                     resolution=(768, 768), parallel=1)
    for framework in ALL_RUNS:
        _assert_all_ok(checks.get(("mobilenet_v5_300m_encoder", framework)), EVERY_CHECK)
