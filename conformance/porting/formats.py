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
from generators.location import family_module
from spec.files import atomic_path, atomic_write
from spec.resolve import Description

NEUTRAL = "safetensors"
SIDECAR_SUFFIX = ".mnforge.json"


def sidecar(path: Path) -> Path:
    return Path(f"{path}{SIDECAR_SUFFIX}")


# What a sidecar may hold (every value a string): what `port` writes, and what `read_metadata` accepts.
SIDECAR_KEYS = ("variant", "flavor", "num_classes", "weights_format", "written_by", "reference", "format", "source")


def read_metadata(path: Path) -> dict[str, str]:
    """What a file says about itself: safetensors metadata or the sidecar (empty if neither).
    A sidecar that is not a JSON object of strings under SIDECAR_KEYS is refused (WeightError naming it)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                return dict(f.metadata() or {})
        except Exception:
            return {}
    side = sidecar(path)
    if not side.exists():
        return {}
    if not side.is_file():
        raise WeightError(f"{side}: the sidecar of {path.name} is not a file")
    try:
        data = json.loads(side.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise WeightError(f"{side}: the sidecar of {path.name} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise WeightError(f"{side}: the sidecar of {path.name} is not valid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None
    if not isinstance(data, dict):
        raise WeightError(f"{side}: the sidecar of {path.name} holds a JSON {_json_kind(data)}, expected an object "
                          f"with the keys {', '.join(SIDECAR_KEYS)}")
    unknown = sorted(k for k in data if k not in SIDECAR_KEYS)
    if unknown:
        raise WeightError(f"{side}: unknown key(s) {', '.join(map(repr, unknown))} in the sidecar of {path.name}; "
                          f"it may hold {', '.join(SIDECAR_KEYS)}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise WeightError(f"{side}: {key!r} is a JSON {_json_kind(value)} in the sidecar of {path.name}, "
                              f"expected a string")
    classes = data.get("num_classes")
    if classes is not None and not (classes.isascii() and classes.isdigit() and int(classes) > 0):
        raise WeightError(f"{side}: 'num_classes' is {classes!r} in the sidecar of {path.name}, expected a positive "
                          f"whole number")
    return data


def classes_metadata(desc: Description) -> dict[str, str]:
    """The `num_classes` entry of a weight file's metadata: none for an encoder, which has no classes."""
    return {} if desc.num_classes is None else {"num_classes": str(desc.num_classes)}


def _json_kind(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def metadata_file(path: Path) -> Path:
    """Where `read_metadata(path)` read from: the file itself (safetensors) or its sidecar."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else sidecar(path)


def write_sidecar(path: Path, metadata: dict) -> None:
    atomic_write(sidecar(path), json.dumps(metadata, indent=1, sort_keys=True) + "\n")


# ---- what a file is, from its first bytes (no framework imported) --------------------------------------

# format -> (what its files are, the kinds of file sniff() may find in one)
CONTENTS = {"torch": ("a PyTorch state dict (torch.save: a zip archive or a pickle)", ("zip", "pickle")),
            "keras": ("Keras weights (an HDF5 .weights.h5 file)", ("hdf5",)),
            "flax": ("a Flax NNX state (a msgpack map)", ("msgpack",)),
            NEUTRAL: ("a safetensors file", ("safetensors",))}
KIND_TITLES = {"zip": "a zip archive", "pickle": "a Python pickle", "hdf5": "an HDF5 file",
               "msgpack": "a msgpack map", "safetensors": "a safetensors file", "npy": "a NumPy .npy array"}


def sniff(path: Path) -> str | None:
    """The kind of file `path` is, judged by its first bytes: "empty", one of KIND_TITLES, or None (unknown)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(16)
        if head.startswith(b"PK\x03\x04"):
            return "zip"
        if head.startswith(b"\x93NUMPY"):
            return "npy"
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return "pickle"
        offset = 0
        while offset + 8 <= size:  # HDF5: the signature at 0, 512, 1024, 2048, ... (after a user block)
            f.seek(offset)
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return "hdf5"
            offset = 512 if offset == 0 else offset * 2
    if len(head) > 8 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if 0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF):
        return "msgpack"
    return None


def check_contents(fmt: str, path: Path, role: str = "--from") -> None:
    """Refuse, in one line naming the file, a file that cannot be `fmt` by its first bytes (before a worker
    starts a framework for it); says which format would read it where it is a kind another format reads."""
    what, kinds = CONTENTS[FRAMEWORK_OF[fmt] or NEUTRAL]
    kind = sniff(path)
    if kind in kinds:
        return
    if kind == "empty":
        raise WeightError(f"{path}: the file is empty, not {what}")
    readers = [name for name in FORMATS if kind in CONTENTS[FRAMEWORK_OF[name] or NEUTRAL][1]]
    if role == "--from":
        hint = f"; is it {role} {' or '.join(f'{name}:PATH' for name in readers)}?" if readers else ""
    else:  # run --weights: a generated framework's file, or the neutral one named .safetensors
        readers = [name for name in readers if name in FRAMEWORKS or name == NEUTRAL]
        hint = f"; it looks like {' or '.join(readers)} weights" if readers else ""
    found = f"the file is {KIND_TITLES[kind]}" if kind in KIND_TITLES else \
        "its first bytes match no file format that mnforge reads"
    raise WeightError(f"{path}: not {what}: {found}{hint}")


# ---- PyTorch -------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict:
    """Load a state dict without executing code: weights_only=True refuses any pickled object but tensors
    and plain containers. Accepts {"state_dict": ...} / {"model": ...} wrappers."""
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own text advises loading with code execution allowed: never pass it on
        raise WeightError(f"{path}: refused or unreadable as a PyTorch state dict: {_torch_refusal(exc)}") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise WeightError(f"{path}: not a state dict (a mapping of names to tensors) but a {type(data).__name__}")
    for name, value in data.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise WeightError(f"{path}: not a state dict (a mapping of names to tensors): entry {str(name)[:80]!r} "
                              f"is a {type(value).__name__}")
    return data


def _torch_refusal(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in our words. torch's message advises re-running
    torch.load with weights_only=False, i.e. executing whatever the file holds: not advice for a file of
    unknown origin, so none of its text is repeated (beyond the name of a refused global)."""
    import pickle
    import re

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([A-Za-z_][\w.]{0,200})", text)
        holds = f"it holds pickled code or objects ({found.group(1)})" if found else \
            "it holds pickled code or objects, or is not a PyTorch file at all"
        return f"not a plain tensor checkpoint ({holds}); it is loaded as data only, no code is run, and it is refused"
    if isinstance(exc, EOFError):
        return "the file ends early (truncated or empty)"
    if "zip archive" in text or "central directory" in text:
        return "a damaged or truncated PyTorch zip archive"
    return f"not a readable PyTorch file ({type(exc).__name__})"


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
    """The generated module's `load_state` reads it: the layout users restore with."""
    from flax import serialization

    data = Path(path).read_bytes()
    try:
        serialization.msgpack_restore(data)
    except Exception as exc:
        raise WeightError(f"{path}: not a readable msgpack file ({type(exc).__name__}: {exc})") from None
    adapter = get_adapter("flax")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution, abstract=True)
    try:
        family_module("flax", desc.family).load_state(model, data)
    except Exception as exc:
        raise WeightError(f"{path}: does not fit {desc.variant}: {str(exc).splitlines()[0][:400]}") from None
    tensors = adapter.tensors(model)
    check_tensors(tensors, expected_tensors(desc), str(path))
    return tensors


def write_flax(path: Path, desc: Description, tensors: dict[str, np.ndarray]) -> None:
    """The generated module's `save_state` writes it."""
    adapter = get_adapter("flax")
    model = adapter.build(desc.family, desc.variant, desc.flavor, desc.num_classes, desc.resolution, abstract=True)
    adapter.load(model, tensors)
    atomic_write(path, family_module("flax", desc.family).save_state(model))


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
    if path.suffix != f".{NEUTRAL}":
        return READERS[framework](path, desc)
    tensors = load(path)[0]
    check_tensors(tensors, expected_tensors(desc), str(path))
    return tensors
