"""`mnforge port` and `mnforge run`: move a checkpoint between formats, check it on real input.

Every framework step runs in its own process (conformance/porting/worker.py), so a PyTorch checkpoint
can become a Keras one without TensorFlow and torchvision sharing an interpreter. The neutral
safetensors file sits between the two steps. The flavor travels with the weights: it is recorded in
every file written (safetensors metadata or a sidecar JSON) and read back by `run` and `port`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from conformance import weights as neutral
from conformance.porting.formats import (
    FORMATS,
    FRAMEWORK_OF,
    NEUTRAL,
    check_contents,
    classes_metadata,
    metadata_file,
    read_metadata,
    sidecar,
    sniff,
)
from conformance.porting.references import (
    LIBRARIES,
    flavors_of,
    for_variant,
    library_flavors,
    not_published,
    wrong_flavor,
)
from generators import location
from generators.frameworks import FRAMEWORKS
from spec import describe
from spec.loader import LoadedSpec, load_spec

WORKER_TIMEOUT = 900


class PortError(ValueError):
    pass


def parse_location(text: str, role: str) -> tuple[str, Path]:
    fmt, sep, path = text.partition(":")
    if not sep or fmt not in FORMATS or not path:
        raise PortError(f"--{role} takes FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}; got {text!r}")
    return fmt, Path(path)


# What a file name must end with, per format: Keras saves and loads only `.weights.h5`; `run`, `onnx` and
# read_metadata tell the neutral file from a framework's by `.safetensors`.
def _suffix_error(fmt: str, path: Path) -> str | None:
    if FRAMEWORK_OF[fmt] == "keras" and not path.name.endswith(".weights.h5"):
        return f"{fmt} files end in .weights.h5 (Keras saves and loads no other name)"
    if fmt == NEUTRAL and path.suffix != ".safetensors":
        return "safetensors files end in .safetensors (run and port tell them from other formats by it)"
    if fmt != NEUTRAL and path.suffix == ".safetensors":
        return f"a .safetensors name is kept for the neutral file; give the {fmt} file another name"
    return None


def check_source(fmt: str, path: Path, role: str = "--from") -> None:
    """Refuse, before any work, a source that is missing, not a file, misnamed, empty or not `fmt` at all."""
    if not path.exists():
        raise PortError(f"{path}: no such file")
    if not path.is_file():
        raise PortError(f"{path}: not a file ({'a folder' if path.is_dir() else 'a device, pipe or socket'})")
    error = _suffix_error(fmt, path)
    if error:
        raise PortError(f"{path}: {error}")
    try:
        check_contents(fmt, path, role)
    except neutral.WeightError as exc:
        raise PortError(str(exc)) from None


def check_target(fmt: str | None, path: Path, role: str = "--to") -> list[Path]:
    """Refuse, before any work, a target path that cannot be written; returns the folders that writing it
    will create (missing parents are created, and removed again if the command fails)."""
    if path.is_dir():
        raise PortError(f"{role} {path}: is a folder; give a file path, e.g. {path / _example(fmt)}")
    if path.exists() and not path.is_file():
        raise PortError(f"{role} {path}: exists and is not a regular file (a device, pipe or socket); "
                        f"give a file path")
    error = _suffix_error(fmt, path) if fmt else None
    if error:
        raise PortError(f"{role} {path}: {error}")
    missing, parent = [], path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        what = "a file" if parent.is_file() else "a broken link" if parent.is_symlink() else "not a folder"
        raise PortError(f"{role} {path}: cannot be created: {parent} is {what}, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PortError(f"{role} {path}: cannot write in {parent} (permission denied)")
    if fmt and fmt != NEUTRAL:
        side = sidecar(path)
        if side.exists() and not side.is_file():
            raise PortError(f"{role} {path}: its sidecar {side} exists and is not a file")
    return missing


def _example(fmt: str | None) -> str:
    """A file name that fits `fmt` (None: the logits of `run -o`)."""
    if fmt is None:
        return "logits.npy"
    if fmt in LIBRARIES:
        return f"weights{LIBRARIES[fmt].suffix}"
    return f"weights{'.safetensors' if fmt == NEUTRAL else FRAMEWORKS[fmt].weights_suffix}"


def _remove_created(folders: list[Path]) -> None:
    """Undo check_target's missing folders after a failure (the deepest first; only those still empty)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _metadata(path: Path) -> dict[str, str]:
    try:
        return read_metadata(path)
    except neutral.WeightError as exc:
        raise PortError(str(exc)) from None


def choose_flavor(loaded: LoadedSpec, variant: str, explicit: str | None, source_fmt: str, source: Path,
                  target_fmt: str, echo: Callable[[str], None]) -> str:
    """--flavor, else what the source file records, else the flavor its format implies, else the target's."""
    return _choose_flavor(loaded, variant, explicit, source_fmt, source, target_fmt, echo)[0]


def _choose_flavor(loaded: LoadedSpec, variant: str, explicit: str | None, source_fmt: str, source: Path,
                   target_fmt: str, echo: Callable[[str], None]) -> tuple[str, str]:
    """(flavor, why when it was not the obvious choice). A reference library's flavor is checked against
    what the library publishes of `variant`: where it publishes the variant in one flavor only, that flavor
    is implied; a flavor it does not publish the variant in is refused, naming the flag to give."""
    flavors = loaded.spec.flavors
    if explicit and explicit not in flavors:
        raise PortError(f"--flavor {explicit}: unknown flavor; known flavors: {', '.join(flavors)}")
    recorded = _metadata(source).get("flavor") if source.exists() else None
    if recorded and recorded not in flavors:
        raise PortError(f"{metadata_file(source)}: records flavor {recorded!r}, which the spec does not know "
                        f"(known: {', '.join(flavors)}); give --flavor")
    libraries = [fmt for fmt in dict.fromkeys((source_fmt, target_fmt)) if fmt in LIBRARIES]
    for fmt in libraries:
        if not flavors_of(fmt, variant):
            raise PortError(not_published(fmt, variant))
    if explicit:
        flavor, why = explicit, ""
    elif recorded:
        flavor, why = recorded, ""
    elif libraries:
        fmt = libraries[0]
        published = flavors_of(fmt, variant)
        flavor, why = LIBRARIES[fmt].flavor, ""
        if flavor not in published:
            if len(published) > 1:
                raise PortError(wrong_flavor(fmt, variant, flavor))
            flavor, name = next(iter(published.items()))
            why = f" (chosen: {fmt} publishes {variant} only as {name.split(':', 1)[1]}; --flavor overrides)"
    else:
        flavor, why = loaded.spec.default_flavor, ""
    for fmt in libraries:  # the flavor must be one the library publishes the variant in, where it is the library's
        if flavor in library_flavors(fmt) and flavor not in flavors_of(fmt, variant):
            given = " (given by --flavor)" if explicit else f" (recorded in {metadata_file(source)})" if recorded else ""
            raise PortError(wrong_flavor(fmt, variant, flavor, given))
    if explicit and recorded and recorded != explicit:
        echo(f"note: {source} was written for flavor {recorded}; reinterpreting it as {explicit} (--flavor)")
    return flavor, why


def _check_recorded(path: Path, variant: str, num_classes: int | None = None) -> None:
    recorded = _metadata(path)
    if recorded.get("variant") and recorded["variant"] != variant:
        raise PortError(f"{path} holds weights of {recorded['variant']}, not {variant}")
    classes = recorded.get("num_classes")
    if num_classes is not None and classes and classes.isdigit() and int(classes) != num_classes:
        raise PortError(f"{path} holds weights for {classes} classes (recorded in {metadata_file(path).name}), "
                        f"not {num_classes}; give --num-classes {classes}")


def run_worker(request: dict, framework: str | None, what: str) -> dict:
    """One port step in a fresh process of `framework` (its native run: Keras on TensorFlow); raises
    PortError with the worker's message."""
    with tempfile.TemporaryDirectory(prefix="mnforge-port-") as tmp:
        request = {**request, "result": str(Path(tmp) / "result.json"), "run": framework}
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        try:
            proc = subprocess.run([sys.executable, "-m", "conformance.porting.worker", str(Path(tmp) / "request.json")],
                                  check=False, capture_output=True, text=True, timeout=WORKER_TIMEOUT,
                                  env=_worker_environment(request))
        except subprocess.TimeoutExpired:
            raise PortError(f"{what}: the {framework} worker did not finish in {WORKER_TIMEOUT} s") from None
        result_file = Path(request["result"])
        if not result_file.exists():
            tail = "\n".join(proc.stderr.splitlines()[-15:])
            raise PortError(f"{what}: the {framework} worker exited with code {proc.returncode}:\n{tail}")
        result = json.loads(result_file.read_text())
    if "error" in result:
        path = request.get("path")
        if path and result["error"].startswith(f"{path}:"):  # the message names the file already
            raise PortError(result["error"])
        raise PortError(f"{what}: {result['error']}")
    return result


def _worker_environment(request: dict) -> dict[str, str]:
    """The worker imports the code of the request's spec: the folder the CLI chose, else the spec's own
    (generators/location.py), so that `port` called from Python works with any spec too."""
    env = dict(os.environ)
    if location.ENVIRONMENT not in env:
        env[location.ENVIRONMENT] = str(location.generated_dir(load_spec(request["spec"])))
    return env


def port(loaded: LoadedSpec, variant: str, source: str, target: str, flavor: str | None = None,
         num_classes: int = 1000, echo: Callable[[str], None] = print) -> dict:
    source_fmt, source_path = parse_location(source, "from")
    target_fmt, target_path = parse_location(target, "to")
    check_source(source_fmt, source_path)
    created = check_target(target_fmt, target_path)
    _check_recorded(source_path, variant, num_classes)
    flavor, why = _choose_flavor(loaded, variant, flavor, source_fmt, source_path, target_fmt, echo)
    desc = describe(loaded, variant, flavor, num_classes=num_classes)
    source_ref = _reference_name(source_fmt, variant, flavor)
    target_ref = _reference_name(target_fmt, variant, flavor)
    common = {"spec": str(loaded.path), "variant": variant, "flavor": flavor, "num_classes": num_classes}
    size_mb = source_path.stat().st_size / 1e6
    try:
        with tempfile.TemporaryDirectory(prefix="mnforge-port-") as tmp:
            middle = Path(tmp) / "neutral.safetensors"
            echo(f"reading {source_fmt}:{source_path} ({size_mb:.1f} MB) as {variant}, flavor {flavor}{why}")
            if source_fmt == NEUTRAL:
                tensors, _ = neutral.load(source_path)
                neutral.check_tensors(tensors, neutral.expected_tensors(desc), str(source_path))
                neutral.save(middle, tensors, {"variant": variant, "flavor": flavor, **classes_metadata(desc)})
            else:
                run_worker({**common, "op": "read", "format": source_fmt, "path": str(source_path),
                            "neutral": str(middle), "reference": source_ref},
                           FRAMEWORK_OF[source_fmt], f"reading {source_path}")
            tensors, _ = neutral.load(middle)
            echo(f"writing {target_fmt}:{target_path}")
            if target_fmt == NEUTRAL:
                _write_neutral(target_path, tensors, {"variant": variant, "flavor": flavor,
                                                      **classes_metadata(desc),
                                                      "source": f"{source_fmt}:{source_path.name}"})
            else:
                run_worker({**common, "op": "write", "format": target_fmt, "path": str(target_path),
                            "neutral": str(middle), "reference": target_ref},
                           FRAMEWORK_OF[target_fmt], f"writing {target_path}")
    except BaseException:
        _remove_created(created)
        raise
    summary = {"variant": variant, "flavor": flavor, "tensors": len(tensors),
               "params": sum(v.size for k, v in tensors.items() if not neutral.is_state(k)),
               "state": sum(v.size for k, v in tensors.items() if neutral.is_state(k)),
               "from": f"{source_fmt}:{source_path}", "to": f"{target_fmt}:{target_path}"}
    echo(f"converted {summary['tensors']} tensors ({summary['params']:,} params, {summary['state']:,} BatchNorm "
         f"statistics) of {variant} ({flavor}): {summary['from']} -> {summary['to']}")
    return summary


def _write_neutral(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    try:
        neutral.save(path, tensors, metadata)
    except OSError as exc:
        raise PortError(f"--to {path}: cannot be written: {exc.strerror or exc}") from None


def _reference_name(fmt: str, variant: str, flavor: str) -> str | None:
    """The reference model a library format holds for `variant`; the flavor chooses between two (timm's
    mobilenetv3_* and tf_mobilenetv3_*) where it is one of the library's own flavors."""
    if fmt not in LIBRARIES:
        return None
    try:
        return for_variant(fmt, variant, flavor if flavor in library_flavors(fmt) else None).name
    except KeyError as exc:
        raise PortError(str(exc.args[0])) from None


def run_model(loaded: LoadedSpec, variant: str, framework: str, weights: Path, inputs: Path, output: Path,
              flavor: str | None = None, num_classes: int | None = None) -> dict:
    if framework not in FRAMEWORKS:
        raise PortError(f"--framework takes {', '.join(FRAMEWORKS)}; got {framework!r}")
    weights, inputs, output = Path(weights), Path(inputs), Path(output)
    check_source(NEUTRAL if weights.suffix == ".safetensors" else framework, weights, "--weights")
    check_input(inputs, framework)
    created = check_target(None, output, "-o")
    _check_recorded(weights, variant)
    recorded = _metadata(weights)
    if flavor and flavor not in loaded.spec.flavors:
        raise PortError(f"--flavor {flavor}: unknown flavor; known flavors: {', '.join(loaded.spec.flavors)}")
    flavor = flavor or recorded.get("flavor") or loaded.spec.default_flavor
    if flavor not in loaded.spec.flavors:
        raise PortError(f"{metadata_file(weights)}: records flavor {flavor!r}, which the spec does not know "
                        f"(known: {', '.join(loaded.spec.flavors)}); give --flavor")
    classes = recorded.get("num_classes", "1000")
    if not num_classes and not (classes.isdigit() and int(classes) > 0):
        raise PortError(f"{metadata_file(weights)}: records num_classes {classes!r}, expected a positive whole number")
    num_classes = num_classes or int(classes)
    try:
        return run_worker({"spec": str(loaded.path), "op": "run", "variant": variant, "flavor": flavor,
                           "num_classes": num_classes, "framework": framework, "path": str(weights),
                           "input": str(inputs), "output": str(output)},
                          framework, f"running {variant} in {framework}")
    except BaseException:
        _remove_created(created)
        raise


def check_input(path: Path, framework: str) -> None:
    """Refuse, before a worker starts, an --input that is not one float .npy array of images in the
    framework's layout (read as data: a pickled object array is refused, never loaded)."""
    import numpy as np

    from generators.frameworks import framework as framework_entry

    check = f"--input {path}"
    if not path.exists():
        raise PortError(f"{check}: no such file")
    if not path.is_file():
        raise PortError(f"{check}: not a file")
    kind = sniff(path)
    if kind == "zip":
        raise PortError(f"{check}: an .npz archive (or another zip file); --input takes one array saved with "
                        f"np.save (.npy)")
    if kind != "npy":
        raise PortError(f"{check}: not a NumPy .npy file ({'empty' if kind == 'empty' else 'no .npy header'}); "
                        f"--input takes one array saved with np.save")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (ValueError, OSError, SyntaxError) as exc:
        raise PortError(f"{check}: a damaged .npy header ({str(exc).splitlines()[0][:200]})") from None
    if dtype.hasobject:
        raise PortError(f"{check}: holds Python objects (pickled), not numbers; it is read as data only and refused")
    if dtype.kind not in "fiu":
        raise PortError(f"{check}: holds {dtype} values, expected float32 images")
    entry = framework_entry(framework)
    if len(shape) != 4 or shape[3 if entry.channels_last else 1] != 3:
        layout = "(batch, H, W, 3)" if entry.channels_last else "(batch, 3, H, W)"
        raise PortError(f"{check}: an array of shape {tuple(shape)}; {framework} takes {entry.layout} {layout}")
