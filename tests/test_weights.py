"""The neutral weight file: every tensor accounted for, bad files refused with the layer named. (It is
written by spec/files.py's atomic write: tests/test_files.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformance import weights as neutral
from conformance.checks import evaluate
from conformance.runner import RunConfig, Worker, execute, prepare
from spec import describe, load_spec

SPEC = load_spec()


@pytest.fixture(scope="module")
def small():
    desc = describe(SPEC, "mobilenet_v3_small_100", "tf")
    return desc, neutral.expected_tensors(desc), neutral.random_weights(desc, seed=3)


def test_expected_tensors_follow_the_spec(small):
    desc, expected, tensors = small
    assert sum(int(np.prod(s)) for n, s in expected.items() if not neutral.is_state(n)) == desc.params
    assert sum(int(np.prod(s)) for n, s in expected.items() if neutral.is_state(n)) == desc.state
    assert expected["blocks.3.depthwise.conv.weight"] == (96, 1, 5, 5)
    assert expected["fc.weight"] == (1024, 576) and expected["classifier.bias"] == (1000,)
    neutral.check_tensors(tensors, expected, "random")
    assert np.all(tensors["stem.bn.running_var"] > 0) and np.any(tensors["stem.bn.running_mean"] != 0)


def test_save_load_round_trip_keeps_bits_and_metadata(small, tmp_path):
    _, _, tensors = small
    neutral.save(tmp_path / "w.safetensors", tensors, {"variant": "mobilenet_v3_small_100", "flavor": "tf"})
    loaded, metadata = neutral.load(tmp_path / "w.safetensors")
    assert metadata["variant"] == "mobilenet_v3_small_100" and metadata["format"] == neutral.FORMAT
    assert all(np.array_equal(loaded[name], value) for name, value in tensors.items())


def test_weights_of_another_variant_are_refused_naming_tensors(small):
    _, expected, _ = small
    other = neutral.random_weights(describe(SPEC, "mobilenet_v2_035", "tf"))
    with pytest.raises(neutral.WeightError) as error:
        neutral.check_tensors(other, expected, "v2 weights")
    message = str(error.value)
    assert "missing tensor(s)" in message and "unexpected tensor(s)" in message
    assert "blocks.0.squeeze_excite.reduce.weight" in message  # V3-Small has SE in block 0, V2 has not
    assert "more" in message  # first few listed, then a count


def test_misshapen_tensor_names_layer_and_both_shapes(small):
    _, expected, tensors = small
    bad = dict(tensors, **{"blocks.3.depthwise.conv.weight": np.zeros((96, 1, 3, 3), np.float32)})
    with pytest.raises(neutral.WeightError, match=r"blocks\.3\.depthwise\.conv\.weight: shape \(96, 1, 3, 3\), "
                                                   r"expected \(96, 1, 5, 5\)"):
        neutral.check_tensors(bad, expected, "file")


def test_nan_tensor_is_named(small):
    _, expected, tensors = small
    bad = dict(tensors)
    bad["last_conv.bn.running_mean"] = bad["last_conv.bn.running_mean"].copy()
    bad["last_conv.bn.running_mean"][3] = np.nan
    with pytest.raises(neutral.WeightError, match=r"last_conv\.bn\.running_mean: 1 NaN"):
        neutral.check_tensors(bad, expected, "file")


def test_wrong_dtype_is_named(small):
    _, expected, tensors = small
    bad = dict(tensors, **{"classifier.bias": np.zeros(1000, np.int32)})
    with pytest.raises(neutral.WeightError, match=r"classifier\.bias: dtype int32"):
        neutral.check_tensors(bad, expected, "file")


def test_truncated_file_is_refused(small, tmp_path):
    _, _, tensors = small
    path = tmp_path / "w.safetensors"
    neutral.save(path, tensors, {"variant": "x"})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(neutral.WeightError, match="not a readable safetensors file"):
        neutral.load(path)


def test_file_without_our_metadata_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(neutral.WeightError, match="metadata format"):
        neutral.load(tmp_path / "foreign.safetensors")


def test_worker_refuses_a_file_of_another_variant(tmp_path):
    prepare(SPEC, ["mobilenet_v2_035"], "tf", (224, 192), 1000, tmp_path / "other")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "other" / "weights" / "mobilenet_v2_035.safetensors").rename(
        tmp_path / "wrong" / "mobilenet_v3_small_100.safetensors")
    result = execute(RunConfig(SPEC, ("mobilenet_v3_small_100",), (Worker("torch", weights=str(tmp_path / "wrong")),),
                               "tf", (224, 192), work=tmp_path / "run"))
    build = next(c for c in evaluate(SPEC, result) if c.name == "build")
    assert not build.ok
    assert "WeightError" in build.summary and "squeeze_excite" in build.summary, build.summary


def test_bfloat16_is_refused_even_once_ml_dtypes_can_read_it(tmp_path):
    """Importing ml_dtypes (JAX and TensorFlow do) teaches NumPy bfloat16: the neutral file still refuses it,
    naming the tensor, whatever was imported before."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy)

    header = json.dumps({"stem.conv.weight": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                         "__metadata__": {"format": neutral.FORMAT}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(6))
    with pytest.raises(neutral.WeightError, match=r"tensor 'stem\.conv\.weight' cannot be read .*bfloat16"):
        neutral.load(path)
