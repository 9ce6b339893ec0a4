"""Resolve a variant under a flavor into literal numbers, and describe it analytically.

`resolve_architecture` computes every width once (the only caller of spec/rounding.py): the result is
what the generators print as a table of plain numbers. `describe` walks that architecture for one
resolution and number of classes and lists every layer with its canonical name, output shape,
trainable parameters, BatchNorm state and MACs.

Counting conventions (also in the README):
  * params: trainable parameters only (conv/linear weights and biases, BatchNorm scale and shift).
    BatchNorm running mean and variance are "state", counted apart.
  * MACs: multiply-accumulates of convolutions and fully connected layers, for one image:
    conv = Hout * Wout * Cout * (Cin / groups) * kh * kw; linear = in * out; squeeze-excite's two
    1x1 convolutions act on the pooled 1x1 map and count as Cin * Cout each. Biases, BatchNorm,
    activations, pooling, residual additions and the squeeze-excite multiplication count zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from spec.loader import LoadedSpec
from spec.model import Family, FlavorValues, InvertedResidualRow, Spec, WidthRules
from spec.rounding import apply_width_rule, make_divisible, scaled_width

Padding = Literal["symmetric", "same"]


class UnknownName(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


# ---- resolved architecture: what the generators print ---------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    out: int
    kernel: int
    stride: int
    activation: str


@dataclass(frozen=True)
class DepthwiseSeparable:
    in_channels: int
    out: int
    kernel: int
    stride: int
    activation: str
    stage: int


@dataclass(frozen=True)
class InvertedResidual:
    in_channels: int
    expanded: int  # == in_channels: no expand conv
    out: int
    kernel: int
    stride: int
    squeeze: int  # squeeze-excite bottleneck width; 0: no squeeze-excite
    activation: str
    stage: int

    @property
    def has_expand(self) -> bool:
        return self.expanded != self.in_channels

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out


@dataclass(frozen=True)
class ConvBlock:
    """kxk conv + BN + act, as a block of a universal table (MobileNetV4-Conv-Small's first stages)."""

    in_channels: int
    out: int
    kernel: int
    stride: int
    activation: str
    stage: int


@dataclass(frozen=True)
class FusedInvertedBottleneck:
    """[kxk conv expanding + BN + act] -> 1x1 project + BN (linear)."""

    in_channels: int
    expanded: int  # == in_channels: no expand conv, the projection carries the block
    out: int
    kernel: int
    stride: int
    activation: str
    residual: bool
    stage: int

    @property
    def has_expand(self) -> bool:
        return self.expanded != self.in_channels


@dataclass(frozen=True)
class UniversalInvertedBottleneck:
    """[k1 depthwise + BN] -> 1x1 expand + BN + act -> [k2 depthwise + BN + act] -> 1x1 project + BN
    -> [layer scale]. A kernel of 0 means that depthwise conv is absent."""

    in_channels: int
    start_kernel: int
    expanded: int
    kernel: int
    out: int
    stride: int  # carried by the k2 depthwise, or by the k1 depthwise when there is no k2
    activation: str
    residual: bool
    layer_scale: float  # initial value of the learned per-channel output scale; 0.0: none
    stage: int

    @property
    def start_stride(self) -> int:
        return 1 if self.kernel else self.stride

    @property
    def has_expand(self) -> bool:
        return self.expanded != self.in_channels


@dataclass(frozen=True)
class MobileMQA:
    """BN -> multi-query attention -> [layer scale]: `heads` query heads share one key and one value head;
    with kv_stride 2, keys and values come from a kv_kernel depthwise conv + BN of stride 2."""

    in_channels: int
    out: int
    heads: int
    key_dim: int
    value_dim: int
    kv_stride: int
    kv_kernel: int  # 0 when kv_stride is 1
    residual: bool
    layer_scale: float  # initial value of the learned per-channel output scale; 0.0: none
    stage: int


Block = DepthwiseSeparable | InvertedResidual | ConvBlock | FusedInvertedBottleneck | UniversalInvertedBottleneck | MobileMQA
UNIVERSAL_BLOCKS = {"conv": ConvBlock, "fused_ib": FusedInvertedBottleneck, "uib": UniversalInvertedBottleneck,
                    "mqa": MobileMQA}


@dataclass(frozen=True)
class Architecture:
    """Every width resolved: identical for all flavors that share the family's width rules."""

    block_type: str
    stem: ConvSpec
    blocks: tuple[Block, ...]
    last_conv: ConvSpec | None
    fc: ConvSpec | None
    squeeze_excite_activation: str | None = None
    fc_batch_norm: bool = False  # MobileNetV4: the fc has no bias and a BatchNorm before its activation

    @property
    def features(self) -> int:
        """Width of the pooled features that the fc / classifier sees."""
        last = self.last_conv.out if self.last_conv else self.blocks[-1].out
        return self.fc.out if self.fc else last


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    architecture_name: str
    width: float
    minimalistic: bool


def variant_info(spec: Spec, name: str) -> Variant:
    variants = spec.variants()
    if name not in variants:
        raise UnknownName(f"unknown variant {name!r}; known variants: {', '.join(variants)}")
    family, arch_name = variants[name]
    v = spec.families[family].architectures[arch_name].variants[name]
    return Variant(name, family, arch_name, v.width, v.minimalistic)


def default_resolution(spec: Spec, variant: str) -> int:
    """The architecture's published resolution, else 224 when the family lists it, else its first."""
    info = variant_info(spec, variant)
    family = spec.families[info.family]
    published = family.architectures[info.architecture_name].resolution
    return published or (224 if 224 in family.resolutions else family.resolutions[0])


def flavor_values(spec: Spec, family: str, flavor: str) -> tuple[FlavorValues, WidthRules]:
    if flavor not in spec.flavors:
        raise UnknownName(f"unknown flavor {flavor!r}; known flavors: {', '.join(spec.flavors)}")
    values, override = spec.flavors[flavor].values_for(family)
    return values, spec.families[family].width_rules.merged(override)


def resolve_architecture(spec: Spec, variant: str, flavor: str | None = None) -> Architecture:
    info = variant_info(spec, variant)
    family = spec.families[info.family]
    arch = family.architectures[info.architecture_name]
    _, rules = flavor_values(spec, info.family, flavor or spec.default_flavor)
    rounding, width = spec.rounding, info.width
    minimal = family.minimalistic if info.minimalistic else None

    def activation(name: str) -> str:
        return minimal.activation if minimal and name == "hard_swish" else name

    stem = ConvSpec(
        apply_width_rule(arch.stem.out, width, rules.stem, rounding),
        arch.stem.kernel, arch.stem.stride, activation(arch.stem.activation),
    )
    table = arch.blocks
    blocks: list[Block] = []
    in_channels, base_in = stem.out, arch.stem.out
    for stage, row in enumerate(table.rows, start=1):
        out = scaled_width(row.out, width, rounding)
        for repeat in range(row.repeats):
            stride = row.stride if repeat == 0 else 1
            if table.type == "depthwise_separable":
                blocks.append(DepthwiseSeparable(in_channels, out, table.kernel, stride, table.activation, stage))
            elif table.type == "universal":
                blocks.append(_universal(row, table, in_channels, out, stride, stage, rounding, activation))
            else:
                blocks.append(_inverted_residual(row, table, family, rules, in_channels, base_in, out, stride, stage,
                                                 width, rounding, minimal, activation))
            in_channels, base_in = out, row.out
    head = arch.head
    last_conv = fc = None
    if head.last_conv:
        last_conv = ConvSpec(apply_width_rule(head.last_conv.out, width, rules.last_conv, rounding), 1, 1,
                             activation(head.last_conv.activation))
    if head.fc:
        fc = ConvSpec(apply_width_rule(head.fc.out, width, rules.fc, rounding), 1, 1, activation(head.fc.activation))
    se = family.squeeze_excite
    return Architecture(table.type, stem, tuple(blocks), last_conv, fc, se.activation if se else None,
                        bool(head.fc and head.fc.batch_norm))


def _universal(row, table, in_channels: int, out: int, stride: int, stage: int, rounding, activation) -> Block:
    act = activation(row.activation or table.activation)
    residual = stride == 1 and in_channels == out and row.residual is not False  # `residual: false` turns it off
    if row.block == "conv":
        return ConvBlock(in_channels, out, row.k2, stride, act, stage)
    if row.block == "mqa":
        kv_kernel = row.k2 if row.kv_stride > 1 else 0
        return MobileMQA(in_channels, out, row.heads, row.key_dim, row.key_dim, row.kv_stride, kv_kernel, residual,
                         table.layer_scale or 0.0, stage)
    expanded = make_divisible(in_channels * row.expansion, rounding)
    if row.block == "fused_ib":
        if expanded == in_channels and stride > 1:
            raise ValueError(f"stage {stage}: a fused_ib row with t = 1 has no conv to carry stride {stride}")
        return FusedInvertedBottleneck(in_channels, expanded, out, row.k2, stride, act, residual, stage)
    return UniversalInvertedBottleneck(in_channels, row.k1 or 0, expanded, row.k2 or 0, out, stride, act, residual,
                                       table.layer_scale or 0.0, stage)


def _inverted_residual(row: InvertedResidualRow, table, family: Family, rules: WidthRules, in_channels: int,
                       base_in: int, out: int, stride: int, stage: int, width: float, rounding, minimal,
                       activation) -> InvertedResidual:
    if row.expansion is not None:  # V2's t: always a ratio of the actual input width
        expanded = make_divisible(in_channels * row.expansion, rounding)
    elif rules.expansion == "absolute":  # torchvision V3: the table's width, scaled like any other
        expanded = scaled_width(row.expanded, width, rounding)
    else:  # TF-slim, keras.applications, timm: the table's ratio applied to the rounded input width
        expanded = make_divisible(in_channels * row.expanded / base_in, rounding)
    use_se = row.squeeze_excite and not minimal
    squeeze = make_divisible(expanded * family.squeeze_excite.ratio, rounding) if use_se else 0
    kernel = minimal.kernel if minimal else (row.kernel or table.kernel)
    return InvertedResidual(in_channels, expanded, out, kernel, stride, squeeze,
                            activation(row.activation or table.activation), stage)


# ---- analytic description --------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer with weights (or the pooling), as every framework names it."""

    name: str
    kind: str  # conv, depthwise_conv, batch_norm, linear, pool
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    bias: bool
    out_shape: tuple[int, int, int]  # (C, H, W)
    params: int
    state: int
    macs: int
    block: str  # the block it belongs to: stem, blocks.3, last_conv, fc, classifier


@dataclass(frozen=True)
class Description:
    variant: str
    family: str
    flavor: str
    width: float
    resolution: tuple[int, int]
    num_classes: int
    flavor_values: FlavorValues
    architecture: Architecture
    layers: tuple[Layer, ...]
    block_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # output (C, H, W) per block

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def state(self) -> int:
        return sum(layer.state for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def params_by_layer(self) -> dict[str, int]:
        return {layer.name: layer.params for layer in self.layers if layer.params}

    def state_by_layer(self) -> dict[str, int]:
        return {layer.name: layer.state for layer in self.layers if layer.state}


def padding_amounts(size: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int]:
    """(before, after) padding of one spatial axis: "symmetric" pads kernel // 2 on both sides (PyTorch);
    "same" is TensorFlow's SAME, just enough for ceil(size / stride) outputs with the odd pixel after.
    The generated code states the same rule as `conv_padding` (generators/templates/common/data.py.j2)."""
    if padding == "symmetric":
        return kernel // 2, kernel // 2
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_output_size(size: int, kernel: int, stride: int, padding: Padding) -> int:
    before, after = padding_amounts(size, kernel, stride, padding)
    return (size + before + after - kernel) // stride + 1


class _Walker:
    def __init__(self, padding: Padding, channels: int, height: int, width: int):
        self.padding, self.shape, self.layers = padding, (channels, height, width), []

    def conv(self, name: str, block: str, out: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
             bias: bool = False, batch_norm: bool = True, spatial: bool = True) -> None:
        c, h, w = self.shape
        if spatial:
            h = conv_output_size(h, kernel, stride, self.padding)
            w = conv_output_size(w, kernel, stride, self.padding)
        groups = c if depthwise else 1
        weights = out * (c // groups) * kernel * kernel
        self.layers.append(Layer(
            f"{name}.conv" if batch_norm else name, "depthwise_conv" if depthwise else "conv", c, out, kernel,
            stride, groups, bias, (out, h, w), weights + (out if bias else 0), 0, weights * h * w, block))
        if batch_norm:
            self.layers.append(Layer(f"{name}.bn", "batch_norm", out, out, 1, 1, 1, True, (out, h, w),
                                     2 * out, 2 * out, 0, block))
        self.shape = (out, h, w)

    def linear(self, name: str, out: int, block: str | None = None, bias: bool = True) -> None:
        c = self.shape[0]
        self.layers.append(Layer(name, "linear", c, out, 1, 1, 1, bias, (out, 1, 1), c * out + (out if bias else 0),
                                 0, c * out, block or name))
        self.shape = (out, 1, 1)

    def batch_norm(self, name: str, block: str) -> None:
        c = self.shape[0]
        self.layers.append(Layer(name, "batch_norm", c, c, 1, 1, 1, True, self.shape, 2 * c, 2 * c, 0, block))

    def layer_scale(self, name: str, block: str) -> None:
        c = self.shape[0]
        self.layers.append(Layer(name, "layer_scale", c, c, 1, 1, 1, False, self.shape, c, 0, 0, block))

    def attention(self, name: str, block: str, heads: int, key_dim: int, value_dim: int,
                  query_shape: tuple[int, int, int], kv_shape: tuple[int, int, int]) -> None:
        """softmax(q k^T / sqrt(key_dim)) v for every head: two matrix products, heads * L * S * (dk + dv)
        MACs for L query and S key positions. Output: the heads' values concatenated, at the queries' size."""
        queries, keys = query_shape[1] * query_shape[2], kv_shape[1] * kv_shape[2]
        out = heads * value_dim
        self.layers.append(Layer(name, "attention", query_shape[0], out, 0, 1, heads, False,
                                 (out, *query_shape[1:]), 0, 0, heads * queries * keys * (key_dim + value_dim), block))
        self.shape = (out, *query_shape[1:])

    def pool(self) -> None:
        c = self.shape[0]
        self.layers.append(Layer("pool", "pool", c, c, 0, 1, 1, False, (c, 1, 1), 0, 0, 0, "pool"))
        self.shape = (c, 1, 1)


def describe(loaded: LoadedSpec | Spec, variant: str, flavor: str | None = None,
             resolution: int | tuple[int, int] | None = None, num_classes: int = 1000) -> Description:
    spec = loaded.spec if isinstance(loaded, LoadedSpec) else loaded
    info = variant_info(spec, variant)
    flavor = flavor or spec.default_flavor
    values, _ = flavor_values(spec, info.family, flavor)
    arch = resolve_architecture(spec, variant, flavor)
    if resolution is None:
        resolution = default_resolution(spec, variant)
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    if min(height, width) < 32 or num_classes < 1:
        raise ValueError(f"resolution must be at least 32 and num_classes at least 1, got {resolution}, {num_classes}")
    walk = _Walker(values.padding, 3, height, width)
    shapes: dict[str, tuple[int, int, int]] = {}
    walk.conv("stem", "stem", arch.stem.out, arch.stem.kernel, arch.stem.stride)
    shapes["stem"] = walk.shape
    for i, block in enumerate(arch.blocks):
        name = f"blocks.{i}"
        if isinstance(block, DepthwiseSeparable):
            walk.conv(f"{name}.depthwise", name, block.in_channels, block.kernel, block.stride, depthwise=True)
            walk.conv(f"{name}.pointwise", name, block.out)
        elif isinstance(block, ConvBlock):
            walk.conv(name, name, block.out, block.kernel, block.stride)
        elif isinstance(block, FusedInvertedBottleneck):
            if block.has_expand:
                walk.conv(f"{name}.expand", name, block.expanded, block.kernel, block.stride)
            walk.conv(f"{name}.project", name, block.out)
        elif isinstance(block, UniversalInvertedBottleneck):
            if block.start_kernel:
                walk.conv(f"{name}.start_depthwise", name, block.in_channels, block.start_kernel, block.start_stride,
                          depthwise=True)
            if block.has_expand:
                walk.conv(f"{name}.expand", name, block.expanded)
            if block.kernel:
                walk.conv(f"{name}.depthwise", name, block.expanded, block.kernel, block.stride, depthwise=True)
            walk.conv(f"{name}.project", name, block.out)
            if block.layer_scale:
                walk.layer_scale(f"{name}.layer_scale", name)
        elif isinstance(block, MobileMQA):
            _describe_mqa(walk, name, block)
        else:
            if block.has_expand:
                walk.conv(f"{name}.expand", name, block.expanded)
            walk.conv(f"{name}.depthwise", name, block.expanded, block.kernel, block.stride, depthwise=True)
            if block.squeeze:
                spatial = walk.shape
                walk.shape = (spatial[0], 1, 1)
                walk.conv(f"{name}.squeeze_excite.reduce", name, block.squeeze, bias=True, batch_norm=False,
                          spatial=False)
                walk.conv(f"{name}.squeeze_excite.expand", name, block.expanded, bias=True, batch_norm=False,
                          spatial=False)
                walk.shape = spatial
            walk.conv(f"{name}.project", name, block.out)
        shapes[name] = walk.shape
    if arch.last_conv:
        walk.conv("last_conv", "last_conv", arch.last_conv.out)
        shapes["last_conv"] = walk.shape
    walk.pool()
    shapes["pool"] = walk.shape
    if arch.fc and arch.fc_batch_norm:
        walk.linear("fc.linear", arch.fc.out, block="fc", bias=False)
        walk.batch_norm("fc.bn", "fc")
        shapes["fc"] = walk.shape
    elif arch.fc:
        walk.linear("fc", arch.fc.out)
        shapes["fc"] = walk.shape
    walk.linear("classifier", num_classes)
    shapes["classifier"] = walk.shape
    return Description(variant, info.family, flavor, info.width, (height, width), num_classes, values, arch,
                       tuple(walk.layers), shapes)


def _describe_mqa(walk: _Walker, name: str, block: MobileMQA) -> None:
    """The attention block's layers in the order the references run them: norm, query, key, value, output."""
    walk.batch_norm(f"{name}.bn", name)
    normed = walk.shape
    walk.conv(f"{name}.query", name, block.heads * block.key_dim, batch_norm=False)
    query_shape = walk.shape
    for branch, width in (("key", block.key_dim), ("value", block.value_dim)):
        walk.shape = normed
        if block.kv_stride > 1:
            walk.conv(f"{name}.{branch}_down", name, block.in_channels, block.kv_kernel, block.kv_stride,
                      depthwise=True)
        walk.conv(f"{name}.{branch}", name, width, batch_norm=False)
    walk.attention(f"{name}.attention", name, block.heads, block.key_dim, block.value_dim, query_shape, walk.shape)
    walk.conv(f"{name}.output", name, block.out, batch_norm=False)
    if block.layer_scale:
        walk.layer_scale(f"{name}.layer_scale", name)
