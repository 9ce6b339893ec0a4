"""Reduce a failing case to a minimal spec that still fails the same way: a greedy structural shrinker.

Hypothesis could shrink, but each of its attempts would be a whole conformance run (seconds to
minutes). This shrinker knows the grammar instead: it proposes simplifications of the spec, most
aggressive first (one architecture, one variant, one row; then fewer repeats, no optional fields,
no head parts, width 1.0, simpler flavors and names, a smaller input), keeps the candidates that are
still valid and smaller, asks the predicate about a chunk of them at once (a conformance predicate
runs a chunk as one spec: conformance.fuzz.pipeline.run_cases) and continues from the smallest one
that still fails, until no candidate fails or the budget is spent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from conformance.fuzz.case import REQUIRED, Case, alias_of, mapping_rows, set_table_rows, table_rows

Predicate = Callable[[list[Case]], list[bool]]  # which of these cases still fail the same way


@dataclass
class ShrinkResult:
    case: Case
    steps: list[str] = field(default_factory=list)  # the simplifications that were kept, in order
    evaluations: int = 0  # candidates the predicate was asked about
    seconds: float = 0.0
    exhausted: bool = True  # False: the budget ran out before no candidate failed


def size(case: Case) -> tuple:
    """What the shrinker minimises, most important first: blocks, text, the run, then names that are
    not plain (a rename that keeps the length still makes the file easier to read)."""
    s = case.settings
    names = [*case.families, *case.variants(), *case.data["flavors"],
             *(arch for fam in case.data["families"].values() for arch in fam["architectures"])]
    fancy = sum(not re.fullmatch(SIMPLE_NAME, name) for name in names)
    return (*case.size(), s.resolution[0] * s.resolution[1], s.num_classes, len(s.runs), fancy)


def shrink(case: Case, fails: Predicate, valid: Callable[[Case], bool] = lambda c: True, chunk: int = 8,
           budget_s: float = 1800.0, log: Callable[[str], None] = lambda line: None) -> ShrinkResult:
    """Greedy: propose simplifications in order, `chunk` valid ones at a time (validated lazily: most
    rounds end in their first chunk), and continue from the smallest failing one, until none fails."""
    start = time.perf_counter()
    result = ShrinkResult(case)
    seen = {case.key}
    while True:
        current = result.case
        proposals = _valid_chunks(candidates(current), current, seen, valid, chunk)
        improved = False
        for part in proposals:
            if time.perf_counter() - start > budget_s:
                result.exhausted = False
                break
            verdicts = fails([c for _, c in part])
            result.evaluations += len(part)
            failing = [(size(c), step, c) for (step, c), bad in zip(part, verdicts) if bad]
            if failing:
                _, step, smallest = min(failing, key=lambda item: item[0])
                result.case = smallest
                result.steps.append(step)
                log(f"shrink: {step} (size {size(smallest)})")
                improved = True
                break
        if not improved:
            result.seconds = time.perf_counter() - start
            return result


def _valid_chunks(proposed: Iterator[tuple[str, Case]], current: Case, seen: set[str],
                  valid: Callable[[Case], bool], chunk: int) -> Iterator[list[tuple[str, Case]]]:
    """The proposals that are new, no larger than `current` and valid, `chunk` at a time."""
    bound, part = size(current), []
    for step, candidate in proposed:
        if candidate.key in seen or size(candidate) > bound:  # equal: a simpler value of the same length
            continue
        seen.add(candidate.key)
        if valid(candidate):
            part.append((step, candidate))
            if len(part) == chunk:
                yield part
                part = []
    if part:
        yield part


# ---- the simplifications ------------------------------------------------------------------------------

SIMPLE_NAMES = ("fuzz", "arch", "v", "fl")
SIMPLE_NAME = r"fuzz|arch|v[0-9]+|fl[0-9]+"


def candidates(case: Case) -> Iterator[tuple[str, Case]]:
    """(what it does, the simpler case) for every simplification, most aggressive first."""
    yield from _structure(case)
    yield from _rows(case)
    yield from _run(case)  # early: a smaller input makes every later evaluation cheaper
    yield from _head_and_stem(case)
    yield from _family_fields(case)
    yield from _flavors(case)
    yield from _presentation(case)


def _archs(case: Case) -> Iterator[tuple[str, str]]:
    for family, fam in case.data["families"].items():
        for arch in fam["architectures"]:
            yield family, arch


def _arch(data: dict, family: str, arch: str) -> dict:
    return data["families"][family]["architectures"][arch]


def _structure(case: Case) -> Iterator[tuple[str, Case]]:
    if len(case.families) > 1:
        for family in case.families:
            yield f"keep only family {family}", case.only(family)
    for family, fam in case.data["families"].items():
        archs = list(fam["architectures"])
        if len(archs) > 1:
            for keep in archs:
                def only_arch(data, family=family, keep=keep):
                    architectures = data["families"][family]["architectures"]
                    data["families"][family]["architectures"] = {keep: architectures[keep]}
                yield f"keep only architecture {keep}", case.edited(only_arch)
    for family, arch in _archs(case):
        variants = list(_arch(case.data, family, arch)["variants"])
        if len(variants) > 1:
            for keep in variants:
                def only_variant(data, family=family, arch=arch, keep=keep):
                    a = _arch(data, family, arch)
                    a["variants"] = {keep: a["variants"][keep]}
                yield f"keep only variant {keep}", case.edited(only_variant)


def _with_rows(case: Case, family: str, arch: str, change: Callable[[list[dict]], list[dict] | None]) -> Case:
    def edit(data):
        blocks = _arch(data, family, arch)["blocks"]
        rows = change(table_rows(blocks))
        if rows is not None:
            set_table_rows(blocks, rows, mapping_rows(blocks) if len(rows) == len(blocks["rows"]) else frozenset())
    return case.edited(edit)


# Simpler values of a row field, or None to drop it. Candidates the validator refuses are left out.
ROW_SIMPLER = {
    "repeats": [None], "residual": [None], "activation": [None], "squeeze_excite": [None],
    "kernel": [None, 3, 1], "k1": [None, 3, 1], "k2": [None, 3, 1], "stride": [None, 1],
    "kv_stride": [1], "heads": [1, 2], "key_dim": [1, 4], "expansion": [1, 2], "expanded": [None, 8],
    "out": [8, 16],
}


def _rows(case: Case) -> Iterator[tuple[str, Case]]:
    for family, arch in _archs(case):
        rows = table_rows(_arch(case.data, family, arch)["blocks"])
        n = len(rows)
        if n > 1:
            for i in range(n):
                yield f"{arch}: keep only row {i}", _with_rows(case, family, arch, lambda r, i=i: [r[i]])
            for i in range(n):
                yield f"{arch}: drop row {i}", _with_rows(case, family, arch, lambda r, i=i: r[:i] + r[i + 1:])
        for i, row in enumerate(rows):
            for name, simpler in ROW_SIMPLER.items():
                if name not in row:
                    continue
                for value in _preferred(simpler, row[name], None):
                    if value is not None and isinstance(row[name], bool):
                        continue
                    def change(r, i=i, name=name, value=value):
                        r[i] = {k: v for k, v in r[i].items() if k != name}
                        if value is not None:
                            r[i][name] = value
                        if name == "kv_stride":  # a key/value downsampling kernel is no longer needed
                            r[i].pop("k2", None)
                        if name == "expanded" and value is None:  # `exp` gives way to `t`
                            r[i]["expansion"] = 1
                        return r
                    what = "drop" if value is None else f"{value} for"
                    yield f"{arch}: row {i}: {what} {name}", _with_rows(case, family, arch, change)


def _preferred(values: list, current, drop) -> list:
    """The values simpler than `current`: those before it in `values` (simplest first), or all of them
    when it is none of them. So a value only ever moves towards the front: shrinking cannot cycle."""
    for i, value in enumerate(values):
        if value is not drop and value == current and type(value) is type(current):
            return values[:i]
    return values


def _set(path: tuple, value) -> Callable[[dict], None]:
    """An edit that sets (value is not _DROP) or removes the entry at `path`."""
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is _DROP:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return edit


_DROP = object()


def _simpler(case: Case, path: tuple, values: list) -> Iterator[tuple[str, Case]]:
    node = case.data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    for value in _preferred(values, node, _DROP):
        what = "drop" if value is _DROP else f"{value!r} for"
        yield f"{what} {'.'.join(map(str, path))}", case.edited(_set(path, value))


def _head_and_stem(case: Case) -> Iterator[tuple[str, Case]]:
    for family, arch in _archs(case):
        base = ("families", family, "architectures", arch)
        yield from _simpler(case, (*base, "head", "fc"), [_DROP])
        yield from _simpler(case, (*base, "head", "last_conv"), [_DROP])
        yield from _simpler(case, (*base, "head", "fc", "batch_norm"), [_DROP])
        for part in ("last_conv", "fc"):
            yield from _simpler(case, (*base, "head", part, "out"), [8])
            yield from _simpler(case, (*base, "head", part, "activation"), ["relu"])
        yield from _simpler(case, (*base, "stem", "out"), [8])
        yield from _simpler(case, (*base, "stem", "kernel"), [3, 1])
        yield from _simpler(case, (*base, "stem", "stride"), [1, 2])
        yield from _simpler(case, (*base, "stem", "activation"), ["relu"])
        yield from _simpler(case, (*base, "blocks", "layer_scale"), [_DROP])
        yield from _simpler(case, (*base, "blocks", "kernel"), [_DROP, 3])
        yield from _simpler(case, (*base, "blocks", "activation"), [_DROP, "relu"])
        yield from _simpler(case, (*base, "title"), [_DROP])
        yield from _simpler(case, (*base, "resolution"), [_DROP])
        for variant in _arch(case.data, family, arch)["variants"]:
            yield from _simpler(case, (*base, "variants", variant, "width"), [1.0])
            yield from _simpler(case, (*base, "variants", variant, "minimalistic"), [_DROP])


def _family_fields(case: Case) -> Iterator[tuple[str, Case]]:
    for family in case.families:
        base = ("families", family)
        for name in ("squeeze_excite", "minimalistic", "references"):
            yield from _simpler(case, (*base, name), [_DROP])
        for rule in ("last_conv", "fc", "expansion", "stem"):
            yield from _simpler(case, (*base, "width_rules", rule), [_DROP, "scaled", "ratio"])
        yield from _simpler(case, (*base, "title"), ["Fuzz"])
        yield from _simpler(case, (*base, "paper"), ["Fuzz"])
        yield from _simpler(case, (*base, "resolutions"), [[224]])


def _flavors(case: Case) -> Iterator[tuple[str, Case]]:
    run_flavor = case.settings.flavor
    others = [name for name in case.data["flavors"] if name != run_flavor]
    if others:
        def only_run_flavor(data):
            data["flavors"] = {run_flavor: data["flavors"][run_flavor]}
            data["default_flavor"] = run_flavor
            for family in data["families"].values():
                if family.get("references"):
                    family["references"] = [f for f in family["references"] if f == run_flavor]
        yield f"keep only flavor {run_flavor}", case.edited(only_run_flavor)
    for flavor, values in case.data["flavors"].items():
        base = ("flavors", flavor)
        for family in list(values.get("families", {})):
            yield from _simpler(case, (*base, "families", family), [_DROP])
            for name in list(values["families"][family]):
                yield from _simpler(case, (*base, "families", family, name), [_DROP])
        if not values.get("families"):
            yield from _simpler(case, (*base, "families"), [_DROP])
        yield from _simpler(case, (*base, "description"), ["Fuzz"])
        yield from _simpler(case, (*base, "dropout"), [0.0])
        yield from _simpler(case, (*base, "fc_layout"), ["linear"])
        yield from _simpler(case, (*base, "batch_norm"), [{"epsilon": 0.001, "momentum": 0.01}])
    yield from _simpler(case, ("rounding",), [{"divisor": 8, "min_ratio": 0.9}])


def _run(case: Case) -> Iterator[tuple[str, Case]]:
    s = case.settings
    h, w = s.resolution
    for size in dict.fromkeys([(32, 32), (max(32, h // 2), max(32, w // 2)), (min(h, w), min(h, w)), (h, h), (w, w)]):
        if size != (h, w):
            yield f"resolution {size[0]}x{size[1]}", case.with_settings(resolution=size)
    for classes in (1, 10, s.num_classes // 2):
        if 1 <= classes < s.num_classes:
            yield f"{classes} classes", case.with_settings(num_classes=classes)


def _presentation(case: Case) -> Iterator[tuple[str, Case]]:
    for family, arch in _archs(case):
        blocks = _arch(case.data, family, arch)["blocks"]
        if mapping_rows(blocks):
            def as_lists(data, family=family, arch=arch):
                b = _arch(data, family, arch)["blocks"]
                rows = table_rows(b)
                columns = list(dict.fromkeys(f for row in rows for f in row))
                b["columns"] = [alias_of(b["type"], f) for f in dict.fromkeys([*REQUIRED[b["type"]], *columns])]
                set_table_rows(b, rows)
            yield f"{arch}: every row a list", case.edited(as_lists)
    yield from _names(case)


def _names(case: Case) -> Iterator[tuple[str, Case]]:
    """Each flavor, family, architecture and variant name to a plain one (a name-dependent bug keeps
    its name: that candidate passes)."""
    taken = {*case.families, *case.variants(), *(a for _, a in _archs(case)), *case.data["flavors"]}
    family_name, arch_name, variant_name, flavor_name = SIMPLE_NAMES
    for i, flavor in enumerate(case.data["flavors"]):
        simple = f"{flavor_name}{i}"
        if flavor != simple and simple not in taken:
            renamed = case.edited(lambda d, f=flavor, simple=simple: _rename_flavor(d, f, simple))
            if case.settings.flavor == flavor:
                renamed = renamed.with_settings(flavor=simple)
            yield f"flavor name {simple}", renamed
    for family in case.families:
        if family != family_name and family_name not in taken:
            yield f"family name {family_name}", case.edited(lambda d, f=family: _rename_family(d, f, family_name))
    for family, arch in _archs(case):
        if arch != arch_name and arch_name not in taken:
            def rename_arch(data, family=family, arch=arch):
                archs = data["families"][family]["architectures"]
                data["families"][family]["architectures"] = {arch_name if k == arch else k: v for k, v in archs.items()}
            yield f"architecture name {arch_name}", case.edited(rename_arch)
        for i, variant in enumerate(_arch(case.data, family, arch)["variants"]):
            simple = f"{variant_name}{i}"
            if variant != simple and simple not in taken:
                def rename_variant(data, family=family, arch=arch, variant=variant, simple=simple):
                    a = _arch(data, family, arch)
                    a["variants"] = {simple if k == variant else k: v for k, v in a["variants"].items()}
                yield f"variant name {simple}", case.edited(rename_variant)


def _rename_family(data: dict, old: str, new: str) -> None:
    data["families"] = {new if k == old else k: v for k, v in data["families"].items()}
    for flavor in data["flavors"].values():
        if "families" in flavor:
            flavor["families"] = {new if k == old else k: v for k, v in flavor["families"].items()}


def _rename_flavor(data: dict, old: str, new: str) -> None:
    data["flavors"] = {new if k == old else k: v for k, v in data["flavors"].items()}
    if data["default_flavor"] == old:
        data["default_flavor"] = new
    for family in data["families"].values():
        if family.get("references"):
            family["references"] = [new if f == old else f for f in family["references"]]
