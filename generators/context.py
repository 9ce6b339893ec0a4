"""What the templates see: a family's resolved tables, flavors and factories, as plain numbers.

Everything here comes from spec/resolve.py and spec/activations.py; the templates only lay it out.
Architectures that several flavors share (same resolved widths) are printed once.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path

from generators.frameworks import FRAMEWORKS
from spec.activations import ACTIVATIONS
from spec.loader import LoadedSpec
from spec.model import GENERATED_NAMES, class_name
from spec.resolve import (
    Architecture,
    FusionNeck,
    bilinear_taps,
    default_resolution,
    describe,
    fixed_padding,
    flavor_values,
    nearest_sources,
    neck_resize,
    padding_amounts,
    resampling_matrix,
    resolve_architecture,
)

REPO = Path(__file__).resolve().parent.parent
WIDE_FIELDS = {"in_channels": 4, "expanded": 4, "out": 4, "squeeze": 3}  # aligned in table rows


def spec_file(path: Path) -> str:
    """How generated headers name the spec they come from: its path in this repository
    ("spec/mobilenets.yaml"), else its file name alone, so that no output depends on this machine's paths."""
    path = Path(path).resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


def block_row(block) -> str:
    """One table row as generated code: `UIB(  80, 3, 1,  320, 5,   80, 1, "relu", True, True, 0.0)`."""
    values = []
    for f in fields(block):
        value = getattr(block, f.name)
        values.append(f"{value:{WIDE_FIELDS[f.name]}d}" if f.name in WIDE_FIELDS else json.dumps(value)
                      if isinstance(value, str) else repr(value))
    return f"{block.row_name}({', '.join(values)})"


def block_tuple_source(cls) -> str:
    """The generated NamedTuple of a resolved block class: its fields and docstring, in the same order."""
    doc = inspect.getdoc(cls) or ""
    lines = [f"class {cls.row_name}(NamedTuple):", textwrap.indent(f'"""{doc}"""', "    "), ""]
    notes = dict(re.findall(r"^    (\w+): [^#\n]*(#[^\n]*)$", inspect.getsource(cls), re.MULTILINE))
    lines += [f"    {f.name}: {f.type}  {notes[f.name]}" if f.name in notes else f"    {f.name}: {f.type}"
              for f in fields(cls)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Table:
    const: str  # Python name of the table
    architecture: Architecture
    inputs: tuple[str, ...]  # per block: "56x56" input at the default resolution
    variants: tuple[str, ...]
    resolution: int


@dataclass(frozen=True)
class Factory:
    name: str
    title: str
    width: float
    minimalistic: bool
    tables: dict[str, str]  # flavor -> table const
    figures: tuple[tuple[str, int, int], ...]  # (flavors, params, MACs) per distinct table, reference flavors
    resolution: int  # the published default
    encoder: bool  # no classifier: the output is the feature map


def _title(architecture_title: str, width: float, minimalistic: bool) -> str:
    return f"{architecture_title}{' minimalistic' if minimalistic else ''} {width}"


def _table_const(variant: str, flavors: list[str], default_flavor: str, taken: set[str],
                 defaults: dict[str, str]) -> str:
    """The default flavor's table is named by the variant; any other by the variant and every flavor it serves.
    A name some other table or generated name has (variant `a`'s flavor-`b` table and variant `a_b`; a
    variant `flavors` and FLAVORS) gets a number: `taken` holds the names in use, `defaults` maps each
    variant's own name (upper case) to the variant."""
    base = variant.upper() if default_flavor in flavors else "_".join([variant.upper(), *(f.upper() for f in flavors)])
    name, number = base, 1
    while name in taken or defaults.get(name, variant) != variant:
        number += 1
        name = f"{base}_{number}"
    taken.add(name)
    return name


def family_context(loaded: LoadedSpec, family_name: str, framework: str) -> dict:
    spec = loaded.spec
    family = spec.families[family_name]
    references = family.references or list(spec.flavors)
    flavors = {name: flavor_values(spec, family_name, name)[0] for name in spec.flavors}
    tables: list[Table] = []
    by_arch: dict[Architecture, str] = {}
    taken = {*GENERATED_NAMES, class_name(family.title)}
    defaults = {v.upper(): v for arch in family.architectures.values() for v in arch.variants}
    factories: list[Factory] = []
    for arch in family.architectures.values():
        for variant_name, variant in arch.variants.items():
            resolution = default_resolution(spec, variant_name)
            groups: dict[Architecture, list[str]] = {}  # resolved architecture -> the flavors that give it
            for flavor in spec.flavors:
                groups.setdefault(resolve_architecture(spec, variant_name, flavor), []).append(flavor)
            chosen: dict[str, str] = {}
            figures = []
            for resolved, group in groups.items():
                if resolved not in by_arch:
                    by_arch[resolved] = _table_const(variant_name, group, spec.default_flavor, taken, defaults)
                    desc = describe(spec, variant_name, group[0], resolution)
                    tables.append(Table(by_arch[resolved], resolved, _block_inputs(desc), (variant_name,),
                                        resolution))
                chosen.update({flavor: by_arch[resolved] for flavor in group})
                shown = [flavor for flavor in group if flavor in references]
                if shown:
                    desc = describe(spec, variant_name, shown[0], resolution)
                    figures.append((", ".join(shown), desc.params, desc.macs))
            factories.append(Factory(
                variant_name, _title(arch.title or family.title, variant.width, variant.minimalistic),
                variant.width, variant.minimalistic, {flavor: chosen[flavor] for flavor in spec.flavors},
                tuple(figures), resolution, not arch.head.classifier,
            ))
    archs = [t.architecture for t in tables]
    blocks = [b for a in archs for b in a.blocks]
    se_activation = family.squeeze_excite.activation if family.squeeze_excite else None
    se_gate = family.squeeze_excite.gate if family.squeeze_excite else None
    has_squeeze_excite = any(getattr(b, "squeeze", 0) for b in blocks)
    activations = sorted({b.activation for b in blocks if hasattr(b, "activation")}
                         | {a.stem.activation for a in archs}
                         | {x.activation for a in archs for x in (a.last_conv, a.fc, a.neck) if x}
                         | ({se_activation, se_gate} - {None} if has_squeeze_excite else set()))
    block_classes = list(dict.fromkeys(type(b) for b in blocks))
    ops = {name: getattr(ACTIVATIONS[name], framework) for name in dict.fromkeys([*activations, "identity"])}
    return {
        "framework": framework,
        "framework_title": FRAMEWORKS[framework].title,
        "layout": FRAMEWORKS[framework].layout,
        "family": family_name,
        "title": family.title,
        "class_name": class_name(family.title),
        "paper": family.paper,
        "resolutions": family.resolutions,
        "resolution": factories[0].resolution,
        "spec_file": spec_file(loaded.path),
        "spec_sha256": loaded.sha256,
        "flavors": flavors,
        "references": references,
        "default_flavor": spec.default_flavor,
        "se_activation": se_activation,
        "se_gate": se_gate,
        "has_squeeze_excite": has_squeeze_excite,
        # resolved block class -> its generated NamedTuple, by class name: every kind the family's tables use
        "block_kinds": {cls.__name__: cls.row_name for cls in sorted(block_classes, key=lambda cls: cls.__name__)},
        "block_tuples": [block_tuple_source(cls) for cls in block_classes],
        "block_union": " | ".join(dict.fromkeys(cls.row_name for cls in block_classes)),
        # the type of a table's blocks: the union `Block` when the family mixes kinds
        "block_annotation": "Block" if len(block_classes) > 1 else block_classes[0].row_name,
        "has_layer_scale": any(getattr(b, "layer_scale", 0) for b in blocks),
        # Per head part, whether "all", "none" or "some" of the family's architectures have it: the model
        # class tests the architecture only where they differ.
        "head": {
            "last_conv": _agreement([bool(a.last_conv) for a in archs]),
            "fc": _agreement([bool(a.fc) for a in archs]),
            "fc_batch_norm": _agreement([a.fc_batch_norm for a in archs if a.fc]),
        },
        # The norm of every conv and attention block (spec: the family's `normalization`): the generated
        # conv unit is named for it, ConvBNAct or ConvNormAct (conv_bn_act, conv_norm_act in Keras).
        "norm": family.normalization.kind,
        "norm_epsilon": family.normalization.epsilon,
        "unit": "ConvBNAct" if family.normalization.kind == "batch_norm" else "ConvNormAct",
        "unit_fn": "conv_bn_act" if family.normalization.kind == "batch_norm" else "conv_norm_act",
        # whether the family's stems have a conv bias, and the argument that gives it to the stem's conv
        "stem_bias": _agreement([a.stem.bias for a in archs]),
        "stem_bias_argument": {"all": ", bias=True", "some": ", bias=a.stem_bias", "none": ""}[
            _agreement([a.stem.bias for a in archs])],
        # MobileNetV5's fusion neck ("all", "some" or "none" of the architectures), its generated NamedTuple,
        # and the resampling rules it follows, copied from spec/resolve.py
        "neck": _agreement([bool(a.neck) for a in archs]),
        "neck_tuple": block_tuple_source(FusionNeck),
        "resampling_source": "\n\n\n".join(inspect.getsource(f).strip() for f in (
            (neck_resize,) if framework == "torch" else (neck_resize, nearest_sources, bilinear_taps, resampling_matrix))),
        # encoders (`head.classifier: false`) end at their feature map: "all", "some" or "none"
        "encoder": _agreement([not a.classifier for a in archs]),
        "activations": activations,
        # name -> this framework's op (spec/activations.py), for every activation the family uses
        "activation_ops": ops,
        "activation_formulas": {name: ACTIVATIONS[name].formula for name in ops},
        "imports_functools": any(op.startswith("functools.") for op in ops.values()),
        "padding_source": "\n\n\n".join(inspect.getsource(f).strip() for f in (fixed_padding, padding_amounts)),
        "tables": tables,
        "factories": factories,
    }


def _agreement(flags: list[bool]) -> str:
    """"all" when every flag is set, "none" when none is (or there are none), else "some"."""
    return "all" if flags and all(flags) else "some" if any(flags) else "none"


def _block_inputs(desc) -> tuple[str, ...]:
    """Input size of each block at the default resolution, for the table comments."""
    shapes = [desc.block_shapes["stem"]] + [desc.block_shapes[f"blocks.{i}"]
                                            for i in range(len(desc.architecture.blocks))]
    return tuple(f"{c}x{h}x{w}".split("x", 1)[1] for c, h, w in shapes[:-1])
