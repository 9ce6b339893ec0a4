"""The canonical form of a network graph, shared by an exported ONNX graph and the spec, and their comparison.

Two builders produce it: conformance/onnx/from_onnx.py canonicalises an exported graph (the three
exporters write the same network differently), conformance/onnx/from_spec.py builds it from the spec's
layer list (spec/resolve.py `describe`). The canonical ops: conv, linear, global average pool,
activation, add, scale, affine, rms_norm, matmul, softmax, and the fusion neck's resize, avg_pool and
concat, listed in depth order. The comparison reports the first
canonical op where two graphs differ, with both sides.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Op:
    kind: str  # conv, linear, pool, act, add, scale, pool_sum, affine, rms_norm, matmul, softmax, resize, avg_pool,
    # concat
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


AFFINE_HOSTS = ("conv", "linear", "affine")


def fold_affines(ops: list[Op], outputs: tuple[int, ...] = ()) -> None:
    """Fold each per-channel `affine` (a BatchNorm, a layer scale, a per-channel Mul or Add) into the conv,
    linear or affine op it reads, when nothing else reads that op: BatchNorm folding absorbs it into the
    weights, and no exported graph can tell the two apart. Where the op's output is read elsewhere too (a
    residual add that reads a block's input ahead of the attention block's BatchNorm), folding would
    change what the other reader sees: the affine stays an op of its own. Both builders call this, so
    the spec and an export fold by one rule. `outputs`: ops that are the graph's outputs (a use each).
    Folded affines become identities (`finalize` drops them)."""
    uses = Counter(j for op in ops for j in op.inputs)
    uses.update(outputs)
    alias: dict[int, int] = {}
    for i, op in enumerate(ops):
        op.inputs = [alias.get(j, j) for j in op.inputs]
        if op.kind != "affine" or len(op.inputs) != 1:
            continue
        (host,) = op.inputs
        if ops[host].kind in AFFINE_HOSTS and uses[host] == 1:
            ops[host].folded = True
            op.kind, op.attrs = "identity", {}
            alias[i] = host
            uses[host] = uses[i]  # op i's readers now read the host


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


def total_params(ops: list[Op]) -> int:
    total = 0
    for op in ops:
        if op.kind == "conv":
            total += op.attrs["out"] * op.attrs["in"] // op.attrs["group"] * op.attrs["k"] ** 2 + op.attrs["out"]
        elif op.kind == "linear":
            total += op.attrs["in"] * op.attrs["out"] + op.attrs["out"]
        elif op.kind == "affine":
            total += 2 * op.attrs["channels"]
    return total


def total_macs(ops: list[Op]) -> int:
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

