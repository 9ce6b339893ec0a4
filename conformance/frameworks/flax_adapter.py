"""Flax NNX: generated/flax_nnx.

Layouts: nnx.Conv kernel (kh, kw, in / groups, out) with feature_group_count, nnx.Linear kernel
(in, out), nnx.BatchNorm scale / bias (Param) and mean / var (BatchStat). State paths joined with "."
are the canonical layer names. The generated factories take `rngs` explicitly; the adapter passes
nnx.Rngs(0), so every random init is the same.
"""

from __future__ import annotations

import numpy as np

from conformance.frameworks.protocol import MacCount, OptimizerConfig, TrainStep
from conformance.weights import WeightError
from generators.location import family_module

BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
NAMES = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}  # conv / linear, and LayerScale


class Adapter:
    run_key = "flax"
    device = "cpu"  # on a GPU run JAX uses the GPU it sees
    dtype = np.dtype(np.float32)  # float64 for training parity's float64 runs (conformance/training.py)

    def __init__(self):
        import jax
        from flax import nnx

        self.jax, self.nnx = jax, nnx
        # One jitted function for every model: the model is an argument (its graph the static part, its
        # weights the traced part), so each architecture compiles once and loading new weights needs no
        # recompile.
        self._forward_intermediates = nnx.jit(lambda m, x: m.forward_intermediates(x))
        # Training: the same, with the loss's gradients (nnx.Param only; nnx.BatchStat and the dropout's RNG
        # state are updated in the model); an optimizer step is that function, then the optimizer's update
        # (elementwise, cheap to compile). The model's train / eval mode is part of its static graph.
        self._value_and_grad = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))
        self._optimizer_update = nnx.jit(lambda optimizer, model, grads: optimizer.update(model, grads))

    def build(self, family: str, variant: str, flavor: str, num_classes: int, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False, dropout: float | None = None):
        """abstract: shapes only (nnx.eval_shape), for a model whose every weight is loaded next;
        an eager NNX init costs seconds per variant on this machine."""
        if dtype == "float64" and not self.jax.config.jax_enable_x64:
            raise ValueError("float64 in Flax needs JAX's 64-bit mode (conformance.frameworks.set_up_process)")
        self.dtype = np.dtype(dtype)  # the weights' and inputs' (one dtype per worker process)
        module = family_module("flax", family)
        factory = module.VARIANTS[variant]
        rate = {} if dropout is None else {"dropout": dropout}
        if abstract:
            model = self.nnx.eval_shape(lambda: factory(num_classes=num_classes, flavor=flavor, rngs=self.nnx.Rngs(0),
                                                        **rate))
            self._concrete_rng_state(model)
        else:
            model = factory(num_classes=num_classes, flavor=flavor, rngs=self.nnx.Rngs(0), **rate)
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
        batch_norms = {path for path, module in self.nnx.iter_modules(model) if isinstance(module, self.nnx.BatchNorm)}
        for path, variable in (state if state is not None else self.state(model)).flat_state():
            layer, leaf = ".".join(str(p) for p in path[:-1]), path[-1]
            names = BN_NAMES if tuple(path[:-1]) in batch_norms else NAMES
            yield f"{layer}.{names[leaf]}", leaf, variable

    def tensors(self, model) -> dict[str, np.ndarray]:
        return self._named(model)

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
            value = np.asarray(tensors[name], dtype=self.dtype)
            value = _kernel_from_neutral(value) if leaf == "kernel" else value
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightError(f"{name}: shape {value.shape} in Flax layout, the model has {tuple(variable.shape)}")
            variable.set_value(jnp.asarray(value))
        self.nnx.update(model, state)

    def forward_blocks(self, model, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._forward_intermediates(model, images_nchw.transpose(0, 2, 3, 1).astype(self.dtype))
        return {name: _to_nchw(np.asarray(value)) for name, value in outputs.items()}

    def logits(self, model, images_nchw: np.ndarray) -> np.ndarray:
        return self.forward_blocks(model, images_nchw)["classifier"]

    def _named(self, model, state=None) -> dict[str, np.ndarray]:
        """A state of the model (default: its parameters and BatchNorm statistics; or gradients) by canonical
        name, in the neutral layout."""
        out = {}
        for name, leaf, variable in self._variables(model, state):
            value = np.asarray(variable.get_value())
            out[name] = _kernel_to_neutral(value) if leaf == "kernel" else value
        return out

    def train_step(self, model, images_nchw: np.ndarray, labels: np.ndarray) -> TrainStep:
        model.train()
        try:
            (loss, blocks), grads = self._value_and_grad(model, images_nchw.transpose(0, 2, 3, 1).astype(self.dtype),
                                                         np.asarray(labels, np.int32))
        finally:
            model.eval()
        return TrainStep({name: _to_nchw(np.asarray(value)) for name, value in blocks.items()}, float(loss),
                         self._named(model, grads))

    def fit(self, model, images_nchw: np.ndarray, labels: np.ndarray, optimizer: OptimizerConfig,
            steps: int) -> list[dict[str, np.ndarray]]:
        import optax

        o = optimizer
        if o.name == "sgd":
            transform = optax.sgd(o.learning_rate, momentum=o.momentum or None)
        else:  # optax adds epsilon after the bias correction and decays weights decoupled, as PyTorch
            transform = optax.adamw(o.learning_rate, b1=o.beta1, b2=o.beta2, eps=o.epsilon, weight_decay=o.weight_decay)
        state = self.nnx.Optimizer(model, transform, wrt=self.nnx.Param)
        x, y = images_nchw.transpose(0, 2, 3, 1).astype(self.dtype), np.asarray(labels, np.int32)
        after = []
        model.train()
        try:
            for _ in range(steps):
                _, grads = self._value_and_grad(model, x, y)
                self._optimizer_update(state, model, grads)
                after.append(self._named(model, self.nnx.state(model, self.nnx.Param)))
        finally:
            model.eval()
        return after

    def train_outputs(self, model, images_nchw: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        self.nnx.reseed(model, dropout=seed)
        model.train()
        try:
            return self.forward_blocks(model, images_nchw)
        finally:
            model.eval()

    def logits_at(self, model, desc, resolution: tuple[int, int], batch: int) -> np.ndarray:
        return self.logits(model, np.zeros((batch, 3, *resolution), np.float32))

    def count_macs(self, model, resolution: tuple[int, int]) -> MacCount:
        """XLA's cost analysis of every convolution and matrix product of the traced forward pass (the
        attention's two products included), each compiled on its own operand shapes.

        The forward pass is traced to a jaxpr (jax.make_jaxpr): its conv_general_dilated and dot_general
        equations are the multiply-accumulates, biases and BatchNorm being other equations. XLA reports 2
        FLOPs per multiply-accumulate and skips kernel taps that fall into a convolution's own padding: MACs
        = FLOPs / 2, and the taps in padding are counted from the equation's padding and returned apart,
        so the check compares with the spec's count minus exactly those taps.
        """
        jax, nnx = self.jax, self.nnx
        graph, state = nnx.split(model)
        image = jax.ShapeDtypeStruct((1, *resolution, 3), np.float32)
        traced = jax.make_jaxpr(lambda s, x: nnx.merge(graph, s)(x))(state, image)
        macs = padding_taps = 0
        cache: dict = {}
        for equation in _equations(traced.jaxpr):
            if equation.primitive.name not in ("conv_general_dilated", "dot_general"):
                continue
            operands = tuple(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in equation.invars)
            key = (equation.primitive.name, tuple((o.shape, str(o.dtype)) for o in operands), str(equation.params))
            if key not in cache:
                bound = jax.jit(lambda *xs, e=equation: e.primitive.bind(*xs, **e.params))
                cost = bound.lower(*operands).compile().cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                taps = (_padding_taps(equation.params, operands[0].shape, operands[1].shape,
                                      equation.outvars[0].aval.shape)
                        if equation.primitive.name == "conv_general_dilated" else 0)
                cache[key] = (_macs_from_flops(int(cost["flops"]), equation.outvars[0].aval.shape), taps)
            macs += cache[key][0]
            padding_taps += cache[key][1]
        return MacCount("XLA cost_analysis per conv_general_dilated / dot_general of the traced forward (FLOPs / 2)",
                        macs, padding_taps)


def _loss(model, images_nhwc, labels):
    """Mean softmax cross-entropy of the logits on integer labels, and every block's output."""
    import optax

    blocks = model.forward_intermediates(images_nhwc)
    return optax.softmax_cross_entropy_with_integer_labels(blocks["classifier"], labels).mean(), blocks


def _macs_from_flops(flops: int, output_shape) -> int:
    """XLA counts 2 FLOPs per multiply-accumulate, except in two degenerate products (found by the fuzzer):
    with one tap per output (a 1x1 depthwise conv, a key_dim of 1) each output is a multiply alone, 1 FLOP;
    with one output element (a one-class classifier at batch 1) the product compiles to k multiplies and
    k - 1 sums, 2k - 1 FLOPs."""
    outputs = int(np.prod(output_shape))
    return outputs if flops == outputs else -(-flops // 2)


def _equations(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (jit, custom_vjp, ...) included."""
    for equation in jaxpr.eqns:
        yield equation
        for value in equation.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _padding_taps(params, in_shape, kernel_shape, out_shape) -> int:
    """Multiply-accumulates whose kernel tap falls into the convolution's own zero padding (NHWC, HWIO)."""
    lhs, rhs, out = params["dimension_numbers"]  # (batch, feature, spatial...) axes of each
    spatial_in = [in_shape[d] for d in lhs[2:]]
    spatial_out = [out_shape[d] for d in out[2:]]
    kernel = [kernel_shape[d] for d in rhs[2:]]
    cin_per_group, cout = kernel_shape[rhs[1]], kernel_shape[rhs[0]]
    valid = total = 1
    for size, outs, k, (before, _), stride in zip(spatial_in, spatial_out, kernel, params["padding"],
                                                  params["window_strides"]):
        valid *= sum(sum(0 <= i * stride - before + r < size for r in range(k)) for i in range(outs))
        total *= k * outs
    return (total - valid) * cin_per_group * cout


def _kernel_to_neutral(value: np.ndarray) -> np.ndarray:
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T  # HWIO -> OIHW; (in, out) -> (out, in)


def _kernel_from_neutral(value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def _to_nchw(value: np.ndarray) -> np.ndarray:
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
