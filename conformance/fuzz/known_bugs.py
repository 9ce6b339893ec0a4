"""Bugs the fuzzer knows about, so that it can go on looking for others while they are being fixed.

Each entry names one bug, where it lives and in which tiers it shows. The strategies
(conformance/fuzz/strategies.py) ask `excluded(NAME, tier)` at the one place where they would draw
the spec that triggers it, and draw something else there instead. Removing an entry (once its fix is
merged) puts those specs back into the fuzzer: nothing else needs to change.

Minimal reproducing specs of the bugs this fuzzer found are in tests/data/fuzz_found/ (each file's
header comment gives the failing check, its message and the command that reruns it).
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TIERS = ("static", "build", "outputs", "onnx")


@dataclass(frozen=True)
class KnownBug:
    component: str  # where the bug lives
    description: str
    tiers: frozenset[str]  # the tiers whose checks it fails (the strategy avoids it there only)
    repro: str | None = None  # tests/data/fuzz_found/<name>.yaml, for bugs this fuzzer found


ALL_TIERS = frozenset(TIERS)
ONNX = frozenset({"onnx"})
MAC_TIERS = frozenset({"outputs", "onnx"})  # the tiers whose runs count MACs

KNOWN_BUGS: dict[str, KnownBug] = {
    # Found by this fuzzer and fixed by making the validator refuse such names, with a located error
    # (spec/model.py): the strategies keep drawing valid specs only, so these names stay out of them.
    "keyword_variant_name": KnownBug(
        "spec/model.py (Identifier): now refused",
        "a variant named by a Python keyword (`del`, `import`, `pass`, ...) passed the validator and was "
        "rendered as `def del(...)`: ruff could not format the file, `generate` failed", ALL_TIERS,
        "tests/data/fuzz_found/keyword_variant_name.yaml"),
    "variant_name_shadows_module_name": KnownBug(
        "spec/model.py (GENERATED_FUNCTION_NAMES, builtins): now refused",
        "a variant named like a top-level name of the generated module (`nn`, `layers`, `keras`, `nnx`, "
        "`activation`, `architecture`, ...) or a builtin replaced it: the model failed to build", ALL_TIERS,
        "tests/data/fuzz_found/variant_name_shadows_module_name.yaml"),
    "title_shadows_class_name": KnownBug(
        "spec/model.py (GENERATED_NAMES): now refused",
        "a family title whose class name equals a class of the generated module (`ConvBNAct`, "
        "`DepthwiseSeparable`, `Architecture`, ...) replaced that class: the model failed to build",
        ALL_TIERS, "tests/data/fuzz_found/title_shadows_class_name.yaml"),
}
# Fixed, and drawn again (their minimal specs in tests/data/fuzz_found/ conform: tests/test_fuzz.py):
# table_constant_collision (generators/context.py numbers a colliding table constant); the four Flax MAC
# counts (conformance/frameworks/flax_adapter.py read XLA's cost model, which counts one-tap and one-output
# products its own way; it now counts each traced product from its shapes); and the bugs issue 12 reported
# (mixed head shapes and table types in a family; ONNX: channel-changing mqa, GELU after an attention
# BatchNorm in Keras, a PyTorch export with mqa rows first).
FIXED = {
    "table_constant_collision": "tests/data/fuzz_found/table_constant_collision.yaml",
    "flax_macs_single_class": "tests/data/fuzz_found/flax_macs_single_class.yaml",
    "flax_macs_single_tap": "tests/data/fuzz_found/flax_macs_single_tap.yaml",
    "flax_macs_off_by_one": "tests/data/fuzz_found/flax_macs_off_by_one.yaml",
    "flax_macs_off_by_eight": "tests/data/fuzz_found/flax_macs_off_by_eight.yaml",
    "onnx_one_channel_neck": "tests/data/fuzz_found/onnx_one_channel_neck.yaml",
}


def excluded(name: str, tier: str) -> bool:
    """Whether the strategies must avoid the spec that triggers known bug `name` in `tier`."""
    bug = KNOWN_BUGS.get(name)
    return bug is not None and tier in bug.tiers


@cache
def module_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(identifiers, class names) that the generated modules define or import at top level, or the
    builtins they call, read from the bundled package, in the spelling a spec name takes: lower case
    for names (a variant `flavors` is the table constant FLAVORS), as is for classes (a title without
    its spaces)."""
    identifiers, classes = set(), set()
    root = Path(__file__).resolve().parents[2] / "generated"
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        identifiers.update(node.id for node in ast.walk(tree)
                           if isinstance(node, ast.Name) and node.id in vars(builtins))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
            elif isinstance(node, ast.FunctionDef):
                identifiers.add(node.name)
            elif isinstance(node, ast.Assign):
                identifiers.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                identifiers.update((a.asname or a.name).split(".")[0] for a in node.names)
    names = {n.lower() if n.isupper() else n for n in identifiers if not n.lower().startswith("mobilenet")}
    return (tuple(sorted(n for n in names if re.fullmatch(r"[a-z][a-z0-9_]*", n))),
            tuple(sorted(c for c in classes if not c.startswith("MobileNet"))))


def triggered(case, loaded, tier: str) -> list[str]:
    """The known bugs excluded in `tier` that `case` (loaded as `loaded`) would trigger: the shrinker
    never simplifies a new bug into a known one, and the tests hold the strategies to the list."""
    from spec.resolve import MobileMQA, resolve_architecture

    found = []
    spec = loaded.spec
    variants = list(spec.variants())
    if excluded("table_constant_collision", tier) and _table_constants_collide(variants, list(spec.flavors)):
        found.append("table_constant_collision")
    if excluded("keyword_variant_name", tier) and any(keyword.iskeyword(v) for v in variants):
        found.append("keyword_variant_name")
    if excluded("variant_name_shadows_module_name", tier) and set(variants) & set(module_names()[0]):
        found.append("variant_name_shadows_module_name")
    titles = {f.title.replace(" ", "") for f in spec.families.values()}
    if excluded("title_shadows_class_name", tier) and titles & {*module_names()[1], *variants}:
        found.append("title_shadows_class_name")
    for family in spec.families.values():
        shapes = {(arch.blocks.type, arch.head.last_conv is not None, arch.head.fc is not None,
                   bool(arch.head.fc and arch.head.fc.batch_norm)) for arch in family.architectures.values()}
        if len(shapes) > 1 and excluded("mixed_architectures", tier):
            found.append("mixed_architectures")
    for variant in case.variants():
        arch = resolve_architecture(spec, variant, case.settings.flavor)
        blocks = arch.blocks
        mqa = [b for b in blocks if isinstance(b, MobileMQA)]
        if any(b.in_channels != b.out for b in mqa) and excluded("mqa_changes_channels", tier):
            found.append("mqa_changes_channels")
        if (blocks and isinstance(blocks[0], MobileMQA) and blocks[0].kv_stride == 2
                and excluded("mqa_first_kv_stride2_torch_onnx", tier)):
            found.append("mqa_first_kv_stride2_torch_onnx")
        used = {arch.stem.activation, *(getattr(b, "activation", "") for b in blocks),
                *(c.activation for c in (arch.last_conv, arch.fc) if c)}
        if any(getattr(b, "squeeze", 0) for b in blocks):
            used.add(arch.squeeze_excite_activation)
        if "gelu" in used and excluded("gelu_keras_onnx", tier):
            found.append("gelu_keras_onnx")
    return sorted(set(found))


def _table_constants_collide(variants: list[str], flavors: list[str]) -> bool:
    """Whether some variant is named `<another variant>_<flavor>[_<flavor>...]` (generators/context.py
    names a flavor's own table VARIANT_FLAVOR...)."""
    def flavors_joined(rest: str) -> bool:
        return any(rest == f or rest.startswith(f"{f}_") and flavors_joined(rest[len(f) + 1:]) for f in flavors)
    return any(w.startswith(f"{v}_") and flavors_joined(w[len(v) + 1:]) for v in variants for w in variants)
