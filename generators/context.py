"""What the templates see: a family's resolved tables, flavors and factories, as plain numbers.

Everything here comes from spec/resolve.py; the templates only lay it out. Architectures that several
flavors share (same resolved widths) are printed once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from generators.frameworks import FRAMEWORKS
from spec.loader import LoadedSpec
from spec.resolve import (
    Architecture,
    DepthwiseSeparable,
    default_resolution,
    describe,
    flavor_values,
    resolve_architecture,
)

# resolved block class -> the NamedTuple the generated tables use for it (universal tables)
BLOCK_TUPLES = {"ConvBlock": "ConvBlock", "FusedInvertedBottleneck": "FusedIB",
                "UniversalInvertedBottleneck": "UIB", "MobileMQA": "MQA"}
WIDE_FIELDS = ("in_channels", "expanded", "out")  # aligned in table rows


def block_row(block) -> str:
    """One universal-table row as generated code: `UIB(  80, 3,  320, 5,   80, 1, "relu", True, 0.0)`."""
    values = []
    for f in fields(block):
        if f.name == "stage":
            continue
        value = getattr(block, f.name)
        values.append(f"{value:4d}" if f.name in WIDE_FIELDS else json.dumps(value) if isinstance(value, str)
                      else repr(value))
    return f"{BLOCK_TUPLES[type(block).__name__]}({', '.join(values)})"


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
    figures: tuple[tuple[str, int, int], ...]  # (flavors, params, MACs) per distinct table
    resolution: int  # the published default


def _title(variant: str, family_title: str, width: float, minimalistic: bool) -> str:
    size = " Large" if "_large" in variant else " Small" if "_small" in variant else ""
    return f"{family_title}{size}{' minimalistic' if minimalistic else ''} {width}"


def family_context(loaded: LoadedSpec, family_name: str, framework: str) -> dict:
    spec = loaded.spec
    family = spec.families[family_name]
    flavors = {name: flavor_values(spec, family_name, name)[0] for name in spec.flavors}
    tables: list[Table] = []
    by_arch: dict[Architecture, str] = {}
    factories: list[Factory] = []
    for arch_name, arch in family.architectures.items():
        for variant_name, variant in arch.variants.items():
            resolution = default_resolution(spec, variant_name)
            chosen: dict[str, str] = {}
            figures: dict[str, list] = {}
            for flavor in spec.flavors:
                resolved = resolve_architecture(spec, variant_name, flavor)
                if resolved not in by_arch:
                    const = variant_name.upper() if not chosen else f"{variant_name.upper()}_{flavor.upper()}"
                    by_arch[resolved] = const
                    desc = describe(spec, variant_name, flavor, resolution)
                    tables.append(Table(const, resolved, _block_inputs(desc), (variant_name,), resolution))
                const = by_arch[resolved]
                chosen[flavor] = const
                if const not in figures:
                    desc = describe(spec, variant_name, flavor, resolution)
                    figures[const] = [[], desc.params, desc.macs]
                figures[const][0].append(flavor)
            factories.append(Factory(
                variant_name, _title(variant_name, family.title, variant.width, variant.minimalistic),
                variant.width, variant.minimalistic, chosen,
                tuple((", ".join(f), p, m) for f, p, m in figures.values()), resolution,
            ))
    archs = [t.architecture for t in tables]
    blocks = [b for a in archs for b in a.blocks]
    if len({a.fc_batch_norm for a in archs if a.fc}) > 1:
        raise ValueError(f"{family_name}: every fc of a family has BatchNorm, or none does")
    return {
        "framework": framework,
        "framework_title": FRAMEWORKS[framework].title,
        "layout": FRAMEWORKS[framework].layout,
        "family": family_name,
        "title": family.title,
        "class_name": family.title.replace(" ", ""),
        "paper": family.paper,
        "resolutions": family.resolutions,
        "resolution": factories[0].resolution,
        "spec_sha256": loaded.sha256,
        "flavors": flavors,
        "flavor_descriptions": {name: f.description for name, f in spec.flavors.items()},
        "default_flavor": spec.default_flavor,
        "block_type": archs[0].block_type,
        "se_activation": family.squeeze_excite.activation if family.squeeze_excite else None,
        "has_squeeze_excite": any(getattr(b, "squeeze", 0) for b in blocks),
        "block_kinds": sorted({type(b).__name__ for b in blocks}),
        "has_layer_scale": any(getattr(b, "layer_scale", 0) for b in blocks),
        "fc_batch_norm": any(a.fc_batch_norm for a in archs),
        "has_last_conv": any(a.last_conv for a in archs),
        "has_fc": any(a.fc for a in archs),
        "activations": sorted({b.activation for b in blocks if hasattr(b, "activation")}
                              | {a.stem.activation for a in archs}
                              | {x.activation for a in archs for x in (a.last_conv, a.fc) if x}
                              | ({a.squeeze_excite_activation for a in archs} - {None})),
        "tables": tables,
        "factories": factories,
        "is_depthwise_separable": isinstance(archs[0].blocks[0], DepthwiseSeparable),
    }


def _block_inputs(desc) -> tuple[str, ...]:
    """Input size of each block at the default resolution, for the table comments."""
    shapes = [desc.block_shapes["stem"]] + [desc.block_shapes[f"blocks.{i}"] for i in range(len(desc.architecture.blocks))]
    return tuple(f"{c}x{h}x{w}".split("x", 1)[1] for c, h, w in shapes[:-1])
