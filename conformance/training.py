"""Training-mode parity (`mnforge conform --train`): one network trains the same in every framework.

Every run starts from the run's neutral weights (random BatchNorm statistics included) and the shared
training batch (TRAIN_BATCH non-square images at TRAIN_RESOLUTION, fixed labels), dropout at rate 0:

    step        one training-mode forward and backward: every block's output (batch statistics), the
                mean softmax cross-entropy, the gradient of every trainable tensor, and the BatchNorm
                running statistics after that one update (the flavor's momentum and variance convention)
    sgd, adamw  TRAIN_STEPS steps of each optimizer, the framework's own (OPTIMIZERS): the parameters
                after every step; after SGD also the fine-tuned model's eval-mode logits
    dropout     the flavor's dropout: DROPOUT_SAMPLES training-mode passes with different masks

An encoder (no classifier) trains on the same loss over its feature map averaged over its positions:
one score per channel, each label taken modulo its channels (`encoder_labels`). It has no dropout.

The float64 PyTorch run is the reference; it writes what it computed (reference_path), and every other
run waits for that file and compares in its own process, so only figures travel.

**Why gradients are compared in float64.** A gradient is discontinuous where an activation has a kink
(ReLU and ReLU6 at 0 and 6, hard-swish and hard-sigmoid at -3 and 3). A training batch has about a
million activations; in float32 one of them often lands on the other side of a kink than in float64,
and that one element moves its block's gradients, and everything upstream, by up to 1e-1 of a tensor's
largest gradient. Measured between PyTorch float32 and PyTorch float64 themselves (README: Training
parity): 2e-5 to 5e-5 when no element flips, 6e-3 to 1e-1 when one does, in 8 of 12 batches of three
ReLU networks. No float32 tolerance separates that from a wrong derivative (1e-1 to 1). So:

    float32 runs    the training-mode forward and the running statistics (continuous functions of the
                    weights: no kinks), and dropout
    float64 runs    the same, and the gradients and the optimizer steps: in float64 an activation flips
                    with a probability of about 1e-9 per batch, and errors are rounding, 1e-13

The float64 run of a framework other than PyTorch is an extra worker (Keras on each backend, Flax with
JAX's 64-bit mode), started by `--train`.

Errors are relative to what the reference *changed*: a gradient, a running-statistics update, a
parameter update (a parameter is ~1 and an update ~1e-3; comparing parameters would hide an update
that is 10 % wrong). Per tensor:

    error = max|a - b| / max(max|change_ref|, FLOOR * the model's largest change)

FLOOR keeps tensors whose true change is zero (a bias right before a training-mode BatchNorm: the batch
mean removes it) from dividing rounding noise by rounding noise. A value stored after an update carries
its own rounding, half an ulp of the value per store, which the update-relative error would magnify:
that much is allowed on top of the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conformance.frameworks.protocol import OptimizerConfig
from spec import describe

# The training batch: non-square, 3x2 after a stride of 32. Float64 convolutions in XLA and TensorFlow run
# without vectorised kernels, and the float64 runs are most of --train's time: 96x64 costs a third of 160x128.
TRAIN_RESOLUTION = (96, 64)
TRAIN_BATCH = 4
TRAIN_STEPS = 3
OPTIMIZERS = (
    OptimizerConfig("sgd", learning_rate=0.05, momentum=0.9),
    OptimizerConfig("adamw", learning_rate=1e-3, weight_decay=0.01),  # betas (0.9, 0.999), epsilon 1e-8
)
DROPOUT_SAMPLES = 32

FLOOR = 1e-2  # of the model's largest gradient or update: below it a tensor's change is rounding noise
# float32 runs compare continuous functions of float32 arithmetic: the eval-mode bound (checks.py). A
# wrong variance convention moves a running-variance update by 1 / (n - 1) >= 4e-2 (n = 24 elements per
# channel after a stride of 32), an inverted momentum by far more.
FLOAT32_TOLERANCE = 1e-4
# Some blocks are ill-conditioned in float32 whatever the framework: a training-mode BatchNorm over a few
# values (V4 Hybrid's fc normalises 4 pooled values per channel, and divides their spread by itself)
# turns the input's 3e-5 rounding into 1.4e-4, in PyTorch's own float32 too. The reference measures each
# block's and each statistic's float32 error, PyTorch float32 against float64, and a float32 run is
# allowed CONDITIONING times that where it exceeds FLOAT32_TOLERANCE: another framework sums in another
# order and rounds as much, not ten times more. Never above FLOAT32_CEILING, which a wrong variance
# convention (4e-2) or epsilon still exceeds by 40x.
CONDITIONING = 10.0
FLOAT32_CEILING = 1e-3
# float64 runs: rounding (1.1e-16) amplified as float32's is (1e-5 gradient errors from 6e-8 rounding,
# x170) gives 2e-14; measured 1e-15 to 2e-13 (README). A bug (a stopped or wrong derivative, a wrong
# epsilon or momentum) shows as 1e-4 or more.
FLOAT64_TOLERANCE = 1e-9
# Optimizer steps in float64: each step's gradient is taken at parameters the previous steps rounded, and
# the training dynamics amplify that (measured after 3 SGD steps: up to 4e-9 of the change, Keras, at a
# BatchNorm bias); Adam also divides a gradient by its root mean square plus epsilon, so near g = 0 a
# gradient's rounding dg becomes lr * dg / epsilon in the step, up to 1e-5 of a step for gradients rounded
# to 1e-13 (measured up to 8e-9). A convention bug (momentum dampening or Nesterov, epsilon before or after
# the bias correction, coupled weight decay, a missing bias correction) moves updates by 1e-2 to 1.
OPTIMIZER_FLOAT64_TOLERANCE = 1e-4
# A gradient that is zero but for float64 rounding (measured 1e-17 to 4e-16 of the largest: the bias
# right before a training-mode BatchNorm) against 6e-3 for the smallest true one. Adam divides a gradient
# by its own root mean square, so it turns such rounding into steps of any size up to the learning rate:
# the AdamW comparison leaves those tensors out and lists them (their gradients are compared).
ZERO_GRADIENT = 1e-10
Z_LIMIT = 7.0  # dropout's mean test, |z| of every logit: P(|z| > 7) = 3e-12 per logit when all is right


# The float64 runs other than the reference (Keras on TensorFlow, Flax) train variants up to this size.
# Their float64 training peaks at 88 (TensorFlow) and 186 (XLA) bytes per parameter, measured on
# mobilenet_v5_base (83 M: 7.2 and 15.4 GB; the PyTorch reference 5.0 GB); XLA also builds a dense C x C
# filter for a depthwise window larger than its feature map (README: Cost), 3 GB for the 300M variants'
# last 5x5 at 6x4. Both were killed for memory at 23 GB on MobileNetV5's 300M variants, which add only
# width and depth to mobilenet_v5_base: every block kind, the neck and the classifier train in float64
# there (and the 300M variants in every float32 run and in the float64 reference).
FLOAT64_MAX_PARAMS = 100_000_000


def float64_variants(loaded, variants) -> tuple[str, ...]:
    """The variants a float64 run other than the reference trains (FLOAT64_MAX_PARAMS)."""
    return tuple(v for v in variants if describe(loaded, v).params <= FLOAT64_MAX_PARAMS)


def optimizers(role: str, first: bool) -> tuple[OptimizerConfig, ...]:
    """The optimizers a run steps with on a variant. The reference: all of them, on every variant. A float64
    run: SGD on every variant (the fine-tuning promise is per architecture), AdamW on its first variant
    only: what AdamW adds to SGD (epsilon after the bias correction, decoupled weight decay) is the
    framework's convention, not the architecture's, and every step costs a float64 gradient, which XLA and
    TensorFlow compute on the CPU without vectorised grouped convolutions (README: Training parity).
    A float32 run: none (its gradients are not compared, see above)."""
    if role == "reference":
        return OPTIMIZERS
    if role == "float64":
        return tuple(o for o in OPTIMIZERS if o.name == "sgd" or first)
    return ()


def tolerance(dtype: str, optimizer: bool = False) -> float:
    """The tolerance of a run's comparisons; `optimizer`: of its optimizer steps."""
    if dtype != "float64":
        return FLOAT32_TOLERANCE
    return OPTIMIZER_FLOAT64_TOLERANCE if optimizer else FLOAT64_TOLERANCE


def float32_bounds(measured: dict[str, float]) -> dict[str, float]:
    """Per block or tensor, what a float32 run is allowed: FLOAT32_TOLERANCE, or CONDITIONING times the
    reference's own float32 error where that is ill-conditioned (`measured`), up to FLOAT32_CEILING."""
    return {name: float(min(max(FLOAT32_TOLERANCE, CONDITIONING * error), FLOAT32_CEILING))
            for name, error in measured.items()}


def reference_path(out, variant: str):
    """Where the float64 reference run writes its training results for a variant (.npz)."""
    from pathlib import Path

    return Path(out) / f"{variant}.train-reference.npz"


def relative(a: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    """max|a - b| / max|reference| (1.0 where the reference is all zeros)."""
    diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
    return diff / (float(np.max(np.abs(reference))) or 1.0)


@dataclass(frozen=True)
class TensorErrors:
    """Per tensor: error (relative to the reference's change, with the FLOOR) and the bound it must meet."""

    errors: dict[str, float]
    allowed: dict[str, float]
    floor: float  # absolute: FLOOR * the largest change

    @property
    def failing(self) -> list[str]:
        return [name for name, e in self.errors.items() if not e <= self.allowed[name]]

    def to_json(self) -> dict:
        return {"errors": self.errors, "allowed": self.allowed, "floor": self.floor}


def change_errors(values: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                  tolerance: float | dict[str, float], before: dict[str, np.ndarray] | None = None,
                  stores: int = 0) -> TensorErrors:
    """Per tensor, max|value - reference| relative to the reference's change from `before` (None: the
    reference is the change itself, a gradient). `tolerance`: one for all, or per tensor. `stores`: how
    many times each value was rounded to its dtype after an update (an optimizer step, a statistics
    update), each allowed half an ulp."""
    bound = tolerance.__getitem__ if isinstance(tolerance, dict) else lambda _: tolerance
    changes = {name: ref if before is None else np.asarray(ref, np.float64) - before[name]
               for name, ref in reference.items()}
    largest = max((float(np.max(np.abs(c))) for c in changes.values() if np.size(c)), default=0.0)
    floor = FLOOR * largest
    errors, allowed = {}, {}
    for name, ref in reference.items():
        scale = max(float(np.max(np.abs(changes[name]))) if np.size(ref) else 0.0, floor) or 1.0
        value = values.get(name)
        if value is None or np.shape(value) != np.shape(ref):
            errors[name], allowed[name] = float("inf"), bound(name)
            continue
        errors[name] = float(np.max(np.abs(np.asarray(value, np.float64) - ref))) / scale if np.size(ref) else 0.0
        half_ulp = np.finfo(np.asarray(value).dtype).eps / 2 if np.issubdtype(np.asarray(value).dtype, np.floating) else 0
        rounding = stores * half_ulp * (float(np.max(np.abs(ref))) if np.size(ref) else 0.0)
        allowed[name] = float(bound(name) + rounding / scale)
    return TensorErrors(errors, allowed, floor)


def zero_gradient_tensors(gradients_ref: dict[str, np.ndarray]) -> list[str]:
    """Tensors whose reference gradient is zero to float64 rounding (below ZERO_GRADIENT of the largest)."""
    largest = max(float(np.max(np.abs(g))) for g in gradients_ref.values() if np.size(g))
    return sorted(name for name, g in gradients_ref.items()
                  if np.size(g) and float(np.max(np.abs(g))) < ZERO_GRADIENT * largest)


def block_of(tensor: str) -> str:
    """The block a tensor belongs to: "blocks.3.expand.bn.weight" -> "blocks.3", "classifier.bias" ->
    "classifier"."""
    parts = tensor.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def per_block(errors: TensorErrors, order: list[str], backward: bool = False) -> tuple[dict[str, dict], str | None]:
    """The worst tensor of every block (in network order), and the first block with a failing tensor: in
    network order, or for what the backward pass computes (gradients, and the updates made of them) from
    the loss back, where a wrong derivative first shows before it spreads to every block upstream."""
    worst: dict[str, dict] = {}
    for name, error in errors.errors.items():
        block = block_of(name)
        ratio = error / errors.allowed[name]
        if block not in worst or ratio > worst[block]["ratio"]:
            worst[block] = {"tensor": name, "error": error, "allowed": errors.allowed[name], "ratio": ratio}
    ranked = sorted(worst, key=lambda b: order.index(b) if b in order else len(order))
    first = next((b for b in (reversed(ranked) if backward else ranked) if not worst[b]["ratio"] <= 1.0), None)
    return {b: worst[b] for b in ranked}, first


def dropout_figures(samples: list[dict[str, np.ndarray]], order: list[str], classifier_weight: np.ndarray,
                    classifier_bias: np.ndarray, rate: float) -> dict:
    """Where dropout acts and at which rate, from `samples` (training-mode passes with different masks).

    * Every block before the classifier is the same in every sample: the masks touch the classifier's
      input only.
    * The classifier's output is an unbiased estimate of W x + b (x: the dropout's input, the previous
      block): for every logit, |mean - (W x + b)| / sqrt(Var / SAMPLES) <= Z_LIMIT, with the variance of
      inverted dropout Var = rate / (1 - rate) * sum_j W_ij^2 x_j^2.
    * The spread matches that variance: their ratio, pooled over logits, is about 1 (the rate is the
      flavor's).
    `order`: the block names in network order.
    """
    names = [name for name in order if name in samples[0]]  # network order (JAX returns dicts sorted)
    before = names[names.index("classifier") - 1]
    varying = [name for name in names[:-1]
               if any(not np.array_equal(s[name], samples[0][name]) for s in samples[1:])]
    x = samples[0][before].astype(np.float64)
    w = classifier_weight.astype(np.float64)
    expected = x @ w.T + classifier_bias.astype(np.float64)
    logits = np.stack([s["classifier"].astype(np.float64) for s in samples])
    figures = {"rate": rate, "samples": len(samples), "blocks_varying_before_classifier": varying}
    if rate == 0.0:
        figures["classifier_max_spread"] = float(np.max(np.ptp(logits, axis=0)))
        return figures
    variance = rate / (1.0 - rate) * (x ** 2) @ (w ** 2).T
    z = (logits.mean(axis=0) - expected) / np.sqrt(variance / len(samples))
    figures["max_abs_z"] = float(np.max(np.abs(z)))
    figures["variance_ratio"] = float(np.sum(logits.var(axis=0, ddof=1)) / np.sum(variance))
    return figures


def dropout_ok(figures: dict) -> tuple[bool, str]:
    if figures["blocks_varying_before_classifier"]:
        return False, f"masks reach blocks before the classifier: {figures['blocks_varying_before_classifier'][:3]}"
    if figures["rate"] == 0.0:
        spread = figures["classifier_max_spread"]
        return spread == 0.0, f"rate 0: {figures['samples']} training passes " + (
            "identical" if spread == 0.0 else f"differ by {spread:.2e}")
    # A wrong rate p' instead of p scales the variance by p'(1-p) / (p(1-p')) (0.2 instead of 0.001: 250x).
    # The pooled ratio is a chi-square over at least (SAMPLES - 1) x batch degrees of freedom (each image
    # has its own masks): outside [1/4, 4] with a probability below 1e-15 when all is right.
    ok = figures["max_abs_z"] <= Z_LIMIT and 0.25 <= figures["variance_ratio"] <= 4.0
    return ok, (f"rate {figures['rate']}: masks only at the classifier's input; mean of {figures['samples']} "
                f"passes within {figures['max_abs_z']:.1f} sigma of the dropout-free logits (limit {Z_LIMIT:.0f}), "
                f"variance {figures['variance_ratio']:.2f} x inverted dropout's")


def encoder_labels(labels: np.ndarray, desc) -> np.ndarray:
    """The training labels of `desc`'s network: the run's, or for an encoder, whose loss scores its output's
    channels (its feature map averaged over positions), the run's modulo its channels."""
    if not desc.encoder:
        return labels
    return labels % desc.block_shapes[desc.output][0]


def decisions(output: np.ndarray) -> np.ndarray:
    """Each image's top-1: of the logits, or of an encoder's NCHW map averaged over its positions."""
    return (output.mean((2, 3)) if output.ndim == 4 else output).argmax(-1)
