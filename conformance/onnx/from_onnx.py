"""Canonicalise an exported ONNX graph (conformance/onnx/canonical.py), so that the PyTorch, Keras and Flax
exports can be compared with each other and with the spec.

The three exporters write the same network differently: tf2onnx and jax2onnx wrap each convolution in
NHWC <-> NCHW Transposes, PyTorch folds BatchNorm into the convolutions while jax2onnx keeps
BatchNormalization nodes and tf2onnx keeps some per-channel Mul/Add, hard-swish is one HardSwish node or
x * Clip(x + 3, 0, 6) / 6 or x * Min(Max(x + 3, 0), 6) / 6, GELU is x * 0.5 * (1 + Erf(x / sqrt 2)) in some
order, padding sits in the Conv or in a Pad before it, and the attention's 1 / sqrt(key_dim) scales the
scores (Keras) or sqrt of it scales queries and keys each (PyTorch's decomposition of SDPA).
Canonicalisation, in order:
  1. inline local functions, fold every node whose inputs are all constants;
  2. follow each tensor's axis order through Transposes, so a Pad's amounts land on H and W, and treat
     Transpose, Reshape, Flatten, (Un)Squeeze, Identity, Dropout, Cast, Expand and Tile as transparent;
  2b. Keras' and Flax's resizing (PyTorch's rules): a constant (out, in) matrix times a feature map
     reshaped so that its H or W axis is the next-to-last one, once per axis, then reshaped back, is a
     canonical `resize` (nearest or bilinear by its matrices), as PyTorch's Resize node is;
  3. BatchNormalization and per-channel constant Mul/Add/Sub/Div are canonical `affine` ops (a per-channel
     scale and shift), folded (canonical.fold_affines, the spec's rule too) into the convolution, linear
     or affine op that produces their input when nothing else reads that op's output (what BatchNorm
     folding does to the weights; a layer scale folds the same way). Where something else reads it
     too (a residual add that reads the input of the attention block's BatchNorm) the affine stays.
     A per-channel scale alone waits on its tensor: a product with a tensor of the same source takes it
     along, since s f(x) * g(x) = s (f(x) g(x)) (TensorFlow moves the scale of a BatchNorm after GELU
     into GELU's erfc factor), and anything else emits it after the activation;
  4. compose the remaining elementwise ops with scalar constants into one function of one tensor and
     name it by its values on a probe grid: relu, relu6, hard_sigmoid, hard_swish, gelu (exact, erf),
     gelu_tanh, or `unknown` (HardSigmoid with ONNX's default alpha 0.2 is not relu6(x + 3) / 6 and stays apart).
     On a conv or linear layer with one output channel (a classifier for one class), or an RMSNorm of
     one channel, a per-channel constant is a scalar one: the scale and shift right after it are its
     affine (its bias);
  4b. RMSNorm: a ReduceMean over the channel axis of a tensor's square is a statistic of that tensor; a
     product of the tensor with 1 / sqrt(statistic + eps) (or a division by sqrt(statistic + eps)) is an
     `rms_norm` op with that epsilon, and its per-channel scale an `affine` after it, wherever the
     exporter applied it;
  5. attention: a MatMul (or two-operand Einsum) of two computed tensors is a canonical `matmul`; scalar
     scale steps on its operands, and on the input of the Softmax that reads it, fold into its `scale`
     attribute, so softmax(q k^T / sqrt(d)) v reads matmul(scale=1/sqrt(d)), softmax, matmul(scale=1)
     wherever the exporter put the factor; its MACs are the product's (batch excluded), from ONNX
     shape inference;
  6. list the canonical ops (conv, linear, global average pool, activation, add, scale, affine, rms_norm, matmul,
     softmax) in depth order.
The comparison reports the first canonical op where two graphs differ, with both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from conformance.onnx.canonical import Canonical, Op, finalize, fold_affines, total_macs, total_params
from spec.activations import ACTIVATIONS
from spec.resolve import padding_amounts, resampling_matrix

TRANSPARENT = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Expand",
               "Tile"}  # Expand and Tile: a key / value head repeated for every query head (a broadcast)
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Clip", "Relu", "HardSigmoid", "HardSwish", "Sigmoid",
               "BatchNormalization", "Neg", "Erf", "Gelu", "Tanh", "Pow", "Sqrt", "Reciprocal"}
SHAPE_OPS = {"Shape", "Gather", "Concat", "Slice", "ConstantOfShape", "Range"}
_erf = np.vectorize(math.erf, otypes=[np.float64])
PROBE = np.concatenate([np.linspace(-12.0, 12.0, 2401), [-3.0, 0.0, 3.0, 6.0]])
KNOWN = {name: activation.reference(PROBE) for name, activation in ACTIVATIONS.items()}  # spec/activations.py


@dataclass
class _Value:
    """A tensor of the graph as seen from the canonical ops: produced by op `source` (None: the input),
    then through `fn` (elementwise, scalar constants), then scaled per channel by `scale`, with the axis
    order `layout` and pending pads."""

    source: int | None
    fn: tuple = ()  # elementwise steps since `source`: (name, function)
    layout: tuple[str, ...] | None = ("N", "C", "H", "W")
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right, from Pad nodes
    scale: tuple[str, int] | None = None  # a pending per-channel scale after `fn`: (its node's output, channels)
    # A per-position statistic of `source`'s output: the mean over its `statistic` channels of its square, then
    # `fn` (an RMSNorm's 1 / sqrt(. + eps), until the product with that output makes it an `rms_norm`).
    statistic: int | None = None
    # A pending resampling of `source`'s output (Keras' and Flax's resize: products with constant matrices
    # along H and W): per spatial axis ("H", "W"), the (out, in) matrix.
    spatial: dict | None = None
    # A feature map reshaped (its layout lost): the (layout, shape) of the 4-D map whose elements, in the
    # same order, this tensor holds
    flat: tuple | None = None


def canonicalize(model, input_layout: str) -> Canonical:
    """The canonical graph of an ONNX model whose one input has the axis order `input_layout` ("NCHW")."""
    from onnx import inliner, shape_inference

    if model.functions:  # (re-serialising a large model costs seconds: only when there is something to inline)
        model = inliner.inline_local_functions(model)
    model = shape_inference.infer_shapes(model, data_prop=True)
    reader = _Reader(model.graph, input_layout)
    for node in model.graph.node:
        reader.read(node)
    (output,) = model.graph.output
    result = reader.materialise(output.name)
    ops = reader.ops
    _conv1x1_heads_as_linear(ops, reader.shapes.get(output.name))
    fold_affines(ops, outputs=(result,))
    for op in ops:
        if op.kind == "matmul":  # as the spec states it, whatever float32 rounding the exporter's factors had
            op.attrs["scale"] = float(f"{op.attrs['scale']:.5g}")
    _fold_pool_sums(ops)
    ops = finalize(ops)
    return Canonical(ops, total_params(ops), total_macs(ops))


class _Reader:
    """Reads a graph's nodes in order into canonical ops: each step below handles one family of ONNX ops."""

    def __init__(self, graph, input_layout: str):
        from onnx import numpy_helper

        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                for d in v.type.tensor_type.shape.dim]
                       for v in (*graph.value_info, *graph.input, *graph.output)}
        self.ops: list[Op] = []
        self.values: dict[str, _Value] = {}
        self.shape_values: set[str] = set()
        self.act_cache: dict[tuple, int] = {}
        (image,) = [i for i in graph.input if i.name not in self.constants]
        self.values[image.name] = _Value(None, (), tuple(input_layout))

    def emit(self, kind, attrs, inputs) -> int:
        self.ops.append(Op(kind, attrs, [i for i in inputs if i is not None]))
        return len(self.ops) - 1

    def materialise(self, name: str) -> int | None:
        """The canonical op that yields this tensor, emitting its activation if it has one, then its
        pending per-channel scale (an `affine`)."""
        return self._materialise(self.values[name])

    def _materialise(self, value: _Value) -> int | None:
        source = value.source
        if value.spatial:  # resampled from a materialised tensor (Reader._resample): fn and scale come after
            attrs = _resize_attrs(value.spatial)
            key = (source, "resize", tuple(sorted((axis, m.tobytes()) for axis, m in value.spatial.items())))
            if key not in self.act_cache:
                self.act_cache[key] = self.emit("resize", attrs, [source])
            source = self.act_cache[key]
        if value.fn:
            key = (source, tuple(step[0] for step in value.fn))
            if key not in self.act_cache:
                op = source
                for kind, attrs in self._function_ops(source, value.fn):
                    op = self.emit(kind, attrs, [op])
                self.act_cache[key] = op
            source = self.act_cache[key]
        if value.scale is not None:
            key = (source, value.scale)
            if key not in self.act_cache:
                self.act_cache[key] = self.emit("affine", {"channels": value.scale[1]}, [source])
            source = self.act_cache[key]
        return source

    def settled(self, value: _Value, other_source: int | None) -> _Value:
        """`value` as the output of the affine its pending scale became, when that affine exists and is
        `other_source`; else `value` as it is."""
        if value.scale is None or value.fn or value.statistic or value.source == other_source:
            return value
        if self.act_cache.get((value.source, value.scale)) != other_source:
            return value
        return _Value(other_source, (), value.layout, value.pads)

    def _function_ops(self, source: int | None, steps) -> list[tuple[str, dict]]:
        """The canonical ops of an elementwise function of the output of op `source`: an activation.
        On the one channel of a conv or linear layer with one output (a classifier for one class), a
        scale and shift by constants right after the layer is its bias (or BatchNorm), no different from
        a scalar step: the shortest such prefix after which the rest is an activation the spec names (or
        nothing) is that channel's affine."""
        if source is not None and self._one_channel(source):
            leading = next((i for i, step in enumerate(steps) if not _is_affine([step])), len(steps))
            for cut in range(leading + 1):
                rest = steps[cut:]
                name = _classify(rest) if rest else None
                if name is None or name in KNOWN:
                    return ([("affine", {"channels": 1})] if cut else []) + ([("act", {"fn": name})] if rest else [])
        return [("act", {"fn": _classify(steps)})]

    def _one_channel(self, source: int) -> bool:
        """Whether op `source` yields one channel, where a per-channel constant is a scalar: a conv or linear
        layer with one output (a classifier for one class), or an RMSNorm over one channel."""
        op = self.ops[source]
        return (op.kind in ("conv", "linear") and op.attrs["out"] == 1
                or op.kind == "rms_norm" and op.attrs["channels"] == 1)

    def read(self, node) -> None:
        import onnx

        op, ins, outs = node.op_type, list(node.input), list(node.output)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if self._constant(node, op, attrs, ins, outs):
            return
        live = [i for i in ins if i in self.values]
        if op == "Expand" and ins[0] in self.constants:
            self.constants[outs[0]] = self.constants[ins[0]]  # a constant broadcast to the batch: that constant
            return
        if op == "Shape" or (op in SHAPE_OPS and not live) or (not live and any(i in self.shape_values for i in ins)):
            self.shape_values.update(outs)  # shape arithmetic (the dynamic batch), not data
            return
        if op in TRANSPARENT:
            value = self._transparent(op, attrs, self.values[live[0]])
            if op == "Reshape":
                self._reshape(value, self.values[live[0]], self.shapes.get(live[0]), self.shapes.get(outs[0]))
            self.values[outs[0]] = value
        elif op == "MatMul" and live == ins[1:] and ins[0] in self.constants:
            self.values[outs[0]] = self._resample(node, self.constants[ins[0]], live[0])
        elif any(self.values[i].spatial for i in live):  # anything else reads the resampled tensor itself
            for name in live:
                value = self.values[name]
                if value.spatial:
                    self.values[name] = _Value(self.materialise(name), (), value.layout, value.pads)
            self.read(node)
        elif op == "Resize":
            self.values[outs[0]] = self._resize(node, attrs, live[0], outs[0])
        elif op == "AveragePool":
            self.values[outs[0]] = self._average_pool(node, attrs, live[0])
        elif op == "Concat" and live:
            self.values[outs[0]] = self._concat(node, attrs, live, outs[0])
        elif op == "Pad":
            self.values[outs[0]] = self._pad(self.values[live[0]], self.constants[ins[1]].astype(int).tolist())
        elif op == "Conv":
            self.values[outs[0]] = self._conv(attrs, ins, live[0], outs[0])
        elif op in ("MatMul", "Einsum") and len(live) == 2:  # a product of two computed tensors: attention
            self.values[outs[0]] = self._product(op, attrs, live, outs[0])
        elif op == "Softmax":
            self.values[outs[0]] = self._softmax(node, self.values[live[0]])
        elif op in ("Gemm", "MatMul"):
            self.values[outs[0]] = self._linear(op, attrs, ins, live[0])
        elif op == "ReduceMean" and self._over_channels(attrs, ins, live[0]):
            self.values[outs[0]] = self._mean_square(node, live[0])
        elif op in ("GlobalAveragePool", "ReduceMean", "ReduceSum"):
            self.values[outs[0]] = self._pool(op, attrs, live[0])
        elif op in ELEMENTWISE:
            self.values[outs[0]] = _elementwise(node, op, attrs, ins, live, self)
        else:
            raise ValueError(f"no canonical form for {op} node {node.name!r}")

    def _constant(self, node, op, attrs, ins, outs) -> bool:
        """Step 1: a Constant, or a node of constants only, folded with ONNX's reference implementation."""
        from onnx import numpy_helper

        if op == "Constant":
            self.constants[outs[0]] = numpy_helper.to_array(attrs["value"])
            return True
        if op == "CastLike" and ins[0] in self.constants:  # a constant in a computed tensor's dtype (jax2onnx)
            self.constants[outs[0]] = self.constants[ins[0]]
            return True
        if ins and all((i in self.constants) or i == "" for i in ins):
            self.constants[outs[0]] = _evaluate(node, [self.constants.get(i) for i in ins])
            return True
        return False

    @staticmethod
    def _transparent(op, attrs, value: _Value) -> _Value:
        """Step 2: follow the axis order through a Transpose; other layout ops keep or forget it."""
        layout = value.layout
        if op == "Transpose" and layout is not None:
            layout = tuple(layout[p] for p in attrs["perm"])
        elif op != "Transpose":
            layout = layout if op in ("Identity", "Dropout", "Cast", "Expand", "Tile") else None
        flat = value.flat if op in ("Identity", "Dropout", "Cast") else None
        return _Value(value.source, value.fn, layout, value.pads, value.scale, value.statistic, value.spatial, flat)

    def _reshape(self, value: _Value, before: _Value, in_shape, out_shape) -> None:
        """Step 2: the layout of a Reshape's output `value`, from its input's: the 4-D map's again where a
        reshaped map gets its shape back; a moved axis of size 1, or none (_moved_ones); else none, the map
        it holds kept in `flat`."""
        if before.flat and out_shape and tuple(out_shape) == before.flat[1]:
            value.layout = before.flat[0]
            return
        value.layout = _moved_ones(before.layout, in_shape, out_shape)
        if value.layout is None:
            value.flat = before.flat or ((before.layout, tuple(in_shape))
                                         if before.layout and in_shape and len(in_shape) == 4 else None)

    @staticmethod
    def _pad(value: _Value, amounts: list[int]) -> _Value:
        """Step 2: a Pad's amounts, on H and W wherever the layout put them, wait for the next Conv."""
        rank = len(amounts) // 2
        axis = {name: i for i, name in enumerate(value.layout)}
        top, left = amounts[axis["H"]], amounts[axis["W"]]
        bottom, right = amounts[rank + axis["H"]], amounts[rank + axis["W"]]
        p = value.pads
        return _Value(value.source, value.fn, value.layout, (p[0] + top, p[1] + left, p[2] + bottom, p[3] + right),
                      value.scale)

    def _conv(self, attrs, ins, live: str, out: str) -> _Value:
        value = self.values[live]
        weight = self.constants[ins[1]]
        out_ch, in_per_group, kh, kw = weight.shape
        group = int(attrs.get("group", 1))
        pads = _conv_pads(attrs, self.shapes.get(live), self.shapes.get(out), (kh, kw))
        pads = tuple(a + b for a, b in zip(pads, value.pads))
        source = self.emit("conv", {"k": kh, "s": tuple(attrs.get("strides", [1, 1]))[0], "pads": pads,
                                    "group": group, "in": in_per_group * group, "out": out_ch},
                           [self.materialise(live)])
        out_shape = self.shapes.get(out) or []
        if len(out_shape) == 4 and None not in out_shape[2:]:
            self.ops[source].positions = out_shape[2] * out_shape[3]
        self.ops[source].weight_size = int(weight.size)
        return _Value(source, (), ("N", "C", "H", "W"))

    def _product(self, op, attrs, live: list[str], out: str) -> _Value:
        """Step 5: a product of two computed tensors; scalar factors on its operands fold into `scale`."""
        factors, inputs = [], []
        for name in live:
            factor = _linear_factor(self.values[name].fn) if self.values[name].scale is None else None
            factors.append(1.0 if factor is None else factor)
            inputs.append(self.values[name].source if factor is not None else self.materialise(name))
        source = self.emit("matmul", {"scale": float(np.prod(factors))}, inputs)
        self.ops[source].macs = _product_macs(op, attrs, [self.shapes.get(name) for name in live],
                                              self.shapes.get(out))
        return _Value(source, (), None)

    def _softmax(self, node, value: _Value) -> _Value:
        factor = _linear_factor(value.fn) if value.scale is None else None
        if value.source is None or self.ops[value.source].kind != "matmul" or factor is None:
            raise ValueError(f"Softmax {node.name!r} does not read a product of two tensors (attention scores)")
        self.ops[value.source].attrs["scale"] *= factor  # softmax(c * q k^T): c is the product's scale
        return _Value(self.emit("softmax", {}, [value.source]), (), None)

    def _linear(self, op, attrs, ins, live: str) -> _Value:
        weight = self.constants[ins[1]]
        transposed = op == "Gemm" and attrs.get("transB", 0)
        in_f, out_f = (weight.shape[1], weight.shape[0]) if transposed else weight.shape
        return _Value(self.emit("linear", {"in": int(in_f), "out": int(out_f)}, [self.materialise(live)]), (), None)

    def _resample(self, node, matrix: np.ndarray, live: str) -> _Value:
        """Step 2b: a constant (out, in) matrix (or one per batch row, all the same) times a reshaped feature
        map whose next-to-last axis is its H or W: a pending map of that axis, composed with the value's own."""
        value = self.values[live]
        matrices = matrix.reshape(-1, *matrix.shape[-2:])
        layout, shape = value.flat or (None, None)
        axis = _regrouped_axis(shape, self.shapes.get(live)) if shape else None
        if axis is None or layout[axis] not in ("H", "W") or (matrices != matrices[:1]).any():
            raise ValueError(f"MatMul {node.name!r} multiplies a computed tensor by a constant along no spatial "
                             "axis: no canonical form")
        name, matrix = layout[axis], matrices[0].astype(np.float64)
        flat = (layout, shape[:axis] + (matrix.shape[0],) + shape[axis + 1:])
        if value.spatial and not value.fn and value.scale is None:
            maps = dict(value.spatial)
            maps[name] = matrix @ maps[name] if name in maps else matrix
            return _Value(value.source, (), None, value.pads, spatial=maps, flat=flat)
        return _Value(self.materialise(live), (), None, value.pads, spatial={name: matrix}, flat=flat)

    def _resize(self, node, attrs, live: str, out: str) -> _Value:
        """PyTorch's export of F.interpolate: a Resize node. Its modes as PyTorch's: nearest picks floor(i *
        in / out) (asymmetric coordinates, floor), bilinear blends at (i + 0.5) * in / out - 0.5."""
        value = self.values[live]
        mode = _text(attrs.get("mode", "nearest"))
        transform = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        pytorch = {"nearest": mode == "nearest" and transform == "asymmetric"
                   and _text(attrs.get("nearest_mode", "round_prefer_floor")) == "floor",
                   "bilinear": mode == "linear" and transform in ("pytorch_half_pixel", "half_pixel")}
        kind = next((k for k, same in pytorch.items() if same), f"unknown({mode}, {transform})")
        shape = self.shapes.get(out)
        size = (shape[value.layout.index("H")], shape[value.layout.index("W")]) if value.layout and shape else (None,)
        if None in size:
            raise ValueError(f"Resize {node.name!r}: its output's spatial size is not known")
        return _Value(self.emit("resize", {"mode": kind, "size": size}, [self.materialise(live)]), (), value.layout)

    def _average_pool(self, node, attrs, live: str) -> _Value:
        """A window average whose stride is its window, no padding: the fusion neck's downsizing."""
        value = self.values[live]
        window, strides = tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", attrs["kernel_shape"]))
        if strides != window or any(attrs.get("pads", [0])):
            raise ValueError(f"AveragePool {node.name!r}: window {window}, strides {strides}, pads "
                             f"{attrs.get('pads')}: only windows that tile the input have a canonical form")
        return _Value(self.emit("avg_pool", {"window": window}, [self.materialise(live)]), (), value.layout)

    def _concat(self, node, attrs, live: list[str], out: str) -> _Value:
        """Feature maps concatenated over channels, in order; one alone is itself."""
        if len(live) == 1:
            return self.values[live[0]]
        layouts = {self.values[name].layout for name in live}
        shape = self.shapes.get(out)
        layout = layouts.pop() if len(layouts) == 1 else None
        if layout is None or not shape or layout[int(attrs["axis"]) % len(shape)] != "C":
            raise ValueError(f"Concat {node.name!r} joins computed tensors along no channel axis: no canonical form")
        channels = int(shape[layout.index("C")])
        return _Value(self.emit("concat", {"channels": channels}, [self.materialise(name) for name in live]), (),
                      layout)

    def _over_channels(self, attrs, ins, live: str) -> bool:
        """Whether a ReduceMean averages over the channel axis only (an RMSNorm's statistic), not a pool."""
        axes = attrs.get("axes") if "axes" in attrs else self.constants.get(ins[1]) if len(ins) > 1 else None
        layout, shape = self.values[live].layout, self.shapes.get(live)
        if axes is None or layout is None or "C" not in layout:
            return False
        rank = len(shape) if shape else len(layout)
        return sorted(int(a) % rank for a in np.reshape(axes, -1)) == [layout.index("C")]

    def _mean_square(self, node, live: str) -> _Value:
        """Step 4b: the mean over channels of a tensor's square: an RMSNorm's statistic, kept apart until the
        product with the tensor it normalizes."""
        value = self.values[live]
        square = _compose(value.fn)(PROBE.copy()) if value.fn else PROBE
        if value.scale is not None or value.statistic or not np.allclose(square, PROBE ** 2, rtol=1e-6, atol=1e-9):
            raise ValueError(f"ReduceMean {node.name!r} averages over channels something other than a square "
                             f"({_steps(value) or 'x'}): no canonical form")
        shape = self.shapes.get(live)
        channels = shape[value.layout.index("C")] if shape else None
        return _Value(value.source, (), value.layout, value.pads, statistic=channels)

    def _pool(self, op, attrs, live: str) -> _Value:
        value = self.values[live]
        source = self.emit("pool_sum" if op == "ReduceSum" else "pool", {}, [self.materialise(live)])
        return _Value(source, (), value.layout if attrs.get("keepdims", 1) else None)


def _elementwise(node, op, attrs, ins, live, reader: _Reader) -> _Value:
    """Steps 3 and 4: a per-channel affine, or a scalar step added to the value's function."""
    values, constants, emit, materialise = reader.values, reader.constants, reader.emit, reader.materialise
    if len(live) == 2:  # two tensors: a residual add, a gate, x * f(x) (hard-swish), or an RMSNorm
        a, b = values[live[0]], values[live[1]]
        # A tensor whose pending scale another reader already emitted (an activation's x * f(x) where f's
        # steps began after the scale) is that affine's output, as the other factor's source is.
        a, b = reader.settled(a, b.source), reader.settled(b, a.source)
        if a.source == b.source and op in ("Mul", "Div") and bool(a.statistic) != bool(b.statistic):
            return _rms_norm(node, op, a, b, live, reader)
        if (op == "Mul" and live[0] == live[1] and a.fn and not a.statistic and a.source is not None
                and reader._one_channel(a.source) and _is_affine(list(a.fn))):
            # x * x of a one-channel tensor scaled and shifted by scalars (its affine: _function_ops), the
            # square of an RMSNorm: of that affine's output
            return _Value(materialise(live[0]), (("Mul(|)", lambda x: x * x),), a.layout)
        if op == "Mul" and a == b and a.scale is not None and not a.fn and not a.statistic:
            # x * x of a tensor with a per-channel scale (an RMSNorm's square after a layer scale): the scale
            # is inside the square, so it is an affine of its own, which x's other readers share.
            return _Value(materialise(live[0]), (("Mul(|)", lambda x: x * x),), a.layout)
        if a.source == b.source and (op == "Mul" or op == "Add" and a.scale is None and b.scale is None):
            fa, fb = _compose(a.fn), _compose(b.fn)
            combine = (lambda x: fa(x) * fb(x)) if op == "Mul" else (lambda x: fa(x) + fb(x))
            # A per-channel scale on either factor scales the product: (s f(x)) g(x) = s (f(x) g(x)).
            # (TensorFlow's optimiser moves a BatchNorm's scale after GELU into GELU's erfc factor.)
            scales = [v.scale for v in (a, b) if v.scale is not None]
            scale = None if not scales else (scales[0] if len(scales) == 1 else
                                             (f"{scales[0][0]}*{scales[1][0]}", scales[0][1]))
            return _Value(a.source, ((f"{op}({_steps(a)}|{_steps(b)})", combine),), a.layout, scale=scale)
        kind = {"Add": "add", "Mul": "scale"}.get(op)
        if kind is None:
            raise ValueError(f"no canonical form for {op} of two tensors in {node.name!r}")
        return _Value(emit(kind, {}, [materialise(live[0]), materialise(live[1])]), (), a.layout)
    value = values[live[0]]
    others = [constants[i] for i in ins if i in constants]
    if op == "BatchNormalization" or any(c.size > 1 for c in others):
        # A per-channel scale and shift: an `affine`, which canonical.fold_affines folds into the conv or
        # linear layer it reads when nothing else reads that layer (BatchNorm folding), as the spec's are.
        # A scale alone (Mul, or Div by the constant) waits on the value: a product with a tensor of the
        # same source takes it along, anything else emits it (Reader._materialise).
        channels = int(others[0].size if op == "BatchNormalization" else max(c.size for c in others))
        if op == "Mul" or op == "Div" and ins[0] == live[0]:
            if value.scale is not None:
                value = _Value(materialise(live[0]), (), value.layout, value.pads)
            return _Value(value.source, value.fn, value.layout, value.pads, (node.output[0], channels),
                          value.statistic)
        if op not in ("BatchNormalization", "Add", "Sub"):
            raise ValueError(f"per-channel {op} {node.name!r} is not a scale and shift")
        return _Value(emit("affine", {"channels": channels}, [materialise(live[0])]), (), value.layout, value.pads)
    if value.scale is not None:  # a scalar step after a per-channel scale: on the scaled tensor
        if value.statistic:
            raise ValueError(f"{op} {node.name!r} reads an RMSNorm statistic after its scale: no canonical form")
        value = _Value(materialise(live[0]), (), value.layout, value.pads)
    step = _scalar_step(op, attrs, ins, live[0], constants)
    return _Value(value.source, (*value.fn, (f"{op}{_describe_constants(others, attrs)}", step)), value.layout,
                  value.pads, statistic=value.statistic)


def _rms_norm(node, op, a: _Value, b: _Value, live, reader: _Reader) -> _Value:
    """Step 4b: x * f(m) or x / g(m), m the mean over channels of x^2 (a statistic of the same source), is
    x / sqrt(m + eps) when f(m) = 1 / sqrt(m + eps) (g(m) = sqrt(m + eps)) for an eps > 0: an `rms_norm`
    op with that epsilon (three significant digits, as the spec states it; the exporters store it in
    float32). A per-channel scale pending on either factor (Keras scales the statistic's factor before
    the product) scales the result, which is where the spec has it."""
    x, statistic = (a, b) if b.statistic else (b, a)
    if op == "Div" and x is not a:
        raise ValueError(f"Div {node.name!r} divides an RMSNorm statistic by its tensor: no canonical form")
    if x.fn:
        raise ValueError(f"{op} {node.name!r} normalizes {_steps(x)} of a tensor by the mean square of the tensor")
    m = np.geomspace(1e-4, 1e4, 161)
    factor = _compose(statistic.fn)(m.copy())
    factor = 1.0 / factor if op == "Div" else factor
    # factor = c / sqrt(m + eps): eps from the ratio at the two ends, then c. A c other than 1 is a scale the
    # exporter folded into the factor (an RMSNorm scale of one channel, or of equal values, is a scalar).
    ratio = (factor[0] / factor[-1]) ** 2
    epsilon = (m[-1] - ratio * m[0]) / (ratio - 1.0) if ratio > 1.0 else -1.0
    c = float(factor[0] * np.sqrt(m[0] + epsilon)) if epsilon > 0 else 0.0
    if not (epsilon > 0 and np.allclose(factor, c / np.sqrt(m + epsilon), rtol=1e-5)):
        raise ValueError(f"{op} {node.name!r} scales a tensor by {_steps(statistic)} of its mean square, which "
                         "is not c / sqrt(mean square + eps): no canonical form")
    scales = [v.scale for v in (x, statistic) if v.scale is not None]
    if len(scales) > 1:
        raise ValueError(f"{op} {node.name!r}: per-channel scales on both factors of an RMSNorm")
    if not scales and abs(c - 1.0) > 1e-6:
        scales = [(f"{node.output[0]}/scalar scale", statistic.statistic)]
    source = reader.emit("rms_norm", {"channels": statistic.statistic, "epsilon": float(f"{epsilon:.3g}")},
                         [x.source])
    return _Value(source, (), x.layout, x.pads, scales[0] if scales else None)


def _scalar_step(op, attrs, ins, live, constants):
    c = [float(constants[i].reshape(-1)[0]) if i in constants else None for i in ins]
    left = ins[0] == live
    other = next((v for v in c if v is not None), None)
    if op == "Relu":
        return lambda x: np.maximum(x, 0.0)
    if op == "Clip":
        low = c[1] if len(c) > 1 and c[1] is not None else -np.inf
        high = c[2] if len(c) > 2 and c[2] is not None else np.inf
        return lambda x: np.clip(x, low, high)
    if op == "HardSigmoid":
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)
    if op == "HardSwish":  # ONNX defines it as x * max(0, min(1, x / 6 + 1 / 2)): our hard_swish
        return ACTIVATIONS["hard_swish"].reference
    if op == "Sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if op == "Neg":
        return lambda x: -x
    if op == "Erf":
        return _erf
    if op == "Tanh":
        return np.tanh
    if op == "Sqrt":  # of an RMSNorm's mean square (activations never take one)
        return lambda x: np.sqrt(np.maximum(x, 0.0))
    if op == "Reciprocal":
        return lambda x: np.divide(1.0, x, out=np.full_like(x, np.inf), where=x != 0)
    if op == "Gelu":
        if attrs.get("approximate", "none") in ("tanh", b"tanh"):
            return ACTIVATIONS["gelu_tanh"].reference
        return ACTIVATIONS["gelu"].reference  # ONNX's exact Gelu
    table = {"Add": lambda x: x + other, "Mul": lambda x: x * other, "Max": lambda x: np.maximum(x, other),
             "Min": lambda x: np.minimum(x, other), "Pow": (lambda x: x ** other) if left else (lambda x: other ** x),
             "Sub": (lambda x: x - other) if left else (lambda x: other - x),
             "Div": (lambda x: x / other) if left else (lambda x: other / x)}
    return table[op]


def _describe_constants(others, attrs) -> str:
    parts = [f"{float(c.reshape(-1)[0]):g}" for c in others] + [f"{k}={v}" for k, v in sorted(attrs.items())]
    return f"[{','.join(parts)}]"


def _steps(value: _Value) -> str:
    return "->".join(step[0] for step in value.fn)


def _compose(steps):
    def f(x):
        for _, step in steps:
            x = step(x)
        return x
    return f


def _classify(steps) -> str:
    y = _compose(steps)(PROBE.copy())
    for name, expected in KNOWN.items():
        if np.allclose(y, expected, rtol=1e-5, atol=1e-6):
            return name
    nonzero = PROBE != 0
    ratio = y[nonzero] / PROBE[nonzero]
    if np.allclose(ratio, ratio[0], rtol=1e-6) and np.allclose(y[~nonzero], 0.0):
        return f"scale({ratio[0]:.6g})"
    return "unknown(" + "->".join(step[0] for step in steps) + ")"


def _is_affine(steps) -> bool:
    """Whether the elementwise steps compute a * x + b for constants a and b."""
    y = _compose(steps)(PROBE.copy())
    a = (y[1] - y[0]) / (PROBE[1] - PROBE[0])
    return bool(np.allclose(y, a * PROBE + (y[0] - a * PROBE[0]), rtol=1e-6, atol=1e-6))


def _linear_factor(steps) -> float | None:
    """c if the elementwise steps compute c * x (1.0 for none), else None."""
    if not steps:
        return 1.0
    y = _compose(steps)(PROBE.copy())
    nonzero = PROBE != 0
    ratio = y[nonzero] / PROBE[nonzero]
    if np.allclose(ratio, ratio[0], rtol=1e-6) and np.allclose(y[~nonzero], 0.0):
        return float(ratio[0])
    return None


def _product_macs(op, attrs, in_shapes, out_shape) -> int:
    """Multiply-accumulates of a MatMul / Einsum of two tensors, per image: the output's elements (its
    leading batch axis left out) times the length of the contracted axis."""
    if op == "Einsum":
        equation = attrs["equation"].decode() if isinstance(attrs["equation"], bytes) else attrs["equation"]
        operands, result = equation.replace(" ", "").split("->")
        sizes = {}
        for labels, shape in zip(operands.split(","), in_shapes):
            for label, size in zip(labels, shape or []):
                if size is not None:
                    sizes[label] = size
        contracted = set(operands) - set(result) - {","}
        if not contracted or any(label not in sizes for label in contracted):
            raise ValueError(f"no static contracted axis in Einsum {equation!r}: cannot count its MACs")
        contraction = math.prod(sizes[label] for label in contracted)
    else:
        contraction = (in_shapes[0] or [None])[-1]
    if not out_shape or contraction is None or None in out_shape[1:]:
        raise ValueError(f"no static shape for a {op} of two tensors ({in_shapes} -> {out_shape}): "
                         "cannot count its MACs")
    return math.prod(out_shape[1:]) * contraction


def _conv_pads(attrs, in_shape, out_shape, kernel) -> tuple[int, int, int, int]:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):  # TensorFlow's SAME; LOWER puts the odd pixel before
        strides = attrs.get("strides", [1, 1])
        (top, bottom), (left, right) = (padding_amounts(n, k, s, "same") for n, k, s in zip(in_shape[2:], kernel, strides))
        return (top, left, bottom, right) if auto == "SAME_UPPER" else (bottom, right, top, left)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    return (pads[0], pads[1], pads[2], pads[3])


def _conv1x1_heads_as_linear(ops: list[Op], output_shape) -> None:
    """The layers after pooling stored as 1x1 convolutions (fc_layout: conv1x1, as keras.applications' MobileNet
    and MobileNetV3): a 1x1 conv (stride 1, no padding, one group) on a 1x1 map whose output reaches only
    activations and such convs up to a flattened (batch, classes) output is the linear layer it computes.
    (A squeeze-excite's 1x1 convs on the pooled map reach the scaled map: they stay convs.)"""
    if output_shape is None or len(output_shape) != 2:
        return
    consumers: dict[int, list[int]] = {i: [] for i in range(len(ops))}
    for i, op in enumerate(ops):
        for j in op.inputs:
            consumers[j].append(i)
    head: set[int] = set()  # ops whose every path to the output is activations and 1x1 convs on a 1x1 map
    for i in reversed(range(len(ops))):  # consumers come after their inputs
        op = ops[i]
        pointwise = (op.kind == "conv" and op.positions == 1 and op.attrs["k"] == 1 and op.attrs["s"] == 1
                     and op.attrs["group"] == 1 and not any(op.attrs["pads"]))
        if (pointwise or op.kind == "act") and all(j in head for j in consumers[i]):
            head.add(i)
            if pointwise:
                op.kind, op.attrs = "linear", {"in": op.attrs["in"], "out": op.attrs["out"]}


def _fold_pool_sums(ops: list[Op]) -> None:
    """ReduceSum then a division by H * W is a global average pool (jax2onnx writes means that way)."""
    for op in ops:
        if op.kind == "act" and op.attrs["fn"].startswith("scale(") and op.inputs and ops[op.inputs[0]].kind == "pool_sum":
            ops[op.inputs[0]].kind = "pool"
            op.kind, op.attrs = "identity", {}


def _evaluate(node, inputs):
    """Fold a node whose inputs are all constant, with ONNX's own reference implementation."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    folded = onnx.helper.make_node(node.op_type, names, ["out"], domain=node.domain, **{
        a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    feeds = {name: value for name, value in zip(names, inputs) if name}
    return ReferenceEvaluator(folded).run(None, feeds)[0]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _resize_attrs(spatial: dict) -> dict:
    """A pending resampling's canonical attributes: per axis, PyTorch's nearest picks or bilinear blend
    (spec/resolve.py resampling_matrix; the weights within float32 rounding), else `unknown`; an axis kept
    at its size (an identity map) is either mode's."""
    modes, size = set(), {}
    for axis, matrix in spatial.items():
        out, n = matrix.shape
        size[axis] = out
        if out == n and np.array_equal(matrix, np.eye(n)):
            continue  # an axis kept at its size: either mode's
        nearest, bilinear = (np.array(resampling_matrix(n, out, mode)) for mode in ("nearest", "bilinear"))
        modes.add("nearest" if np.array_equal(matrix, nearest) else
                  "bilinear" if np.allclose(matrix, bilinear, rtol=0.0, atol=1e-6) else "unknown")
    mode = modes.pop() if len(modes) == 1 else "unknown" if modes else "identity"
    return {"mode": mode, "size": (size.get("H"), size.get("W"))}


def _regrouped_axis(shape, grouped) -> int | None:
    """The axis of a 4-D `shape` that a reshape of it to `grouped` (..., n, k) left alone as its next-to-last
    axis, the axes before it merged into the leading ones and those after it into the last (a size None, the
    dynamic batch, in either product makes it None); else None."""
    def product(sizes):
        return None if None in sizes else int(np.prod(sizes, dtype=np.int64))

    if not grouped or len(grouped) < 2:
        return None
    *leading, n, k = grouped
    return next((axis for axis in range(len(shape)) if shape[axis] == n and product(shape[:axis]) == product(leading)
                 and product(shape[axis + 1:]) == k), None)


def _moved_ones(layout, before, after):
    """The axis order after a Reshape that moves only axes of size 1, or none (tf2onnx writes an NHWC <-> NCHW
    Transpose of a map with one channel, or one pixel, as a Reshape): the other order of the two, where the
    axes of other sizes keep their places in it; the same order, where the shape is unchanged; else None (a
    real reshape)."""
    if layout not in (("N", "C", "H", "W"), ("N", "H", "W", "C")) or not before or not after or len(after) != 4:
        return None
    other = ("N", "H", "W", "C") if layout == ("N", "C", "H", "W") else ("N", "C", "H", "W")
    size = dict(zip(layout[1:], before[1:]))
    if None in size.values():
        return None
    # Moving C past H and W keeps the data in place only where C, or both H and W, are 1.
    if [size[a] for a in other[1:]] == list(after[1:]) and (size["C"] == 1 or size["H"] == size["W"] == 1):
        return other
    # A Reshape to its own shape moves nothing. tf2onnx writes one where a one-channel map's NHWC <-> NCHW pair
    # cancels, in some runs only: its graph of the same model varies from run to run (measured: 1 in 20).
    return layout if list(before[1:]) == list(after[1:]) else None
