"""Training conventions of the generated code, the same in PyTorch, Keras and Flax NNX: the BatchNorm
running-variance update the flavor states (Flavor.bn_running_variance), torchvision's initialisation, the
factories' `dropout=`, and a Flax state that restores into a model that trains.

One process per framework (TensorFlow never shares an interpreter with PyTorch); each prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spec import load_spec
from spec.model import class_name
from spec.resolve import describe, resolve_architecture

REPO = Path(__file__).resolve().parent.parent
SPEC = load_spec()
FRAMEWORKS = ("torch", "keras", "flax")

# ---- BatchNorm: the running variance follows the flavor ------------------------------------------------
# MobileNetV4: the convolutions' BatchNorm2d, and the head's BatchNorm1d after the fc.
BN_VARIANT, BN_FAMILY = "mobilenet_v4_conv_small", "mobilenet_v4"
MOMENTUM = 0.3  # large, so that the two conventions part widely after one step
BATCH, SIZE = 2, 64

# Each script builds the variant once per convention (the flavor's conventions replaced), sets random
# running variances, runs one training batch and reports per BatchNorm: the running variance before and
# after, and the biased variance (float64) and count per channel of the batch it saw.
BN_SCRIPTS = {
    "torch": """
import json, sys
import numpy as np, torch
from generators.location import family_module
job = json.loads(sys.stdin.read())
mod = family_module("torch", job["family"])
torch.manual_seed(0)
x = torch.from_numpy(np.random.default_rng(1).standard_normal((job["batch"], 3, job["size"], job["size"]), np.float32))
report = {}
for convention in ("unbiased", "biased"):
    architecture, flavor = mod.architecture(job["variant"], "torchvision", 0.0)
    flavor = flavor._replace(bn_momentum=job["momentum"], bn_running_variance=convention)
    model = getattr(mod, job["class"])(architecture, 10, flavor).train()
    rng, layers = np.random.default_rng(2), {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, m.num_features).astype(np.float32)))
            layers[name] = {"type": type(m).__name__, "old": m.running_var.double().tolist()}
            def record(module, inputs, name=name):
                x = inputs[0].detach().double().numpy()
                axes = (0, *range(2, x.ndim))
                layers[name].update(var=x.var(axis=axes).tolist(), n=x.size // x.shape[1])
            m.register_forward_pre_hook(record)
    with torch.no_grad():
        model(x)
    for name, m in model.named_modules():
        if name in layers:
            layers[name]["new"] = m.running_var.double().tolist()
    report[convention] = layers
print(json.dumps(report))
""",
    "keras": """
import json, sys
import numpy as np, keras
from generators.location import family_module
job = json.loads(sys.stdin.read())
mod = family_module("keras", job["family"])
keras.utils.set_random_seed(0)
x = np.random.default_rng(1).standard_normal((job["batch"], job["size"], job["size"], 3)).astype(np.float32)
report = {}
for convention in ("unbiased", "biased"):
    architecture, flavor = mod.architecture(job["variant"], "torchvision", 0.0)
    flavor = flavor._replace(bn_momentum=job["momentum"], bn_running_variance=convention)
    model = getattr(mod, job["class"])(architecture, 10, flavor, (job["size"], job["size"], 3))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # Each BatchNorm's input in training mode (batch statistics: the moving ones do not change it).
    inputs = keras.Model(model.inputs, [bn.input for bn in bns])(x, training=True)
    rng, layers = np.random.default_rng(2), {}
    for bn, seen in zip(bns, inputs):
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape).astype(np.float32))
        seen = np.asarray(keras.ops.convert_to_numpy(seen), np.float64)
        layers[bn.name] = {"type": type(bn).__name__, "old": np.asarray(bn.moving_variance, np.float64).tolist(),
                           "var": seen.var(axis=tuple(range(seen.ndim - 1))).tolist(), "n": seen.size // seen.shape[-1]}
    model(x, training=True)
    for bn in bns:
        layers[bn.name]["new"] = np.asarray(bn.moving_variance, np.float64).tolist()
    report[convention] = layers
print(json.dumps(report))
""",
    "flax": """
import json, sys
import numpy as np, jax, jax.numpy as jnp
from flax import nnx
from generators.location import family_module
job = json.loads(sys.stdin.read())
mod = family_module("flax", job["family"])
seen = []
native = nnx.BatchNorm.__call__
def recording(self, x, *args, **kwargs):  # every BatchNorm's input (the subclass calls this one too)
    seen.append((id(self), x))
    return native(self, x, *args, **kwargs)
nnx.BatchNorm.__call__ = recording

@nnx.jit  # eager JAX compiles op by op: one program is faster
def forward(model, x):
    paths = {id(m): ".".join(map(str, path)) for path, m in nnx.iter_modules(model)}
    seen.clear()
    model(x)
    return {paths[key]: value for key, value in seen}

x = jnp.asarray(np.random.default_rng(1).standard_normal((job["batch"], job["size"], job["size"], 3)).astype(np.float32))
report = {}
for convention in ("unbiased", "biased"):
    architecture, flavor = mod.architecture(job["variant"], "torchvision", 0.0)
    flavor = flavor._replace(bn_momentum=job["momentum"], bn_running_variance=convention)
    # Shapes only, then values from NumPy: an eager (or jitted) random init takes long on a busy CPU.
    model = nnx.eval_shape(lambda: getattr(mod, job["class"])(architecture, 10, flavor, rngs=nnx.Rngs(0)))
    rng, state = np.random.default_rng(2), nnx.state(model)
    for path, variable in state.flat_state():
        if jax.dtypes.issubdtype(variable.dtype, jax.dtypes.prng_key):
            variable.set_value(jax.random.key(0))
        elif path[-1] == "kernel":
            fan_in = int(np.prod(variable.shape[:-1]))
            variable.set_value(jnp.asarray(rng.standard_normal(variable.shape) * (2 / fan_in) ** 0.5, jnp.float32))
        elif path[-1] in ("scale", "gamma"):
            variable.set_value(jnp.ones(variable.shape, variable.dtype))
        elif path[-1] == "var":
            variable.set_value(jnp.asarray(rng.uniform(0.5, 2.0, variable.shape), jnp.float32))
        else:
            variable.set_value(jnp.zeros(variable.shape, variable.dtype))
    nnx.update(model, state)
    model.train()
    bns = {".".join(map(str, path)): m for path, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)}
    layers = {name: {"type": type(bn).__name__, "old": np.asarray(bn.var[...], np.float64).tolist()}
              for name, bn in bns.items()}
    inputs = forward(model, x)
    for name, bn in bns.items():
        seen_ = np.asarray(inputs[name], np.float64)
        layers[name].update(new=np.asarray(bn.var[...], np.float64).tolist(), n=seen_.size // seen_.shape[-1],
                            var=seen_.var(axis=tuple(range(seen_.ndim - 1))).tolist())
    report[convention] = layers
print(json.dumps(report))
""",
}


def _run(framework: str, script: str, job: dict, setup: bool = False) -> dict:
    """`script` in a fresh interpreter for `framework`; `setup`: conformance's own process set-up first."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
           "CUDA_VISIBLE_DEVICES": ""}
    if setup:
        script = f"from conformance.frameworks import set_up_process\nset_up_process({framework!r})\n{script}"
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(job), text=True, capture_output=True,
                            env=env, cwd=REPO, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=FRAMEWORKS)
def running_variances(request):
    job = {"family": BN_FAMILY, "variant": BN_VARIANT, "momentum": MOMENTUM, "batch": BATCH, "size": SIZE,
           "class": class_name(SPEC.spec.families[BN_FAMILY].title)}
    return request.param, _run(request.param, BN_SCRIPTS[request.param], job)


def _relative_error(layers: dict, convention: str) -> float:
    """Largest relative error of the running variances against (1 - m) * old + m * var * (n / (n - 1) or 1)."""
    worst = 0.0
    for layer in layers.values():
        old, new, var = (np.asarray(layer[k]) for k in ("old", "new", "var"))
        correction = layer["n"] / (layer["n"] - 1) if convention == "unbiased" else 1.0
        expected = (1 - MOMENTUM) * old + MOMENTUM * var * correction
        worst = max(worst, float(np.max(np.abs(new - expected) / expected)))
    return worst


@pytest.mark.parametrize("convention", ["unbiased", "biased"])
def test_running_variance_follows_the_flavor(running_variances, convention):
    framework, report = running_variances
    layers = report[convention]
    # every BatchNorm of the variant: 2d after each conv, 1d after the fc (n = BATCH)
    assert len(layers) > 20 and min(layer["n"] for layer in layers.values()) == BATCH, framework
    other = "biased" if convention == "unbiased" else "unbiased"
    error, wrong = _relative_error(layers, convention), _relative_error(layers, other)
    assert error < 2e-6, (framework, convention, error)
    assert wrong > 1e-2, (framework, convention, wrong)  # n = 2 after the fc: a factor 2 there


def test_subclasses_only_where_the_native_batch_norm_differs(running_variances):
    framework, report = running_variances
    native = {"torch": "unbiased", "keras": "biased", "flax": "biased"}[framework]
    for convention, layers in report.items():
        subclassed = {layer["type"].startswith(("Biased", "Unbiased")) for layer in layers.values()}
        assert subclassed == {convention != native}, (framework, convention, subclassed)


def test_a_family_override_keeps_the_flavors_running_variance():
    """keras overrides mobilenet_v1's batch_norm (epsilon, momentum) without naming running_variance."""
    from spec.resolve import flavor_values

    values, _ = flavor_values(SPEC.spec, "mobilenet_v1", "keras")
    assert values.batch_norm.momentum == 0.01 and values.batch_norm.running_variance == "biased"
    bundled = {name: flavor.batch_norm.running_variance for name, flavor in SPEC.spec.flavors.items()}
    assert bundled == {"tf": "unbiased", "keras": "biased", "torchvision": "unbiased", "timm": "unbiased",
                       "timm_tf": "unbiased"}


# ---- Initialisation: torchvision's, in every framework -------------------------------------------------
INIT_CASES = (("mobilenet_v3_large_100", "mobilenet_v3", "tf"),  # squeeze-excite; the head as 1x1 convs
              ("mobilenet_v4_hybrid_medium", "mobilenet_v4", "torchvision"))  # attention, layer scale, fc + BN
INIT_SCRIPT = """
import json, sys
import numpy as np
from conformance.frameworks import adapter
instance = adapter(%(framework)r)
report = {}
for case in json.loads(sys.stdin.read()):
    model = instance.build(case["family"], case["variant"], case["flavor"], 1000, (224, 224))
    report[case["variant"]] = {name: [int(t.size), float(np.mean(t, dtype=np.float64)),
                                      float(np.std(t, dtype=np.float64)), float(t.min()), float(t.max())]
                               for name, t in instance.tensors(model).items()}
print(json.dumps(report))
"""


def _expected_init(variant: str, flavor: str) -> dict[str, tuple[str, float]]:
    """Tensor name -> ("normal", std) or ("constant", value): torchvision's scheme, the generated PyTorch's
    `_init_weights`. Conv kernels: kaiming normal over PyTorch's fan_out = out * k * k, a depthwise conv's
    out being its channels; linear layers (also where a flavor computes one as a 1x1 conv): normal(0, 0.01)."""
    desc = describe(SPEC, variant, flavor)
    scales = {i: block.layer_scale for i, block in enumerate(resolve_architecture(SPEC.spec, variant, flavor).blocks)
              if getattr(block, "layer_scale", 0)}
    expected = {}
    for layer in desc.layers:
        if layer.kind in ("conv", "depthwise_conv"):
            expected[f"{layer.name}.weight"] = ("normal", (2.0 / (layer.out_channels * layer.kernel ** 2)) ** 0.5)
        elif layer.kind == "linear":
            expected[f"{layer.name}.weight"] = ("normal", 0.01)
        elif layer.kind == "batch_norm":
            expected.update({f"{layer.name}.weight": ("constant", 1.0), f"{layer.name}.bias": ("constant", 0.0),
                             f"{layer.name}.running_mean": ("constant", 0.0),
                             f"{layer.name}.running_var": ("constant", 1.0)})
        elif layer.kind == "layer_scale":
            expected[f"{layer.name}.gamma"] = ("constant", scales[int(layer.name.split(".")[1])])
        if layer.bias and layer.kind in ("conv", "depthwise_conv", "linear"):
            expected[f"{layer.name}.bias"] = ("constant", 0.0)
    return expected


def init_mismatches(stats: dict, expected: dict) -> list[str]:
    """Tensors whose values do not fit the scheme: a constant exactly; a normal's sample mean and std within
    6 standard errors (std of the sample std ~ std / sqrt(2n), of the mean std / sqrt(n)), for n >= 256."""
    problems = []
    assert set(stats) == set(expected), sorted(set(stats) ^ set(expected))
    for name, (n, mean, std, low, high) in stats.items():
        kind, value = expected[name]
        if kind == "constant":
            if not low == high == float(np.float32(value)):  # stored in float32
                problems.append(f"{name}: [{low}, {high}], expected {value}")
        elif n >= 256 and (abs(std / value - 1) > 6 / (2 * n) ** 0.5 or abs(mean) > 6 * value / n ** 0.5):
            problems.append(f"{name} ({n}): mean {mean:.3g}, std {std:.4g}, expected 0 and {value:.4g}")
    return problems


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_framework_initialises_as_torchvision(framework):
    cases = [{"variant": v, "family": f, "flavor": flavor} for v, f, flavor in INIT_CASES]
    report = _run(framework, INIT_SCRIPT % {"framework": framework}, cases, setup=True)
    for variant, _, flavor in INIT_CASES:
        expected = _expected_init(variant, flavor)
        assert sum(n >= 256 for n, *_ in report[variant].values()) > 100, variant  # the statistics test plenty
        assert init_mismatches(report[variant], expected) == [], (framework, variant)


def test_the_init_bound_tells_the_frameworks_defaults_apart():
    """The bound is tight enough to refuse Keras' glorot_uniform and Flax's truncated lecun_normal, on a
    pointwise conv (in = out = 240, 1x1) and on the classifier (1280 -> 1000)."""
    expected = {"conv.weight": ("normal", (2 / 240) ** 0.5), "classifier.weight": ("normal", 0.01)}
    for conv_std, linear_std in (((1 / 240) ** 0.5, (2 / 2280) ** 0.5),  # glorot: 2 / (fan_in + fan_out)
                                 ((1 / 240) ** 0.5, (1 / 1280) ** 0.5)):  # lecun: 1 / fan_in
        stats = {"conv.weight": [240 * 240, 0.0, conv_std, -1.0, 1.0],
                 "classifier.weight": [1_280_000, 0.0, linear_std, -1.0, 1.0]}
        assert len(init_mismatches(stats, expected)) == 2


# ---- dropout= ---------------------------------------------------------------------------------------
DROPOUT_SCRIPT = """
import json, sys
from generators.location import family_module
framework = %(framework)r
mod = family_module(framework, "mobilenet_v1")
rates = {}
for dropout in (None, 0.0, 0.5):
    if framework == "torch":
        rates[str(dropout)] = mod.mobilenet_v1_025(10, "torchvision", dropout=dropout).dropout.p
    elif framework == "keras":
        model = mod.mobilenet_v1_025(10, "torchvision", (64, 64, 3), dropout=dropout)
        rates[str(dropout)] = model.get_layer("dropout").rate
    else:
        from flax import nnx
        rates[str(dropout)] = mod.mobilenet_v1_025(10, "torchvision", dropout=dropout, rngs=nnx.Rngs(0)).dropout.rate
try:
    mod.architecture("mobilenet_v1_025", "tf", 1.5)
except ValueError as exc:
    rates["refused"] = str(exc)
print(json.dumps(rates))
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_factories_take_the_dropout_rate(framework):
    rates = _run(framework, DROPOUT_SCRIPT % {"framework": framework}, {})
    flavor = SPEC.spec.flavors["torchvision"].dropout
    assert rates == {"None": flavor, "0.0": 0.0, "0.5": 0.5, "refused": "dropout 1.5 is not a rate in [0, 1)"}


# ---- Flax: a restored state trains --------------------------------------------------------------------
FLAX_RESTORE_SCRIPT = """
import json, sys, tempfile
from pathlib import Path
import numpy as np, jax.numpy as jnp, optax
from flax import nnx, serialization
from conformance.frameworks import adapter
from conformance.porting.formats import read_flax, write_flax
from generators.location import family_module
from spec import load_spec
from spec.resolve import describe
flax = adapter("flax")
mod = family_module("flax", "mobilenet_v1")
variant = "mobilenet_v1_025"
desc = describe(load_spec(), variant, "torchvision", num_classes=10)
rng = np.random.default_rng(0)
shapes = flax.shapes(flax.build("mobilenet_v1", variant, "torchvision", 10, (64, 64), abstract=True))
tensors = {name: rng.uniform(0.5, 1.5, shape).astype(np.float32) for name, shape in shapes.items()}
path = Path(tempfile.mkdtemp()) / "state.msgpack"
write_flax(path, desc, tensors)  # the port's writer
x = jnp.asarray(rng.standard_normal((2, 64, 64, 3)).astype(np.float32))
labels = jnp.asarray([1, 3])

def new_model():  # shapes only (an eager random init is slow); load_state gives every weight
    return flax.build("mobilenet_v1", variant, "torchvision", 10, (64, 64), abstract=True)

@nnx.jit
def train_step(model, optimizer):  # a training-mode forward (BatchNorm updates) and an SGD step
    loss, grads = nnx.value_and_grad(
        lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean())(model)
    optimizer.update(model, grads)
    return loss

report = {}
model = new_model()  # the obvious way: msgpack_restore's NumPy arrays, as they are, into the model
state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
nnx.replace_by_pure_dict(state, serialization.msgpack_restore(path.read_bytes()))
nnx.update(model, state)
model.train()
try:
    model.stem(x)  # eager: the stem's BatchNorm updates its statistics
    report["obvious"] = "trained"
except Exception as exc:
    report["obvious"] = f"{type(exc).__name__}: {exc}"
model = new_model()
mod.load_state(model, path.read_bytes())
report["same_bytes"] = mod.save_state(model) == path.read_bytes()  # the port's layout
report["same_values"] = all(np.array_equal(flax.tensors(model)[name], tensors[name]) for name in tensors)
variance, kernel = np.asarray(model.stem.bn.var[...]), np.asarray(model.stem.conv.kernel[...])
model.train()
model.stem(x)
report["bn_updated"] = not np.array_equal(variance, np.asarray(model.stem.bn.var[...]))
report["loss"] = float(train_step(model, nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)))
report["weights_updated"] = not np.array_equal(kernel, np.asarray(model.stem.conv.kernel[...]))
path.write_bytes(mod.save_state(model))
report["port_reads_it"] = all(np.array_equal(value, flax.tensors(model)[name])
                              for name, value in read_flax(path, desc).items())
try:
    mod.load_state(flax.build("mobilenet_v1", "mobilenet_v1_050", "torchvision", 10, (64, 64), abstract=True),
                   path.read_bytes())
except ValueError as exc:
    report["wrong_variant"] = str(exc)
print(json.dumps(report))
"""


def test_a_restored_flax_state_trains():
    """`load_state` restores a .msgpack state (the port's layout) as JAX arrays: a training step (BatchNorm
    update, SGD with momentum) runs, where the obvious restore leaves read-only NumPy arrays and fails."""
    report = _run("flax", FLAX_RESTORE_SCRIPT, {"variant": "mobilenet_v1_025"}, setup=True)
    assert "read-only" in report.pop("obvious"), report
    assert "shape" in report.pop("wrong_variant"), report
    assert np.isfinite(report.pop("loss"))
    assert report == {"same_values": True, "bn_updated": True, "weights_updated": True, "same_bytes": True,
                      "port_reads_it": True}


GELU_SCRIPT = """
import functools, json, math
import numpy as np
import keras
keras.config.set_floatx("float64")
from conformance.frameworks.keras_adapter import Adapter
from spec import describe, load_spec

at = describe(load_spec(), "mobilenet_v4_hybrid_large", "tf", (64, 64), 10)
adapter = Adapter()
x = np.linspace(-6.0, 6.0, 4097)
exact = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
report = {}
for dtype in ("float32", "float64"):
    model = adapter.build(at.family, at.variant, at.flavor, at.num_classes, at.resolution, dtype)
    gelus = [layer.activation for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.Activation)]  # V4 Hybrid-Large: GELU (ReLU is layers.ReLU)
    keras.config.set_floatx("float64")
    values = [np.asarray(gelu(keras.ops.convert_to_tensor(x, "float64")), np.float64) for gelu in gelus]
    report[dtype] = {"count": len(gelus), "keras_own": sum(g is keras.activations.gelu for g in gelus),
                     "error": max(float(np.max(np.abs(v - exact))) for v in values)}
own = np.asarray(keras.activations.gelu(keras.ops.convert_to_tensor(x, "float64"), approximate=False))
report["tensorflow"] = float(np.max(np.abs(own - exact)))
# The tanh approximation (MobileNetV5's), as the generated code writes it (spec/activations.py).
from spec.activations import ACTIVATIONS
from conformance.frameworks.keras_adapter import _float64_gelu
tanh = ACTIVATIONS["gelu_tanh"].reference(x)
# Absolute: TensorFlow's float64 tanh saturates to -1 below -9 or so, so in the far negative tail both
# forms are 0 where the formula is 1e-11 (relative error 1 on values that no sum notices).
error = lambda v: float(np.max(np.abs(v[0] - tanh)))
layers = keras.layers
model = keras.Sequential([keras.Input((x.size,), dtype="float64"),
                          eval(ACTIVATIONS["gelu_tanh"].keras)(name="gelu_tanh", dtype="float64")])
own = np.asarray(model(x[None]))
_float64_gelu(model)
report["tanh"] = {"tensorflow": error(own), "float64": error(np.asarray(model(x[None])))}
print(json.dumps(report))
"""


def test_a_keras_float64_run_computes_gelu_in_float64():
    """TensorFlow's exact GELU rounds its 1/sqrt(2) through float32 (2e-7 relative in float64), its tanh GELU
    its 0.044715: the Keras float64 run swaps in the same formulas with float64 constants; float32 models keep
    Keras' own layers."""
    report = _run("keras", GELU_SCRIPT, {}, setup=True)
    assert report["tensorflow"] > 1e-9  # TensorFlow's own: the reason for the swap (drop it once TF is exact)
    assert report["float32"]["count"] > 0 and report["float32"]["keras_own"] == report["float32"]["count"]
    assert report["float64"]["count"] == report["float32"]["count"] and report["float64"]["keras_own"] == 0
    assert report["float64"]["error"] < 1e-14  # float64 rounding of erf and three products
    # The tanh GELU rounds its 0.044715 through float32 the same way: 9e-10 (absolute) near x = 1.8.
    assert report["tanh"]["tensorflow"] > 1e-10
    assert report["tanh"]["float64"] < 1e-14  # float64 rounding of tanh and five products, values up to 6
