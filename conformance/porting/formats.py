"""Weight file formats, each read and written by its own framework (run inside a port worker process).

A format is named by a framework's key (generators/frameworks.py), by a reference library
(references.py: LIBRARIES), or is the neutral `safetensors`:
  safetensors          the neutral file (conformance/weights.py): no framework needed
  torch                state dict of the generated PyTorch model (.pt / .pth), torch.save / torch.load(weights_only=True)
  keras                weights of the generated Keras model (.weights.h5), save_weights / load_weights
  flax                 state of the generated Flax NNX model (.msgpack): flax.serialization's msgpack of the
                       parameters and BatchNorm statistics. Chosen over an orbax checkpoint because it is one
                       file, holds data only (no pickle, no code), and needs nothing beyond flax itself.
  torchvision, timm    the reference model's own state dict (.pth), torch.load(weights_only=True)
  keras-applications   the keras.applications model's weights (.weights.h5)
Framework KEY's format is read by `read_KEY` and written by `write_KEY` below.

Formats that cannot hold metadata get a sidecar `<file>.mnforge.json` with format, variant, flavor and
classes; safetensors keeps them in its metadata. Every write goes through a temporary file and a rename.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from conformance.frameworks import adapter as get_adapter
from conformance.porting.references import LIBRARIES
from conformance.weights import WeightError, check_tensors, expected_tensors
from generators.frameworks import FRAMEWORKS
from spec.files import atomic_path, atomic_write
from spec.resolve import Description

NEUTRAL = "safetensors"
SIDECAR_SUFFIX = ".mnforge.json"


def sidecar(path: Path) -> Path:
    return Path(f"{path}{SIDECAR_SUFFIX}")


def read_metadata(path: Path) -> dict:
    """What a file says about itself: safetensors metadata or the sidecar (empty if neither)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                return dict(f.metadata() or {})
        except Exception:
            return {}
    if sidecar(path).exists():
        return json.loads(sidecar(path).read_text())
    return {}


def write_sidecar(path: Path, metadata: dict) -> None:
    atomic_write(sidecar(path), json.dumps(metadata, indent=1, sort_keys=True) + "\n")


# ---- PyTorch -------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict:
    """Load a state dict without executing code: weights_only=True refuses any pickled object but tensors
    and plain containers. Accepts {"state_dict": ...} / {"model": ...} wrappers."""
    import pickle

    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightError(f"{path}: refused or unreadable as a PyTorch state dict (weights_only=True): {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(hasattr(v, "numpy") for v in data.values()):
        raise WeightError(f"{path}: not a state dict (a mapping of names to tensors)")
    return data


def _torch_save(path: Path, state_dict: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write(path, buffer.getvalue())


def read_torch(path: Path, desc: Description) -> dict[str, np.ndarray]:
    data = _torch_load(path)
    tensors = {k: v.detach().cpu().numpy() for k, v in data.items() if not k.endswith("num_batches_tracked")}
    check_tensors(tensors, expected_tensors(desc), str(path))
    return tensors


def write_torch(path: Path, desc: Description, tensors: dict[str, np.ndarray]) -> None:
    adapter = get_adapter("torch")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution)
    adapter.load(model, tensors)
    _torch_save(path, model.state_dict())


def read_torch_reference(path: Path, desc: Description, ref) -> dict[str, np.ndarray]:
    from conformance.porting import torch_refs

    return torch_refs.import_state_dict(ref, desc, _torch_load(path))


def write_torch_reference(path: Path, desc: Description, ref, tensors: dict[str, np.ndarray]) -> None:
    from conformance.porting import torch_refs

    _torch_save(path, torch_refs.export_state_dict(ref, desc, tensors))


# ---- Keras ---------------------------------------------------------------------------------------------


def _keras_weights_path(path: Path) -> None:
    if not str(path).endswith(".weights.h5"):
        raise WeightError(f"{path}: Keras weight files end in .weights.h5")


def _load_keras_weights(model, path: Path) -> None:
    try:
        model.load_weights(str(path))
    except Exception as exc:  # h5py and Keras raise many types; all mean the file does not fit
        raise WeightError(f"{path}: cannot load into {model.name}: {str(exc).splitlines()[0][:400]}") from None


def _save_keras_weights(model, path: Path) -> None:
    _keras_weights_path(path)
    with atomic_path(path, suffix=".tmp.weights.h5") as tmp:
        model.save_weights(str(tmp), overwrite=True)


def _keras_generated(desc: Description):
    adapter = get_adapter("keras")
    return adapter, adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution)


def read_keras(path: Path, desc: Description) -> dict[str, np.ndarray]:
    _keras_weights_path(path)
    adapter, model = _keras_generated(desc)
    _load_keras_weights(model, path)
    return adapter.tensors(model)


def write_keras(path: Path, desc: Description, tensors: dict[str, np.ndarray]) -> None:
    adapter, model = _keras_generated(desc)
    adapter.load(model, tensors)
    _save_keras_weights(model, path)


def read_keras_reference(path: Path, desc: Description, ref) -> dict[str, np.ndarray]:
    from conformance.porting import keras_refs

    _keras_weights_path(path)
    model = keras_refs.build(ref)
    _load_keras_weights(model, path)
    return keras_refs.import_model(ref, desc, model)


def write_keras_reference(path: Path, desc: Description, ref, tensors: dict[str, np.ndarray]) -> None:
    from conformance.porting import keras_refs

    model = keras_refs.build(ref)
    keras_refs.export_into(ref, desc, model, tensors)
    _save_keras_weights(model, path)


# ---- Flax NNX ------------------------------------------------------------------------------------------


def read_flax(path: Path, desc: Description) -> dict[str, np.ndarray]:
    from flax import nnx, serialization

    try:
        restored = serialization.msgpack_restore(Path(path).read_bytes())
    except Exception as exc:
        raise WeightError(f"{path}: not a readable msgpack file ({type(exc).__name__}: {exc})") from None
    adapter = get_adapter("flax")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution, abstract=True)
    state = adapter.state(model)
    try:
        nnx.replace_by_pure_dict(state, _int_keys(restored))
    except Exception as exc:
        raise WeightError(f"{path}: does not fit {desc.variant}: {str(exc).splitlines()[0][:400]}") from None
    nnx.update(model, state)
    tensors = adapter.tensors(model)
    check_tensors(tensors, expected_tensors(desc), str(path))
    return tensors


def write_flax(path: Path, desc: Description, tensors: dict[str, np.ndarray]) -> None:
    from flax import serialization

    adapter = get_adapter("flax")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution, abstract=True)
    adapter.load(model, tensors)
    pure = adapter.state(model).to_pure_dict()
    atomic_write(path, serialization.msgpack_serialize(_numpy_tree(pure)))


def _int_keys(tree):
    """msgpack stores every key as a string; NNX lists index their blocks by int."""
    if isinstance(tree, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in tree.items()}
    return tree


def _numpy_tree(tree):
    if isinstance(tree, dict):
        return {str(k): _numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


# framework key -> reader / writer of its own weight file (`read_KEY`, `write_KEY` above). A framework
# without them has no format of its own: `port` moves its weights as safetensors.
READERS = {key: globals()[f"read_{key}"] for key in FRAMEWORKS if f"read_{key}" in globals()}
WRITERS = {key: globals()[f"write_{key}"] for key in FRAMEWORKS if f"write_{key}" in globals()}


# format -> the framework whose process reads and writes it (None: the neutral file, no framework)
FRAMEWORK_OF: dict[str, str | None] = {NEUTRAL: None, **{key: key for key in READERS if key in WRITERS},
                                       **{name: lib.framework for name, lib in LIBRARIES.items()}}
FORMATS = tuple(FRAMEWORK_OF)


def read_format(fmt: str, path: Path, desc: Description, ref=None) -> dict[str, np.ndarray]:
    """A file in a framework's format, or a reference library's (`ref`: the reference model it holds)."""
    if fmt in LIBRARIES:
        return globals()[f"read_{LIBRARIES[fmt].framework}_reference"](path, desc, ref)
    return READERS[fmt](path, desc)


def write_format(fmt: str, path: Path, desc: Description, tensors: dict[str, np.ndarray], ref=None) -> None:
    if fmt in LIBRARIES:
        globals()[f"write_{LIBRARIES[fmt].framework}_reference"](path, desc, ref, tensors)
    else:
        WRITERS[fmt](path, desc, tensors)


def read_weights(path: Path, framework: str, desc: Description) -> dict[str, np.ndarray]:
    """Weights for a generated model: the neutral file, or the framework's own format."""
    from conformance.weights import load

    path = Path(path)
    return load(path)[0] if path.suffix == f".{NEUTRAL}" else READERS[framework](path, desc)
