"""Flax NNX: generated/flax_nnx.

Layouts: nnx.Conv kernel (kh, kw, in / groups, out) with feature_group_count, nnx.Linear kernel
(in, out), nnx.BatchNorm scale / bias (Param) and mean / var (BatchStat). State paths joined with "."
are the canonical layer names. The generated factories take `rngs` explicitly; the adapter passes
nnx.Rngs(0), so every random init is the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from conformance.frameworks.protocol import MacCount, OptimizerConfig, TrainStep, classifier_options, to_nchw
from conformance.weights import WeightError
from generators.location import family_module

BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
NAMES = {"kernel": "weight", "bias": "bias", "gamma": "gamma", "scale": "weight"}  # conv / linear, LayerScale, RMSNorm


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

    def build(self, family: str, variant: str, flavor: str, num_classes: int | None, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False, dropout: float | None = None):
        """abstract: shapes only (nnx.eval_shape), for a model whose every weight is loaded next;
        an eager NNX init costs seconds per variant on this machine."""
        if dtype == "float64" and not self.jax.config.jax_enable_x64:
            raise ValueError("float64 in Flax needs JAX's 64-bit mode (conformance.frameworks.set_up_process)")
        self.dtype = np.dtype(dtype)  # the weights' and inputs' (one dtype per worker process)
        module = family_module("flax", family)
        factory = module.VARIANTS[variant]
        options = classifier_options(num_classes, dropout)
        if abstract:
            model = self.nnx.eval_shape(lambda: factory(flavor=flavor, rngs=self.nnx.Rngs(0), **options))
            self._concrete_rng_state(model)
        else:
            model = factory(flavor=flavor, rngs=self.nnx.Rngs(0), **options)
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
        return {name: to_nchw(np.asarray(value)) for name, value in outputs.items()}

    def logits(self, model, images_nchw: np.ndarray) -> np.ndarray:
        """The network's output (an encoder's: its feature map, NCHW)."""
        return self.forward_blocks(model, images_nchw)[model.stages()[-1][0]]

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
        return TrainStep({name: to_nchw(np.asarray(value)) for name, value in blocks.items()}, float(loss),
                         self._named(model, grads))

    def fit(self, model, images_nchw: np.ndarray, labels: np.ndarray, optimizer: OptimizerConfig,
            steps: int) -> Iterator[dict[str, np.ndarray]]:
        import optax

        o = optimizer
        if o.name == "sgd":
            transform = optax.sgd(o.learning_rate, momentum=o.momentum or None)
        else:  # optax adds epsilon after the bias correction and decays weights decoupled, as PyTorch
            transform = optax.adamw(o.learning_rate, b1=o.beta1, b2=o.beta2, eps=o.epsilon, weight_decay=o.weight_decay)
        state = self.nnx.Optimizer(model, transform, wrt=self.nnx.Param)
        x, y = images_nchw.transpose(0, 2, 3, 1).astype(self.dtype), np.asarray(labels, np.int32)
        model.train()
        try:
            for _ in range(steps):
                _, grads = self._value_and_grad(model, x, y)
                self._optimizer_update(state, model, grads)
                yield self._named(model, self.nnx.state(model, self.nnx.Param))
        finally:
            model.eval()

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
        """The multiply-accumulates of the traced forward pass (jax.make_jaxpr): its conv_general_dilated and
        dot_general equations (the attention's two products included), each counted from its own operand
        and result shapes, biases and BatchNorm being other equations. A product with a constant of the
        trace (the fusion neck's resampling matrices) is a resize, which the spec counts as no MACs.

        Not XLA's cost_analysis: that is a cost model, not a count. It skips kernel taps in a convolution's
        padding and counts degenerate products (one tap or one output per product) its own way; the fuzzer
        found four shapes where FLOPs / 2 missed by 1 to 8 MACs (tests/data/fuzz_found/flax_macs_*.yaml).
        """
        jax, nnx = self.jax, self.nnx
        graph, state = nnx.split(model)
        image = jax.ShapeDtypeStruct((1, *resolution, 3), np.float32)
        traced = jax.make_jaxpr(lambda s, x: nnx.merge(graph, s)(x))(state, image)
        macs = sum(_equation_macs(e) for e in _products(traced.jaxpr, traced.jaxpr.constvars))
        counter = "conv_general_dilated / dot_general of the traced forward (output elements x contracted size)"
        return MacCount(counter, macs)


def _loss(model, images_nhwc, labels):
    """Mean softmax cross-entropy on integer labels of the logits, or of an encoder's feature map averaged
    over its positions (conformance/training.py), and every block's output."""
    import optax

    blocks = model.forward_intermediates(images_nhwc)
    output = blocks[model.stages()[-1][0]]
    scores = output.mean((1, 2)) if output.ndim == 4 else output
    return optax.softmax_cross_entropy_with_integer_labels(scores, labels).mean(), blocks


def _equation_macs(equation) -> int:
    """Each output element of a convolution sums its kernel window over the input channels of its group
    (the kernel's input-feature axis); of a dot_general, over the contracting axes."""
    outputs = int(np.prod(equation.outvars[0].aval.shape))
    lhs, rhs = (v.aval.shape for v in equation.invars[:2])
    if equation.primitive.name == "conv_general_dilated":
        _, kernel_axes, _ = equation.params["dimension_numbers"]  # (out feature, in feature, spatial...)
        return outputs * int(np.prod([rhs[d] for d in kernel_axes[1:]]))
    (contracting, _), _ = equation.params["dimension_numbers"]
    return outputs * int(np.prod([lhs[d] for d in contracting]))


def _products(jaxpr, constants):
    """The conv_general_dilated and dot_general equations of a jaxpr and of its sub-jaxprs (jit,
    custom_vjp, ...) whose operands are both computed from the input or parameters: not those with an
    operand computed from `constants` (variables of the jaxpr) and literals alone."""
    from jax.extend.core import Literal

    constant = set(constants)
    for equation in jaxpr.eqns:
        fixed = [isinstance(v, Literal) or v in constant for v in equation.invars]
        if all(fixed):
            constant.update(equation.outvars)
        if equation.primitive.name in ("conv_general_dilated", "dot_general") and not any(fixed[:2]):
            yield equation
        for value in equation.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):  # a call's parameters are its operands, in order (jit's)
                    aligned = len(inner.invars) == len(fixed)
                    yield from _products(inner, [*getattr(inner, "constvars", ()),
                                                 *(v for v, f in zip(inner.invars, fixed) if f and aligned)])


def _kernel_to_neutral(value: np.ndarray) -> np.ndarray:
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T  # HWIO -> OIHW; (in, out) -> (out, in)


def _kernel_from_neutral(value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
