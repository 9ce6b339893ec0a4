"""One fuzz case: a spec (as the YAML data a user would write) and the conformance run it gets.

A case holds the spec as plain YAML data (dicts, lists, numbers, strings), exactly what is written to
the file, so that what fails is what the user reruns. Stage tables keep the form the strategy drew
(`columns` + list rows, or rows that name their fields); `table_rows` / `set_table_rows` read and
write rows by their field names, whatever the columns call them, for the shrinker.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace

import yaml

from generators.frameworks import RUNS
from spec.model import DepthwiseSeparableRow, InvertedResidualRow, UniversalRow

ROW_MODELS = {"depthwise_separable": DepthwiseSeparableRow, "inverted_residual": InvertedResidualRow,
              "universal": UniversalRow}
# Fields a list row may leave empty (`~`): the field is then absent (the table's default, or none).
NULLABLE = {
    "depthwise_separable": frozenset(),
    "inverted_residual": frozenset({"kernel", "expansion", "expanded", "activation"}),
    "universal": frozenset({"k1", "k2", "expansion", "activation", "residual", "heads", "key_dim", "kv_stride"}),
}
# Fields with a default that `~` does not give: a list row writes the default out.
DEFAULTS = {
    "depthwise_separable": {"repeats": 1},
    "inverted_residual": {"repeats": 1, "squeeze_excite": False},
    "universal": {"repeats": 1, "stride": 1},
}
REQUIRED = {"depthwise_separable": ("out", "stride"), "inverted_residual": ("out", "stride"),
            "universal": ("block", "out")}


def field_of(table_type: str, name: str) -> str:
    """The row field a column (or a row's key) names: `t` -> expansion; `expansion` -> expansion."""
    for field_name, info in ROW_MODELS[table_type].model_fields.items():
        if name in (field_name, info.alias):
            return field_name
    raise KeyError(f"{table_type} rows have no column {name!r}")


def alias_of(table_type: str, field_name: str) -> str:
    return ROW_MODELS[table_type].model_fields[field_name].alias or field_name


@dataclass(frozen=True)
class Settings:
    """The conformance run of a case: one flavor, input size and class count for every variant."""

    flavor: str
    resolution: tuple[int, int]
    num_classes: int
    runs: tuple[str, ...] = tuple(RUNS)  # generators.frameworks.RUNS keys


@dataclass(frozen=True)
class Case:
    data: dict = field(compare=False)  # the spec, as YAML data; never modified (edit a copy: `edited`)
    settings: Settings

    # ---- reading -----------------------------------------------------------------------------------
    @property
    def families(self) -> list[str]:
        return list(self.data["families"])

    def variants(self, family: str | None = None) -> dict[str, str]:
        """Variant -> its family, in spec order (of one family, if named)."""
        return {variant: name for name, fam in self.data["families"].items() if family in (None, name)
                for arch in fam["architectures"].values() for variant in arch["variants"]}

    def yaml(self) -> str:
        return to_yaml(ordered(self.data))

    @property
    def key(self) -> str:
        """Content hash of the spec and its run: names files and work folders."""
        text = f"{self.yaml()}\n{self.settings}"
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def size(self) -> tuple[int, int]:
        """What the shrinker minimises: blocks first, then the length of the YAML."""
        blocks = sum(row_repeats(row) for fam in self.data["families"].values()
                     for arch in fam["architectures"].values()
                     for row in table_rows(arch["blocks"]))
        return blocks, len(self.yaml())

    # ---- deriving ----------------------------------------------------------------------------------
    def edited(self, edit) -> Case:
        """A copy of this case with `edit(data)` applied to a deep copy of the data."""
        data = copy.deepcopy(self.data)
        edit(data)
        return Case(data, self.settings)

    def with_settings(self, **changes) -> Case:
        return Case(self.data, replace(self.settings, **changes))

    def only(self, family: str) -> Case:
        """The single-family spec of `family`: other families, and flavors' overrides of them, removed."""
        def keep(data: dict) -> None:
            data["families"] = {family: data["families"][family]}
            for flavor in data["flavors"].values():
                overrides = flavor.get("families")
                if overrides is not None:
                    kept = {name: value for name, value in overrides.items() if name == family}
                    if kept:
                        flavor["families"] = kept
                    else:
                        del flavor["families"]
        return self.edited(keep)

    def renamed(self, suffix: str) -> Case:
        """Every family, architecture and variant name with `suffix` appended (and the flavors' overrides
        of the families), so that several cases can share one spec file."""
        def rename(data: dict) -> None:
            families = {}
            for name, fam in data["families"].items():
                fam["architectures"] = {
                    f"{arch_name}{suffix}": {**arch, "variants": {f"{v}{suffix}": value
                                                                  for v, value in arch["variants"].items()}}
                    for arch_name, arch in fam["architectures"].items()}
                families[f"{name}{suffix}"] = fam
            data["families"] = families
            for flavor in data["flavors"].values():
                if "families" in flavor:
                    flavor["families"] = {f"{name}{suffix}": value for name, value in flavor["families"].items()}
        return self.edited(rename)


def shared_part(case: Case) -> str:
    """Everything but the families and the flavors' overrides of them: cases equal here can be merged
    into one spec (with renamed families) and conformed in one run."""
    data = copy.deepcopy(case.data)
    data.pop("families")
    for flavor in data["flavors"].values():
        flavor.pop("families", None)
    return f"{to_yaml(data)}\n{case.settings}"


def merge(cases: list[Case]) -> Case:
    """One spec holding every case's families (their names must differ; see Case.renamed). The cases
    must have the same shared_part."""
    def add(data: dict) -> None:
        for other in cases[1:]:
            data["families"].update(copy.deepcopy(other.data["families"]))
            for name, flavor in other.data["flavors"].items():
                if "families" in flavor:
                    data["flavors"][name].setdefault("families", {}).update(copy.deepcopy(flavor["families"]))
    return cases[0].edited(add)


# ---- stage table rows by field name ----------------------------------------------------------------


def table_rows(table: dict) -> list[dict]:
    """Each row of a stage table as {field: value}, with the fields it gives (a `~` cell is absent)."""
    kind, columns = table["type"], table.get("columns", [])
    rows = []
    for row in table["rows"]:
        items = row.items() if isinstance(row, dict) else zip(columns, row)
        rows.append({field_of(kind, name): value for name, value in items if value is not None})
    return rows


def set_table_rows(table: dict, rows: list[dict], as_mappings: frozenset[int] = frozenset()) -> None:
    """Write `rows` ({field: value}) back into `table` under its columns. A row is written as a list when
    every field it gives has a column and it is not in `as_mappings`; else as a mapping."""
    kind = table["type"]
    columns = table.get("columns", [])
    by_field = {field_of(kind, name): name for name in columns}
    written = []
    for i, row in enumerate(rows):
        if i not in as_mappings and set(row) <= set(by_field):
            written.append([row.get(f, None if f in NULLABLE[kind] else DEFAULTS[kind].get(f)) for f in by_field])
        else:
            written.append({by_field.get(f, alias_of(kind, f)): value for f, value in row.items()})
    table["rows"] = written


def mapping_rows(table: dict) -> frozenset[int]:
    return frozenset(i for i, row in enumerate(table["rows"]) if isinstance(row, dict))


def row_repeats(row: dict) -> int:
    return row.get("repeats", 1)


# ---- YAML ------------------------------------------------------------------------------------------

# The order of fields in every section, as spec/mobilenets.yaml writes them (one list serves every
# section: no two sections order the same two fields differently, except a head's batch_norm).
FIELD_ORDER = ("spec_version", "rounding", "divisor", "min_ratio", "default_flavor", "flavors", "description",
               "title", "paper", "resolutions", "resolution", "references", "type", "block", "out", "kernel",
               "stride", "padding", "batch_norm", "epsilon", "momentum", "running_variance", "hard_sigmoid", "dropout", "fc_layout",
               "width_rules", "scale", "fixed_below", "stem", "expansion", "width", "squeeze_excite", "ratio",
               "minimalistic", "activation", "gate", "layer_scale", "columns", "rows", "last_conv", "fc",
               "classifier", "architectures", "blocks", "head", "variants", "families")
_RANK = {name: i for i, name in enumerate(FIELD_ORDER)}
NAMED = frozenset({"flavors", "families", "architectures", "variants"})  # mappings keyed by names


def ordered(node, named: bool = False):
    """`node` with every section's fields in FIELD_ORDER; names keep their order, rows are left as drawn."""
    if isinstance(node, dict):
        items = node.items() if named else sorted(node.items(), key=lambda kv: _RANK.get(kv[0], len(_RANK)))
        return {k: v if k == "rows" and not named else ordered(v, named=not named and k in NAMED) for k, v in items}
    if isinstance(node, list):
        return [ordered(v) for v in node]
    return node



class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for rows and small leaf mappings, `~` for empty cells."""


def _represent_none(dumper, _):
    return dumper.represent_scalar("tag:yaml.org,2002:null", "~")


def _represent_dict(dumper, data):
    leaf = all(not isinstance(v, (dict, list)) for v in data.values()) and len(data) <= 8
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=leaf and bool(data))


def _represent_list(dumper, data):
    leaf = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=leaf)


_Dumper.add_representer(type(None), _represent_none)
_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def to_yaml(data: dict) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=False, width=110)


# ---- what a case exercises -------------------------------------------------------------------------


def features(case: Case) -> set[str]:
    """The parts of the grammar a case uses, for coverage: `table:universal`, `row:mqa`, `uib:k1`,
    `mqa:kv_stride2`, `residual:false`, `head:fc_batch_norm`, `rule:stem:fixed`, `padding:same`, ..."""
    found: set[str] = set()
    data, s = case.data, case.settings
    for flavor in data["flavors"].values():
        found.add(f"padding:{flavor['padding']}")
        found.add(f"fc_layout:{'per_layer' if isinstance(flavor['fc_layout'], dict) else flavor['fc_layout']}")
        for override in flavor.get("families", {}).values():
            found.update(f"override:{name}" for name in override)
    for fam in data["families"].values():
        for part, rule in fam["width_rules"].items():
            if isinstance(rule, dict):
                found.add(f"rule:{part}:{rule['scale']}")
                found.update({"rule:fixed_below"} if "fixed_below" in rule else set())
            else:
                found.add(f"rule:{part}:{rule}")
        found.update(name for name in ("squeeze_excite", "minimalistic", "references") if name in fam)
        if len(fam["architectures"]) > 1:
            found.add("architectures:2")
        for arch in fam["architectures"].values():
            blocks = arch["blocks"]
            found.add(f"table:{blocks['type']}")
            if "layer_scale" in blocks:
                found.add("layer_scale")
            if any(isinstance(row, dict) for row in blocks["rows"]):
                found.add("rows:mapping")
            for row in table_rows(blocks):
                kind = row.get("block", blocks["type"])
                found.add(f"row:{kind}")
                found.update(f"{kind}:{name}" for name in ("k1", "k2", "kernel", "expanded", "expansion", "activation")
                             if name in row)
                if row.get("residual") is False:
                    found.add("residual:false")
                if row.get("squeeze_excite"):
                    found.add("row:squeeze_excite")
                if row.get("kv_stride") == 2:
                    found.add("mqa:kv_stride2")
                if row_repeats(row) > 1:
                    found.add("repeats:2")
                if row.get("stride", 1) == 2:
                    found.add(f"{kind}:stride2")
            head = arch["head"]
            found.update(f"head:{part}" for part in head)
            if head.get("fc", {}).get("batch_norm"):
                found.add("head:fc_batch_norm")
            for v in arch["variants"].values():
                found.add("variant:minimalistic" if v.get("minimalistic") else "variant:plain")
                found.add("width:>1" if v["width"] > 1 else "width:<=1")
    h, w = s.resolution
    found.add("resolution:square" if h == w else "resolution:non_square")
    if h % 2 or w % 2:
        found.add("resolution:odd")
    return found
