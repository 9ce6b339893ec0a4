"""Broken specs: each file in tests/bad_specs/ has one defect, and loading it must raise a SpecError that
names the line of the offending value or key, the field, and what was expected (tests/bad_specs/expected.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `spec` and `generators` live at the repository root
    sys.path.insert(0, str(REPO))

from spec.loader import DEFAULT_SPEC, SpecError, load_spec, parse_spec

BAD_SPECS = Path(__file__).resolve().parent / "bad_specs"
EXPECTED: dict[str, dict] = yaml.safe_load((BAD_SPECS / "expected.yaml").read_text(encoding="utf-8"))
CASES = sorted(EXPECTED)


def test_corpus_is_complete():
    files = {p.name for p in BAD_SPECS.glob("*.yaml")} - {"expected.yaml"}
    assert files == set(EXPECTED), "every broken spec needs an entry in expected.yaml, and every entry a file"
    assert len(files) >= 14


@pytest.mark.parametrize("name", CASES)
def test_bad_spec_raises_located_error(name: str):
    expected = EXPECTED[name]
    path = BAD_SPECS / name
    with pytest.raises(SpecError) as info:
        load_spec(path)
    error = info.value
    assert error.path == path
    assert error.line == expected["line"], f"{error}"
    assert expected["message"] in error.message, f"{error}"
    assert expected["field"] in error.field, f"{error}"
    assert str(error).startswith(f"{path}:{expected['line']}: "), str(error)


@pytest.mark.parametrize("name", [name for name in CASES if EXPECTED[name].get("fix")])
def test_bad_spec_has_exactly_one_defect(name: str):
    """Undoing the one defect gives a spec that validates."""
    defect, repair = EXPECTED[name]["fix"]
    text = (BAD_SPECS / name).read_text(encoding="utf-8")
    assert text.count(defect) == 1, f"the defect text must occur once in {name}"
    parse_spec(text.replace(defect, repair), BAD_SPECS / name)


def test_real_spec_loads():
    loaded = load_spec()
    assert loaded.path == DEFAULT_SPEC
    assert len(loaded.sha256) == 64
    variants = loaded.spec.variants()
    assert {"mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v3_large_100"} <= set(variants)
    assert loaded.spec.default_flavor in loaded.spec.flavors


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root`, with the bytes and modification time of each file."""
    snapshot: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        snapshot[key] = ("file", path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else ("dir",)
    return snapshot


@pytest.mark.parametrize("name", CASES)
def test_generate_leaves_output_untouched_on_invalid_spec(name: str, tmp_path: Path):
    from generators.generate import main

    out = tmp_path / "generated"
    sentinel = {
        "__init__.py": '"""sentinel: must survive a failed generation"""\n',
        "torch/__init__.py": "# sentinel\n",
        "torch/mobilenet_v1.py": "STALE = True  # a file the spec would no longer generate\n",
        "jax/mobilenet_v3.py": "raise SystemExit('sentinel')\n",
        "notes.txt": "not generated, not Python\n",
    }
    for relative, text in sentinel.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text(text, encoding="utf-8")
    before = _snapshot(out)

    try:
        code = main(["--spec", str(BAD_SPECS / name), "--out", str(out)])
    except SystemExit as exc:  # argparse-style exit is fine, as long as it says failure
        code = exc.code
    assert code not in (0, None), f"generate accepted the broken spec {name}"
    assert _snapshot(out) == before, "a failed generation changed the output folder"
