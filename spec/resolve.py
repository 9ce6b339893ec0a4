"""Resolve a variant under a flavor into literal numbers, and describe it analytically.

`resolve_architecture` computes every width once (the only caller of spec/rounding.py): the result is
what the generators print as a table of plain numbers. `describe` walks that architecture for one
resolution and number of classes and lists every layer with its canonical name, output shape,
trainable parameters, BatchNorm state and MACs.

Counting conventions (also in the README):
  * params: trainable parameters only (conv/linear weights and biases, BatchNorm scale and shift, RMSNorm
    scale). BatchNorm running mean and variance are "state", counted apart.
  * MACs: multiply-accumulates of convolutions and fully connected layers, for one image:
    conv = Hout * Wout * Cout * (Cin / groups) * kh * kw; linear = in * out; squeeze-excite's two
    1x1 convolutions act on the pooled 1x1 map and count as Cin * Cout each. Biases, BatchNorm, RMSNorm,
    activations, pooling, residual additions and the squeeze-excite multiplication count zero.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

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
    bias: bool = False  # the conv's own bias, before its norm (MobileNetV5's stem)


# Resolved blocks carry every decision (stride placement, residual, whether an expansion conv exists):
# the generated tables print their fields in this order, and the templates build from them without
# deciding anything. Each class's `row_name` names its generated NamedTuple, one name per class (the
# architectures of one family may use any mix of kinds), none the name of a generated module class. Each block's `describe` lists its layers under their canonical names, the one
# place those names are written outside the templates' attribute names.


@dataclass(frozen=True)
class DepthwiseSeparable:
    """kxk depthwise + BN + act, then 1x1 pointwise + BN + act."""

    row_name: ClassVar[str] = "DS"  # its NamedTuple in the generated tables

    in_channels: int
    out: int
    kernel: int
    stride: int
    activation: str
    residual: ClassVar[bool] = False

    def describe(self, walk: _Walker, name: str) -> None:
        walk.conv(f"{name}.depthwise", name, self.in_channels, self.kernel, self.stride, self.activation,
                  depthwise=True)
        walk.conv(f"{name}.pointwise", name, self.out, activation=self.activation)


@dataclass(frozen=True)
class InvertedResidual:
    """[1x1 expand + BN + act] -> kxk depthwise + BN + act -> [squeeze-excite] -> 1x1 project + BN."""

    row_name: ClassVar[str] = "IR"  # its NamedTuple in the generated tables

    in_channels: int
    expanded: int
    out: int
    kernel: int
    stride: int
    squeeze: int  # squeeze-excite bottleneck width; 0: no squeeze-excite
    activation: str
    has_expand: bool  # False: the depthwise reads the input (expanded == in_channels)
    residual: bool

    def describe(self, walk: _Walker, name: str) -> None:
        if self.has_expand:
            walk.conv(f"{name}.expand", name, self.expanded, activation=self.activation)
        walk.conv(f"{name}.depthwise", name, self.expanded, self.kernel, self.stride, self.activation,
                  depthwise=True)
        if self.squeeze:
            gated = walk.layers[-1].name
            walk.conv(f"{name}.squeeze_excite.reduce", name, self.squeeze, activation=walk.se_activation,
                      bias=True, batch_norm=False, pooled=True)
            walk.conv(f"{name}.squeeze_excite.expand", name, self.expanded, activation=walk.se_gate, bias=True,
                      batch_norm=False, gates=gated)
        walk.conv(f"{name}.project", name, self.out)


@dataclass(frozen=True)
class ConvBlock:
    """kxk conv + BN + act, as a block of a universal table (MobileNetV4-Conv-Small's first stages)."""

    row_name: ClassVar[str] = "ConvBlock"  # its NamedTuple in the generated tables

    in_channels: int
    out: int
    kernel: int
    stride: int
    activation: str
    residual: ClassVar[bool] = False

    def describe(self, walk: _Walker, name: str) -> None:
        walk.conv(name, name, self.out, self.kernel, self.stride, self.activation)


@dataclass(frozen=True)
class FusedInvertedBottleneck:
    """[kxk conv expanding + BN + act] -> 1x1 project + BN (linear)."""

    row_name: ClassVar[str] = "FusedIB"  # its NamedTuple in the generated tables

    in_channels: int
    expanded: int
    out: int
    kernel: int
    stride: int
    activation: str
    has_expand: bool  # False (expanded == in_channels): the projection carries the block
    residual: bool

    def describe(self, walk: _Walker, name: str) -> None:
        if self.has_expand:
            walk.conv(f"{name}.expand", name, self.expanded, self.kernel, self.stride, self.activation)
        walk.conv(f"{name}.project", name, self.out)


@dataclass(frozen=True)
class UniversalInvertedBottleneck:
    """[k1 depthwise + BN] -> 1x1 expand + BN + act -> [k2 depthwise + BN + act] -> 1x1 project + BN
    -> [layer scale]. A kernel of 0 means that depthwise conv is absent. The expand conv is there at any
    ratio, 1 included (TF's and timm's UIB; MobileNetV5's FFN rows of t = 1)."""

    row_name: ClassVar[str] = "UIB"  # its NamedTuple in the generated tables

    in_channels: int
    start_kernel: int
    start_stride: int  # the k1 depthwise carries the stride only when there is no k2 depthwise
    expanded: int
    kernel: int
    out: int
    stride: int  # of the k2 depthwise
    activation: str
    residual: bool
    layer_scale: float  # initial value of the learned per-channel output scale; 0.0: none

    def describe(self, walk: _Walker, name: str) -> None:
        if self.start_kernel:
            walk.conv(f"{name}.start_depthwise", name, self.in_channels, self.start_kernel, self.start_stride,
                      depthwise=True)
        walk.conv(f"{name}.expand", name, self.expanded, activation=self.activation)
        if self.kernel:
            walk.conv(f"{name}.depthwise", name, self.expanded, self.kernel, self.stride, self.activation,
                      depthwise=True)
        walk.conv(f"{name}.project", name, self.out)
        if self.layer_scale:
            walk.layer_scale(f"{name}.layer_scale", name)


@dataclass(frozen=True)
class MobileMQA:
    """BN -> multi-query attention -> [layer scale]: `heads` query heads share one key and one value head;
    keys and values come from a kv_kernel depthwise conv + BN of stride kv_stride (when kv_kernel > 0)."""

    row_name: ClassVar[str] = "MQA"  # its NamedTuple in the generated tables

    in_channels: int
    out: int
    heads: int
    key_dim: int
    value_dim: int
    kv_stride: int
    kv_kernel: int  # 0: no key / value downsampling
    residual: bool
    layer_scale: float  # initial value of the learned per-channel output scale; 0.0: none

    def describe(self, walk: _Walker, name: str) -> None:
        """The layers in the order the references run them: norm, query, key, value, output."""
        walk.norm(name, name)
        normed = walk.layers[-1].name
        walk.conv(f"{name}.query", name, self.heads * self.key_dim, batch_norm=False)
        branches = []
        for branch, width in (("key", self.key_dim), ("value", self.value_dim)):
            source = normed
            if self.kv_kernel:
                walk.conv(f"{name}.{branch}_down", name, self.in_channels, self.kv_kernel, self.kv_stride,
                          depthwise=True, source=source)
                source = walk.layers[-1].name
            walk.conv(f"{name}.{branch}", name, width, batch_norm=False, source=source)
            branches.append(f"{name}.{branch}")
        walk.attention(f"{name}.attention", name, self.heads, self.key_dim, self.value_dim,
                       (f"{name}.query", *branches))
        walk.conv(f"{name}.output", name, self.out, batch_norm=False)
        if self.layer_scale:
            walk.layer_scale(f"{name}.layer_scale", name)


Block = (DepthwiseSeparable | InvertedResidual | ConvBlock | FusedInvertedBottleneck | UniversalInvertedBottleneck
         | MobileMQA)


@dataclass(frozen=True)
class FusionNeck:
    """MobileNetV5's multi-scale fusion adapter: the outputs of blocks `inputs` (finest first), each coarser
    one upsampled (nearest) to the first one's size, concatenated; 1x1 expand + norm + act, 1x1 project +
    norm (no residual); resized to `resolution` a side (see neck_resize); norm."""

    row_name: ClassVar[str] = "Neck"  # its NamedTuple in the generated tables

    inputs: tuple[int, ...]  # block indices, finest map first
    in_channels: int  # the inputs' channels, concatenated
    expanded: int
    out: int
    resolution: int
    activation: str

    def describe(self, walk: _Walker, outputs: dict[int, str]) -> None:
        """`outputs`: block index -> the name of its last layer (the block's output)."""
        finest = walk.shapes[outputs[self.inputs[0]]]
        parts = [outputs[self.inputs[0]]]
        for i in self.inputs[1:]:
            walk.resample(f"neck.upsample.{i}", "neck", "upsample_nearest", finest[1:], outputs[i])
            parts.append(walk.layers[-1].name)
        walk.concat("neck.concat", "neck", tuple(parts))
        walk.conv("neck.expand", "neck", self.expanded, activation=self.activation)
        walk.conv("neck.project", "neck", self.out)
        resize = neck_resize(*walk.shape[1:], self.resolution)
        if resize != "none":
            size = (self.resolution, self.resolution)
            walk.resample("neck.resize", "neck", "avg_pool" if resize == "avg_pool" else "resize_bilinear", size)
        walk.norm("neck", "neck")


@dataclass(frozen=True)
class Architecture:
    """Every width resolved: identical for all flavors that share the family's width rules."""

    block_type: str
    stem: ConvSpec
    blocks: tuple[Block, ...]
    last_conv: ConvSpec | None
    fc: ConvSpec | None
    squeeze_excite_activation: str | None = None
    squeeze_excite_gate: str | None = None
    fc_batch_norm: bool = False  # MobileNetV4: the fc has no bias and a BatchNorm before its activation
    # The norm of every conv and attention block: "batch_norm" (the flavor's epsilon and momentum) or
    # "rms_norm" (MobileNetV5) with its own epsilon. Its layers are named `<layer>.bn` and `<layer>.norm`.
    norm: str = "batch_norm"
    norm_epsilon: float | None = None  # rms_norm's
    neck: FusionNeck | None = None  # after the blocks, before last_conv
    classifier: bool = True  # False: an encoder, whose output is the feature map (no pooling)


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
        arch.stem.kernel, arch.stem.stride, activation(arch.stem.activation), arch.stem.bias,
    )
    table = arch.blocks
    blocks: list[Block] = []
    in_channels, base_in = stem.out, arch.stem.out
    for stage, row in enumerate(table.rows, start=1):
        out = scaled_width(row.out, width, rounding)
        for repeat in range(row.repeats):
            stride = row.stride if repeat == 0 else 1
            if table.type == "depthwise_separable":
                blocks.append(DepthwiseSeparable(in_channels, out, table.kernel, stride, table.activation))
            elif table.type == "universal":
                blocks.append(_universal(row, table, in_channels, out, stride, stage, rounding, activation))
            else:
                blocks.append(_inverted_residual(row, table, family, rules, in_channels, base_in, out, stride,
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
    norm = family.normalization
    return Architecture(table.type, stem, tuple(blocks), last_conv, fc, se.activation if se else None,
                        se.gate if se else None, bool(head.fc and head.fc.batch_norm), norm.kind, norm.epsilon,
                        _neck(arch, blocks, rounding), head.classifier)


def output_strides(stem_stride: int, blocks) -> list[int]:
    """Each block's output stride: the product of the stem's and the blocks' strides up to it."""
    strides, stride = [], stem_stride
    for block in blocks:
        stride *= getattr(block, "stride", 1)  # an mqa block keeps its input size
        strides.append(stride)
    return strides


def _neck(arch, blocks: list, rounding) -> FusionNeck | None:
    """The fusion neck's inputs: the last block at each of its output strides (the loader checked that the
    blocks reach every one)."""
    neck = arch.neck
    if neck is None:
        return None
    strides = output_strides(arch.stem.stride, blocks)
    inputs = tuple(max(i for i, s in enumerate(strides) if s == wanted) for wanted in neck.strides)
    in_channels = sum(blocks[i].out for i in inputs)
    return FusionNeck(inputs, in_channels, make_divisible(in_channels * neck.expansion, rounding), neck.out,
                      neck.resolution, neck.activation)


def _residual(in_channels: int, out: int, stride: int) -> bool:
    """A block adds its input to its output when their shapes agree: stride 1 and in == out."""
    return stride == 1 and in_channels == out


def _universal(row, table, in_channels: int, out: int, stride: int, stage: int, rounding, activation) -> Block:
    act = activation(row.activation or table.activation)
    residual = _residual(in_channels, out, stride) and row.residual is not False  # `residual: false` turns it off
    if row.block == "conv":
        return ConvBlock(in_channels, out, row.k2, stride, act)
    if row.block == "mqa":
        kv_kernel = row.k2 if row.kv_stride > 1 else 0
        return MobileMQA(in_channels, out, row.heads, row.key_dim, row.key_dim, row.kv_stride, kv_kernel, residual,
                         table.layer_scale or 0.0)
    expanded = make_divisible(in_channels * row.expansion, rounding)
    has_expand = expanded != in_channels
    if row.block == "fused_ib":
        if not has_expand and stride > 1:
            raise ValueError(f"stage {stage}: a fused_ib row with t = 1 has no conv to carry stride {stride}")
        return FusedInvertedBottleneck(in_channels, expanded, out, row.k2, stride, act, has_expand, residual)
    k1, k2 = row.k1 or 0, row.k2 or 0
    return UniversalInvertedBottleneck(in_channels, k1, 1 if k2 else stride, expanded, k2, out, stride, act,
                                       residual, table.layer_scale or 0.0)


def _inverted_residual(row: InvertedResidualRow, table, family: Family, rules: WidthRules, in_channels: int,
                       base_in: int, out: int, stride: int, width: float, rounding, minimal,
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
                            activation(row.activation or table.activation), expanded != in_channels,
                            _residual(in_channels, out, stride))


# ---- analytic description --------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer with weights (or the pooling), as every framework names it, with the decisions the
    canonical ONNX graph is built from (conformance/onnx/from_spec.py)."""

    name: str
    # conv, depthwise_conv, batch_norm, rms_norm, linear, pool, layer_scale, attention, and the neck's
    # upsample_nearest, concat, avg_pool, resize_bilinear
    kind: str
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
    activation: str = "identity"  # applied to this layer's output (a conv's is on its BatchNorm)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right: a conv's zero padding
    inputs: tuple[str, ...] = ()  # the layers it reads; (): the layer before it
    pooled: bool = False  # reads the global average pool of its input (squeeze-excite)
    gates: str = ""  # its output multiplies that layer's output; the next layer reads the product
    residual: bool = False  # the block's last layer: the block's input is added to its output
    window: tuple[int, int] = (1, 1)  # an avg_pool's window (H, W), its stride too


@dataclass(frozen=True)
class Description:
    variant: str
    family: str
    flavor: str
    width: float
    resolution: tuple[int, int]
    num_classes: int | None  # None: an encoder
    flavor_values: FlavorValues
    architecture: Architecture
    layers: tuple[Layer, ...]
    block_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # output (C, H, W) per block

    @property
    def encoder(self) -> bool:
        """No classifier: the network's output is its last feature map."""
        return not self.architecture.classifier

    @property
    def output(self) -> str:
        """The stage whose output is the network's: "classifier" (the logits), or an encoder's last stage."""
        return next(reversed(self.block_shapes))

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


# The padding rule. The generated files are self-contained, so they carry these two functions too: the
# generator copies their source (generators/context.py, `padding_source`), it is not written twice.
def fixed_padding(kernel: int, stride: int, padding: str) -> int | None:
    """Zero padding on every side when it does not depend on the input size, else None.

    "symmetric" (PyTorch) pads kernel // 2; TensorFlow's "same" pads the same at stride 1 (odd kernels),
    and at a larger stride just enough for ceil(size / stride) outputs: see `padding_amounts`.
    """
    return kernel // 2 if padding == "symmetric" or stride == 1 else None


def padding_amounts(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of one spatial axis of `size` pixels; SAME puts the odd pixel after."""
    fixed = fixed_padding(kernel, stride, padding)
    if fixed is not None:
        return fixed, fixed
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# The fusion neck's resampling rules: PyTorch's, which timm's MSFA calls (F.interpolate, F.avg_pool2d). The
# generated files carry these functions too (generators/context.py, `resampling_source`): Keras and JAX
# resize with other corner conventions, so their generated code gathers and blends by these indices.
def neck_resize(height: int, width: int, resolution: int) -> str:
    """How the fusion neck brings its fused map to `resolution` a side, as timm's MSFA: "none" at that size,
    "avg_pool" (windows of height // resolution by width // resolution, as strides too) where both sides
    divide, else "bilinear"."""
    if height == width == resolution:
        return "none"
    return "avg_pool" if height % resolution == 0 and width % resolution == 0 else "bilinear"


def nearest_sources(in_size: int, out_size: int) -> list[int]:
    """The input index each output index reads in PyTorch's `nearest` resize to a given size, along one axis:
    floor(i * scale), scale = in_size / out_size, with the scale and the product rounded to float32 as
    PyTorch computes them, capped at in_size - 1."""
    scale = array("f", [in_size / out_size])[0]
    return [min(int(array("f", [i * scale])[0]), in_size - 1) for i in range(out_size)]


def bilinear_taps(in_size: int, out_size: int) -> list[tuple[int, int, float]]:
    """PyTorch's `bilinear` resize (align_corners=False) along one axis: per output index i, (i0, i1, w), the
    output being (1 - w) * x[i0] + w * x[i1] at the source coordinate (i + 0.5) * in_size / out_size - 0.5,
    clamped at 0. Exact here; PyTorch rounds the coordinate to float32 (w within 2^-24 * in_size)."""
    taps = []
    for i in range(out_size):
        source = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(source), in_size - 1)
        taps.append((i0, min(i0 + 1, in_size - 1), source - i0))
    return taps


def resampling_matrix(in_size: int, out_size: int, mode: str) -> list[list[float]]:
    """PyTorch's `nearest` or `bilinear` resize along one axis as an (out_size, in_size) matrix: row i holds
    what output index i takes of each input index, a 1 at nearest_sources' index, or 1 - w and w at
    bilinear_taps' two (their sum where the two are one index)."""
    matrix = [[0.0] * in_size for _ in range(out_size)]
    if mode == "nearest":
        for row, source in zip(matrix, nearest_sources(in_size, out_size)):
            row[source] = 1.0
        return matrix
    for row, (lower, upper, weight) in zip(matrix, bilinear_taps(in_size, out_size)):
        row[lower] += 1.0 - weight
        row[upper] += weight
    return matrix


def conv_output_size(size: int, kernel: int, stride: int, padding: Padding) -> int:
    before, after = padding_amounts(size, kernel, stride, padding)
    return (size + before + after - kernel) // stride + 1


class _Walker:
    """Appends the layers of a network in order, following each layer's output shape."""

    def __init__(self, padding: Padding, channels: int, height: int, width: int, se_activation: str | None,
                 se_gate: str | None, norm: str = "batch_norm"):
        self.padding, self.shape, self.layers = padding, (channels, height, width), []
        self.se_activation, self.se_gate = se_activation, se_gate
        self.norm_kind = norm  # of every norm layer but the V4 head's fc BatchNorm
        self.shapes: dict[str, tuple[int, int, int]] = {}  # output shape of each layer

    def _add(self, layer: Layer) -> None:
        self.layers.append(layer)
        self.shapes[layer.name] = self.shape = layer.out_shape

    def conv(self, name: str, block: str, out: int, kernel: int = 1, stride: int = 1, activation: str = "identity",
             depthwise: bool = False, bias: bool = False, batch_norm: bool = True, pooled: bool = False,
             gates: str = "", source: str = "") -> None:
        """A convolution (`name`.conv, then the architecture's norm `name`.bn or `name`.norm, with
        `batch_norm`); `source`: the layer it reads, if not the one before; `pooled`: it acts on the global
        average pool of its input (1x1)."""
        c, h, w = self.shapes[source] if source else self.shape
        pads = (0, 0, 0, 0)
        if pooled:
            h = w = 1
        else:
            (top, bottom), (left, right) = (padding_amounts(n, kernel, stride, self.padding) for n in (h, w))
            pads = (top, left, bottom, right)
            h = conv_output_size(h, kernel, stride, self.padding)
            w = conv_output_size(w, kernel, stride, self.padding)
        groups = c if depthwise else 1
        weights = out * (c // groups) * kernel * kernel
        self._add(Layer(
            f"{name}.conv" if batch_norm else name, "depthwise_conv" if depthwise else "conv", c, out, kernel,
            stride, groups, bias, (out, h, w), weights + (out if bias else 0), 0, weights * h * w, block,
            "identity" if batch_norm else activation, pads, (source,) if source else (), pooled, gates))
        if batch_norm:
            self.norm(name, block, activation)
        if gates:  # the product has the gated layer's shape
            self.shape = self.shapes[gates]

    def linear(self, name: str, out: int, block: str | None = None, bias: bool = True,
               activation: str = "identity") -> None:
        c = self.shape[0]
        self._add(Layer(name, "linear", c, out, 1, 1, 1, bias, (out, 1, 1), c * out + (out if bias else 0), 0,
                        c * out, block or name, activation))

    def batch_norm(self, name: str, block: str, activation: str = "identity") -> None:
        c = self.shape[0]
        self._add(Layer(name, "batch_norm", c, c, 1, 1, 1, True, self.shape, 2 * c, 2 * c, 0, block, activation))

    def norm(self, owner: str, block: str, activation: str = "identity") -> None:
        """The architecture's norm of `owner`'s output: `owner`.bn, a BatchNorm (scale, shift and two running
        statistics), or `owner`.norm, an RMSNorm over channels (a scale; no bias, no statistics)."""
        if self.norm_kind == "batch_norm":
            self.batch_norm(f"{owner}.bn", block, activation)
        else:
            c = self.shape[0]
            self._add(Layer(f"{owner}.norm", "rms_norm", c, c, 1, 1, 1, False, self.shape, c, 0, 0, block,
                            activation))

    def layer_scale(self, name: str, block: str) -> None:
        c = self.shape[0]
        self._add(Layer(name, "layer_scale", c, c, 1, 1, 1, False, self.shape, c, 0, 0, block))

    def attention(self, name: str, block: str, heads: int, key_dim: int, value_dim: int,
                  inputs: tuple[str, str, str]) -> None:
        """softmax(q k^T / sqrt(key_dim)) v for every head, reading the query, key and value layers: two
        matrix products, heads * L * S * (dk + dv) MACs for L query and S key positions. Output: the
        heads' values concatenated, at the queries' size."""
        query_shape, kv_shape = self.shapes[inputs[0]], self.shapes[inputs[1]]
        queries, keys = query_shape[1] * query_shape[2], kv_shape[1] * kv_shape[2]
        out = heads * value_dim
        self._add(Layer(name, "attention", query_shape[0], out, 0, 1, heads, False, (out, *query_shape[1:]), 0, 0,
                        heads * queries * keys * (key_dim + value_dim), block, inputs=inputs))

    def resample(self, name: str, block: str, kind: str, size: tuple[int, int], source: str = "") -> None:
        """A weightless resampling to `size` (H, W): "upsample_nearest", "avg_pool" (a window of the input
        size over `size`, stride the same) or "resize_bilinear" (align_corners false). No MACs."""
        c, h, w = self.shapes[source] if source else self.shape
        window = (h // size[0], w // size[1]) if kind == "avg_pool" else (1, 1)
        self._add(Layer(name, kind, c, c, window[0], window[0], 1, False, (c, *size), 0, 0, 0, block,
                        inputs=(source,) if source else (), window=window))

    def concat(self, name: str, block: str, inputs: tuple[str, ...]) -> None:
        """The layers `inputs`, concatenated over channels in that order (their H and W agree)."""
        shapes = [self.shapes[i] for i in inputs]
        c = sum(shape[0] for shape in shapes)
        self._add(Layer(name, "concat", c, c, 1, 1, 1, False, (c, *shapes[0][1:]), 0, 0, 0, block, inputs=inputs))

    def pool(self) -> None:
        c = self.shape[0]
        self._add(Layer("pool", "pool", c, c, 0, 1, 1, False, (c, 1, 1), 0, 0, 0, "pool"))

    def close_block(self, residual: bool) -> None:
        """Mark the block's last layer: where its input is added, for a residual block."""
        if residual:
            self.layers[-1] = replace(self.layers[-1], residual=True)


def describe(loaded: LoadedSpec | Spec, variant: str, flavor: str | None = None,
             resolution: int | tuple[int, int] | None = None, num_classes: int | None = 1000) -> Description:
    """The variant's layers, shapes, params and MACs at `resolution` (default: its published one). An encoder
    has no classes: its Description's num_classes is None whatever is asked."""
    spec = loaded.spec if isinstance(loaded, LoadedSpec) else loaded
    info = variant_info(spec, variant)
    flavor = flavor or spec.default_flavor
    values, _ = flavor_values(spec, info.family, flavor)
    arch = resolve_architecture(spec, variant, flavor)
    if resolution is None:
        resolution = default_resolution(spec, variant)
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    if min(height, width) < 32 or (arch.classifier and (num_classes or 0) < 1):
        raise ValueError(f"resolution must be at least 32 and num_classes at least 1, got {resolution}, {num_classes}")
    walk = _Walker(values.padding, 3, height, width, arch.squeeze_excite_activation, arch.squeeze_excite_gate,
                   arch.norm)
    shapes: dict[str, tuple[int, int, int]] = {}
    walk.conv("stem", "stem", arch.stem.out, arch.stem.kernel, arch.stem.stride, arch.stem.activation,
              bias=arch.stem.bias)
    shapes["stem"] = walk.shape
    outputs: dict[int, str] = {}  # block index -> its last layer
    for i, block in enumerate(arch.blocks):
        name = f"blocks.{i}"
        block.describe(walk, name)
        walk.close_block(block.residual)
        shapes[name] = walk.shape
        outputs[i] = walk.layers[-1].name
    if arch.neck:
        arch.neck.describe(walk, outputs)
        shapes["neck"] = walk.shape
    if arch.last_conv:
        walk.conv("last_conv", "last_conv", arch.last_conv.out, activation=arch.last_conv.activation)
        shapes["last_conv"] = walk.shape
    if not arch.classifier:  # an encoder: its output is the feature map, it has no classes
        return Description(variant, info.family, flavor, info.width, (height, width), None, values, arch,
                           tuple(walk.layers), shapes)
    walk.pool()
    shapes["pool"] = walk.shape
    if arch.fc and arch.fc_batch_norm:
        walk.linear("fc.linear", arch.fc.out, block="fc", bias=False)
        walk.batch_norm("fc.bn", "fc", arch.fc.activation)
        shapes["fc"] = walk.shape
    elif arch.fc:
        walk.linear("fc", arch.fc.out, activation=arch.fc.activation)
        shapes["fc"] = walk.shape
    walk.linear("classifier", num_classes)
    shapes["classifier"] = walk.shape
    return Description(variant, info.family, flavor, info.width, (height, width), num_classes, values, arch,
                       tuple(walk.layers), shapes)
