"""Training-mode parity (conformance/training.py, `mnforge conform --train`).

The comparison rules on synthetic numbers first (fast), then real runs: the matrix passes, and planted
bugs (momentum inverted, a wrong epsilon, a gradient stopped at the squeeze-excite gate) fail, each
naming the first block where it shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance import training

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
