"""Flax NNX: generated/flax_nnx.

Layouts: nnx.Conv kernel (kh, kw, in / groups, out) with feature_group_count, nnx.Linear kernel
(in, out), nnx.BatchNorm scale / bias (Param) and mean / var (BatchStat). State paths joined with "."
are the canonical layer names.
"""

from __future__ import annotations

import importlib

import numpy as np

from conformance.frameworks.protocol import MacCount
from conformance.weights import WeightError

BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
NAMES = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}  # conv / linear, and LayerScale


class Adapter:
    run_key = "flax"
    device = "cpu"  # on a GPU run JAX uses the GPU it sees

    def __init__(self):
        import jax
        from flax import nnx

        self.jax, self.nnx = jax, nnx
        # One jitted function for every model: the model is an argument (its graph the static part, its
        # weights the traced part), so each architecture compiles once and loading new weights needs no
        # recompile.
        self._forward_blocks = nnx.jit(lambda m, x: m.forward_blocks(x))

    def build(self, family: str, variant: str, flavor: str, num_classes: int, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False):
        """abstract: shapes only (nnx.eval_shape), for a model whose every weight is loaded next;
        an eager NNX init costs seconds per variant on this machine."""
        if dtype != "float32":
            raise ValueError("the Flax adapter runs float32 only; the float64 reference is PyTorch")
        module = importlib.import_module(f"generated.flax_nnx.{family}")
        factory = module.VARIANTS[variant]
        if abstract:
            model = self.nnx.eval_shape(lambda: factory(num_classes=num_classes, flavor=flavor, rngs=self.nnx.Rngs(0)))
            self._concrete_rng_state(model)
        else:
            model = factory(num_classes=num_classes, flavor=flavor, rngs=self.nnx.Rngs(0))
        model.eval()
        return model

    def _concrete_rng_state(self, model) -> None:
        """eval_shape leaves the dropout's RNG key and counter abstract; give them values (unused in eval)."""
        jax, nnx = self.jax, self.nnx
        state = nnx.state(model, nnx.RngState)
        for _, variable in state.flat_state():
            if jax.dtypes.issubdtype(variable.dtype, jax.dtypes.prng_key):
                variable.set_value(jax.random.key(0))
            else:
                variable.set_value(jax.numpy.zeros(variable.shape, variable.dtype))
        nnx.update(model, state)

    def state(self, model):
        """Parameters and BatchNorm statistics; not the dropout's RNG state."""
        return self.nnx.state(model, self.nnx.Any(self.nnx.Param, self.nnx.BatchStat))

    def _variables(self, model, state=None):
        """(canonical tensor name, flax variable name, variable) for every variable of the model."""
        for path, variable in (state if state is not None else self.state(model)).flat_state():
            layer, leaf = ".".join(str(p) for p in path[:-1]), path[-1]
            is_bn = layer.endswith(".bn") or layer == "bn"  # nnx.BatchNorm: scale, bias, mean, var
            yield f"{layer}.{BN_NAMES[leaf] if is_bn else NAMES[leaf]}", leaf, variable

    def tensors(self, model) -> dict[str, np.ndarray]:
        out = {}
        for name, leaf, variable in self._variables(model):
            value = np.asarray(variable.get_value())
            out[name] = _kernel_to_neutral(value) if leaf == "kernel" else value
        return out

    def shapes(self, model) -> dict[str, tuple[int, ...]]:
        return {name: (_kernel_to_neutral(np.broadcast_to(np.float32(0), variable.shape)).shape if leaf == "kernel"
                       else tuple(variable.shape))
                for name, leaf, variable in self._variables(model)}

    def trainable(self, model) -> dict[str, int]:
        return {name: int(np.prod(variable.shape)) for name, _, variable in self._variables(model)
                if isinstance(variable, self.nnx.Param)}

    def load(self, model, tensors: dict[str, np.ndarray]) -> None:
        import jax.numpy as jnp

        state = self.state(model)
        for name, leaf, variable in self._variables(model, state):
            value = np.asarray(tensors[name], dtype=np.float32)
            value = _kernel_from_neutral(value) if leaf == "kernel" else value
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightError(f"{name}: shape {value.shape} in Flax layout, the model has {tuple(variable.shape)}")
            variable.set_value(jnp.asarray(value))
        self.nnx.update(model, state)

    def forward_blocks(self, model, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._forward_blocks(model, images_nchw.transpose(0, 2, 3, 1))
        return {name: _to_nchw(np.asarray(value)) for name, value in outputs.items()}

    def logits(self, model, images_nchw: np.ndarray) -> np.ndarray:
        return self.forward_blocks(model, images_nchw)["classifier"]

    def logits_at(self, model, desc, resolution: tuple[int, int], batch: int) -> np.ndarray:
        return self.logits(model, np.zeros((batch, 3, *resolution), np.float32))

    def count_macs(self, model, resolution: tuple[int, int]) -> MacCount:
        """XLA's cost analysis of each convolution and linear layer, lowered on its own input shape.

        XLA reports 2 FLOPs per multiply-accumulate, skips kernel taps that fall into a convolution's own
        padding, and adds one FLOP per output element for a bias. Reconciled explicitly: MACs = (FLOPs -
        bias outputs) / 2, and the taps in padding are counted analytically and returned apart, so the
        check compares with the spec's count minus exactly those taps.
        """
        jax, nnx = self.jax, self.nnx
        calls = []
        attention_macs = 0
        originals = {cls: cls.__call__ for cls in (nnx.Conv, nnx.Linear)}
        attention = jax.nn.dot_product_attention

        def recorder(cls):
            def call(module, x, *args, **kwargs):
                calls.append((module, x.shape))
                return originals[cls](module, x, *args, **kwargs)
            return call

        def attention_recorder(query, key, value, *args, **kwargs):
            # (batch, L, heads, dk) x (batch, S, kv heads, dk/dv): two products per query head
            nonlocal attention_macs
            batch, queries, heads, key_dim = query.shape
            attention_macs += batch * heads * queries * key.shape[1] * (key_dim + value.shape[-1])
            return attention(query, key, value, *args, **kwargs)

        try:
            for cls in originals:
                cls.__call__ = recorder(cls)
            jax.nn.dot_product_attention = attention_recorder
            # Traced, not run: an eager forward compiles every op for its shape (seconds per variant).
            jax.eval_shape(model, jax.ShapeDtypeStruct((1, *resolution, 3), np.float32))
        finally:
            for cls, original in originals.items():
                cls.__call__ = original
            jax.nn.dot_product_attention = attention
        macs = padding_taps = 0
        cache: dict = {}
        for module, shape in calls:
            key = (type(module).__name__, module.kernel.shape, getattr(module, "strides", None),
                   str(getattr(module, "padding", None)), getattr(module, "feature_group_count", 1),
                   module.bias is not None, shape)
            if key not in cache:
                graph, state = nnx.split(module)
                lowered = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(
                    state, jax.ShapeDtypeStruct(shape, np.float32))
                cost = lowered.compile().cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                out = jax.eval_shape(lambda s, x: nnx.merge(graph, s)(x), state, jax.ShapeDtypeStruct(shape, np.float32))
                bias_flops = int(np.prod(out.shape)) if module.bias is not None else 0
                cache[key] = ((int(cost["flops"]) - bias_flops) // 2, _padding_taps(module, shape, out.shape))
            macs += cache[key][0]
            padding_taps += cache[key][1]
        return MacCount("XLA cost_analysis per conv/linear ((FLOPs - bias adds) / 2), attention products from "
                        "the shapes given to jax.nn.dot_product_attention", macs + attention_macs, padding_taps)


def _padding_taps(module, in_shape, out_shape) -> int:
    """Multiply-accumulates whose kernel tap falls into the convolution's own zero padding."""
    if len(in_shape) != 4:
        return 0
    kh, kw, cin_per_group, cout = module.kernel.shape
    pads = module.padding
    strides = module.strides if isinstance(module.strides, (tuple, list)) else (module.strides or 1,) * 2
    if isinstance(pads, int):
        pads = ((pads, pads), (pads, pads))
    elif isinstance(pads, str) and pads.upper() == "VALID":
        pads = ((0, 0), (0, 0))
    elif isinstance(pads, str) and pads.upper() == "SAME":  # the odd pixel after, as TensorFlow
        totals = [max((o - 1) * s + k - n, 0) for o, s, k, n in zip(out_shape[1:3], strides, (kh, kw), in_shape[1:3])]
        pads = tuple((t // 2, t - t // 2) for t in totals)
    else:
        raise ValueError(f"cannot count padding taps for padding {pads!r}")
    valid = 1
    total = 1
    for axis, (k, (before, _), stride) in enumerate(zip((kh, kw), pads, strides)):
        size, outs = in_shape[1 + axis], out_shape[1 + axis]
        valid *= sum(sum(0 <= i * stride - before + r < size for r in range(k)) for i in range(outs))
        total *= k * outs
    return (total - valid) * cin_per_group * cout


def _kernel_to_neutral(value: np.ndarray) -> np.ndarray:
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T  # HWIO -> OIHW; (in, out) -> (out, in)


def _kernel_from_neutral(value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def _to_nchw(value: np.ndarray) -> np.ndarray:
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
