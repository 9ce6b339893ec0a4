"""Typed model of `spec/mobilenets.yaml`: what each field means and which values it takes.

Validation only: no widths are computed here (spec/resolve.py does that). Every name that ends up
as a Python identifier in generated code is checked against `IDENTIFIER`, and a family's title, which
names its model class, against `TITLE` (the class name comes from `class_name`), so a spec cannot inject
code. Free text (`paper`, descriptions) may hold anything: the generators escape it.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from spec.activations import HARD_SIGMOID_FORMULA, LAYER_ACTIVATIONS

IDENTIFIER = r"^[a-z][a-z0-9_]*$"


def _not_keyword(name: str) -> str:
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ValueError(f"{name!r} is a Python keyword; names become Python identifiers, choose another")
    return name


Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER, max_length=64), AfterValidator(_not_keyword)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
Stride = Literal[1, 2]
Kernel = Literal[1, 3, 5, 7]
Activation = Literal[LAYER_ACTIVATIONS]  # spec/activations.py: formulas and framework ops
Width = Annotated[float, Field(gt=0, le=4)]

# A title is for people ("MobileNetV3-Large") and names the family's model class in generated code.
TITLE = r"[A-Za-z][A-Za-z0-9 .()-]*"
TITLE_LENGTH = 80
# The names generated modules define or import whose spelling a class name can take (capitalised, no
# underscore): a family title may not give one of them. tests/test_hostile_specs.py checks the list
# against the rendered files.
GENERATED_NAMES = frozenset({
    "ACTIVATIONS", "ARCHITECTURES", "Architecture", "BiasedBatchNorm1d", "BiasedBatchNorm2d", "BiasedRunningVariance",
    "Block", "Callable", "Conv", "ConvBNAct", "ConvBlock", "ConvNormAct", "DS", "DepthwiseSeparable", "F", "FAMILIES", "FLAVORS",
    "Flavor", "FusedIB", "FusedInvertedBottleneck", "FusionNeck", "IR", "InvertedResidual", "LayerScale", "LinearBN", "MQA",
    "MobileMQA", "MultiQueryAttention", "NamedTuple", "Neck", "RMSNorm2d", "Resample", "SqueezeExcite", "UIB", "UnbiasedBatchNorm",
    "UnbiasedBatchNormalization", "UniversalInvertedBottleneck", "VARIANTS",
})


def class_name(title: str) -> str:
    """The model class a family's title names: its runs of letters and digits, each with its first letter
    in upper case, joined ("MobileNetV3" -> "MobileNetV3", "Tiny heads (v2.1)" -> "TinyHeadsV21"). A
    valid title starts with a letter, so this is always a Python identifier."""
    return "".join(word[0].upper() + word[1:] for word in re.findall(r"[A-Za-z0-9]+", title))


# The lower-case names generated modules define or import at module level, beside the variants' factories
# (a variant named `architecture` or `torch` would replace them). tests/test_hostile_specs.py checks the
# list against the rendered files.
GENERATED_FUNCTION_NAMES = frozenset({
    "activation", "annotations", "architecture", "array", "batch_norm", "bilinear_taps", "block_layers",
    "block_module", "conv_bn_act",
    "conv_norm_act",
    "conv_init", "depthwise_separable", "fixed_padding", "forward_intermediates", "fully_connected", "functools",
    "fused_inverted_bottleneck", "fusion_neck", "inverted_residual", "jax", "jnp", "keras", "layers", "linear_init", "load_state",
    "math", "mobile_mqa", "nearest_sources", "neck_resize", "nn", "nnx", "np", "ops", "padding_amounts",
    "resample", "resampling_matrix", "residual", "rms_norm", "save_state",
    "serialization",
    "squeeze_excite", "torch", "universal_inverted_bottleneck",
})


def _valid_variant_name(name: str) -> str:
    """A variant names its factory function in each generated module."""
    if name in GENERATED_FUNCTION_NAMES or hasattr(builtins, name):
        what = "a Python builtin" if hasattr(builtins, name) else "a name the generated code defines or imports"
        raise ValueError(f"variant {name!r} would name its factory {name!r}, which is {what}; choose another name")
    return name


VariantName = Annotated[Identifier, AfterValidator(_valid_variant_name)]


def _valid_title(title: str) -> str:
    if len(title) > TITLE_LENGTH or not re.fullmatch(TITLE, title):
        shown = repr(title if len(title) <= 60 else title[:60] + "...")
        raise ValueError(f"{shown} is not a valid title: titles name classes and docstrings in generated code; "
                         f"expected at most {TITLE_LENGTH} ASCII letters, digits, spaces, hyphens, dots and "
                         "parentheses, starting with a letter")
    return title


def _class_title_problem(title: str) -> str | None:
    """Why a valid `title` cannot name the model class, or None."""
    name = class_name(title)
    if name in GENERATED_NAMES or keyword.iskeyword(name) or hasattr(builtins, name):
        what = "a Python keyword" if keyword.iskeyword(name) else "a Python builtin" if hasattr(builtins, name) \
            else "a name the generated code defines"
        return f"title {title!r} gives the model class name {name!r}, which is {what}; choose another title"
    return None


def valid_class_title(title: str) -> bool:
    """Whether a family may have `title` (the fuzzer draws only these)."""
    try:
        return _class_title_problem(_valid_title(title)) is None
    except ValueError:
        return False


def _valid_class_title(title: str) -> str:
    problem = _class_title_problem(_valid_title(title))
    if problem:
        raise ValueError(problem)
    return title


# The pattern goes to the JSON Schema for editors; the validators give the spec's own messages.
_TITLE_SCHEMA = Field(json_schema_extra={"pattern": f"^{TITLE}$", "maxLength": TITLE_LENGTH})
Title = Annotated[str, AfterValidator(_valid_title), _TITLE_SCHEMA]
FamilyTitle = Annotated[str, AfterValidator(_valid_class_title), _TITLE_SCHEMA]  # also names the model class


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rounding(Strict):
    """make_divisible: nearest multiple of `divisor`, at least `divisor`, at most 10% below."""

    divisor: PositiveInt
    min_ratio: Annotated[float, Field(gt=0, le=1)]


class WidthRule(Strict):
    """How the width multiplier applies to one width outside the block table."""

    scale: Literal["scaled", "fixed", "at_least_base"]
    fixed_below: Annotated[float, Field(gt=0)] | None = None


Scale = Literal["scaled", "fixed", "at_least_base"]
# A rule, or its scale alone as shorthand ("scaled" means {scale: scaled}).
WidthRuleField = Annotated[
    Union[WidthRule, Scale], AfterValidator(lambda v: WidthRule(scale=v) if isinstance(v, str) else v)
]


class WidthRules(Strict):
    stem: WidthRuleField | None = None
    expansion: Literal["ratio", "absolute"] | None = None
    last_conv: WidthRuleField | None = None
    fc: WidthRuleField | None = None

    def merged(self, override: WidthRules | None) -> WidthRules:
        if override is None:
            return self
        merged = self.model_dump(exclude_none=True)
        merged.update(override.model_dump(exclude_none=True))
        return WidthRules.model_validate(merged)


class BatchNorm(Strict):
    epsilon: Annotated[float, Field(gt=0, lt=1)]
    momentum: Annotated[float, Field(gt=0, lt=1)]  # PyTorch convention
    # The batch variance a training step blends into the running variance: "unbiased" (x n / (n - 1), n the
    # values per channel: PyTorch, TF-slim's fused batch norm) or "biased" (Keras 3, Flax). Both normalize
    # the batch with the biased one. A family override that leaves it out keeps the flavor's.
    running_variance: Literal["unbiased", "biased"] = "unbiased"


FcLayout = Literal["linear", "conv1x1"]


class FcLayouts(Strict):
    """Storage layout of the layers after global pooling, per layer."""

    fc: FcLayout
    classifier: FcLayout


# Per layer, or one layout for both as shorthand.
FcLayoutField = Annotated[
    Union[FcLayouts, FcLayout],
    AfterValidator(lambda v: FcLayouts(fc=v, classifier=v) if isinstance(v, str) else v),
]


# The gate formula a flavor states; only the published one is accepted (spec/activations.py computes it).
HardSigmoid = Literal[HARD_SIGMOID_FORMULA]


class FlavorValues(Strict):
    """The numeric conventions of one reference implementation (all fields explicit)."""

    padding: Literal["symmetric", "same"]
    batch_norm: BatchNorm
    hard_sigmoid: HardSigmoid
    dropout: Annotated[float, Field(ge=0, lt=1)]
    fc_layout: FcLayoutField


class FlavorOverride(Strict):
    """What a flavor changes for one family; unset fields keep the flavor's value."""

    padding: Literal["symmetric", "same"] | None = None
    batch_norm: BatchNorm | None = None
    hard_sigmoid: HardSigmoid | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    fc_layout: FcLayoutField | None = None
    width_rules: WidthRules | None = None


class Flavor(FlavorValues):
    description: str
    families: dict[Identifier, FlavorOverride] = {}

    def values_for(self, family: str) -> tuple[FlavorValues, WidthRules | None]:
        override = self.families.get(family)
        base = FlavorValues(**{k: getattr(self, k) for k in FlavorValues.model_fields})
        if override is None:
            return base, None
        changes = {k: getattr(override, k) for k in override.model_dump(exclude_none=True) if k != "width_rules"}
        if override.batch_norm is not None:  # its unset fields (running_variance) keep the flavor's
            changes["batch_norm"] = base.batch_norm.model_copy(
                update={k: getattr(override.batch_norm, k) for k in override.batch_norm.model_fields_set})
        return base.model_copy(update=changes), override.width_rules


class Stem(Strict):
    out: PositiveInt
    kernel: Kernel
    stride: Stride
    activation: Activation
    bias: bool = False  # a learned bias on the stem conv, before its norm (MobileNetV5)


class ConvHead(Strict):
    out: PositiveInt
    activation: Activation
    batch_norm: bool = False  # fc only: no bias, BatchNorm before the activation (MobileNetV4's head)


class Head(Strict):
    """After the blocks (and the neck): [1x1 conv + BN + act] -> global average pool -> [fc (+ BN) + act] ->
    classifier. `classifier: false`: an encoder, whose output is the feature map before pooling."""

    last_conv: ConvHead | None = None
    fc: ConvHead | None = None
    classifier: bool = True

    @model_validator(mode="after")
    def _encoder_has_no_fc(self) -> Head:
        if not self.classifier and self.fc is not None:
            raise ValueError("an encoder (`classifier: false`) ends before pooling: it can have no `fc`")
        return self


OutputStride = Literal[1, 2, 4, 8, 16, 32, 64]


class Neck(Strict):
    """MobileNetV5's multi-scale fusion adapter (MSFA), after the blocks: the last block output at each of
    `strides` (output strides, increasing), each smaller map upsampled (nearest) to the first one's size,
    concatenated over channels; an FFN (1x1 expand to round(in * t) + norm + act, 1x1 project to `out` +
    norm); resized to `resolution` a side (an average pool when that divides the fused map's size, else
    bilinear); then a norm."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    strides: list[OutputStride] = Field(min_length=1)
    out: PositiveInt
    expansion: Annotated[float, Field(ge=1, le=16)] = Field(alias="t")
    resolution: Annotated[int, Field(ge=1, le=1024, strict=True)]
    activation: Activation

    @model_validator(mode="after")
    def _increasing(self) -> Neck:
        if any(a >= b for a, b in zip(self.strides, self.strides[1:])):
            raise ValueError(f"neck strides must increase (the first is the finest map), got {self.strides}")
        return self


# ---- block rows ------------------------------------------------------------------------------------
# A stage table is `columns` + `rows` in the YAML; the loader turns each row into a mapping from column
# name to value before validation, so an error points at the cell. Column names are the papers'
# (aliases: t, c, n, s, k, exp, se, nl) or the field names.


class Row(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DepthwiseSeparableRow(Row):
    out: PositiveInt = Field(alias="c")
    repeats: PositiveInt = Field(1, alias="n")
    stride: Stride = Field(alias="s")


class InvertedResidualRow(Row):
    """One row of an inverted-residual table: give `expansion` (t, a ratio) or `expanded` (exp)."""

    kernel: Kernel | None = Field(None, alias="k")
    expansion: Annotated[float, Field(ge=1, le=16)] | None = Field(None, alias="t")
    expanded: PositiveInt | None = Field(None, alias="exp")
    out: PositiveInt = Field(alias="c")
    repeats: PositiveInt = Field(1, alias="n")
    squeeze_excite: bool = Field(False, alias="se")
    activation: Activation | None = Field(None, alias="nl")
    stride: Stride = Field(alias="s")

    @model_validator(mode="after")
    def _one_expansion(self) -> InvertedResidualRow:
        if (self.expansion is None) == (self.expanded is None):
            raise ValueError("give exactly one of `t` (expansion ratio) or `exp` (expanded width)")
        return self


class DepthwiseSeparableTable(Strict):
    type: Literal["depthwise_separable"]
    kernel: Kernel
    activation: Activation
    columns: list[str] = Field(min_length=1)
    rows: list[DepthwiseSeparableRow] = Field(min_length=1)


class InvertedResidualTable(Strict):
    type: Literal["inverted_residual"]
    kernel: Kernel | None = None  # default kernel of the rows
    activation: Activation | None = None  # default activation of the rows
    columns: list[str] = Field(min_length=1)
    rows: list[InvertedResidualRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _defaults_cover_rows(self) -> InvertedResidualTable:
        if self.kernel is None and any(r.kernel is None for r in self.rows):
            raise ValueError("a row has no kernel (`k`) and the table gives no default `kernel`")
        if self.activation is None and any(r.activation is None for r in self.rows):
            raise ValueError("a row has no activation (`nl`) and the table gives no default `activation`")
        return self


UniversalKind = Literal["conv", "fused_ib", "uib", "mqa"]
# Which optional fields each kind of universal row needs (required) and may not have (forbidden).
UNIVERSAL_FIELDS = {
    "conv": ({"k2"}, {"k1", "expansion", "heads", "key_dim", "kv_stride"}),
    "fused_ib": ({"k2", "expansion"}, {"k1", "heads", "key_dim", "kv_stride"}),
    "uib": ({"expansion"}, {"heads", "key_dim", "kv_stride"}),
    "mqa": ({"heads", "key_dim", "kv_stride"}, {"k1", "expansion"}),
}


class UniversalRow(Row):
    """One row of a universal table, in the MobileNetV4 paper's columns (Block, DW K1, DW K2, Expanded,
    Output, Stride); `~` where the paper prints "-".

    conv:      k2 x k2 conv + BN + act.
    fused_ib:  k2 x k2 conv expanding to round(in * t) + BN + act, 1x1 project + BN (no expand when t = 1).
    uib:       [k1 x k1 depthwise + BN] -> 1x1 expand to round(in * t) + BN + act -> [k2 x k2 depthwise + BN
               + act] -> 1x1 project + BN. k1 ~ and k2 set: inverted bottleneck; k1 and k2: ExtraDW;
               k1 only: ConvNext-like; neither: FFN. The stride goes to k2's depthwise, else to k1's.
    mqa:       BN -> multi-query attention (`heads` query heads, one shared key/value head of `key_dim`;
               keys and values downsampled by a k2 x k2 depthwise conv + BN when kv_stride is 2) -> 1x1 out.
    """

    block: UniversalKind
    k1: Kernel | None = None
    k2: Kernel | None = None
    expansion: Annotated[float, Field(ge=1, le=16)] | None = Field(None, alias="t")
    out: PositiveInt = Field(alias="c")
    repeats: PositiveInt = Field(1, alias="n")
    stride: Stride = Field(1, alias="s")
    activation: Activation | None = Field(None, alias="nl")
    residual: bool | None = None  # default: residual when stride 1 and in == out; `false` turns it off
    heads: PositiveInt | None = None
    key_dim: PositiveInt | None = None
    kv_stride: Stride | None = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> UniversalRow:
        required, forbidden = UNIVERSAL_FIELDS[self.block]
        missing = sorted(f for f in required if getattr(self, f) is None)
        extra = sorted(f for f in forbidden if getattr(self, f) is not None)
        if missing:
            raise ValueError(f"a {self.block} row needs {', '.join(missing)}")
        if extra:
            raise ValueError(f"a {self.block} row takes no {', '.join(extra)} (write ~)")
        if self.block == "mqa" and self.stride != 1:
            raise ValueError("an mqa row keeps its input size: stride 1 (only keys and values are downsampled)")
        if self.block == "mqa" and self.kv_stride == 2 and self.k2 is None:
            raise ValueError("an mqa row with kv_stride 2 needs k2, the kernel of its key/value downsampling")
        if self.block == "uib" and self.stride == 2 and self.k1 is None and self.k2 is None:
            raise ValueError("a strided uib row needs a depthwise kernel (k1 or k2) to carry the stride")
        return self


class UniversalTable(Strict):
    """Rows that each name their block (MobileNetV4, MobileNet-EdgeTPU)."""

    type: Literal["universal"]
    activation: Activation  # of every conv, expansion and depthwise
    # Initial value of a learned per-channel scale on the output of every uib and mqa block (hybrid models).
    layer_scale: Annotated[float, Field(gt=0, lt=1)] | None = None
    columns: list[str] = Field(min_length=1)
    rows: list[UniversalRow] = Field(min_length=1)


StageTable = Annotated[
    Union[DepthwiseSeparableTable, InvertedResidualTable, UniversalTable], Field(discriminator="type")
]


class Variant(Strict):
    width: Width
    minimalistic: bool = False


class Normalization(Strict):
    """The norm after every convolution and before every attention block. `batch_norm` takes its epsilon and
    momentum from the flavor; `rms_norm` (MobileNetV5) is x / sqrt(mean over channels of x^2 + epsilon) times
    a learned per-channel scale, with no statistics to track and the same in every reference."""

    kind: Literal["batch_norm", "rms_norm"]
    epsilon: Annotated[float, Field(gt=0, lt=1)] | None = None

    @model_validator(mode="after")
    def _epsilon_fits_kind(self) -> Normalization:
        if self.kind == "rms_norm" and self.epsilon is None:
            raise ValueError("an rms_norm normalization needs `epsilon`")
        if self.kind == "batch_norm" and self.epsilon is not None:
            raise ValueError("batch_norm takes its epsilon from the flavor (`batch_norm.epsilon`); give no `epsilon` here")
        return self


# A normalization, or its kind alone as shorthand for batch_norm ("batch_norm" means {kind: batch_norm}).
NormalizationField = Annotated[
    Union[Normalization, Literal["batch_norm"]],
    AfterValidator(lambda v: Normalization(kind=v) if isinstance(v, str) else v),
]


class Architecture(Strict):
    title: Title | None = None  # for people: "MobileNetV3-Large"; default: the family's title
    resolution: Annotated[int, Field(ge=32, le=1024, strict=True)] | None = None  # published default
    stem: Stem
    blocks: StageTable
    neck: Neck | None = None
    head: Head
    variants: dict[VariantName, Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _neck_strides_reached(self) -> Architecture:
        if self.neck:
            reached, stride = set(), self.stem.stride
            for row in self.blocks.rows:  # a row's stride is its first repeat's
                stride *= getattr(row, "stride", 1)
                reached.add(stride)
            missing = [s for s in self.neck.strides if s not in reached]
            if missing:
                raise ValueError(f"neck.strides {missing} not reached: the blocks' output strides are {sorted(reached)}")
            if self.neck.strides[-1] != stride:
                raise ValueError(f"neck.strides must end at the blocks' last output stride, {stride} (got "
                                 f"{self.neck.strides}): blocks after the neck's last input would compute nothing "
                                 "the output reads")
        return self


class SqueezeExcite(Strict):
    ratio: Annotated[float, Field(gt=0, le=1)]
    activation: Activation
    gate: Literal["hard_sigmoid"]


class Minimalistic(Strict):
    kernel: Kernel
    squeeze_excite: Literal[False]
    activation: Activation


class Family(Strict):
    title: FamilyTitle
    paper: str  # free text: the generators escape it
    resolutions: list[Annotated[int, Field(ge=32, le=1024, strict=True)]] = Field(min_length=1)
    width_rules: WidthRules
    # The flavors whose reference library publishes this family (default: every flavor). Any flavor's
    # conventions still build the family; the factories' docstrings list the figures of these only.
    references: list[Identifier] | None = None
    squeeze_excite: SqueezeExcite | None = None
    minimalistic: Minimalistic | None = None
    # Of every architecture: the generated model class names its norm layers by kind (`bn`, `norm`).
    normalization: NormalizationField = Normalization(kind="batch_norm")
    architectures: dict[Identifier, Architecture] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Family:
        for arch_name, arch in self.architectures.items():
            rows = arch.blocks.rows
            if any(getattr(r, "squeeze_excite", False) for r in rows) and self.squeeze_excite is None:
                raise ValueError(f"{arch_name} uses squeeze-excite but the family has no `squeeze_excite`")
            for name, variant in arch.variants.items():
                if variant.minimalistic and self.minimalistic is None:
                    raise ValueError(f"variant {name} is minimalistic but the family has no `minimalistic` rule")
            if arch.head.last_conv and self.width_rules.last_conv is None:
                raise ValueError(f"{arch_name} has head.last_conv but width_rules has no `last_conv`")
            if arch.head.fc and self.width_rules.fc is None:
                raise ValueError(f"{arch_name} has head.fc but width_rules has no `fc`")
            if arch.head.fc and arch.head.fc.batch_norm and self.normalization.kind != "batch_norm":
                raise ValueError(f"{arch_name}: the family normalizes with {self.normalization.kind}, so its "
                                 "head.fc can have no `batch_norm: true`")
            if arch.resolution is not None and arch.resolution not in self.resolutions:
                raise ValueError(f"{arch_name} resolution {arch.resolution} is not one of the family's {self.resolutions}")
            if arch.blocks.type in ("inverted_residual", "universal") and self.width_rules.expansion is None:
                raise ValueError(f"{arch_name} has inverted residuals but width_rules has no `expansion`")
        if self.width_rules.stem is None:
            raise ValueError("width_rules needs `stem`")
        return self


def cross_reference_error(default_flavor: str, flavors: Mapping[str, Iterable[str]],
                          families: Mapping[str, tuple[Iterable[str], Mapping[str, Iterable[str]]]]
                          ) -> tuple[tuple, str] | None:
    """The first reference between sections that points nowhere, as (where, message), or None.

    `flavors`: flavor -> the families it overrides; `families`: family -> (its reference flavors,
    architecture -> variant names). Plain names, so that the loader can run the same rule on the raw
    YAML to point at the offending entry, and the model on validated data to refuse it.
    """
    if default_flavor not in flavors:
        return ("default_flavor",), f"default_flavor {default_flavor!r} is not one of the flavors {sorted(flavors)}"
    for flavor_name, overridden in flavors.items():
        for family in overridden or ():
            if family not in families:
                return (("flavors", flavor_name, "families", family, "[key]"),
                        f"flavor {flavor_name!r} overrides unknown family {family!r}; expected one of {sorted(families)}")
    seen: dict[str, str] = {}
    for family_name, (references, architectures) in families.items():
        unknown = sorted(set(references or ()) - set(flavors))
        if unknown:
            return ("families", family_name, "references"), f"family {family_name!r} references unknown flavors {unknown}"
        for arch_name, variants in architectures.items():
            for variant in variants:
                if variant in seen:
                    return (("families", family_name, "architectures", arch_name, "variants", variant, "[key]"),
                            f"variant {variant!r} is defined twice ({seen[variant]} and {arch_name})")
                seen[variant] = arch_name
    return None


class Spec(Strict):
    spec_version: Literal[1]
    rounding: Rounding
    default_flavor: Identifier
    flavors: dict[Identifier, Flavor] = Field(min_length=1)
    families: dict[Identifier, Family] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_references(self) -> Spec:
        error = cross_reference_error(
            self.default_flavor, {name: flavor.families for name, flavor in self.flavors.items()},
            {name: (family.references or (), {arch_name: arch.variants for arch_name, arch in family.architectures.items()})
             for name, family in self.families.items()})
        if error:
            raise ValueError(error[1])
        return self

    def variants(self) -> dict[str, tuple[str, str]]:
        """Variant name -> (family, architecture), in spec order."""
        return {
            variant: (family_name, arch_name)
            for family_name, family in self.families.items()
            for arch_name, arch in family.architectures.items()
            for variant in arch.variants
        }
