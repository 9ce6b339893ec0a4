"""Free text in a spec cannot change the code generated from it (issue 12).

`paper` and flavor descriptions take any text; the generators escape it, so every generated file has
exactly the statements the clean spec gives (strings aside) and the text arrives intact in the
docstrings. Titles name model classes: the validator refuses any title outside letters, digits, spaces,
hyphens, dots and parentheses, or one whose class name the generated code already uses, with a
`FILE:LINE: FIELD` error. Each generated header names the spec file it was rendered from. A spec that
validated but still breaks a template or ruff (a generator bug) fails `generate` in one line.

The specs are the bundled one cut down to MobileNetV1 (a few renders a second), written to tmp_path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from generators import generate
from generators.generate import render_all
from spec import SpecError, load_spec
from spec.loader import DEFAULT_SPEC
from spec.model import GENERATED_FUNCTION_NAMES, GENERATED_NAMES, class_name

REPO = Path(__file__).resolve().parent.parent
FAMILY = "mobilenet_v1"

HOSTILE_TEXT = {
    "triple_double_quotes": 'ends here """ + __import__("os").system("echo injected") + """',
    "triple_single_quotes": "ends here ''' + __import__('os').system('echo injected') + '''",
    "quote_at_the_end": 'Howard et al., "MobileNets"',
    "backslash_at_the_end": "a trailing backslash \\",
    "escapes": r"C:\new\table \N{BULLET} \x41 \u0041 \" \\",
    "statement_after_newline": '"""\nimport os\nos.system("echo injected")\n"""\n# ',
    "line_breaks": "one\ntwo\r\nthree\rfour\x0bfive\x0csix\x1cseven\x85eight\u2028nine\u2029ten",
    "control_characters": "bell\x07 backspace\x08 tab\t escape\x1b delete\x7f unit\x1f",
    "null": "null\x00byte",  # YAML's "\0": a raw one is refused by Python's parser
    "format_characters": "zero\u200bwidth right-to-left\u202eoverride\u202c bom\ufeff",
    "non_ascii": "Ünïcödé – 中文 😀 ﬁ ℌ",
    "comment_markers": "# not a comment\n# noqa: E501\n# fmt: off",
    "long_word": "x" * 10_000,
    "long_text": "word, " * 2_000,
}
GOOD_TITLES = {  # field -> a title the validator accepts
    "title": "Mobile Net (v1.0) - A",
    "architectures.mobilenet_v1.title": "x" + "-y" * 39,  # 79 characters
}
BAD_TITLES = [  # refused as any title
    'Mobile"Net', "Mobile'Net", 'Mobile"""Net', "Mobile\\Net", "Mobile\nNet", "Mobile\tNet", "Mobile\x07Net",
    "MobileNét", "Mobile😀", "x" * 81, "x" * 10_000, "", " MobileNet", "1MobileNet", "Mobile_Net", "Mobile#Net",
    "Mobile{Net}", "Mobile:Net",
]
BAD_CLASS_TITLES = [  # refused as a family's title, which names its model class
    "flavor", "Conv", "Block", "DS", "NamedTuple", "f", "ARCHITECTURES",  # names the generated code defines
    "true", "none", "value error", "exception",  # a keyword or a builtin once capitalised
]


def cut_down() -> dict:
    """The bundled spec with its MobileNetV1 family alone (flavors' overrides of other families dropped)."""
    data = yaml.safe_load(DEFAULT_SPEC.read_text(encoding="utf-8"))
    data["families"] = {FAMILY: data["families"][FAMILY]}
    for flavor in data["flavors"].values():
        if "families" in flavor:
            flavor["families"] = {k: v for k, v in flavor["families"].items() if k == FAMILY}
    return data


def write(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1 << 20), encoding="utf-8")
    return path


def setting(data: dict, field: str, value: str) -> dict:
    """`data` with families.mobilenet_v1.<field> (dotted) set to `value`."""
    node = data["families"][FAMILY]
    *parents, leaf = field.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return data


def structure(text: str, model_class: str) -> str:
    """The file's syntax tree with every string emptied and the model class's name replaced: what the
    generated code does, whatever text the spec holds."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
        for attribute in ("name", "id", "attr"):
            if getattr(node, attribute, None) == model_class:
                setattr(node, attribute, "MODEL")
    return ast.dump(tree)


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    path = write(cut_down(), tmp_path_factory.mktemp("clean") / "spec.yaml")
    return {name: structure(text, "MobileNetV1") for name, text in render_all(load_spec(path)).items()}


@pytest.mark.parametrize("text", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_free_text_cannot_change_the_generated_code(clean, tmp_path, text):
    data = setting(cut_down(), "paper", text)
    for flavor in data["flavors"].values():
        flavor["description"] = text
    loaded = load_spec(write(data, tmp_path / "spec.yaml"))
    assert loaded.spec.families[FAMILY].paper == text  # the YAML carried it unchanged
    rendered = render_all(loaded)
    assert rendered.keys() == clean.keys()
    for name, source in rendered.items():
        assert structure(source, "MobileNetV1") == clean[name], name
        if name.endswith(f"{FAMILY}.py"):  # the paper arrives intact in the module docstring
            docstring = ast.get_docstring(ast.parse(source), clean=False)
            assert words(text) in words(docstring), name


def test_accepted_titles_name_the_class_and_docstrings_only(clean, tmp_path):
    data = cut_down()
    for field, title in GOOD_TITLES.items():
        setting(data, field, title)
    loaded = load_spec(write(data, tmp_path / "spec.yaml"))
    model_class = class_name(GOOD_TITLES["title"])
    assert model_class == "MobileNetV10A"
    for name, source in render_all(loaded).items():
        assert structure(source, model_class) == clean[name], name
        tree = ast.parse(source)
        classes = [node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))]
        if name.endswith(f"{FAMILY}.py"):
            assert model_class in classes, name
            factory = next(node for node in tree.body if getattr(node, "name", "") == "mobilenet_v1_100")
            assert ast.get_docstring(factory).splitlines()[0] == f"{GOOD_TITLES['architectures.mobilenet_v1.title']} 1.0."


def test_the_bundled_class_names_are_kept():
    spec = load_spec().spec
    assert {class_name(family.title) for family in spec.families.values()} == {
        "MobileNetV1", "MobileNetV2", "MobileNetV3", "MobileNetV4", "MobileNetEdgeTPU", "MobileNetV5"}


@pytest.mark.parametrize("field, title", [
    *(("title", title) for title in BAD_TITLES + BAD_CLASS_TITLES),
    *(("architectures.mobilenet_v1.title", title) for title in BAD_TITLES),
], ids=lambda value: repr(value[:20]))
def test_bad_titles_are_refused_where_they_are(tmp_path, field, title):
    path = write(setting(cut_down(), field, title), tmp_path / "spec.yaml")
    node = yaml.compose(path.read_text(encoding="utf-8"))
    for key in ("families", FAMILY, *field.split(".")):
        node = next(value for k, value in node.value if k.value == key)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert (error.value.path, error.value.line, error.value.field) == (path, node.start_mark.line + 1,
                                                                       f"families.{FAMILY}.{field}")
    assert "title" in error.value.message, error.value.message
    assert "\n" not in str(error.value)


def test_an_architecture_title_may_spell_a_generated_name(tmp_path):
    """Only a family's title names a class; an architecture's goes into docstrings alone."""
    for title in BAD_CLASS_TITLES:
        load_spec(write(setting(cut_down(), "architectures.mobilenet_v1.title", title), tmp_path / "spec.yaml"))


def test_a_title_that_spells_a_variants_table_gives_the_table_a_number(tmp_path):
    """Variant `tiny`'s table would be TINY, the class that title "TINY" names: the generator numbers the
    table (generators/context.py, the one rule for table names), and the file defines each name once."""
    data = cut_down()
    variants = data["families"][FAMILY]["architectures"][FAMILY]["variants"]
    variants["tiny"] = variants.pop("mobilenet_v1_100")
    setting(data, "title", "TINY")
    rendered = render_all(load_spec(write(data, tmp_path / "spec.yaml")))
    checked = 0
    for file, source in rendered.items():
        if not file.endswith(f"{FAMILY}.py"):
            continue
        body = ast.parse(source).body
        names = [target.id for node in body if isinstance(node, ast.Assign) for target in node.targets
                 if isinstance(target, ast.Name)]
        names += [node.name for node in body if isinstance(node, (ast.ClassDef, ast.FunctionDef))]
        assert len(names) == len(set(names)), (file, sorted(n for n in names if names.count(n) > 1))
        assert {"TINY", "TINY_2"} <= set(names), file
        checked += 1
    assert checked == 3


def test_generated_names_cover_what_a_class_name_could_collide_with():
    """Every top-level name of the rendered files that a class name can spell (it starts with an upper-case
    letter and has no underscore) is listed in spec.model.GENERATED_NAMES, but the model classes."""
    data = Path(__file__).resolve().parent / "data"
    specs = [load_spec(), load_spec(data / "mixed_heads.yaml"), load_spec(data / "mixed_tables.yaml"),
             load_spec(data / "onnx_user_specs.yaml")]  # the last has an RMSNorm family
    for loaded in specs:
        classes = {class_name(family.title) for family in loaded.spec.families.values()}
        for path, text in render_all(loaded).items():
            names = set()
            for node in ast.parse(text).body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
            spellable = {name for name in names if name[0].isupper() and "_" not in name}
            assert spellable - classes <= GENERATED_NAMES, (path, sorted(spellable - classes - GENERATED_NAMES))
            # and every lower-case one that a variant (a factory) could collide with, but the factories
            lower = {name for name in names if name[0].islower()} - set(loaded.spec.variants())
            assert lower <= GENERATED_FUNCTION_NAMES, (path, sorted(lower - GENERATED_FUNCTION_NAMES))


def test_variant_tables_never_replace_generated_names(tmp_path):
    """A variant's table is named by the variant in upper case: variants `flavors`, `variants` and `ds`
    would have replaced FLAVORS, VARIANTS and the DS tuple; their tables take a number instead."""
    text = DEFAULT_SPEC.read_text()
    for old, new in (("mobilenet_v1_025:", "flavors:"), ("mobilenet_v1_050:", "variants:"),
                     ("mobilenet_v1_075:", "ds:")):
        text = text.replace(old, new, 1)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    for file, source in render_all(load_spec(path)).items():
        if not file.endswith("mobilenet_v1.py"):
            continue
        assigned = [target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)]
        defined = [node.name for node in ast.parse(source).body if isinstance(node, (ast.ClassDef, ast.FunctionDef))]
        names = assigned + defined
        assert len(names) == len(set(names)), (file, sorted(n for n in names if names.count(n) > 1))
        assert {"FLAVORS_2", "VARIANTS_2", "DS_2"} <= set(assigned), file


@pytest.mark.parametrize(("name", "says"), [
    ("architecture", "a name the generated code defines or imports"),
    ("torch", "a name the generated code defines or imports"),
    ("isinstance", "a Python builtin"),
    ("lambda", "a Python keyword"),
])
def test_variant_names_that_would_replace_generated_names_are_refused(tmp_path, name, says):
    text = DEFAULT_SPEC.read_text().replace("mobilenet_v1_025:", f"{name}:", 1)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert says in error.value.message and name in error.value.field, str(error.value)
    assert error.value.line == text[:text.index(f"{name}:")].count("\n") + 1


# ---- the spec file named in the headers ---------------------------------------------------------------


def headers(rendered: dict[str, str]) -> set[str]:
    return {text.splitlines()[0] for text in rendered.values()}


def test_headers_name_the_spec_file_relative_to_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)
    for path in (DEFAULT_SPEC, Path("spec/mobilenets.yaml"), REPO / "tests" / ".." / "spec" / "mobilenets.yaml"):
        first = {line.split(" (sha256")[0] for line in headers(render_all(load_spec(path)))}
        assert first == {"# Generated by `make generate` from spec/mobilenets.yaml"}, path
    rendered = render_all(load_spec(REPO / "tests" / "data" / "mixed_heads.yaml"))
    assert {line.split(" (sha256")[0] for line in headers(rendered)} == {
        "# Generated by `mnforge generate` from tests/data/mixed_heads.yaml"}


def test_headers_name_a_spec_outside_the_repository_by_its_file_name(clean, tmp_path):
    for name in ("other spec.yaml", 'evil\n"""import os\n.yaml', "tab\there\x07.yaml", "ünï.yaml"):
        folder = tmp_path / str(len(name))
        folder.mkdir()
        rendered = render_all(load_spec(write(cut_down(), folder / name)))
        sha = load_spec(folder / name).sha256[:16]
        line = f"# Generated by `mnforge generate` from {generate.escaped(name)} (sha256 {sha}). Do not edit."
        assert headers(rendered) == {line}, name
        for path, source in rendered.items():
            assert structure(source, "MobileNetV1") == clean[path], (name, path)


# ---- a generator bug fails in one line ----------------------------------------------------------------


def test_escaped_text_reads_back_as_itself():
    for text in [*HOSTILE_TEXT.values(), "\x00", "\ud800 lone surrogate", "\U000e0001 tag"]:
        assert ast.literal_eval(f'"{generate.escaped(text)}"') == text
        assert ast.literal_eval(f'"""{generate.escaped(text)}"""') == text
        assert len(f"# {generate.escaped(text)}".splitlines()) == 1


def _broken_context(**changes):
    real = generate.family_context

    def family_context(loaded, family, framework):
        context = real(loaded, family, framework)
        context.update(changes)
        return {k: v for k, v in context.items() if v is not None}

    return family_context


@pytest.mark.parametrize("changes, message", [
    ({"class_name": 'A"B'}, "ruff could not format flax_nnx/mobilenet_v1.py (a generator bug): Failed to parse"),
    ({"head": None}, "torch/model.py.j2 failed on pytorch/mobilenet_v1.py (a generator bug): UndefinedError"),
], ids=["ruff", "template"])
def test_a_generator_bug_fails_generate_in_one_line(tmp_path, monkeypatch, capsys, changes, message):
    """A class name that slipped past the validator (or a template asking for what the context lacks) is
    a generator bug: `generate` says so in one line, with no traceback, and writes nothing."""
    monkeypatch.setattr(generate, "family_context", _broken_context(**changes))
    out = tmp_path / "out"
    spec = write(cut_down(), tmp_path / "spec.yaml")
    assert generate.main(["--spec", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
