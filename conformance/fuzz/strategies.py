"""Hypothesis strategies over the whole spec grammar (spec/model.py), one small strategy per section.

    spec section                         strategy
    ---------------------------------    ------------------------------------------------------------
    rounding                             rounding()
    flavors.<f>                          flavor(families)          flavor_values(), flavor_override()
    flavors.<f>.batch_norm               batch_norm()
    flavors.<f>.fc_layout                fc_layout()
    width_rules (family, flavor)         width_rule(), width_rules(required)
    families.<f>                         family(...)               title(), resolutions(), references()
    families.<f>.squeeze_excite          squeeze_excite()
    families.<f>.minimalistic            minimalistic()
    families.<f>.normalization           normalization(batch_norm_only)
    architectures.<a>                    architecture(...)
    architectures.<a>.stem               stem()
    architectures.<a>.blocks             table(...)                one row strategy per table type:
        depthwise_separable rows         depthwise_separable_row()
        inverted_residual rows           inverted_residual_row()
        universal rows                   conv_row(), fused_ib_row(), uib_row(), mqa_row()
        columns / list or mapping rows   presented_rows()
    architectures.<a>.neck               neck(reached)             strides the blocks reach
    architectures.<a>.head               head()                    conv_head(); an encoder at times
    architectures.<a>.variants           variant()
    names (identifiers)                  identifiers()             plain, keywords, generated names
    the conformance run                  settings()                flavor, resolution, num_classes
    one fuzz batch                       batch(k, tier)            a spec with k families + its run

Strategy builders are cached (hypothesis validates each new strategy object, which costs more than
drawing from it). Every drawn spec is valid: the validator must accept it (a refusal is a strategy bug or a finding).
Models stay small so that a batch conforms in a minute or two: at most MAX_CHANNELS channels after the
width multiplier (expansions up to EXPANSION_CAP times that), 1-5 rows of 1-2 repeats, inputs of
32-96 pixels a side. Known bugs (conformance/fuzz/known_bugs.py) are avoided where they would be drawn.
"""

from __future__ import annotations

import builtins
import keyword
import re
from functools import cache

from hypothesis import strategies as st

from conformance.fuzz.case import REQUIRED, Case, Settings, alias_of, set_table_rows, table_rows
from conformance.fuzz.known_bugs import excluded, module_names
from spec.activations import HARD_SIGMOID_FORMULA, LAYER_ACTIVATIONS
from spec.model import GENERATED_FUNCTION_NAMES, IDENTIFIER, valid_class_title

MAX_CHANNELS = 64  # any width after the multiplier (stem, rows, heads), before rounding up
EXPANSION_CAP = 4  # an absolute `exp` is at most this times its input width
MIN_SIZE, MAX_SIZE = 32, 96  # input height and width
MAX_CLASSES = 1100

KERNELS = st.sampled_from([1, 3, 5, 7])  # of a full convolution (stem, conv and fused_ib rows)
STRIDES = st.sampled_from([1, 2])
TABLE_TYPES = ("depthwise_separable", "inverted_residual", "universal")
ROW_KINDS = ("conv", "fused_ib", "uib", "mqa")
SCALES = ("scaled", "fixed", "at_least_base")
PUBLISHED_WIDTHS = (0.25, 0.35, 0.5, 0.75, 1.0, 1.25, 1.3, 1.4)


@cache
def activations(tier: str) -> st.SearchStrategy[str]:
    names = [a for a in LAYER_ACTIVATIONS if not (a == "gelu" and excluded("gelu_keras_onnx", tier))]
    return st.sampled_from(names)


@cache
def depthwise_kernels(tier: str) -> st.SearchStrategy[int]:
    """The kernel of a depthwise convolution: 1 makes it one tap per output."""
    return st.sampled_from([1, 3, 5, 7])


@cache
def hundredths(low: float, high: float) -> st.SearchStrategy[float]:
    """A number on a 0.01 grid: readable in a YAML file, exact enough to vary every rounding."""
    return st.integers(round(low * 100), round(high * 100)).map(lambda i: i / 100)


# ---- names ------------------------------------------------------------------------------------------


PYTHON_NAMES = tuple(sorted(n for n in {*keyword.kwlist, *keyword.softkwlist, "list", "dict", "int", "float",
                                        "str", "len", "range", "print", "super", "type", "tuple", "min",
                                        "max", "object", "isinstance", "self"}
                            if re.fullmatch(IDENTIFIER, n)))


def _not_keyword(name: str) -> bool:
    # The validator refuses Python keywords as any name (spec/model.py: Identifier).
    return not (keyword.iskeyword(name) or keyword.issoftkeyword(name))


PLAIN_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(_not_keyword)


@cache
def identifiers(tier: str) -> st.SearchStrategy[str]:
    """A flavor, family or architecture name: mostly plain, sometimes a Python builtin or a name the
    generated code itself uses (never a keyword: the validator refuses those)."""
    tricky = [name for name in (*PYTHON_NAMES, *module_names()[0]) if _not_keyword(name)]
    return st.one_of(PLAIN_NAMES, PLAIN_NAMES, PLAIN_NAMES, st.sampled_from(tricky))


@cache
def variant_identifiers(tier: str) -> st.SearchStrategy[str]:
    """A variant name (a factory function in the generated module; in upper case, its table constant):
    mostly plain, sometimes a Python keyword or builtin, or a name the generated module uses
    (`nn`, `f` -> `F`, `flavors` -> `FLAVORS`), except where a known bug is avoided."""
    avoid = set()
    if excluded("keyword_variant_name", tier):
        avoid |= set(keyword.kwlist)
    if excluded("variant_name_shadows_module_name", tier):
        avoid |= set(module_names()[0]) | set(GENERATED_FUNCTION_NAMES)
    avoid |= {name for name in PYTHON_NAMES if hasattr(builtins, name) or not _not_keyword(name)}
    tricky = [name for name in (*PYTHON_NAMES, *module_names()[0]) if name not in avoid]
    names = st.one_of(PLAIN_NAMES, PLAIN_NAMES, PLAIN_NAMES, st.sampled_from(tricky))
    return names.filter(lambda name: name not in avoid and not hasattr(builtins, name))


@cache
def words(tier: str) -> st.SearchStrategy[str]:
    """Free text as simple words (titles, papers, descriptions): identifiers with spaces."""
    word = st.from_regex(r"[A-Z][a-z]{0,6}|[A-Z]{2,4}|V[0-9]", fullmatch=True)
    return st.lists(word, min_size=1, max_size=3).map(" ".join)


@cache
def titles(tier: str, variants: tuple[str, ...]) -> st.SearchStrategy[str]:
    """A family title (its class name is the title without spaces): simple words, sometimes a class name
    the generated module defines (`ConvBNAct`, `Flavor`) or one of the family's variant names."""
    if excluded("title_shadows_class_name", tier):
        # the validator refuses a class name the generated code has: "F", "DS", "MQA", ... are words too
        return words(tier).filter(valid_class_title)
    return st.one_of(words(tier), words(tier), st.sampled_from([*module_names()[1], *variants]))


# ---- spec-wide sections -----------------------------------------------------------------------------


@cache
def rounding(tier: str) -> st.SearchStrategy[dict]:
    divisors = [8, 8, 8, 2, 4, 16, 1]  # 1: widths of 1 channel
    return st.fixed_dictionaries({
        "divisor": st.sampled_from(divisors),
        "min_ratio": st.one_of(st.just(0.9), hundredths(0.01, 1.0)),
    })


@cache
def batch_norm() -> st.SearchStrategy[dict]:
    small = st.sampled_from([1.0e-3, 1.0e-5, 1.0e-2, 0.1, 0.5])
    # running_variance: both conventions, and sometimes left out (the default, or the flavor's in an override)
    return st.fixed_dictionaries({"epsilon": st.one_of(small, hundredths(0.01, 0.99)),
                                  "momentum": st.one_of(st.sampled_from([0.1, 0.01, 0.003, 0.001]),
                                                        hundredths(0.01, 0.99))},
                                 optional={"running_variance": st.sampled_from(["unbiased", "biased"])})


@cache
def fc_layout() -> st.SearchStrategy:
    layout = st.sampled_from(["linear", "conv1x1"])
    return st.one_of(layout, st.fixed_dictionaries({"fc": layout, "classifier": layout}))


@cache
def flavor_values() -> dict:
    """The conventions every flavor states."""
    return {
        "padding": st.sampled_from(["symmetric", "same"]),
        "batch_norm": batch_norm(),
        "hard_sigmoid": st.just(HARD_SIGMOID_FORMULA),
        "dropout": st.one_of(st.sampled_from([0.0, 0.2, 0.001]), hundredths(0.0, 0.99)),
        "fc_layout": fc_layout(),
    }


@cache
def width_rule() -> st.SearchStrategy:
    scale = st.sampled_from(SCALES)
    return st.one_of(scale, st.fixed_dictionaries({"scale": scale}, optional={"fixed_below": hundredths(0.01, 4.0)}))


@cache
def width_rules(required: frozenset[str]) -> st.SearchStrategy[dict]:
    fields = {"stem": width_rule(), "expansion": st.sampled_from(["ratio", "absolute"]),
              "last_conv": width_rule(), "fc": width_rule()}
    return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                 optional={k: v for k, v in fields.items() if k not in required})


@cache
def flavor_override() -> st.SearchStrategy[dict]:
    """What a flavor changes for one family (any subset, possibly nothing)."""
    return st.fixed_dictionaries({}, optional={**flavor_values(), "width_rules": width_rules(frozenset())})


@st.composite
def flavor(draw, families: list[str], tier: str) -> dict:
    values = draw(st.fixed_dictionaries({"description": words(tier), **flavor_values()}))
    overridden = draw(st.lists(st.sampled_from(families), unique=True)) if families else []
    if overridden:
        values["families"] = {name: draw(flavor_override()) for name in overridden}
    return values


# ---- a family ----------------------------------------------------------------------------------------


@cache
def squeeze_excite(tier: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"ratio": st.one_of(st.just(0.25), hundredths(0.01, 1.0)),
                                  "activation": activations(tier), "gate": st.just("hard_sigmoid")})


@cache
def minimalistic(tier: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"kernel": depthwise_kernels(tier), "squeeze_excite": st.just(False),
                                  "activation": activations(tier)})


@cache
def variant(minimal: bool) -> st.SearchStrategy[dict]:
    width = st.one_of(st.sampled_from(PUBLISHED_WIDTHS), hundredths(0.01, 4.0))
    if not minimal:
        return st.fixed_dictionaries({"width": width})
    return st.fixed_dictionaries({"width": width}, optional={"minimalistic": st.booleans()})


@cache
def channels(budget: int, tier: str) -> st.SearchStrategy[int]:
    """A base width from a table: scaled by any of the architecture's widths, at most MAX_CHANNELS."""
    return st.integers(1, budget)


@cache
def stem(budget: int, tier: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"out": channels(budget, tier), "kernel": KERNELS, "stride": STRIDES,
                                  "activation": activations(tier)}, optional={"bias": st.booleans()})


@cache
def normalization(batch_norm_only: bool) -> st.SearchStrategy:
    batch_norm = st.sampled_from(["batch_norm", {"kind": "batch_norm"}])
    if batch_norm_only:
        return batch_norm
    rms_norm = st.builds(lambda epsilon: {"kind": "rms_norm", "epsilon": epsilon},
                         st.sampled_from([1e-6, 1e-5, 1e-3, 0.1]))
    return st.one_of(rms_norm, batch_norm)


@cache
def conv_head(budget: int, tier: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"out": channels(budget, tier), "activation": activations(tier)})


@st.composite
def head(draw, shape: tuple[bool, bool, bool], budget: int, tier: str) -> dict:
    """`shape`: (last_conv, fc, fc batch_norm); `batch_norm: false` is sometimes written out."""
    last_conv, fc, fc_batch_norm = shape
    out = {}
    if last_conv:
        out["last_conv"] = draw(conv_head(budget, tier))
    if fc:
        out["fc"] = draw(conv_head(budget, tier))
        if fc_batch_norm or draw(st.booleans()):
            out["fc"]["batch_norm"] = fc_batch_norm
    return out


@cache
def head_shape() -> st.SearchStrategy[tuple[bool, bool, bool]]:
    return st.tuples(st.booleans(), st.booleans(), st.booleans()).map(lambda s: (s[0], s[1], s[1] and s[2]))


# ---- stage tables: one strategy per row kind ----------------------------------------------------------
# Each row strategy gets `state`: the base width coming in (`base_in`), the budget for base widths, the
# stride so far (attention needs the input downsampled), and whether the row opens the table.


@cache
def repeats() -> st.SearchStrategy[int]:
    return st.sampled_from([1, 1, 2])


@st.composite
def depthwise_separable_row(draw, state: dict, tier: str) -> dict:
    row = {"out": draw(channels(state["budget"], tier)), "stride": draw(STRIDES)}
    if draw(st.booleans()):
        row["repeats"] = draw(repeats())
    return row


@st.composite
def inverted_residual_row(draw, state: dict, tier: str) -> dict:
    row = {"out": draw(channels(state["budget"], tier)), "stride": draw(STRIDES)}
    if draw(st.booleans()):  # `t`, a ratio of the rounded input width; else `exp`, a width from the table
        row["expansion"] = draw(expansion_ratio())
    else:
        row["expanded"] = draw(st.integers(1, EXPANSION_CAP * state["base_in"]))
    if state["kernel_default"] is None or draw(st.booleans()):
        row["kernel"] = draw(depthwise_kernels(tier))
    if state["activation_default"] is None or draw(st.booleans()):
        row["activation"] = draw(activations(tier))
    if state["squeeze_excite"] and draw(st.booleans()):
        row["squeeze_excite"] = True
    elif draw(st.booleans()):
        row["squeeze_excite"] = False
    if draw(st.booleans()):
        row["repeats"] = draw(repeats())
    return row


@cache
def expansion_ratio(low: float = 1.0) -> st.SearchStrategy[float]:
    published = [t for t in (1, 2, 3, 4, 6) if t >= low]
    return st.one_of(st.sampled_from(published), st.integers(round(low * 4), 32).map(lambda q: q / 4))


@st.composite
def conv_row(draw, state: dict, tier: str) -> dict:
    return {"block": "conv", "k2": draw(KERNELS), "out": draw(channels(state["budget"], tier)), "stride": draw(STRIDES)}


@st.composite
def fused_ib_row(draw, state: dict, tier: str) -> dict:
    stride = draw(STRIDES)
    # t >= 2 when strided: with t near 1 the expansion rounds to the input width, and a fused_ib without an
    # expansion conv has nothing to carry the stride (spec/resolve.py refuses it when resolving).
    return {"block": "fused_ib", "k2": draw(KERNELS), "expansion": draw(expansion_ratio(2.0 if stride == 2 else 1.0)),
            "out": draw(channels(state["budget"], tier)), "stride": stride}


@st.composite
def uib_row(draw, state: dict, tier: str) -> dict:
    row = {"block": "uib", "expansion": draw(expansion_ratio()), "out": draw(channels(state["budget"], tier)),
           "stride": draw(STRIDES)}
    kernels = depthwise_kernels(tier)
    k1, k2 = draw(st.one_of(st.none(), kernels)), draw(st.one_of(st.none(), kernels))
    if row["stride"] == 2 and k1 is None and k2 is None:  # the stride needs a depthwise conv to carry it
        k2 = draw(kernels)
    row.update({k: v for k, v in (("k1", k1), ("k2", k2)) if v is not None})
    return row


@st.composite
def mqa_row(draw, state: dict, tier: str) -> dict:
    kv_stride = draw(STRIDES)
    if state["opens"] and kv_stride == 2 and excluded("mqa_first_kv_stride2_torch_onnx", tier):
        kv_stride = 1
    keeps_width = state["opens"] is False and excluded("mqa_changes_channels", tier)
    row = {"block": "mqa", "heads": draw(st.integers(1, 4)), "key_dim": draw(st.integers(1, 16)),
           "kv_stride": kv_stride,
           "out": state["base_in"] if keeps_width else draw(channels(state["budget"], tier))}
    if kv_stride == 2 or draw(st.booleans()):  # k2: the kernel of the key/value downsampling
        row["k2"] = draw(depthwise_kernels(tier))
    if draw(st.booleans()):
        row["stride"] = 1
    return row


UNIVERSAL_ROWS = {"conv": conv_row, "fused_ib": fused_ib_row, "uib": uib_row, "mqa": mqa_row}


@st.composite
def universal_row(draw, state: dict, tier: str) -> dict:
    kinds = list(ROW_KINDS)
    # Attention over every position of a barely downsampled input is the one costly layer: an mqa row
    # needs the input downsampled at least twice before it (<= 48x48 positions at 96x96).
    if state["stride"] < 2 or (state["opens"] and excluded("mqa_changes_channels", tier)):
        kinds.remove("mqa")
    kind = draw(st.sampled_from(kinds))
    row = draw(UNIVERSAL_ROWS[kind](state, tier))
    if row.get("stride") == 1 and draw(st.booleans()):
        del row["stride"]  # the default
    if draw(st.booleans()):  # an mqa row takes `nl` too (and ignores it)
        row["activation"] = draw(activations(tier))
    if draw(st.integers(0, 4)) == 0:
        row["residual"] = draw(st.sampled_from([False, False, True]))
    if draw(st.booleans()):
        row["repeats"] = draw(repeats())
    return row


ROWS = {"depthwise_separable": depthwise_separable_row, "inverted_residual": inverted_residual_row,
        "universal": universal_row}


@st.composite
def presented_rows(draw, kind: str, rows: list[dict]) -> dict:
    """`columns` and `rows` as a user would write them: columns named by the papers' aliases or by the
    field names, in any order, and each row a list under them or a mapping of its own fields."""
    used = list(dict.fromkeys(f for row in rows for f in row))
    chosen = [f for f in used if f in REQUIRED[kind] or draw(st.integers(0, 3)) > 0]
    chosen = draw(st.permutations(list(dict.fromkeys([*REQUIRED[kind], *chosen]))))
    table = {"type": kind, "columns": [alias_of(kind, f) if draw(st.integers(0, 3)) > 0 else f for f in chosen]}
    set_table_rows(table, rows, frozenset(i for i in range(len(rows)) if draw(st.integers(0, 4)) == 0))
    return {"columns": table["columns"], "rows": table["rows"]}


@st.composite
def table(draw, kind: str, stem_out: int, stem_stride: int, budget: int, features: dict, tier: str) -> dict:
    out: dict = {"type": kind}
    if kind == "depthwise_separable":
        out.update(kernel=draw(depthwise_kernels(tier)), activation=draw(activations(tier)))
    elif kind == "inverted_residual":
        if draw(st.booleans()):
            out["kernel"] = draw(depthwise_kernels(tier))
        if draw(st.booleans()):
            out["activation"] = draw(activations(tier))
    else:
        out["activation"] = draw(activations(tier))
        if draw(st.booleans()):
            out["layer_scale"] = draw(st.sampled_from([1.0e-5, 1.0e-2, 0.5]))
    state = {"base_in": stem_out, "budget": budget, "stride": stem_stride, "opens": True,
             "kernel_default": out.get("kernel"), "activation_default": out.get("activation"),
             "squeeze_excite": features["squeeze_excite"]}
    rows = []
    for _ in range(draw(st.integers(1, 5 if kind == "universal" else 4))):
        row = draw(ROWS[kind](state, tier))
        rows.append(row)
        state.update(base_in=row["out"], stride=state["stride"] * row.get("stride", 1), opens=False)
    out.update(draw(presented_rows(kind, rows)))
    return out


# ---- architecture and family ----------------------------------------------------------------------------


def reached_strides(arch: dict) -> list[int]:
    """The output strides the blocks reach, as the validator counts them: the stem's, times each row's."""
    reached, stride = set(), arch["stem"]["stride"]
    for row in table_rows(arch["blocks"]):
        stride *= row.get("stride", 1)
        reached.add(stride)
    return sorted(reached)


@st.composite
def neck(draw, reached: tuple[int, ...], budget: int, tier: str) -> dict:
    """A fusion neck on 1-3 of the strides the blocks reach, the last one's (the validator's rule) among
    them; its output a few pixels a side (resized by an average pool, bilinearly, or not at all, depending
    on the input)."""
    finer = reached[:-1]
    strides = sorted({*draw(st.lists(st.sampled_from(finer), max_size=2, unique=True)), reached[-1]} if finer
                     else {reached[-1]})
    return {"strides": strides, "out": draw(channels(budget, tier)), "t": draw(expansion_ratio()),
            "resolution": draw(st.integers(1, 8)), "activation": draw(activations(tier))}


@st.composite
def architecture(draw, kind: str, shape: tuple[bool, bool, bool], variant_names: list[str],
                 features: dict, resolutions: list[int], tier: str) -> dict:
    variants = {name: draw(variant(features["minimalistic"])) for name in variant_names}
    widest = max(1.0, *(v["width"] for v in variants.values()))
    budget = max(1, int(MAX_CHANNELS / widest))  # base widths that stay <= MAX_CHANNELS at every width
    arch: dict = {}
    if draw(st.integers(0, 3)) == 0:
        arch["title"] = draw(words(tier))
    if draw(st.booleans()):
        arch["resolution"] = draw(st.sampled_from(resolutions))
    arch["stem"] = draw(stem(budget, tier))
    arch["blocks"] = draw(table(kind, arch["stem"]["out"], arch["stem"]["stride"], budget, features, tier))
    if draw(st.integers(0, 3)) == 0:  # MobileNetV5's fusion neck
        arch["neck"] = draw(neck(tuple(reached_strides(arch)), budget, tier))
    arch["head"] = draw(head(shape, budget, tier))
    if "fc" not in arch["head"] and draw(st.integers(0, 3)) == 0:  # an encoder, or a classifier said so
        arch["head"]["classifier"] = draw(st.booleans())
    arch["variants"] = variants
    return arch


@st.composite
def family(draw, names: list[str], variant_names: list[str], flavors: list[str], tier: str,
           kind: str | None = None) -> tuple[str, dict]:
    """One family: (name, its YAML data). `names`: the family's and its architectures' (3), `variant_names`:
    for its variants (4); `flavors`: the flavor names it may reference; `kind`: its table type (default:
    any)."""
    name, names, variant_names = names[0], iter(names[1:]), iter(variant_names)
    features = {"squeeze_excite": draw(st.booleans()), "minimalistic": draw(st.booleans())}
    resolutions = draw(st.lists(st.integers(32, 1024), min_size=1, max_size=3, unique=True))
    same = excluded("mixed_architectures", tier)
    kind, shape = kind or draw(st.sampled_from(TABLE_TYPES)), draw(head_shape())
    architectures = {}
    for _ in range(draw(st.sampled_from([1, 1, 2]))):
        arch_name, variants = next(names), [next(variant_names) for _ in range(draw(st.integers(1, 2)))]
        architectures[arch_name] = draw(architecture(
            kind if same else draw(st.sampled_from(TABLE_TYPES)), shape if same else draw(head_shape()),
            variants, features, resolutions, tier))
    archs = list(architectures.values())
    required = {"stem"}
    if any(a["blocks"]["type"] != "depthwise_separable" for a in archs):
        required.add("expansion")
    required |= {part for part in ("last_conv", "fc") if any(part in a["head"] for a in archs)}
    used_variants = [v for a in archs for v in a["variants"]]
    data: dict = {"title": draw(titles(tier, tuple(used_variants))), "paper": draw(words(tier)), "resolutions": resolutions,
                  "width_rules": draw(width_rules(frozenset(required)))}
    if draw(st.integers(0, 3)) == 0:
        data["references"] = draw(st.lists(st.sampled_from(flavors), unique=True))
    uses_se = any(row.get("squeeze_excite") for a in archs for row in table_rows(a["blocks"]))
    if uses_se or (features["squeeze_excite"] and draw(st.booleans())):
        data["squeeze_excite"] = draw(squeeze_excite(tier))
    uses_minimal = any(v.get("minimalistic") for a in archs for v in a["variants"].values())
    if uses_minimal or (features["minimalistic"] and draw(st.booleans())):
        data["minimalistic"] = draw(minimalistic(tier))
    fc_batch_norm = any(a["head"].get("fc", {}).get("batch_norm") for a in archs)
    if draw(st.integers(0, 3)) == 0:  # RMSNorm, where no fc asks for a BatchNorm; else batch_norm, at times written
        data["normalization"] = draw(normalization(fc_batch_norm))
    data["architectures"] = architectures
    return name, data


# ---- a whole spec and its run ------------------------------------------------------------------------------


def settings(flavors: list[str], tier: str) -> st.SearchStrategy[Settings]:
    size = st.integers(MIN_SIZE, MAX_SIZE)
    resolution = st.one_of(st.tuples(size, size), size.map(lambda s: (s, s)))
    classes = st.one_of(st.sampled_from([1, 2, 10, 1000, 1001]), st.integers(1, MAX_CLASSES))
    return st.builds(Settings, st.sampled_from(flavors), resolution, classes)


@st.composite
def batch(draw, families: int, tier: str = "outputs", table_types: tuple[str, ...] = ()) -> Case:
    """One fuzz batch: a spec with `families` random families (distinct names) and the run it gets;
    `table_types`: the table type of the first families (the tests ask for every type)."""
    flavor_names = draw(st.lists(identifiers(tier), min_size=1, max_size=3, unique=True))
    names = draw(st.lists(identifiers(tier), min_size=3 * families, max_size=3 * families, unique=True))
    variants = draw(st.lists(variant_identifiers(tier), min_size=4 * families, max_size=4 * families, unique=True))
    if not excluded("table_constant_collision", tier) and draw(st.integers(0, 3)) == 0:
        # `<variant>_<flavor>`: the name generators/context.py gives that variant's table for that flavor
        compound = f"{variants[0]}_{draw(st.sampled_from(flavor_names))}"
        if compound not in variants and len(compound) <= 64:
            variants[1] = compound
    kinds = [*table_types, *[None] * families]
    drawn = dict(draw(family(names[3 * i:3 * i + 3], variants[4 * i:4 * i + 4], flavor_names, tier, kinds[i]))
                 for i in range(families))
    spec = {
        "spec_version": 1,
        "rounding": draw(rounding(tier)),
        "default_flavor": draw(st.sampled_from(flavor_names)),
        "flavors": {name: draw(flavor(list(drawn), tier)) for name in flavor_names},
        "families": drawn,
    }
    return Case(spec, draw(settings(flavor_names, tier)))
