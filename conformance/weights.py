"""The framework-neutral weight file: safetensors keyed by the spec's canonical layer names.

Layouts (PyTorch's, so a generated PyTorch state dict *is* the neutral form):
  conv (incl. depthwise and squeeze-excite)  `<layer>.weight`  (out, in / groups, kh, kw), `<layer>.bias` (out,)
  linear (fc, classifier)                    `<layer>.weight`  (out, in), `<layer>.bias` (out,) if it has one
  layer scale (hybrid MobileNetV4)           `<layer>.gamma` (channels,)
  batch norm                                 `<layer>.weight` (scale), `<layer>.bias` (shift),
                                             `<layer>.running_mean`, `<layer>.running_var`
  RMSNorm (MobileNetV5)                      `<layer>.weight` (scale)
Every file carries metadata: variant, flavor, num_classes, format version. The expected tensors of a
variant come from the spec's analytic description, so a file is checked against the spec, not against
whatever a framework happens to build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spec.files import atomic_write
from spec.resolve import Description

FORMAT = "mnforge-neutral-1"
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


class WeightError(ValueError):
    """A weight file or tensor set that does not fit the variant: names the layer and both shapes."""


def expected_tensors(desc: Description) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape in the neutral layout, for every tensor of the variant."""
    tensors: dict[str, tuple[int, ...]] = {}
    for layer in desc.layers:
        if layer.kind in ("conv", "depthwise_conv"):
            tensors[f"{layer.name}.weight"] = (layer.out_channels, layer.in_channels // layer.groups,
                                               layer.kernel, layer.kernel)
            if layer.bias:
                tensors[f"{layer.name}.bias"] = (layer.out_channels,)
        elif layer.kind == "linear":
            tensors[f"{layer.name}.weight"] = (layer.out_channels, layer.in_channels)
            if layer.bias:
                tensors[f"{layer.name}.bias"] = (layer.out_channels,)
        elif layer.kind == "batch_norm":
            for tensor in BN_TENSORS:
                tensors[f"{layer.name}.{tensor}"] = (layer.out_channels,)
        elif layer.kind == "layer_scale":
            tensors[f"{layer.name}.gamma"] = (layer.out_channels,)
        elif layer.kind == "rms_norm":
            tensors[f"{layer.name}.weight"] = (layer.out_channels,)
    return tensors


def is_state(name: str) -> bool:
    """BatchNorm running statistics: state, not trainable parameters."""
    return name.endswith((".running_mean", ".running_var"))


def check_shapes(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Every tensor accounted for: raise WeightError naming missing, extra and misshapen tensors."""
    problems = []
    missing = [name for name in expected if name not in shapes]
    extra = [name for name in shapes if name not in expected]
    if missing:
        problems.append(_listing("missing", [f"{n} (expected {expected[n]})" for n in missing]))
    if extra:
        problems.append(_listing("unexpected", [f"{n} {tuple(shapes[n])}" for n in extra]))
    problems += [f"{name}: shape {tuple(shapes[name])}, expected {shape}" for name, shape in expected.items()
                 if name in shapes and tuple(shapes[name]) != shape]
    if problems:
        raise WeightError(f"{what}: " + "; ".join(problems))


def check_tensors(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """check_shapes, then the values: floating point, finite, non-negative variances."""
    check_shapes({name: tuple(array.shape) for name, array in tensors.items()}, expected, what)
    problems = []
    for name, array in tensors.items():
        if array.dtype.kind != "f":
            problems.append(f"{name}: dtype {array.dtype}, expected a floating-point tensor")
        elif not np.all(np.isfinite(array)):
            problems.append(f"{name}: {int(np.sum(~np.isfinite(array)))} NaN or infinite values")
        elif name.endswith(".running_var") and np.any(array < 0):
            problems.append(f"{name}: negative running variance")
    if problems:
        raise WeightError(f"{what}: " + "; ".join(problems))


def _listing(label: str, items: list[str], first: int = 5) -> str:
    more = f" and {len(items) - first} more" if len(items) > first else ""
    return f"{len(items)} {label} tensor(s): {', '.join(items[:first])}{more}"


def random_batch_norm(rng: np.random.Generator, tensor: str, shape) -> np.ndarray:
    """One random BatchNorm tensor (`tensor`: one of BN_TENSORS), away from the defaults (mean 0, variance 1,
    scale 1, shift 0) that would hide epsilon and layout bugs. The one rule for the neutral test weights
    and for the porting tests' reference models."""
    if tensor == "running_mean":
        return rng.normal(0.0, 0.5, shape)
    if tensor == "running_var":
        return rng.uniform(0.5, 2.0, shape)
    if tensor == "weight":
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0.0, 0.1, shape)


def random_weights(desc: Description, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with non-trivial BatchNorm statistics (random_batch_norm).

    Scales keep activations of order one through the whole network, so that relative errors measure
    the arithmetic and not an exploding or vanishing signal.
    """
    rng = np.random.default_rng(seed)
    norms = {layer.name for layer in desc.layers if layer.kind in ("batch_norm", "rms_norm")}
    weights: dict[str, np.ndarray] = {}
    for name, shape in expected_tensors(desc).items():
        layer, tensor = name.rsplit(".", 1)
        if layer in norms:  # an RMSNorm's scale as a BatchNorm's: around one
            value = random_batch_norm(rng, tensor, shape)
        elif len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        weights[name] = value.astype(np.float32)
    return weights


def save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    from safetensors.numpy import save as to_bytes

    data = to_bytes({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={"format": FORMAT, **metadata})
    atomic_write(Path(path), data)


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a neutral file (no code is executed: safetensors is data only)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    name = None
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {}
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
                if tensors[name].dtype.kind not in "biuf":  # ml_dtypes, once imported, reads bfloat16 and float8
                    raise TypeError(f"dtype {tensors[name].dtype}")
    except TypeError as exc:  # a dtype NumPy has not got (bfloat16, float8)
        raise WeightError(f"{path}: tensor {name!r} cannot be read as a NumPy array ({exc}); the neutral file "
                          f"holds float32") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:300]})") from None
    if metadata.get("format") != FORMAT:
        raise WeightError(f"{path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    return tensors, metadata
