"""Keras 3: generated/keras3, on whichever backend KERAS_BACKEND names (set by the worker).

Layouts (conformance/frameworks/keras_layout.py): Conv2D kernel (kh, kw, in, out), DepthwiseConv2D kernel
(kh, kw, C, 1), Dense kernel (in, out), BatchNormalization gamma / beta / moving_mean / moving_variance; a
linear layer of the spec computed as a 1x1 Conv2D (fc_layout: conv1x1) has kernel (1, 1, in, out).
Layer names are canonical names with "-" for "." (Keras on the PyTorch backend makes layer names part of
torch parameter names, which cannot contain ".").

Training runs the block model (the generated `forward_intermediates`, on the same layers and variables) with
`training=True`, and takes gradients with the backend's own means: tf.GradientTape, JAX's value_and_grad of
`stateless_call` (compiled once per model), PyTorch's autograd on the tensors behind the variables.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from conformance.frameworks import keras_layout
from conformance.frameworks.protocol import MacCount, OptimizerConfig, TrainStep, classifier_options, to_nchw
from conformance.weights import WeightError
from generators.location import family_module

# The spec's linear layers (spec/resolve.py: the layers after pooling) by Keras layer name. Where the flavor's
# fc_layout is conv1x1 the generated model computes them as 1x1 Conv2D layers; their neutral weight is
# (out, in) all the same.
LINEAR_LAYERS = frozenset({"fc", "fc-linear", "classifier"})


class Adapter:
    device = "cpu"  # on a GPU run Keras uses the GPU its backend sees

    dtype = np.dtype(np.float32)

    def __init__(self):
        import keras

        self.keras = keras
        self.run_key = "keras" if keras.backend.backend() == "tensorflow" else f"keras-{keras.backend.backend()}"
        # (model, its block model, functions compiled for it by name), for the latest model only, matched by
        # identity: a cache keyed by id() once handed a freed MobileNetV3's block model to a MobileNetV4 that
        # reused its id.
        self._block_model: tuple[object, object, dict] | None = None
        self._modules: dict[str, object] = {}  # variant (the name of its model) -> its generated module

    def build(self, family: str, variant: str, flavor: str, num_classes: int | None, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False, dropout: float | None = None):
        # float64: training parity's float64 runs (conformance/training.py); one dtype per worker process
        self.dtype = np.dtype(dtype)
        self.keras.config.set_floatx(dtype)
        module = self._modules[variant] = family_module("keras", family)
        options = classifier_options(num_classes, dropout)
        model = module.VARIANTS[variant](flavor=flavor, input_shape=(*resolution, 3), **options)
        if dtype == "float64" and self.keras.backend.backend() == "tensorflow":
            _float64_gelu(model)
        return model

    def _to_neutral(self, layer, variable_name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
        try:
            neutral, value = keras_layout.to_neutral(layer, variable_name, value)
        except KeyError:
            raise WeightError(f"{layer.name}: no neutral layout for {type(layer).__name__}.{variable_name}") from None
        if layer.name in LINEAR_LAYERS and value.ndim == 4:  # a 1x1 Conv2D head (fc_layout: conv1x1)
            value = keras_layout.conv1x1_to_linear(value)
        return neutral, value

    def _from_neutral(self, layer, variable_name: str, value: np.ndarray) -> np.ndarray:
        return keras_layout.from_neutral(layer, variable_name, value)

    def _variables(self, model):
        """(canonical tensor name, layer, keras variable) for every weight of the model."""
        for layer in model.layers:
            for variable in layer.weights:
                neutral, _ = self._to_neutral(layer, variable.name, np.broadcast_to(np.float32(0), variable.shape))
                yield f"{layer.name.replace('-', '.')}.{neutral}", layer, variable

    def tensors(self, model) -> dict[str, np.ndarray]:
        return {name: self._to_neutral(layer, var.name, np.asarray(self.keras.ops.convert_to_numpy(var.value)))[1]
                for name, layer, var in self._variables(model)}

    def shapes(self, model) -> dict[str, tuple[int, ...]]:
        return {name: self._to_neutral(layer, var.name, np.broadcast_to(np.float32(0), var.shape))[1].shape
                for name, layer, var in self._variables(model)}

    def trainable(self, model) -> dict[str, int]:
        return {name: int(np.prod(var.shape)) for name, _, var in self._variables(model) if var.trainable}

    def load(self, model, tensors: dict[str, np.ndarray]) -> None:
        for name, layer, variable in self._variables(model):
            value = self._from_neutral(layer, variable.name, np.asarray(tensors[name], dtype=self.dtype))
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightError(f"{name}: shape {value.shape} in Keras layout, the layer has {tuple(variable.shape)}")
            variable.assign(value)

    def _blocks(self, model):
        """The model's block model and the functions compiled for it (by name), built once per model."""
        if self._block_model is None or self._block_model[0] is not model:
            block_model = self._modules[model.name].forward_intermediates(model)
            # The stage the loss reads is the network's output, the last of the stages, which
            # forward_intermediates returns in order (as Flax's `stages()`): "classifier", or an encoder's neck.
            self._block_model = (model, block_model, {"output": list(block_model.output)[-1]})
        return self._block_model[1], self._block_model[2]

    def forward_blocks(self, model, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._blocks(model)[0].predict_on_batch(images_nchw.transpose(0, 2, 3, 1).astype(self.dtype))
        return {name: to_nchw(np.asarray(value)) for name, value in outputs.items()}

    def _numpy(self, value) -> np.ndarray:
        if self.keras.backend.backend() == "torch":
            value = value.detach()
        return np.asarray(self.keras.ops.convert_to_numpy(value))

    def _neutral(self, model, variables, values) -> dict[str, np.ndarray]:
        """`values` of `variables` (a gradient has its variable's layout) by canonical name, in the model's
        order and the neutral layout."""
        value = {id(variable): v for variable, v in zip(variables, values)}
        return {name: self._to_neutral(layer, variable.name, self._numpy(value[id(variable)]))[1]
                for name, layer, variable in self._variables(model) if id(variable) in value}

    def _loss(self, output, labels):
        """Mean softmax cross-entropy of the logits, or of an encoder's feature map averaged over its positions
        (conformance/training.py)."""
        ops = self.keras.ops
        scores = ops.mean(output, axis=(1, 2)) if len(output.shape) == 4 else output
        return ops.mean(self.keras.losses.sparse_categorical_crossentropy(labels, scores, from_logits=True))

    def _gradients(self, model, images_nchw: np.ndarray, labels: np.ndarray):
        """One training-mode forward of the block model (batch statistics; the moving statistics updated
        once) and the gradients of the mean cross-entropy of its logits: (outputs, loss, the gradients in the
        order of the block model's trainable_variables)."""
        block, compiled = self._blocks(model)
        x = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1), self.dtype)
        y = np.asarray(labels, np.int32)
        return getattr(self, f"_gradients_{self.keras.backend.backend()}")(block, compiled, x, y)

    def _gradients_tensorflow(self, block, compiled, x, y):
        """A tf.function, traced once per model (TensorFlow runs a model's backward pass eagerly op by op)."""
        if "gradients" not in compiled:
            import tensorflow as tf

            def gradients(x, y):
                with tf.GradientTape() as tape:
                    outputs = block([x], training=True)
                    loss = self._loss(outputs[compiled["output"]], y)
                return outputs, loss, tape.gradient(loss, block.trainable_variables)

            compiled["gradients"] = tf.function(gradients)
        return compiled["gradients"](x, y)

    def _gradients_jax(self, block, compiled, x, y):
        """Keras on JAX is slow eagerly: value_and_grad of the stateless call, compiled once per model; the
        new non-trainable values (moving statistics) are then assigned to the variables."""
        if "gradients" not in compiled:
            import jax

            def loss(trainable, non_trainable, x, y):
                outputs, non_trainable = block.stateless_call(trainable, non_trainable, [x], training=True)
                return self._loss(outputs[compiled["output"]], y), (outputs, non_trainable)

            compiled["gradients"] = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (loss, (outputs, non_trainable)), gradients = compiled["gradients"](
            [v.value for v in block.trainable_variables], [v.value for v in block.non_trainable_variables], x, y)
        for variable, value in zip(block.non_trainable_variables, non_trainable):
            variable.assign(value)
        return outputs, loss, gradients

    def _gradients_torch(self, block, compiled, x, y):
        import torch

        parameters = [variable.value for variable in block.trainable_variables]  # torch.nn.Parameter
        for parameter in parameters:
            parameter.grad = None
        with torch.enable_grad():
            outputs = block([x], training=True)
            loss = self._loss(outputs[compiled["output"]], self.keras.ops.convert_to_tensor(y))
            loss.backward()
        gradients = [parameter.grad.detach().clone() for parameter in parameters]
        for parameter in parameters:
            parameter.grad = None
        return outputs, loss.detach(), gradients

    def train_step(self, model, images_nchw: np.ndarray, labels: np.ndarray) -> TrainStep:
        outputs, loss, gradients = self._gradients(model, images_nchw, labels)
        return TrainStep({name: to_nchw(self._numpy(value)) for name, value in outputs.items()},
                         float(self._numpy(loss)), self._neutral(model, self._blocks(model)[0].trainable_variables,
                                                                gradients))

    def fit(self, model, images_nchw: np.ndarray, labels: np.ndarray, optimizer: OptimizerConfig,
            steps: int) -> Iterator[dict[str, np.ndarray]]:
        o = optimizer
        block, compiled = self._blocks(model)
        variables = block.trainable_variables
        if self.keras.backend.backend() == "jax":
            if ("fit", o) not in compiled:  # compiled once per model and optimizer
                compiled["fit", o] = self._apply_jax(self._optimizer(o), variables)
            apply = compiled["fit", o]()
        else:
            apply = _apply_eagerly(self._optimizer(o), variables)
        for t in range(1, steps + 1):
            gradients = self._gradients(model, images_nchw, labels)[2]
            # Keras adds epsilon to sqrt(v) before the bias correction (lr * sqrt(1 - beta2^t) / (1 - beta1^t)
            # * m / (sqrt(v) + eps)), PyTorch after it (lr * m_hat / (sqrt(v_hat) + eps)): the same step with
            # eps * sqrt(1 - beta2^t) in Keras, a new value each step.
            apply(gradients, o.epsilon * math.sqrt(1.0 - o.beta2**t))
            yield self._neutral(model, variables, [variable.value for variable in variables])

    def _optimizer(self, o: OptimizerConfig):
        """Keras' own. SGD keeps velocity = momentum * v - lr * g and adds it: for a constant learning rate,
        -lr times PyTorch's buffer (both start from the first gradient)."""
        optimizers = self.keras.optimizers
        if o.name == "sgd":
            step, constants = optimizers.SGD(learning_rate=o.learning_rate, momentum=o.momentum), ("momentum",)
        elif o.name == "adamw":
            # Decoupled weight decay p -= lr * weight_decay * p, applied before the Adam update as
            # torch.optim.AdamW does.
            step = optimizers.AdamW(learning_rate=o.learning_rate, weight_decay=o.weight_decay, beta_1=o.beta1,
                                    beta_2=o.beta2, epsilon=o.epsilon)
            constants = ("beta_1", "beta_2")
        else:
            raise ValueError(f"unknown optimizer {o.name!r}")
        # update_step casts these Python floats to the variable's dtype through a float32 tensor (ops.cast):
        # 0.999 becomes 0.99900001, and a float64 run's first AdamW step is 6.7e-6 off PyTorch's, which Adam
        # then amplifies wherever its first moment cancels (1e-3 by the third step). A tensor of the run's
        # dtype is cast exactly.
        for name in constants:
            setattr(step, name, self.keras.ops.convert_to_tensor(getattr(step, name), self.dtype))
        return step

    def _apply_jax(self, step, variables):
        """`step.apply` for Keras on JAX, where its first eager call compiles every small operation on its
        own: stateless_apply compiled once, epsilon an argument of it (one compilation serves every step).
        Returns a function that starts a new run from the optimizer's initial state, and returns its apply."""
        import jax

        step.build(variables)

        def update(state, gradients, values, epsilon):
            if not hasattr(step, "epsilon"):  # SGD
                return step.stateless_apply(state, gradients, values)
            given, step.epsilon = step.epsilon, epsilon  # the tracer, read by update_step while tracing
            try:
                return step.stateless_apply(state, gradients, values)
            finally:
                step.epsilon = given

        update = jax.jit(update)
        initial = [variable.value for variable in step.variables]

        def start():
            state = initial

            def apply(gradients, epsilon: float):
                nonlocal state
                values, state = update(state, gradients, [variable.value for variable in variables], epsilon)
                for variable, value in zip(variables, values):
                    variable.assign(value)

            return apply

        return start

    def train_outputs(self, model, images_nchw: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Dropout masks come from each layer's seed generator, set from `seed` (Keras on PyTorch draws an
        unseeded layer's masks from torch's global generator: seeded as well)."""
        block, compiled = self._blocks(model)
        index = 0
        for layer in block.layers:
            for generator in getattr(layer, "_seed_generators", ()):
                generator.state.assign(np.asarray([seed, index << 20], dtype=generator.state.dtype))
                index += 1
        backend = self.keras.backend.backend()
        x = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1), self.dtype)
        if backend == "torch":
            import torch

            torch.manual_seed(seed)
            with torch.no_grad():
                outputs = block([x], training=True)
        elif backend == "jax":
            if "train_outputs" not in compiled:
                import jax

                compiled["train_outputs"] = jax.jit(
                    lambda trainable, non_trainable, x: block.stateless_call(trainable, non_trainable, [x],
                                                                             training=True))
            outputs, non_trainable = compiled["train_outputs"](
                [v.value for v in block.trainable_variables], [v.value for v in block.non_trainable_variables], x)
            for variable, value in zip(block.non_trainable_variables, non_trainable):
                variable.assign(value)
        else:  # a tf.function, traced once per model: 32 eager passes cost a minute (MobileNetV2, 160x128)
            if "train_outputs" not in compiled:
                import tensorflow as tf

                compiled["train_outputs"] = tf.function(lambda x: block([x], training=True))
            outputs = compiled["train_outputs"](x)
        return {name: to_nchw(self._numpy(value)) for name, value in outputs.items()}

    def logits(self, model, images_nchw: np.ndarray) -> np.ndarray:
        return to_nchw(np.asarray(model.predict_on_batch(images_nchw.transpose(0, 2, 3, 1).astype(self.dtype))))

    def logits_at(self, model, desc, resolution: tuple[int, int], batch: int) -> np.ndarray:
        """A functional model has a static input shape: build one for this resolution."""
        other = self.build(desc.family, desc.variant, desc.flavor, desc.num_classes, resolution)
        return self.logits(other, np.zeros((batch, 3, *resolution), np.float32))

    def count_macs(self, model, resolution: tuple[int, int]) -> MacCount:
        """MACs from Keras' own layer objects: each Conv2D / DepthwiseConv2D / Dense layer's kernel size
        times the number of output positions Keras computed for it (its symbolic output shape)."""
        layers = self.keras.layers
        macs = 0
        for layer in model.layers:
            if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
                # kernel: kh * kw * in * out (conv), kh * kw * C * 1 (depthwise), in * out (dense)
                positions = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) > 2 else 1
                macs += positions * int(np.prod(layer.kernel.shape))
            elif type(layer).__name__ == "MultiQueryAttention":
                # two matrix products per query head: L x dk by dk x S, then L x S by S x dv
                query, key, value = (tensor.shape for tensor in layer.input)
                heads, queries, keys = layer.heads, int(np.prod(query[1:3])), int(np.prod(key[1:3]))
                macs += heads * queries * keys * (key[-1] + value[-1])
        return MacCount("Keras layer kernels x output positions (+ attention products from layer shapes)", macs)


def _apply_eagerly(step, variables):
    """`step.apply`, with the step's epsilon (Adam), read by update_step at each eager call."""

    def apply(gradients, epsilon: float):
        if hasattr(step, "epsilon"):
            step.epsilon = epsilon
        step.apply(gradients, variables)

    return apply


def _float64_gelu(model) -> None:
    """TensorFlow's GELUs round a constant through float32 (TF 2.21's tf.nn.gelu): the exact one casts
    1/sqrt(2) to the input's dtype from a float32 tensor (`math_ops.cast(0.7071067811865476, dtype)`), the
    tanh one its 0.044715 the same way. In float64 every exact GELU is 2e-7 (relative) off, and V4
    Hybrid-Large's logits 3e-7. A float64 run computes the same functions with float64 constants; the
    float32 runs use Keras' own layers."""
    import functools

    import keras

    def gelu(x):
        return 0.5 * x * (1.0 + keras.ops.erf(x * math.sqrt(0.5)))

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + keras.ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.Activation):
            continue
        f = layer.activation
        if f is keras.activations.gelu:
            layer.activation = gelu
        elif isinstance(f, functools.partial) and f.func is keras.activations.gelu and f.keywords.get("approximate"):
            layer.activation = gelu_tanh
