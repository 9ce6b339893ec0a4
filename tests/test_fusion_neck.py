"""MobileNetV5's multi-scale fusion neck (MSFA) and encoders (issue 14), from tests/data/fusion_neck.yaml.

* The resampling rules (spec/resolve.py): PyTorch's `nearest` and `bilinear` (align_corners=False) at odd
  sizes, up and down. The generated Keras `Resample` layer and Flax `resample` gather and blend by these
  rules and equal PyTorch's F.interpolate: nearest bit-exact, bilinear within the float32 rounding of
  the blend weights. jax.image.resize, which samples at other points, misses by orders of magnitude more.
* Every variant through every check in every framework: the encoder (its output the neck's 4x4 map),
  classifiers with and without a neck, a BatchNorm family's neck; at 64x48 (the fused map resized
  bilinearly), 64x64 (average-pooled) and 72x40 (odd upsampling factors), with ONNX, and in training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance.checks import OUTPUT_TOLERANCE, evaluate
from conformance.runner import Options, RunConfig, execute
from generators import location
from generators.frameworks import FRAMEWORKS
from spec import describe, load_spec
from spec.resolve import bilinear_taps, nearest_sources

SPEC_FILE = Path(__file__).parent / "data" / "fusion_neck.yaml"
LOADED = load_spec(SPEC_FILE)
VARIANTS = ["fusion_encoder", "fusion_classifier", "plain_classifier", "bn_fusion"]
NUM_CLASSES = 10
# (in, out) sizes along one axis: odd factors up and down, 2x, the same size, a size of 1
SIZES = [(7, 13), (5, 18), (3, 10), (13, 5), (10, 4), (9, 9), (8, 16), (1, 6), (37, 11)]


def _torch_resize(x: np.ndarray, size, mode: str) -> np.ndarray:
    import torch

    options = {} if mode == "nearest" else {"align_corners": False}
    return torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode, **options).numpy()


def test_nearest_rule_is_pytorchs_float32_rule():
    # every (in, out) up to 48 -> 96: the index PyTorch reads, from an image whose values are their indices
    for n in range(1, 49):
        ramp = np.arange(n, dtype=np.float32).reshape(1, 1, 1, n)
        for out in range(1, 97):
            picked = _torch_resize(ramp, (1, out), "nearest").reshape(-1).astype(int).tolist()
            assert nearest_sources(n, out) == picked, (n, out)


def test_bilinear_taps_are_pytorchs():
    # In float64 PyTorch's blend and the taps' agree to rounding (1e-16); the taps are exact.
    rng = np.random.default_rng(0)
    for n, out in SIZES:
        x = rng.standard_normal((1, 1, 1, n))
        matrix = np.zeros((out, n))
        for i, (lower, upper, weight) in enumerate(bilinear_taps(n, out)):
            matrix[i, lower] += 1.0 - weight
            matrix[i, upper] += weight
        expected = _torch_resize(x, (1, out), "bilinear").reshape(-1)
        assert np.max(np.abs(matrix @ x.reshape(-1) - expected)) <= 1e-14, (n, out)


# One process: PyTorch, Keras (JAX backend) and Flax; the generated Keras and Flax files loaded by path.
RESAMPLE = """
import importlib.util, json, sys
import numpy as np
import torch
import jax, jax.numpy as jnp
from flax import nnx
def load(path):
    spec = importlib.util.spec_from_file_location("neck_" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
job = json.load(sys.stdin)
keras_module, flax_module = load(job["keras"]), load(job["flax"])
rng = np.random.default_rng(1)
report = []
for n, out in job["sizes"]:
    for mode in ("nearest", "bilinear"):
        x = rng.standard_normal((2, 3, n, n + 2)).astype(np.float32)  # NCHW, H != W
        size = (out, out + 1)
        options = {} if mode == "nearest" else {"align_corners": False}
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode, **options).numpy()
        nhwc = x.transpose(0, 2, 3, 1)
        keras_out = np.asarray(keras_module.Resample(size, mode)(nhwc)).transpose(0, 3, 1, 2)
        flax_out = np.asarray(flax_module.resample(jnp.asarray(nhwc), size, mode)).transpose(0, 3, 1, 2)
        jax_mode = {"nearest": "nearest", "bilinear": "linear"}[mode]
        jax_out = np.asarray(jax.image.resize(nhwc, (2, *size, 3), jax_mode)).transpose(0, 3, 1, 2)
        scale = float(np.max(np.abs(x)))
        report.append({"n": n, "out": out, "mode": mode, "keras": float(np.max(np.abs(keras_out - ref))) / scale,
                       "flax": float(np.max(np.abs(flax_out - ref))) / scale,
                       "jax_image_resize": float(np.max(np.abs(jax_out - ref))) / scale})
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return location.generated_dir(LOADED, override=tmp_path_factory.mktemp("fusion_neck") / "generated")


def test_generated_resampling_equals_pytorchs_at_odd_sizes(generated):
    files = {key: str(generated / FRAMEWORKS[key].package / "fusion_repro.py") for key in ("keras", "flax")}
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    process = subprocess.run([sys.executable, "-c", RESAMPLE], input=json.dumps({**files, "sizes": SIZES}),
                             capture_output=True, text=True, env=env, timeout=600, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    for row in report:
        if row["mode"] == "nearest":  # a gather of the same elements: exact
            assert row["keras"] == row["flax"] == 0.0, row
        else:
            # PyTorch rounds each source coordinate to float32 (an fma, CPU-dependent), within 2^-24 * in of
            # the exact one the taps use: per axis the weights differ by that, the blend by that times the
            # values' range (in H, n rows; in W, n + 2 columns). Then one float32 rounding per product and
            # sum: 3 per axis here (two passes), 5 in PyTorch's one two-dimensional blend. Measured: at most
            # half this bound (1.3e-6 of 5.2e-6 at 37 -> 11); a wrong convention misses by 8e-2 and more.
            bound = 2.0**-24 * (row["n"] + (row["n"] + 2) + 11)
            assert max(row["keras"], row["flax"]) <= bound, row
    # jax.image.resize samples elsewhere: nearest at half-pixel centres (another pixel wherever the factor is
    # not 2), bilinear with antialiasing when shrinking: orders of magnitude off PyTorch's
    odd = [row for row in report if row["n"] > 1 and (
        row["mode"] == "nearest" and row["out"] not in (row["n"], 2 * row["n"]) or
        row["mode"] == "bilinear" and row["out"] < row["n"])]
    assert odd and all(row["jax_image_resize"] > 1e-2 for row in odd), [r for r in odd if r["jax_image_resize"] <= 1e-2]


@pytest.fixture(scope="module")
def neck_checks(tmp_path_factory, generated):
    """Every check at three resolutions (training at 64x48 only: the one training batch is 64x48 anyway)."""
    work = tmp_path_factory.mktemp("fusion_runs")
    checks = {}
    for resolution, train in (((64, 48), True), ((64, 64), False), ((72, 40), False)):
        options = Options(onnx=True, train=train)
        result = execute(RunConfig.for_frameworks(LOADED, VARIANTS, list(FRAMEWORKS), "timm", resolution, options,
                                                  num_classes=NUM_CLASSES, work=work / f"{resolution}",
                                                  generated=generated))
        checks[resolution] = evaluate(LOADED, result)
    return checks


@pytest.mark.parametrize("resolution", [(64, 48), (64, 64), (72, 40)])
def test_every_check_passes(neck_checks, resolution):
    checks = neck_checks[resolution]
    failing = [(c.variant, c.name, c.subject, c.summary[:300]) for c in checks if not c.ok]
    assert not failing, failing
    names = {c.name for c in checks}
    assert {"build", "structure", "params", "shapes", "macs", "outputs", "onnx"} <= names
    if resolution == (64, 48):
        assert {"train_forward", "gradients", "sgd", "adamw"} <= names


def test_the_neck_resizes_as_the_spec_says(neck_checks):
    # the spec's resampling at each resolution, and the ONNX graphs that carry it
    expected = {(64, 48): "resize_bilinear", (64, 64): "avg_pool", (72, 40): "resize_bilinear"}
    for resolution, kind in expected.items():
        desc = describe(LOADED, "fusion_encoder", "timm", resolution)
        assert [layer.kind for layer in desc.layers if layer.name == "neck.resize"] == [kind]
        assert desc.block_shapes["neck"] == (48, 4, 4) and desc.output == "neck" and desc.num_classes is None
        onnx_checks = [c for c in neck_checks[resolution] if c.variant == "fusion_encoder" and c.name == "onnx"
                       and "~" not in c.subject]
        assert len(onnx_checks) == len(FRAMEWORKS)
        op = {"resize_bilinear": "resize(mode=bilinear, size=(4, 4))", "avg_pool": "avg_pool(window=(2, 2))"}[kind]
        for check in onnx_checks:
            assert op in check.figures["canonical"]["sequence"], check.subject


def test_encoder_trains_on_its_feature_map(neck_checks):
    # no classifier, no dropout check; gradients and optimizer steps compared as for a classifier
    checks = [c for c in neck_checks[(64, 48)] if c.variant == "fusion_encoder"]
    assert not [c for c in checks if c.name == "dropout"]
    forward = [c for c in checks if c.name == "train_forward"]
    assert forward and all(c.figures["output"] == "neck" for c in forward)
    assert all("neck output rel. error" in c.summary for c in forward)
    gradients = [c for c in checks if c.name == "gradients"]
    assert {c.subject for c in gradients} == {"keras:float64", "flax:float64"}


@pytest.mark.parametrize("framework", ["flax", "keras"])
def test_an_encoder_ports_and_runs_from_the_command_line(tmp_path, capsys, framework):
    """`mnforge port` then `mnforge run` on an encoder (the Gemma 3n recipe in the README, small): no
    classes recorded, and the map comes back in the framework's layout, equal to PyTorch's."""
    from conformance import weights
    from conformance.cli import main as cli

    desc = describe(LOADED, "fusion_encoder", "tf", (64, 48))
    neutral = tmp_path / "encoder.safetensors"
    weights.save(neutral, weights.random_weights(desc, seed=3), {"variant": "fusion_encoder", "flavor": "tf"})
    target = tmp_path / f"encoder{FRAMEWORKS[framework].weights_suffix}"
    spec = ["--spec", str(SPEC_FILE)]
    assert cli([*spec, "port", "fusion_encoder", "--from", f"safetensors:{neutral}", "--to", f"{framework}:{target}"]) == 0
    assert "num_classes" not in json.loads(Path(f"{target}.mnforge.json").read_text())
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 48)).astype(np.float32)
    np.save(tmp_path / "nchw.npy", x)
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1))
    outputs = {}
    for name, weights_file, images in (("torch", neutral, "nchw"), (framework, target, "nhwc")):
        out = tmp_path / f"{name}.npy"
        assert cli([*spec, "run", "fusion_encoder", "--framework", name, "--weights", str(weights_file),
                    "--input", str(tmp_path / f"{images}.npy"), "-o", str(out)]) == 0
        outputs[name] = np.load(out)
    assert "wrote a feature map (2, 4, 4," in capsys.readouterr().err
    channels = desc.block_shapes[desc.output][0]
    assert outputs["torch"].shape == (2, channels, 4, 4) and outputs[framework].shape == (2, 4, 4, channels)
    error = np.abs(outputs[framework].transpose(0, 3, 1, 2) - outputs["torch"]).max() / np.abs(outputs["torch"]).max()
    assert error <= OUTPUT_TOLERANCE  # the bound between frameworks; a layout or port bug is O(1)
