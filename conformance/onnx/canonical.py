"""The canonical form of an exported graph, so that the PyTorch, Keras and Flax exports can be compared.

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
  3. fold BatchNormalization and per-channel constant Mul/Add/Sub/Div into the convolution or linear
     layer that produces their input (what BatchNorm folding does to the weights; a layer scale folds
     the same way); where no such layer precedes them (the attention block's BatchNorm on its input)
     they are one canonical `affine` op (a per-channel scale and shift);
  4. compose the remaining elementwise ops with scalar constants into one function of one tensor and
     name it by its values on a probe grid: relu, relu6, hard_sigmoid, hard_swish, gelu (exact, erf),
     or `unknown` (HardSigmoid with ONNX's default alpha 0.2 is not relu6(x + 3) / 6 and stays apart);
  5. attention: a MatMul (or two-operand Einsum) of two computed tensors is a canonical `matmul`; scalar
     scale steps on its operands, and on the input of the Softmax that reads it, fold into its `scale`
     attribute, so softmax(q k^T / sqrt(d)) v reads matmul(scale=1/sqrt(d)), softmax, matmul(scale=1)
     wherever the exporter put the factor; its MACs are the product's (batch excluded), from ONNX
     shape inference;
  6. list the canonical ops (conv, linear, global average pool, activation, add, scale, affine, matmul,
     softmax) in depth order.
The comparison reports the first canonical op where two graphs differ, with both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TRANSPARENT = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Expand",
               "Tile"}  # Expand and Tile: a key / value head repeated for every query head (a broadcast)
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Clip", "Relu", "HardSigmoid", "HardSwish", "Sigmoid",
               "BatchNormalization", "Neg", "Erf", "Gelu"}
SHAPE_OPS = {"Shape", "Gather", "Concat", "Slice", "ConstantOfShape", "Range"}
_erf = np.vectorize(math.erf, otypes=[np.float64])
PROBE = np.concatenate([np.linspace(-12.0, 12.0, 2401), [-3.0, 0.0, 3.0, 6.0]])
KNOWN = {
    "identity": PROBE,
    "relu": np.maximum(PROBE, 0.0),
    "relu6": np.clip(PROBE, 0.0, 6.0),
    "hard_sigmoid": np.clip(PROBE + 3.0, 0.0, 6.0) / 6.0,
    "hard_swish": PROBE * np.clip(PROBE + 3.0, 0.0, 6.0) / 6.0,
    "gelu": 0.5 * PROBE * (1.0 + _erf(PROBE / np.sqrt(2.0))),
}


@dataclass
class Op:
    kind: str  # conv, linear, pool, act, add, scale, pool_sum, affine, matmul, softmax
    attrs: dict = field(default_factory=dict)
    inputs: list[int] = field(default_factory=list)
    depth: int = 0
    folded: bool = False  # a BatchNorm (or per-channel affine) was folded into this conv / linear
    positions: int | None = None  # output positions of a conv (for MACs)
    weight_size: int = 0
    macs: int = 0  # of a matmul of two computed tensors (attention)

    def signature(self) -> str:
        return f"{self.kind}({', '.join(f'{k}={v}' for k, v in sorted(self.attrs.items()))})"


@dataclass
class Canonical:
    ops: list[Op]
    params: int  # canonical trainable params: BatchNorm folded into a bias per output channel
    macs: int

    def sequence(self) -> list[str]:
        return [op.signature() for op in sorted(self.ops, key=lambda o: (o.depth, o.signature()))]

    def summary(self) -> dict:
        """What the report stores and the checks compare: the op sequence, params, MACs."""
        return {"sequence": self.sequence(), "params": self.params, "macs": self.macs, "ops": self.histogram()}

    def histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            name = op.attrs.get("fn", op.kind) if op.kind == "act" else op.kind
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))


@dataclass
class _Value:
    """A tensor of the graph as seen from the canonical ops: produced by op `source` (None: the input),
    then through `fn` (elementwise, scalar constants), with the axis order `layout` and pending pads."""

    source: int | None
    fn: tuple = ()  # elementwise steps since `source`: (name, function)
    layout: tuple[str, ...] | None = ("N", "C", "H", "W")
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right, from Pad nodes


def canonicalize(model, input_layout: str) -> Canonical:
    import onnx
    from onnx import inliner, numpy_helper, shape_inference

    if model.functions:  # (re-serialising a large model costs seconds: only when there is something to inline)
        model = inliner.inline_local_functions(model)
    model = shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*graph.value_info, *graph.input, *graph.output)}
    ops: list[Op] = []
    values: dict[str, _Value] = {}
    shape_values: set[str] = set()
    act_cache: dict[tuple, int] = {}
    (image,) = [i for i in graph.input if i.name not in constants]
    values[image.name] = _Value(None, (), tuple(input_layout))

    def emit(kind, attrs, inputs) -> int:
        ops.append(Op(kind, attrs, [i for i in inputs if i is not None]))
        return len(ops) - 1

    def materialise(name: str) -> int | None:
        """The canonical op that yields this tensor, emitting its activation if it has one."""
        value = values[name]
        if not value.fn:
            return value.source
        key = (value.source, tuple(step[0] for step in value.fn))
        if key not in act_cache:
            act_cache[key] = emit("act", {"fn": _classify(value.fn)}, [value.source])
        return act_cache[key]

    for node in graph.node:
        op, ins, outs = node.op_type, list(node.input), list(node.output)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op == "Constant":
            constants[outs[0]] = numpy_helper.to_array(attrs["value"])
            continue
        if all((i in constants) or i == "" for i in ins) and ins:
            constants[outs[0]] = _evaluate(node, [constants.get(i) for i in ins])
            continue
        live = [i for i in ins if i in values]
        if op == "Shape" or (op in SHAPE_OPS and not live) or (not live and any(i in shape_values for i in ins)):
            shape_values.update(outs)  # shape arithmetic (the dynamic batch), not data
            continue
        if op == "Expand" and ins[0] in constants:
            constants[outs[0]] = constants[ins[0]]  # a constant broadcast to the batch: still that constant
            continue
        if op in TRANSPARENT:
            value = values[live[0]]
            layout = value.layout
            if op == "Transpose" and layout is not None:
                layout = tuple(layout[p] for p in attrs["perm"])
            elif op != "Transpose":
                layout = layout if op in ("Identity", "Dropout", "Cast", "Expand", "Tile") else None
            values[outs[0]] = _Value(value.source, value.fn, layout, value.pads)
            continue
        if op == "Pad":
            value = values[live[0]]
            amounts = constants[ins[1]].astype(int).tolist()
            rank = len(amounts) // 2
            axis = {name: i for i, name in enumerate(value.layout)}
            top, left = amounts[axis["H"]], amounts[axis["W"]]
            bottom, right = amounts[rank + axis["H"]], amounts[rank + axis["W"]]
            p = value.pads
            values[outs[0]] = _Value(value.source, value.fn, value.layout,
                                     (p[0] + top, p[1] + left, p[2] + bottom, p[3] + right))
            continue
        if op == "Conv":
            value = values[live[0]]
            weight = constants[ins[1]]
            out_ch, in_per_group, kh, kw = weight.shape
            group = int(attrs.get("group", 1))
            pads = _conv_pads(attrs, shapes.get(live[0]), shapes.get(outs[0]), (kh, kw))
            pads = tuple(a + b for a, b in zip(pads, value.pads))
            source = emit("conv", {"k": kh, "s": tuple(attrs.get("strides", [1, 1]))[0], "pads": pads, "group": group,
                                   "in": in_per_group * group, "out": out_ch}, [materialise(live[0])])
            out_shape = shapes.get(outs[0]) or []
            if len(out_shape) == 4 and None not in out_shape[2:]:
                ops[source].positions = out_shape[2] * out_shape[3]
            ops[source].weight_size = int(weight.size)
            values[outs[0]] = _Value(source, (), ("N", "C", "H", "W"))
            continue
        if op in ("MatMul", "Einsum") and len(live) == 2:  # a product of two computed tensors: attention
            factors, inputs = [], []
            for name in live:
                factor = _linear_factor(values[name].fn)
                factors.append(1.0 if factor is None else factor)
                inputs.append(values[name].source if factor is not None else materialise(name))
            source = emit("matmul", {"scale": float(np.prod(factors))}, inputs)
            ops[source].macs = _product_macs(op, attrs, [shapes.get(name) for name in live], shapes.get(outs[0]))
            values[outs[0]] = _Value(source, (), None)
            continue
        if op == "Softmax":
            value = values[live[0]]
            factor = _linear_factor(value.fn)
            if value.source is None or ops[value.source].kind != "matmul" or factor is None:
                raise ValueError(f"Softmax {node.name!r} does not read a product of two tensors (attention scores)")
            ops[value.source].attrs["scale"] *= factor  # softmax(c * q k^T): c is the product's scale
            values[outs[0]] = _Value(emit("softmax", {}, [value.source]), (), None)
            continue
        if op in ("Gemm", "MatMul"):
            weight = constants[ins[1]]
            transposed = op == "Gemm" and attrs.get("transB", 0)
            in_f, out_f = (weight.shape[1], weight.shape[0]) if transposed else weight.shape
            source = emit("linear", {"in": int(in_f), "out": int(out_f)}, [materialise(live[0])])
            values[outs[0]] = _Value(source, (), None)
            continue
        if op in ("GlobalAveragePool", "ReduceMean", "ReduceSum"):
            value = values[live[0]]
            kind = "pool_sum" if op == "ReduceSum" else "pool"
            source = emit(kind, {}, [materialise(live[0])])
            values[outs[0]] = _Value(source, (), value.layout if attrs.get("keepdims", 1) else None)
            continue
        if op in ELEMENTWISE:
            values[outs[0]] = _elementwise(node, op, attrs, ins, live, values, constants, ops, emit, materialise)
            continue
        raise ValueError(f"no canonical form for {op} node {node.name!r}")
    (output,) = graph.output
    materialise(output.name)
    for op in ops:
        if op.kind == "matmul":  # as the spec states it, whatever float32 rounding the exporter's factors had
            op.attrs["scale"] = float(f"{op.attrs['scale']:.5g}")
    _fold_pool_sums(ops)
    ops = finalize(ops)
    return Canonical(ops, _params(ops), _macs(ops))


def _elementwise(node, op, attrs, ins, live, values, constants, ops, emit, materialise) -> _Value:
    if len(live) == 2:  # two tensors: a residual add, a gate, or x * f(x) (hard-swish)
        a, b = values[live[0]], values[live[1]]
        if a.source == b.source and op in ("Mul", "Add"):
            fa, fb = _compose(a.fn), _compose(b.fn)
            combine = (lambda x: fa(x) * fb(x)) if op == "Mul" else (lambda x: fa(x) + fb(x))
            return _Value(a.source, ((f"{op}({_steps(a)}|{_steps(b)})", combine),), a.layout)
        kind = {"Add": "add", "Mul": "scale"}.get(op)
        if kind is None:
            raise ValueError(f"no canonical form for {op} of two tensors in {node.name!r}")
        return _Value(emit(kind, {}, [materialise(live[0]), materialise(live[1])]), (), a.layout)
    value = values[live[0]]
    others = [constants[i] for i in ins if i in constants]
    if op == "BatchNormalization" or any(c.size > 1 for c in others):
        source = ops[value.source] if value.source is not None else None
        if not value.fn and source is not None and source.kind in ("conv", "linear", "affine"):
            source.folded = True  # BatchNorm or a per-channel affine: folded into the weights
            return _Value(value.source, (), value.layout, value.pads)
        if op not in ("BatchNormalization", "Mul", "Add", "Sub", "Div"):
            raise ValueError(f"per-channel {op} {node.name!r} does not follow a convolution or linear layer")
        # A BatchNorm on a block's input (not after a conv): a per-channel scale and shift of its own.
        channels = int(others[0].size if op == "BatchNormalization" else max(c.size for c in others))
        return _Value(emit("affine", {"channels": channels}, [materialise(live[0])]), (), value.layout, value.pads)
    step = _scalar_step(op, attrs, ins, live[0], constants)
    return _Value(value.source, (*value.fn, (f"{op}{_describe_constants(others, attrs)}", step)), value.layout,
                  value.pads)


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
    if op == "HardSwish":
        return lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if op == "Sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if op == "Neg":
        return lambda x: -x
    if op == "Erf":
        return _erf
    if op == "Gelu":
        if attrs.get("approximate", "none") in ("tanh", b"tanh"):
            return lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
        return lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    table = {"Add": lambda x: x + other, "Mul": lambda x: x * other, "Max": lambda x: np.maximum(x, other),
             "Min": lambda x: np.minimum(x, other),
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
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        strides = attrs.get("strides", [1, 1])
        totals = [max((o - 1) * s + k - n, 0) for o, s, k, n in zip(out_shape[2:], strides, kernel, in_shape[2:])]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        before, after = (small, large) if auto == "SAME_UPPER" else (large, small)
        return (before[0], before[1], after[0], after[1])
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    return (pads[0], pads[1], pads[2], pads[3])


def _fold_pool_sums(ops: list[Op]) -> None:
    """ReduceSum then a division by H * W is a global average pool (jax2onnx writes means that way)."""
    for op in ops:
        if op.kind == "act" and op.attrs["fn"].startswith("scale(") and op.inputs and ops[op.inputs[0]].kind == "pool_sum":
            ops[op.inputs[0]].kind = "pool"
            op.kind, op.attrs = "identity", {}


def finalize(ops: list[Op]) -> list[Op]:
    """Drop identities (rewiring their consumers), then set each op's depth: its longest path from the input."""
    alias: dict[int, int] = {}
    for i, op in enumerate(ops):
        op.inputs = [alias.get(j, j) for j in op.inputs]
        if op.kind == "identity":
            alias[i] = op.inputs[0]
    keep = [i for i, op in enumerate(ops) if op.kind != "identity"]
    index = {old: new for new, old in enumerate(keep)}
    result = [ops[i] for i in keep]
    for op in result:
        op.inputs = [index[j] for j in op.inputs]
        op.depth = 1 + max((result[j].depth for j in op.inputs), default=0)
    return result


def _params(ops: list[Op]) -> int:
    total = 0
    for op in ops:
        if op.kind == "conv":
            total += op.attrs["out"] * op.attrs["in"] // op.attrs["group"] * op.attrs["k"] ** 2 + op.attrs["out"]
        elif op.kind == "linear":
            total += op.attrs["in"] * op.attrs["out"] + op.attrs["out"]
        elif op.kind == "affine":
            total += 2 * op.attrs["channels"]
    return total


def _macs(ops: list[Op]) -> int:
    total = 0
    for op in ops:
        if op.kind == "conv":
            if op.positions is None:
                raise ValueError(f"no output shape for {op.signature()}: cannot count its MACs")
            total += op.positions * op.weight_size
        elif op.kind == "linear":
            total += op.attrs["in"] * op.attrs["out"]
        elif op.kind == "matmul":
            total += op.macs
    return total


def _evaluate(node, inputs):
    """Fold a node whose inputs are all constant, with ONNX's own reference implementation."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    folded = onnx.helper.make_node(node.op_type, names, ["out"], domain=node.domain, **{
        a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    feeds = {name: value for name, value in zip(names, inputs) if name}
    return ReferenceEvaluator(folded).run(None, feeds)[0]


def compare(a: Canonical | dict, b: Canonical | dict, names=("a", "b")) -> str | None:
    """None if equal; else the first differing canonical op with both sides (or the totals).
    Takes canonical graphs or their summaries."""
    a, b = (x.summary() if isinstance(x, Canonical) else x for x in (a, b))
    sa, sb = a["sequence"], b["sequence"]
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x != y:
            return f"op {i}: {names[0]} {x} vs {names[1]} {y}"
    if len(sa) != len(sb):
        return f"{names[0]} has {len(sa)} canonical ops, {names[1]} {len(sb)}"
    for total in ("params", "macs"):
        if a[total] != b[total]:
            return f"{total}: {names[0]} {a[total]:,} vs {names[1]} {b[total]:,}"
    return None


def from_spec(desc) -> Canonical:
    """The canonical graph the spec describes, for the variant, flavor and resolution of `desc`."""
    from spec.resolve import (
        ConvBlock,
        DepthwiseSeparable,
        FusedInvertedBottleneck,
        MobileMQA,
        UniversalInvertedBottleneck,
        conv_output_size,
        padding_amounts,
    )

    arch, padding = desc.architecture, desc.flavor_values.padding
    ops: list[Op] = []
    size = list(desc.resolution)

    def emit(kind, attrs, inputs) -> int:
        ops.append(Op(kind, attrs, [i for i in inputs if i is not None]))
        return len(ops) - 1

    def conv(x, cin, cout, k, s, activation, groups=1, spatial=True):
        pads = (0, 0, 0, 0)
        if spatial and k > 1:
            (top, bottom), (left, right) = (padding_amounts(n, k, s, padding) for n in size)
            pads = (top, left, bottom, right)
        op = emit("conv", {"k": k, "s": s, "pads": pads, "group": groups, "in": cin, "out": cout}, [x])
        if spatial:
            size[:] = [conv_output_size(n, k, s, padding) for n in size]
            ops[op].positions = size[0] * size[1]
        else:
            ops[op].positions = 1
        ops[op].weight_size = cout * (cin // groups) * k * k
        return emit("act", {"fn": activation}, [op]) if activation != "identity" else op

    def attention(x, block) -> int:
        """Mobile MQA: BatchNorm on the input (an affine), query / key / value 1x1 convs (keys and values
        from a strided depthwise conv first), softmax(q k^T / sqrt(key_dim)) v, 1x1 output conv."""
        c, image = block.in_channels, list(size)
        x = emit("affine", {"channels": c}, [x])
        query = conv(x, c, block.heads * block.key_dim, 1, 1, "identity")
        key_value = []
        for width in (block.key_dim, block.value_dim):
            size[:] = image
            z = x
            if block.kv_stride > 1:
                z = conv(z, c, c, block.kv_kernel, block.kv_stride, "identity", c)
            key_value.append(conv(z, c, width, 1, 1, "identity"))
        products = block.heads * image[0] * image[1] * size[0] * size[1]  # heads * queries * keys
        size[:] = image
        scores = emit("matmul", {"scale": float(f"{block.key_dim ** -0.5:.5g}")}, [query, key_value[0]])
        ops[scores].macs = products * block.key_dim
        weights = emit("softmax", {}, [scores])
        y = emit("matmul", {"scale": 1.0}, [weights, key_value[1]])
        ops[y].macs = products * block.value_dim
        return conv(y, block.heads * block.value_dim, block.out, 1, 1, "identity")

    x = conv(None, 3, arch.stem.out, arch.stem.kernel, arch.stem.stride, arch.stem.activation)
    for block in arch.blocks:  # a layer scale folds into the conv before it, like a BatchNorm
        if isinstance(block, DepthwiseSeparable):
            x = conv(x, block.in_channels, block.in_channels, block.kernel, block.stride, block.activation,
                     block.in_channels)
            x = conv(x, block.in_channels, block.out, 1, 1, block.activation)
            continue
        if isinstance(block, ConvBlock):
            x = conv(x, block.in_channels, block.out, block.kernel, block.stride, block.activation)
            continue
        shortcut, y = x, x
        if isinstance(block, MobileMQA):
            y = attention(y, block)
        elif isinstance(block, FusedInvertedBottleneck):
            if block.has_expand:
                y = conv(y, block.in_channels, block.expanded, block.kernel, block.stride, block.activation)
            y = conv(y, block.expanded, block.out, 1, 1, "identity")
        elif isinstance(block, UniversalInvertedBottleneck):
            if block.start_kernel:
                y = conv(y, block.in_channels, block.in_channels, block.start_kernel, block.start_stride, "identity",
                         block.in_channels)
            if block.has_expand:
                y = conv(y, block.in_channels, block.expanded, 1, 1, block.activation)
            if block.kernel:
                y = conv(y, block.expanded, block.expanded, block.kernel, block.stride, block.activation,
                         block.expanded)
            y = conv(y, block.expanded, block.out, 1, 1, "identity")
        else:  # inverted residual
            if block.has_expand:
                y = conv(y, block.in_channels, block.expanded, 1, 1, block.activation)
            y = conv(y, block.expanded, block.expanded, block.kernel, block.stride, block.activation, block.expanded)
            if block.squeeze:
                gate = emit("pool", {}, [y])
                gate = conv(gate, block.expanded, block.squeeze, 1, 1, arch.squeeze_excite_activation, spatial=False)
                gate = conv(gate, block.squeeze, block.expanded, 1, 1, "hard_sigmoid", spatial=False)
                y = emit("scale", {}, [y, gate])
            y = conv(y, block.expanded, block.out, 1, 1, "identity")
        x = emit("add", {}, [shortcut, y]) if block.residual else y
    features = arch.blocks[-1].out
    if arch.last_conv:
        x = conv(x, features, arch.last_conv.out, 1, 1, arch.last_conv.activation)
        features = arch.last_conv.out
    x = emit("pool", {}, [x])
    if arch.fc:  # with or without a BatchNorm (folded, as any exporter's optimiser may)
        x = emit("linear", {"in": features, "out": arch.fc.out}, [x])
        x = emit("act", {"fn": arch.fc.activation}, [x]) if arch.fc.activation != "identity" else x
        features = arch.fc.out
    emit("linear", {"in": features, "out": desc.num_classes}, [x])
    ops = finalize(ops)
    return Canonical(ops, _params(ops), _macs(ops))

