"""`mnforge port` and `mnforge run` with bad input (issue 12, item 5): every refusal is exit code 2 and one
line `error: ...` naming the file, flag or layer at fault; no traceback; nothing is written.

Most refusals happen before a framework worker starts, so these tests run in a second or two; the ones
that need a worker (a pickle handed to torch.load, a timm checkpoint) say so.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from conformance import weights as neutral
from conformance.cli import main as cli
from conformance.porting.formats import FORMATS
from conformance.porting.port import run_worker
from conformance.porting.references import LIBRARIES, REFERENCES
from spec import describe, load_spec

SPEC = load_spec()
VARIANT = "mobilenet_v2_035"  # the smallest: the neutral file is written in-process in a few ms
SUFFIX = {"safetensors": ".safetensors", "torch": ".pt", "keras": ".weights.h5", "flax": ".msgpack",
          **{name: lib.suffix for name, lib in LIBRARIES.items()}}


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def refused(capsys, argv: list[str], *names: object, folder: Path | None = None) -> str:
    """Run the CLI; assert exit code 2, one `error:` line as the last line of stderr naming every one of
    `names`, no traceback, and (with `folder`) that nothing in the folder appeared or vanished."""
    before = listing(folder) if folder else None
    code = cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert lines and lines[-1].startswith("error: "), captured.err
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], "one error line, the last"
    assert "Traceback" not in captured.err
    message = lines[-1]
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"
    if folder:
        assert listing(folder) == before, f"files written: {listing(folder) ^ before}"
    return message


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A neutral file of VARIANT (random weights) in a folder of its own."""
    path = tmp_path_factory.mktemp("neutral") / "v2.safetensors"
    neutral.save(path, neutral.random_weights(describe(SPEC, VARIANT)), {"variant": VARIANT, "flavor": "tf"})
    return path


def zip_file(path: Path) -> Path:
    """A file that starts like a torch.save zip archive: enough to reach the checks that precede reading."""
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    return path


# ---- 1. the target path, checked before any work, for every target format -------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_target_that_is_a_folder_is_refused(capsys, tmp_path, weights, fmt):
    folder = tmp_path / f"existing{SUFFIX[fmt]}"
    folder.mkdir()
    message = refused(capsys, ["port", VARIANT, "--from", f"safetensors:{weights}", "--to", f"{fmt}:{folder}"],
                      folder, "is a folder", folder=tmp_path)
    assert "IsADirectoryError" not in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_target_under_a_file_is_refused(capsys, tmp_path, weights, fmt):
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / "deeper" / f"out{SUFFIX[fmt]}"
    message = refused(capsys, ["port", VARIANT, "--from", f"safetensors:{weights}", "--to", f"{fmt}:{target}"],
                      target, f"{tmp_path / 'a_file'} is a file, not a folder", folder=tmp_path)
    assert "FileExistsError" not in message


def test_target_that_is_a_pipe_is_refused(capsys, tmp_path, weights):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    refused(capsys, ["port", VARIANT, "--from", f"safetensors:{weights}", "--to", f"safetensors:{fifo}"],
            fifo, "not a regular file", folder=tmp_path)


@pytest.mark.parametrize(("fmt", "name", "says"), [
    ("keras", "out.h5", "end in .weights.h5"),
    ("keras-applications", "out.keras", "end in .weights.h5"),
    ("safetensors", "out.pt", "end in .safetensors"),
    ("flax", "out.safetensors", "kept for the neutral file"),
])
def test_target_with_a_name_its_format_cannot_use_is_refused(capsys, tmp_path, weights, fmt, name, says):
    refused(capsys, ["port", VARIANT, "--from", f"safetensors:{weights}", "--to", f"{fmt}:{tmp_path / name}"],
            tmp_path / name, says, folder=tmp_path)


def test_missing_parent_folders_are_created(capsys, tmp_path, weights):
    target = tmp_path / "new" / "deeper" / "out.safetensors"
    assert cli(["port", VARIANT, "--from", f"safetensors:{weights}", "--to", f"safetensors:{target}"]) == 0
    assert neutral.load(target)[1]["variant"] == VARIANT


def test_missing_parent_folders_stay_missing_when_the_port_fails(capsys, tmp_path):
    wrong = tmp_path / "src" / "other.safetensors"  # right variant name in no metadata, tensors of another one
    wrong.parent.mkdir()
    neutral.save(wrong, neutral.random_weights(describe(SPEC, "mobilenet_v2_050")), {})
    target = tmp_path / "new" / "deeper" / "out.safetensors"
    refused(capsys, ["port", VARIANT, "--from", f"safetensors:{wrong}", "--to", f"safetensors:{target}"],
            wrong, "shape", folder=tmp_path)
    assert not (tmp_path / "new").exists()


def test_run_output_that_is_a_folder_is_refused(capsys, tmp_path, weights):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    (tmp_path / "out").mkdir()
    refused(capsys, ["run", VARIANT, "--framework", "torch", "--weights", str(weights),
                     "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out")],
            tmp_path / "out", "is a folder", folder=tmp_path)


def test_onnx_output_that_is_a_folder_is_refused(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    refused(capsys, ["onnx", VARIANT, "--framework", "torch", "-o", str(tmp_path / "out")],
            tmp_path / "out", "is a folder", folder=tmp_path)


# ---- 2. the sidecar <file>.mnforge.json: a JSON object of strings, or refused naming it ------------------


@pytest.mark.parametrize(("content", "says"), [
    ("{not json", "not valid JSON"),
    ('["variant", "flavor"]', "holds a JSON list, expected an object"),
    ('"mobilenet_v2_035"', "holds a JSON string, expected an object"),
    ('{"flavor": 3}', "'flavor' is a JSON number"),
    ('{"variant": null}', "'variant' is a JSON null"),
    ('{"flavour": "tf"}', "unknown key(s) 'flavour'"),
    ('{"num_classes": "ten"}', "'num_classes' is 'ten'"),
])
@pytest.mark.parametrize("command", ["port", "run"])
def test_broken_sidecar_is_named(capsys, tmp_path, content, says, command):
    checkpoint = zip_file(tmp_path / "model.pt")
    side = tmp_path / "model.pt.mnforge.json"
    side.write_text(content)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    argv = (["port", VARIANT, "--from", f"torch:{checkpoint}", "--to", f"safetensors:{tmp_path / 'out.safetensors'}"]
            if command == "port" else
            ["run", VARIANT, "--framework", "torch", "--weights", str(checkpoint), "--input", str(tmp_path / "x.npy"),
             "-o", str(tmp_path / "y.npy")])
    message = refused(capsys, argv, side, says, folder=tmp_path)
    assert "AttributeError" not in message and "Expecting" not in message.split(side.name)[0]


def test_sidecar_with_an_unknown_flavor_or_other_classes_is_refused(capsys, tmp_path):
    checkpoint = zip_file(tmp_path / "model.pt")
    side = tmp_path / "model.pt.mnforge.json"
    out = f"safetensors:{tmp_path / 'out.safetensors'}"
    side.write_text(json.dumps({"flavor": "nope"}))
    refused(capsys, ["port", VARIANT, "--from", f"torch:{checkpoint}", "--to", out], side, "flavor 'nope'",
            folder=tmp_path)
    side.write_text(json.dumps({"num_classes": "10"}))
    refused(capsys, ["port", VARIANT, "--from", f"torch:{checkpoint}", "--to", out], checkpoint, "10 classes",
            "--num-classes 10", folder=tmp_path)


def test_sidecar_that_is_a_folder_is_refused(capsys, tmp_path, weights):
    target = tmp_path / "out.pt"
    (tmp_path / "out.pt.mnforge.json").mkdir()
    refused(capsys, ["port", VARIANT, "--from", f"safetensors:{weights}", "--to", f"torch:{target}"],
            "out.pt.mnforge.json", "not a file", folder=tmp_path)


# ---- 3. a flavor the reference library does not publish the variant in: say which flag to give ----------


MINIMAL = "mobilenet_v3_small_minimal_100"  # timm has it only as tf_mobilenetv3_small_minimal_100 (timm_tf)


def test_timm_flavor_refusal_names_the_flag(capsys, tmp_path):
    """--flavor timm for a variant timm has only as timm_tf: refused before any work, naming the flavor timm
    publishes it in and the flag, not every (variant, flavor) pair timm has."""
    source = tmp_path / "min.safetensors"
    neutral.save(source, neutral.random_weights(describe(SPEC, MINIMAL, "timm_tf")), {"variant": MINIMAL})
    message = refused(capsys, ["port", MINIMAL, "--from", f"safetensors:{source}", "--to",
                               f"timm:{tmp_path / 'out.pth'}", "--flavor", "timm"],
                      "tf_mobilenetv3_small_minimal_100", "--flavor timm_tf", "given by --flavor", folder=tmp_path)
    assert message.count("mobilenet") <= 3, message


@pytest.mark.parametrize(("source", "target"), [("timm", "safetensors"), ("safetensors", "timm"), ("timm", "keras")])
def test_the_only_flavor_a_library_publishes_is_chosen(tmp_path, source, target):
    """No --flavor and nothing recorded: the library's flavor (timm) is implied, but timm has the variant only
    as timm_tf, so timm_tf is chosen, and the reason is given for the reading line."""
    from conformance.porting.port import _choose_flavor

    path = zip_file(tmp_path / "ckpt.pth")
    flavor, why = _choose_flavor(SPEC, MINIMAL, None, source, path, target, echo=print)
    assert flavor == "timm_tf" and why == " (chosen: timm publishes mobilenet_v3_small_minimal_100 only as " \
        "tf_mobilenetv3_small_minimal_100; --flavor overrides)"
    assert _choose_flavor(SPEC, "mobilenet_v3_small_100", None, source, path, target, echo=print) == ("timm", "")


def test_timm_flavor_refusal_from_a_timm_checkpoint(capsys, tmp_path):
    checkpoint = zip_file(tmp_path / "tf_minimal.pth")
    refused(capsys, ["port", MINIMAL, "--from", f"timm:{checkpoint}", "--to", f"keras:{tmp_path / 'o.weights.h5'}",
                     "--flavor", "timm"], "timm publishes", MINIMAL, "only as tf_mobilenetv3_small_minimal_100",
            "--flavor timm_tf", folder=tmp_path)


def test_variant_a_library_does_not_publish_names_where_it_is(capsys, tmp_path):
    checkpoint = zip_file(tmp_path / "v1.pth")
    message = refused(capsys, ["port", "mobilenet_v1_050", "--from", f"timm:{checkpoint}",
                               "--to", f"safetensors:{tmp_path / 'o.safetensors'}"],
                      "timm publishes no model of mobilenet_v1_050", "keras-applications:MobileNet_050",
                      folder=tmp_path)
    assert "timm_tf" not in message


@pytest.fixture(scope="module")
def timm_minimal(tmp_path_factory) -> Path:
    """timm's tf_mobilenetv3_small_minimal_100 with random weights (a PyTorch worker; nothing downloaded)."""
    folder = tmp_path_factory.mktemp("timm")
    np.save(folder / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    name = "timm:tf_mobilenetv3_small_minimal_100"
    ref = REFERENCES[name]
    path = folder / "tf_minimal.pth"
    run_worker({"spec": str(SPEC.path), "op": "reference", "reference": name, "variant": ref.variant,
                "flavor": ref.flavor, "path": str(path), "input": str(folder / "x.npy"),
                "logits": str(folder / "logits.npy")}, ref.framework, f"building {name}")
    return path


def _port_timm_minimal(capsys, checkpoint: Path, target: Path) -> None:
    assert cli(["port", MINIMAL, "--from", f"timm:{checkpoint}", "--to", f"safetensors:{target}"]) == 0
    err = capsys.readouterr().err
    reading = next(line for line in err.splitlines() if line.startswith("reading"))
    assert "flavor timm_tf (chosen: timm publishes" in reading and "tf_mobilenetv3_small_minimal_100" in reading
    assert neutral.load(target)[1]["flavor"] == "timm_tf"


def test_timm_checkpoint_of_a_timm_tf_only_variant_picks_the_flavor(capsys, tmp_path, monkeypatch):
    """The issue's command, without --flavor: timm publishes the variant only as timm_tf, so that flavor is
    chosen, the reading line says so, and the worker is asked to read tf_mobilenetv3_small_minimal_100
    (the worker is stood in for here: the test after this one runs the real one)."""
    from conformance.porting import port as port_module

    asked = []

    def worker(request, framework, what):
        asked.append(request)
        desc = describe(SPEC, request["variant"], request["flavor"])
        neutral.save(Path(request["neutral"]), neutral.random_weights(desc), {"variant": MINIMAL})
        return {}

    monkeypatch.setattr(port_module, "run_worker", worker)
    _port_timm_minimal(capsys, zip_file(tmp_path / "tf_minimal.pth"), tmp_path / "min.safetensors")
    assert [(r["op"], r["reference"], r["flavor"]) for r in asked] == [
        ("read", "timm:tf_mobilenetv3_small_minimal_100", "timm_tf")]


@pytest.mark.slow
def test_real_timm_checkpoint_of_a_timm_tf_only_variant(capsys, tmp_path, timm_minimal):
    """The same with timm's model built (random weights) and read by a PyTorch worker: about 10 s."""
    _port_timm_minimal(capsys, timm_minimal, tmp_path / "min.safetensors")


# ---- 4. never pass on torch's advice to load with weights_only=False; random bytes in every reader -------


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mnforge-pwned-errors",))


def test_pickle_is_refused_without_unsafe_advice(capsys, tmp_path):
    """A pickle carrying code, through the torch worker: refused as data, torch's advice not repeated."""
    marker = Path("/tmp/mnforge-pwned-errors")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"features.0.0.weight": _Exploit()}, protocol=2))
    variant = "mobilenet_v3_small_100"
    message = refused(capsys, ["port", variant, "--from", f"torch:{evil}",
                               "--to", f"safetensors:{tmp_path / 'o.safetensors'}"],
                      evil, "not a plain tensor checkpoint", "pickled code or objects", "refused", folder=tmp_path)
    assert "weights_only=False" not in message and "weights_only` set to `False`" not in message
    assert "trust" not in message
    assert not marker.exists(), "the pickle's code ran"


def test_torch_refusals_in_process_carry_no_unsafe_advice(tmp_path):
    """What torch.load(weights_only=True) raises for a whole pickled module, pickle-like random bytes and a
    damaged zip, as _torch_load words it (in this process: no worker)."""
    import torch

    from conformance.porting.formats import _torch_load
    from conformance.weights import WeightError

    rng = np.random.default_rng(0)
    module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), module)
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x80\x02" + rng.bytes(4000))
    damaged = tmp_path / "damaged.pth"
    torch.save({"w": torch.zeros(3)}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:200])
    expected = {module: "pickled code or objects (torch.nn.modules.linear.Linear)",
                noise: "or is not a PyTorch file at all", damaged: "truncated PyTorch zip archive"}
    for path, says in expected.items():
        with pytest.raises(WeightError) as caught:
            _torch_load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message
        assert "weights_only=False" not in message and "`False`" not in message and "trust" not in message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", ["random", "empty"])
def test_random_bytes_are_refused_by_every_reader(capsys, tmp_path, fmt, content):
    path = tmp_path / f"noise{SUFFIX[fmt]}"
    path.write_bytes(np.random.default_rng(1).bytes(5000)[1:] if content == "random" else b"")
    message = refused(capsys, ["port", VARIANT, "--from", f"{fmt}:{path}",
                               "--to", f"safetensors:{tmp_path / 'o.safetensors'}"],
                      path, "empty" if content == "empty" else "not ", folder=tmp_path)
    assert "weights_only" not in message and "allow_pickle" not in message


def test_file_of_another_format_says_which(capsys, tmp_path, weights):
    renamed = tmp_path / "v2.pt"
    renamed.write_bytes(weights.read_bytes())
    refused(capsys, ["port", VARIANT, "--from", f"torch:{renamed}", "--to", f"flax:{tmp_path / 'o.msgpack'}"],
            renamed, "a safetensors file", "--from safetensors:PATH", folder=tmp_path)


def test_source_that_is_a_folder_is_refused(capsys, tmp_path):
    (tmp_path / "ckpt.pt").mkdir()
    refused(capsys, ["port", VARIANT, "--from", f"torch:{tmp_path / 'ckpt.pt'}",
                     "--to", f"safetensors:{tmp_path / 'o.safetensors'}"], "ckpt.pt", "not a file (a folder)",
            folder=tmp_path)


# ---- run: the input array ------------------------------------------------------------------------------


def _input(tmp_path: Path, kind: str) -> Path:
    if kind == "npz":
        np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 64, 64), np.float32))
        return tmp_path / "x.npz"
    path = tmp_path / "x.npy"
    if kind == "objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(2).bytes(3000))
    elif kind == "nhwc":
        np.save(path, np.zeros((1, 64, 64, 3), np.float32))
    elif kind == "strings":
        np.save(path, np.array(["a", "b"]))
    return path


@pytest.mark.parametrize(("kind", "says"), [
    ("npz", "an .npz archive"),
    ("objects", "holds Python objects"),
    ("random", "not a NumPy .npy file"),
    ("nhwc", "torch takes NCHW"),
    ("strings", "expected float32 images"),
])
def test_run_input_is_refused_naming_it(capsys, tmp_path, weights, kind, says):
    inputs = _input(tmp_path, kind)
    message = refused(capsys, ["run", VARIANT, "--framework", "torch", "--weights", str(weights),
                               "--input", str(inputs), "-o", str(tmp_path / "y.npy")],
                      f"--input {inputs}", says, folder=tmp_path)
    assert "allow_pickle" not in message and "AttributeError" not in message


def test_run_weights_of_another_format_are_refused(capsys, tmp_path, weights):
    np.save(tmp_path / "x.npy", np.zeros((1, 64, 64, 3), np.float32))
    flax_named = tmp_path / "w.msgpack"
    flax_named.write_bytes(b"\x00" * 100)
    refused(capsys, ["run", VARIANT, "--framework", "flax", "--weights", str(flax_named),
                     "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
            flax_named, "not a Flax NNX state", folder=tmp_path)
    zip_file(flax_named)
    refused(capsys, ["run", VARIANT, "--framework", "flax", "--weights", str(flax_named),
                     "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
            flax_named, "a zip archive; it looks like torch weights", folder=tmp_path)


def test_unknown_flavor_is_refused_before_anything_is_said(capsys, tmp_path, weights):
    message = refused(capsys, ["port", VARIANT, "--from", f"safetensors:{weights}",
                               "--to", f"safetensors:{tmp_path / 'o.safetensors'}", "--flavor", "nope"],
                      "--flavor nope", "known flavors", folder=tmp_path)
    assert "note:" not in message


# ---- neutral files NumPy cannot read, or of another variant ---------------------------------------------


def test_bfloat16_safetensors_is_refused_naming_the_tensor(capsys, tmp_path):
    """A safetensors file with a dtype NumPy has not got (written by hand: a header and six bytes)."""
    header = json.dumps({"stem.conv.weight": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                         "__metadata__": {"format": neutral.FORMAT}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(6))
    refused(capsys, ["port", VARIANT, "--from", f"safetensors:{path}", "--to", f"torch:{tmp_path / 'o.pt'}"],
            path, "tensor 'stem.conv.weight'", "bfloat16", folder=tmp_path)


def test_run_with_weights_of_another_variant_names_the_file(capsys, tmp_path):
    """No metadata to catch it early: the worker checks the neutral file against the spec (a PyTorch worker)."""
    other = tmp_path / "other.safetensors"
    neutral.save(other, neutral.random_weights(describe(SPEC, "mobilenet_v2_050")), {})
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    refused(capsys, ["run", VARIANT, "--framework", "torch", "--weights", str(other),
                     "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
            other, "shape", folder=tmp_path)
