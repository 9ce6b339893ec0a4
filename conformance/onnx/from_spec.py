"""The canonical graph the spec describes (conformance/onnx/canonical.py), built from `describe()`'s layer
list: every decision (activations, padding amounts, which layer reads which, squeeze-excite gates,
residual adds) is the resolver's, read from the layers, not decided again here.

An RMSNorm is an `rms_norm` op (x / sqrt(mean over channels of x^2 + eps)), then its scale, an `affine`.
A BatchNorm or a layer scale is a per-channel `affine`, folded by the canonical rule
(canonical.fold_affines, the export's rule too): into the conv, linear or affine op it reads when
nothing else reads that op (as an exporter's optimiser may fold it). So a block's BatchNorm folds into its
conv, and the attention block's BatchNorm on its input folds into the previous block's last conv when
that block adds no residual and the attention block adds none (nothing else reads it); after a residual
add, or when its own residual add reads the same input, it is an `affine` of its own. An attention layer
is softmax(q k^T / sqrt(key_dim)) v: two products and a softmax. The fusion neck's resamplings are `resize`
(mode nearest or bilinear, as PyTorch's, and the output size) and `avg_pool` (its window), its join a
`concat` over channels.
"""

from __future__ import annotations

from conformance.onnx.canonical import Canonical, Op, finalize, fold_affines, total_macs, total_params

CONVS = ("conv", "depthwise_conv")


def from_spec(desc) -> Canonical:
    """The canonical graph of the variant, flavor and resolution of `desc` (a spec.resolve.Description)."""
    ops: list[Op] = []
    layers = {layer.name: layer for layer in desc.layers}
    produced: dict[str, int | None] = {}  # layer name -> the op that yields its output
    block_inputs: dict[str, int | None] = {}
    current: int | None = None  # the previous layer's output (None: the image)

    def emit(kind, attrs, inputs) -> int:
        ops.append(Op(kind, attrs, [i for i in inputs if i is not None]))
        return len(ops) - 1

    for layer in desc.layers:
        block_inputs.setdefault(layer.block, current)
        x = produced[layer.inputs[0]] if layer.inputs else current
        if layer.pooled:
            x = emit("pool", {}, [x])
        if layer.kind in CONVS:
            y = emit("conv", {"k": layer.kernel, "s": layer.stride, "pads": layer.pads, "group": layer.groups,
                              "in": layer.in_channels, "out": layer.out_channels}, [x])
            ops[y].positions = layer.out_shape[1] * layer.out_shape[2]
            ops[y].weight_size = layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel ** 2
        elif layer.kind == "linear":
            y = emit("linear", {"in": layer.in_channels, "out": layer.out_channels}, [x])
        elif layer.kind in ("batch_norm", "layer_scale"):  # per-channel: fold_affines folds it, or keeps it
            y = emit("affine", {"channels": layer.out_channels}, [x])
        elif layer.kind == "rms_norm":  # x / sqrt(mean over channels of x^2 + eps), then its scale
            epsilon = float(f"{desc.architecture.norm_epsilon:.3g}")
            y = emit("rms_norm", {"channels": layer.out_channels, "epsilon": epsilon}, [x])
            y = emit("affine", {"channels": layer.out_channels}, [y])
        elif layer.kind == "attention":
            y = _attention(emit, ops, layer, layers, [produced[name] for name in layer.inputs])
        elif layer.kind == "pool":
            y = emit("pool", {}, [x])
        elif layer.kind in ("upsample_nearest", "resize_bilinear"):  # the fusion neck's, PyTorch's rules
            mode = "nearest" if layer.kind == "upsample_nearest" else "bilinear"
            y = emit("resize", {"mode": mode, "size": tuple(layer.out_shape[1:])}, [x])
        elif layer.kind == "avg_pool":
            y = emit("avg_pool", {"window": layer.window}, [x])
        elif layer.kind == "concat":  # of one map: that map
            parts = [produced[name] for name in layer.inputs]
            y = emit("concat", {"channels": layer.out_channels}, parts) if len(parts) > 1 else parts[0]
        else:
            raise ValueError(f"no canonical form for {layer.kind} layer {layer.name!r}")
        if layer.activation != "identity":
            y = emit("act", {"fn": layer.activation}, [y])
        if layer.gates:
            y = emit("scale", {}, [produced[layer.gates], y])
        if layer.residual:
            y = emit("add", {}, [block_inputs[layer.block], y])
        produced[layer.name] = current = y
    fold_affines(ops, outputs=(current,))
    ops = finalize(ops)
    return Canonical(ops, total_params(ops), total_macs(ops))


def _attention(emit, ops: list[Op], layer, layers: dict, inputs: list[int | None]) -> int:
    """matmul(q, k, scale=1/sqrt(key_dim)) -> softmax -> matmul(weights, v)."""
    query, key, value = inputs
    heads = layer.groups
    key_dim, value_dim = layer.in_channels // heads, layer.out_channels // heads
    key_shape = layers[layer.inputs[1]].out_shape
    products = heads * layer.out_shape[1] * layer.out_shape[2] * key_shape[1] * key_shape[2]  # heads * L * S
    scores = emit("matmul", {"scale": float(f"{key_dim ** -0.5:.5g}")}, [query, key])
    ops[scores].macs = products * key_dim
    y = emit("matmul", {"scale": 1.0}, [emit("softmax", {}, [scores]), value])
    ops[y].macs = products * value_dim
    return y
