"""A user's own spec, end to end, with no edit in this repo: `extends: bundled` plus a few lines, rendered
into a content-addressed cache (generators/location.py) that every command's workers import from; and
hostile YAML (alias bombs, deep nesting) refused at once with one located line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conformance.cli import main as mnforge
from generators import location
from spec.loader import MAX_DEPTH, SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent
# The README's example: a width-0.6 MobileNetV2 in three lines.
EXTENSION = """\
extends: bundled
variants:
  mobilenet_v2_060: {architecture: mobilenet_v2, width: 0.6}
"""


@pytest.fixture()
def user_spec(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the cache (.cache/generated) goes here, not into the repo
    monkeypatch.delenv(location.ENVIRONMENT, raising=False)
    path = tmp_path / "my.yaml"
    path.write_text(EXTENSION)
    return path


def test_extension_adds_a_variant(user_spec: Path):
    loaded = load_spec(user_spec)
    bundled = load_spec()
    assert set(loaded.spec.variants()) == set(bundled.spec.variants()) | {"mobilenet_v2_060"}
    assert loaded.spec.variants()["mobilenet_v2_060"] == ("mobilenet_v2", "mobilenet_v2")
    assert loaded.sha256 != bundled.sha256  # the extension's hash covers the base and the additions


def test_user_spec_is_rendered_once_into_a_content_addressed_cache(user_spec: Path, tmp_path: Path):
    loaded = load_spec(user_spec)
    folder = location.generated_dir(loaded)
    assert folder.parent == (tmp_path / ".cache" / "generated").resolve()
    assert "def mobilenet_v2_060(" in (folder / "pytorch" / "mobilenet_v2.py").read_text()
    stamp = (folder / "pytorch" / "mobilenet_v2.py").stat().st_mtime_ns
    assert location.generated_dir(load_spec(user_spec)) == folder
    assert (folder / "pytorch" / "mobilenet_v2.py").stat().st_mtime_ns == stamp  # reused, not re-rendered
    user_spec.write_text(EXTENSION.replace("0.6", "0.65"))
    assert location.generated_dir(load_spec(user_spec)) != folder  # another spec text, another key
    assert location.generated_dir(load_spec()) == location.BUNDLED  # the bundled spec: the committed package


def test_user_spec_conforms_a_new_variant(user_spec: Path, tmp_path: Path, capsys):
    """Issue 12's first reproduction: every worker imported the bundled generated/ (KeyError)."""
    code = mnforge(["--spec", str(user_spec), "conform", "mobilenet_v2_060", "--frameworks", "torch",
                    "--resolution", "64x48", "--parallel", "2", "--json", "--work", str(tmp_path / "work")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, [c for c in report["checks"] if not c["ok"]]
    names = {c["name"] for c in report["checks"]}
    assert {"build", "params", "round_trip", "outputs"} <= names


@pytest.mark.slow
def test_user_spec_every_command(user_spec: Path, tmp_path: Path, capsys):
    """conform in every run, then onnx, port and run with the user's variant."""
    work = tmp_path / "work"
    assert mnforge(["--spec", str(user_spec), "conform", "mobilenet_v2_060", "--resolution", "64x48",
                    "--work", str(work), "--json"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    weights = work / "weights" / "mobilenet_v2_060.safetensors"
    assert mnforge(["--spec", str(user_spec), "onnx", "mobilenet_v2_060", "--framework", "torch",
                    "--resolution", "64", "--weights", str(weights), "-o", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    target = tmp_path / "m.msgpack"
    assert mnforge(["--spec", str(user_spec), "port", "mobilenet_v2_060", "--from", f"safetensors:{weights}",
                    "--to", f"flax:{target}"]) == 0
    images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    assert mnforge(["--spec", str(user_spec), "run", "mobilenet_v2_060", "--framework", "flax", "--weights",
                    str(target), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 1000)


def test_generate_out_writes_an_importable_package(user_spec: Path, tmp_path: Path):
    out = tmp_path / "my_models"
    assert mnforge(["generate", "--spec", str(user_spec), "--out", str(out)]) == 0
    assert mnforge(["generate", "--spec", str(user_spec), "--out", str(out), "--check"]) == 0
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import torch\n"
              "from my_models.pytorch import mobilenet_v2 as m\n"
              "print(tuple(m.mobilenet_v2_060(num_classes=7)(torch.zeros(1, 3, 64, 48)).shape))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(1, 7)"
    # The bundled package is never the target of a user spec's `generate`.
    assert "mobilenet_v2_060" not in (REPO / "generated" / "pytorch" / "mobilenet_v2.py").read_text()


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ("extends: bundled\nfamilies:\n  mobilenet_v2:\n    title: Mine\n", 4, "families.mobilenet_v2.title",
     "already defined in"),
    ("extends: bundled\nfamilies:\n  mobilenet_v2:\n    extra: 1\n", 4, "families.mobilenet_v2.extra",
     "it cannot add 'extra' here"),
    ("extends: bundled\nvariants:\n  v_060: {architecture: mobilenet_v9, width: 0.6}\n", 3,
     "variants.v_060.architecture", "unknown architecture 'mobilenet_v9'"),
    ("extends: bundled\nvariants:\n  v_060: {width: 0.6}\n", 3, "variants.v_060", "names its `architecture`"),
    ("extends: bundled\nvariants:\n  v_060: {architecture: mobilenet_v2, width: -1}\n", 3, "width",
     "greater than 0"),
    ("extends: bundled\nvariants:\n  mobilenet_v2_100: {architecture: mobilenet_v2, width: 1.0}\n", 3,
     "mobilenet_v2_100", "duplicate key"),
    ("extends: nothere.yaml\n", 1, "extends", "cannot read the spec"),
    ("extends: my.yaml\n", 1, "extends", "a cycle"),
    ("extends: [bundled]\n", 1, "extends", "expected 'bundled' or the path"),
])
def test_extension_errors_are_located_in_the_users_file(user_spec: Path, text, line, field, message):
    user_spec.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(user_spec)
    error = info.value
    assert (error.path, error.line) == (user_spec, line), str(error)
    assert field in error.field and message in error.message, str(error)


def _billion_laughs() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nspec_version: 1\n"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bomb.yaml", _billion_laughs(), "expands to more than"),
    ("deep.yaml", "spec_version: " + "[" * 5000 + "]" * 5000 + "\n", f"nested more than {MAX_DEPTH} deep"),
    ("deep_mapping.yaml", "a: " + "{b: " * 2000 + "1" + "}" * 2000 + "\n", "nested more than"),
])
@pytest.mark.parametrize("command", [["list"], ["generate", "--out", "out"]])
def test_hostile_yaml_fails_fast_with_one_line(tmp_path: Path, monkeypatch, capsys, name, text, message, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    start = time.perf_counter()
    assert mnforge(["--spec", name, *command]) == 2
    assert time.perf_counter() - start < 10  # an alias bomb ran past 20 s; a linear walk takes milliseconds
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {name}:") and message in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing written
