"""Load `spec/mobilenets.yaml` safely and validate it, with errors that name file, line and field.

YAML is parsed once into a node tree (`yaml.compose` with the safe loader: no tags, no code), which
keeps the line of every value; the same tree is turned into plain data, stage tables are rewritten
from `columns` + `rows` into one mapping per row, and the data is validated by `spec.model.Spec`.
A validation error is traced back through the node tree to the line of the offending value.
"""

from __future__ import annotations

import difflib
import hashlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from spec.model import Spec, StageTable, cross_reference_error

DEFAULT_SPEC = Path(__file__).resolve().parent / "mobilenets.yaml"


class SpecError(ValueError):
    """A spec that does not validate: where (file, line, field) and what was expected."""

    def __init__(self, path: Path, line: int | None, field: str, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {field or '<document>'}: {message}")


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    path: Path
    sha256: str


# Far beyond any real spec (the bundled one nests 8 deep and holds about 2,200 values), small enough that a
# hostile file fails at once: PyYAML's composer recurses once per level, and aliases multiply values.
MAX_DEPTH = 32
MAX_VALUES = 100_000

BUNDLED = "bundled"  # `extends: bundled` names spec/mobilenets.yaml
# An extension adds names; it changes nothing that is there. Where it may add a name, and where it may
# go deeper to reach such a place ("*": any name):
ADD_NAMES_AT = {("flavors",), ("families",), ("families", "*", "architectures"),
                ("families", "*", "architectures", "*", "variants")}
DESCEND_AT = ADD_NAMES_AT | {(), ("families", "*"), ("families", "*", "architectures", "*")}


def load_spec(path: Path | str = DEFAULT_SPEC) -> LoadedSpec:
    path = Path(path)
    root, sha256 = _compose_file(path, ())
    return LoadedSpec(_validate(root, path), path, sha256)


def parse_spec(text: str, path: Path) -> Spec:
    root = _compose(text, path)
    root, _ = _with_base(root, path, ())
    return _validate(root, path)


def _read(path: Path, named_by: tuple[yaml.Node, Path] | None = None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        what = f"cannot read the spec: {exc.strerror}" if isinstance(exc, OSError) else \
            f"the spec is not UTF-8 text ({exc.reason})"
        if named_by:  # the base of an extension: the error is at its `extends`
            node, child = named_by
            raise SpecError(child, node.start_mark.line + 1, "extends", f"{path}: {what}") from None
        raise SpecError(path, None, "", what) from None


def _compose_file(path: Path, chain: tuple[Path, ...], named_by=None) -> tuple[yaml.Node, str]:
    """The node tree of a spec file, with the base it extends merged in, and the hash of both texts."""
    text = _read(path, named_by)
    root = _compose(text, path)
    root, base_sha256 = _with_base(root, path, chain)
    sha256 = hashlib.sha256(((base_sha256 + "\0") if base_sha256 else "").encode() + text.encode()).hexdigest()
    return root, sha256


def _compose(text: str, path: Path) -> yaml.Node:
    """Parse one file (safe loader: no tags, no code) into nodes whose marks name the file."""
    try:
        _check_depth(text, path)
        loader = yaml.SafeLoader(text)
        loader.name = str(path)  # every mark (and so every error) names its file: a base or its extension
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context, opened = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
        if mark and opened and context.startswith("while parsing a flow") and opened.line != mark.line:
            # An unclosed [ or {: the parser notices on a later line; the defect is where it opens.
            problem = f"{problem} on line {mark.line + 1}, {context} that starts here (a bracket not closed?)"
            mark = opened
        raise SpecError(path, mark.line + 1 if mark else None, "", f"not valid YAML: {problem}") from None
    if root is None:
        raise SpecError(path, 1, "", "the spec is empty; expected a mapping with spec_version, rounding, flavors, families")
    _check_size(root, path)
    _reject_duplicate_keys(root, path, (), set())
    return root


def _check_depth(text: str, path: Path) -> None:
    """Refuse deep nesting from the event stream (the parser keeps an explicit stack; the composer and the
    constructor recurse, and would fail with RecursionError)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(path, event.start_mark.line + 1, "",
                                f"values nested more than {MAX_DEPTH} deep; a spec nests at most about 10")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_size(root: yaml.Node, path: Path) -> None:
    """Refuse a tree whose aliases expand to more than MAX_VALUES values (a "billion laughs"), counting
    each shared node once: linear in the file, whatever the expansion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = size = 1 + sum(sizes[id(c)] for c in children)
        if size > MAX_VALUES:
            raise SpecError(_file(node, path), node.start_mark.line + 1, "",
                            f"the YAML expands to more than {MAX_VALUES:,} values (aliases repeating aliases?); "
                            "a spec holds a few thousand")


def _file(node: yaml.Node, default: Path) -> Path:
    """The file a node was read from (a spec may extend another)."""
    name = node.start_mark.name
    return default if not name or name.startswith("<") or name == str(default) else Path(name)


def _with_base(root: yaml.Node, path: Path, chain: tuple[Path, ...]) -> tuple[yaml.Node, str | None]:
    """`extends: bundled` (or a path, relative to this file): the base's tree with this file's additions."""
    if not isinstance(root, yaml.MappingNode):
        return root, None
    keys = {k.value: (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    if "extends" not in keys:
        return root, None
    key, value = keys["extends"]
    if not isinstance(value, yaml.ScalarNode) or not value.value:
        raise SpecError(path, value.start_mark.line + 1, "extends",
                        f"expected {BUNDLED!r} or the path of the spec this one adds to")
    base_path = DEFAULT_SPEC if value.value == BUNDLED else (path.parent / value.value)
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise SpecError(path, value.start_mark.line + 1, "extends", f"{base_path} extends this file: a cycle")
    base, base_sha256 = _compose_file(base_path, (*chain, path), named_by=(value, path))
    additions = [(k, v) for k, v in root.value if k is not key]
    shorthand = [(k, v) for k, v in additions if k.value == "variants"]
    _merge(base, yaml.MappingNode("tag:yaml.org,2002:map", [p for p in additions if p not in shorthand]),
           (), base_path, path)
    for _, variants in shorthand:
        _add_variants(base, variants, base_path, path)
    _reject_duplicate_keys(base, path, (), set())  # a name added twice, or added where the base has it
    return base, base_sha256


def _merge(base: yaml.MappingNode, additions: yaml.MappingNode, where: tuple, base_path: Path, path: Path) -> None:
    existing = {k.value: (k, v) for k, v in base.value}
    for key, value in additions.value:
        at = (*where, key.value)
        field = ".".join(map(str, at))
        if key.value not in existing:
            if not _matches(where, ADD_NAMES_AT):
                raise SpecError(path, key.start_mark.line + 1, field,
                                "an extension adds flavors, families, architectures and variants; "
                                f"it cannot add {key.value!r} here")
            base.value.append((key, value))
            continue
        old_key, old_value = existing[key.value]
        if not (_matches(at, DESCEND_AT) and isinstance(old_value, yaml.MappingNode)
                and isinstance(value, yaml.MappingNode)):
            raise SpecError(path, key.start_mark.line + 1, field,
                            f"already defined in {_file(old_key, base_path)}:{old_key.start_mark.line + 1}; "
                            "an extension only adds names, it changes nothing in the spec it extends")
        _merge(old_value, value, at, base_path, path)


def _matches(where: tuple, patterns: set[tuple]) -> bool:
    return any(len(p) == len(where) and all(a in ("*", b) for a, b in zip(p, where)) for p in patterns)


def _add_variants(base: yaml.MappingNode, variants: yaml.Node, base_path: Path, path: Path) -> None:
    """The shorthand `variants: {NAME: {architecture: ARCH, width: ...}}`: each variant goes under the one
    architecture of that name."""
    if not isinstance(variants, yaml.MappingNode):
        raise SpecError(path, variants.start_mark.line + 1, "variants",
                        "expected a mapping: variant name -> {architecture: NAME, width: ...}")
    architectures: dict[str, list[tuple[str, yaml.MappingNode]]] = {}
    for family, arch_name, arch in _architecture_nodes(base):
        architectures.setdefault(arch_name, []).append((family, arch))
    for name, value in variants.value:
        field = f"variants.{name.value}"
        entries = {k.value: (k, v) for k, v in value.value} if isinstance(value, yaml.MappingNode) else {}
        if "architecture" not in entries:
            raise SpecError(path, value.start_mark.line + 1, field,
                            "a variant added here names its `architecture`, then its fields (width, minimalistic)")
        arch_name = entries["architecture"][1].value
        found = architectures.get(arch_name, [])
        if len(found) != 1:
            known = sorted(architectures)
            problem = (f"unknown architecture {arch_name!r}; expected one of {known}" if not found else
                       f"architecture {arch_name!r} is in families {[f for f, _ in found]}; add the variant "
                       "under `families:` instead")
            raise SpecError(path, entries["architecture"][1].start_mark.line + 1, f"{field}.architecture", problem)
        fields = yaml.MappingNode("tag:yaml.org,2002:map", [(k, v) for k, v in value.value if k.value != "architecture"],
                                  value.start_mark, value.end_mark, value.flow_style)
        arch = found[0][1]
        listed = {k.value: v for k, v in arch.value}
        if not isinstance(listed.get("variants"), yaml.MappingNode):
            raise SpecError(path, name.start_mark.line + 1, field, f"architecture {arch_name!r} has no variants mapping")
        listed["variants"].value.append((name, fields))


def _architecture_nodes(root: yaml.MappingNode):
    def mapping(node, key):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key and isinstance(v, yaml.MappingNode):
                    return v
        return None

    families = mapping(root, "families")
    for family_key, family in (families.value if families else ()):
        archs = mapping(family, "architectures")
        for arch_key, arch in (archs.value if archs else ()):
            if isinstance(arch, yaml.MappingNode):
                yield family_key.value, arch_key.value, arch


def _validate(root: yaml.Node, path: Path) -> Spec:
    try:
        data = yaml.SafeLoader("").construct_document(root)  # plain data, still safe
    except (yaml.YAMLError, ValueError) as exc:  # a tag such as !!python/object, a bad !!float or date
        node, where = _unconstructible(root, ()) or (root, ())
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem += "; the spec allows plain YAML values only, no tags"
        field = ".".join(map(str, where))
        raise SpecError(_file(node, path), node.start_mark.line + 1, field, f"not a valid value: {problem}") from None
    nodes: dict[tuple, yaml.Node] = {}
    data = _rows_to_mappings(data, root, (), nodes, path)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        error = _most_helpful(exc.errors(include_url=False))
        loc = tuple(error["loc"])
        node, field_path = _locate(nodes, _where(error, loc, data))
        line = node.start_mark.line + 1 if node is not None else None
        where = _file(node, path) if node is not None else path
        raise SpecError(where, line, field_path, _explain(error, loc)) from None


def _most_helpful(errors: list[dict]) -> dict:
    """The first error, except that a misspelt field beats the "missing" error its typo causes."""
    first = errors[0]
    if first["type"] == "missing":
        parent = tuple(first["loc"])[:-1]
        for error in errors:
            if error["type"] == "extra_forbidden" and tuple(error["loc"])[:-1] == parent:
                return error
    return first


def _where(error: dict, loc: tuple, data) -> tuple:
    """The location to point at, which is not always pydantic's: the key for a bad name, the
    `columns` entry for a bad column, the `type` for an unknown block type, the offending entry
    for a failed cross-reference between sections."""
    kind = error["type"]
    row = len(loc) >= 3 and loc[-3] == "rows" and isinstance(loc[-2], int)
    if row and kind in ("extra_forbidden", "missing"):
        return (*loc[:-3], "columns", loc[-1])  # row mappings are made from `columns`
    if kind == "extra_forbidden":
        return (*loc, "[key]")
    if kind == "union_tag_invalid":
        return (*loc, error["ctx"]["discriminator"].strip("'"))
    if kind == "value_error" and loc == ():
        return _cross_reference(data)
    return loc


def _cross_reference(data: dict) -> tuple:
    """Where `Spec._cross_references` failed: the same rule (spec.model.cross_reference_error), run on
    the raw YAML once every section validated, gives the entry to point at."""
    error = cross_reference_error(
        data["default_flavor"], {name: (flavor or {}).get("families") for name, flavor in data["flavors"].items()},
        {name: (family.get("references"), {arch_name: arch["variants"] for arch_name, arch in family["architectures"].items()})
         for name, family in data["families"].items()})
    return error[0] if error else ()


def _reject_duplicate_keys(node: yaml.Node, path: Path, where: tuple, seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias: its tree was checked where it was anchored
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                field = ".".join(map(str, (*where, key)))
                raise SpecError(
                    _file(key_node, path), key_node.start_mark.line + 1, field,
                    f"duplicate key {key!r} (first at {seen[key]}); each name may appear once",
                )
            first = _file(key_node, path)
            seen[key] = f"line {key_node.start_mark.line + 1}" + (f" of {first}" if first != path else "")
            _reject_duplicate_keys(value_node, path, (*where, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, path, (*where, i), seen_nodes)


def _unconstructible(node: yaml.Node, where: tuple) -> tuple[yaml.Node, tuple] | None:
    """The innermost node (and its path) that the safe loader cannot turn into data, if any."""
    try:
        yaml.SafeLoader("").construct_object(node, deep=True)
        return None
    except (yaml.YAMLError, ValueError):
        pass
    if isinstance(node, yaml.MappingNode):
        children = [c for k, v in node.value for c in ((k, (*where, k.value)), (v, (*where, k.value)))]
    elif isinstance(node, yaml.SequenceNode):
        children = [(child, (*where, i)) for i, child in enumerate(node.value)]
    else:
        children = []
    for child, child_where in children:
        found = _unconstructible(child, child_where)
        if found:
            return found
    return node, where


def _rows_to_mappings(data, node: yaml.Node, where: tuple, nodes: dict, path: Path):
    """Record the node of every value; rewrite each stage table's rows as column -> value mappings."""
    nodes[where] = node
    if isinstance(data, dict) and isinstance(node, yaml.MappingNode):
        values = {k.value: v for k, v in node.value}
        keys = {k.value: k for k, v in node.value}
        out = {}
        for key, value in data.items():
            child = values.get(str(key))
            if str(key) in keys:
                nodes[(*where, key, "[key]")] = keys[str(key)]
            out[key] = _rows_to_mappings(value, child, (*where, key), nodes, path) if child is not None else value
        if isinstance(out.get("columns"), list) and isinstance(out.get("rows"), list):
            out["rows"] = _table_rows(out["columns"], out["rows"], where, nodes, path)
        return out
    if isinstance(data, list) and isinstance(node, yaml.SequenceNode):
        return [_rows_to_mappings(v, n, (*where, i), nodes, path) for i, (v, n) in enumerate(zip(data, node.value))]
    return data


def _table_rows(columns: list, rows: list, where: tuple, nodes: dict, path: Path) -> list:
    field = ".".join(map(str, (*where, "columns")))
    for column in columns:
        if not isinstance(column, str):
            raise SpecError(*_at(nodes, (*where, "columns"), path), field, f"column {column!r} is not a name")
    if len(set(columns)) != len(columns):
        raise SpecError(*_at(nodes, (*where, "columns"), path), field, f"duplicate column in {columns}")
    mapped = []
    for i, row in enumerate(rows):
        row_where = (*where, "rows", i)
        if isinstance(row, dict):  # a row may name its fields instead (a block with columns of its own)
            mapped.append(row)
            continue
        if not isinstance(row, list) or len(row) != len(columns):
            got = f"{len(row)} values" if isinstance(row, list) else f"{type(row).__name__} {row!r}"
            raise SpecError(
                *_at(nodes, row_where, path), ".".join(map(str, row_where)),
                f"expected a list of {len(columns)} values for the columns {columns} (or a mapping), got {got}",
            )
        for j, column in enumerate(columns):
            nodes[(*row_where, column)] = nodes[(*row_where, j)]
            nodes.setdefault((*where, "columns", column), nodes.get((*where, "columns", j)))
        mapped.append(dict(zip(columns, row)))
    return mapped


def _at(nodes: dict, where: tuple, path: Path) -> tuple[Path, int | None]:
    """(file, line) of a recorded value."""
    node = nodes.get(where)
    return (_file(node, path), node.start_mark.line + 1) if node is not None else (path, None)


def _locate(nodes: dict, loc: tuple) -> tuple[yaml.Node | None, str]:
    """The deepest recorded node along a pydantic error location, skipping union tags."""
    data_path: tuple = ()
    best = nodes.get(())
    matched = 0  # how much of `loc` the recorded nodes cover (union tags in it have no node)
    for i, item in enumerate(loc):
        if nodes.get((*data_path, item)) is not None:
            data_path = (*data_path, item)
            best = nodes[data_path]
            matched = i + 1
    # Keep the names pydantic gave past the last node we know (a missing field, for example).
    tail = [str(item) for item in loc[matched:] if _is_field_name(item, loc)]
    return best, ".".join([*(str(item) for item in data_path if item != "[key]"), *tail])


def _is_field_name(item, loc) -> bool:
    # Discriminated unions and function validators add their tag to `loc`; those are not fields.
    # "[key]" marks an error in a mapping's key; the key itself is already in the path.
    return (
        isinstance(item, str)
        and item not in (*_block_types(), "[key]")
        and not item.startswith(("function-", "list[", "dict["))
    )


def _explain(error: dict, loc: tuple) -> str:
    kind, message = error["type"], error["msg"]
    row = len(loc) >= 3 and loc[-3] == "rows" and isinstance(loc[-2], int)
    what = "column" if row else "field"
    if kind == "missing":
        return f"required {what} {loc[-1]!r} is missing; the {what}s here are {_model_at(loc[:-1])}"
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return f"unknown {what} {loc[-1]!r}{hint}" + (f"; expected one of {allowed}" if allowed else "")
    if kind == "union_tag_invalid":  # an unknown block `type`
        ctx = error["ctx"]
        discriminator = ctx["discriminator"].strip("'")
        return f"unknown {discriminator} {ctx['tag']!r}; expected one of {ctx['expected_tags']}"
    if kind == "string_pattern_mismatch":
        return (
            f"{error['input']!r} is not a valid name: names become Python identifiers, expected "
            "lower-case letters, digits and underscores, starting with a letter"
        )
    if kind in ("value_error", "assertion_error"):
        return message.removeprefix("Value error, ")
    return f"{message} (got {error.get('input')!r})"


def _walk_models(loc: tuple):
    """Follow a pydantic location through the model classes; yields the model class at the end."""
    annotation: object = Spec
    for item in loc:
        annotation = _step(annotation, item)
        if annotation is None:
            return None
    return _unwrap_model(annotation, None)


def _step(annotation, item):
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _step(typing.get_args(annotation)[0], item)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            tag = _tag(arg)
            if tag == item:
                return arg
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _step(models[0], item) if len(models) == 1 else None
    if origin in (list, tuple):
        return typing.get_args(annotation)[0]
    if origin is dict:
        return typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if item in (name, field.alias):
                return field.annotation
    return None


def _block_types() -> tuple[str, ...]:
    """The tags of the stage-table union (the block vocabulary); pydantic puts them in error locations."""
    union = typing.get_args(StageTable)[0]
    return tuple(tag for tag in map(_tag, typing.get_args(union)) if tag)


def _tag(model) -> str | None:
    model = _unwrap_model(model, None)
    if model is not None and "type" in model.model_fields:
        args = typing.get_args(model.model_fields["type"].annotation)
        return args[0] if args else None
    return None


def _unwrap_model(annotation, default):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_model(typing.get_args(annotation)[0], default)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _unwrap_model(models[0], default)
    return default


def _fields_at(loc: tuple) -> list[str]:
    model = _walk_models(loc)
    if model is None:
        return []
    names = {field.alias or name for name, field in model.model_fields.items()}
    if model.model_config.get("populate_by_name"):
        names |= set(model.model_fields)
    return sorted(names)


def _model_at(loc: tuple) -> str:
    fields = _fields_at(loc)
    return str(fields) if fields else "the enclosing mapping"
