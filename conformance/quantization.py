"""How far a quantized model is from its float model: one report for every quantizing exporter (LiteRT;
ONNX Runtime later).

Over the held-out images (conformance/calibration.py), against the float model:
  top-1 agreement   the fraction of images whose argmax is the float model's;
  mean KL           mean over images of KL(softmax(float) || softmax(quantized)), in nats;
  SQNR per block    10·log10(Σ x_float² / Σ (x_quant − x_float)²) in dB, over every element of the block's
                    output on every image;
  loss per block    how many dB of SQNR the block loses: the SQNR it receives (the lowest of the blocks
                    before it, in network order, and of the input as the quantized graph rounds it; at
                    most BEST_INT8_DB, the best one int8 rounding leaves: a block still in float, as small
                    convs are in dynamic-range graphs, is no cleaner a start) less its own;
  first below       the first block whose SQNR is below its threshold, the SQNR it received less
                    LOSS_THRESHOLD_DB: the likely cause.

Why a loss and not one fixed SQNR: an int8 rounding with step s adds noise of power s²/12, so a tensor
spanning all 256 levels is at best 6.02·8 + 1.76 ≈ 50 dB (a Gaussian-like activation calibrated to ±4σ:
≈ 41 dB), and every block then carries the noise it received on. The networks the conformance runs build
have random weights, and random BatchNorm-ReLU networks amplify any perturbation (they are chaotic): in
float64, with no quantization at all, an input perturbed at 38 dB SQNR reaches the last block of
MobileNetV1 0.25 at 7 dB and of MobileNetV2 0.35 at 7 dB, 1.2 to 3.3 dB lost per block (measured, 64x48,
BatchNorm re-estimated). Their int8 graphs follow that curve (35 to 5 dB from the stem to the last
block), so a fixed threshold either flags every deep block of a clean network or nothing. A block that
only carries what it received loses what the float network loses anyway (≤ 3.3 dB measured); its own
rounding, as large as the noise it receives, costs 3 dB more: a clean block loses ≲ 6.5 dB (measured on
the seven variants of README's int8 table, 64x48: at most 7.0 dB). LOSS_THRESHOLD_DB = 10 dB: the block
added at least 9 times the noise it received, its own rounding dominates. An outlier channel that sets a
tensor's scale (the int8-hostile defect tests/test_quantize.py plants) crushes the other channels to a few
levels, and the block that reads them loses 34 dB at once (Keras and Flax alike).

Why the lowest SQNR before a block and not the previous block's: a block whose SQNR rises does not pass
on a cleaner signal. The global pool averages the noise over every position and keeps each channel's mean
over the images, so its SQNR rises (about 10 dB at 224x192), and a BatchNorm after it (MobileNetV4's
`fc`) takes that mean out again: in float64, with no quantization at all, an input perturbed at 38 dB,
MobileNetV4-Conv-Small's `fc` lost 11.5 dB against the pool's SQNR (224x192, BatchNorm re-estimated;
int8: 11.4 dB), and against the previous block's rule every V4-Conv variant named its `fc` (measured:
11.3 to 11.8 dB). Where SQNR only falls (every block up to the pool) the two rules are the same; after
the pool a block is named when it falls 10 dB below the last conv's SQNR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

LOSS_THRESHOLD_DB = 10.0
BEST_INT8_DB = 6.02 * 8 + 1.76  # a full-scale sine through an 8-bit quantizer


@dataclass(frozen=True)
class QuantizationReport:
    """A quantized model against its float model on the held-out images."""

    mode: str  # e.g. "int8"
    against: str  # what the float model was, e.g. "keras (float32)"
    held_out: int  # images compared
    calibration: int  # images calibrated on
    threshold_db: float  # the most SQNR a block may lose (LOSS_THRESHOLD_DB)
    input_sqnr_db: float  # of the input as the quantized graph rounds it (inf: not rounded)
    top1_agreement: float | None  # None for an encoder (no classes)
    mean_kl: float | None
    sqnr_db: dict[str, float] = field(default_factory=dict)  # block -> SQNR, network order
    loss_db: dict[str, float] = field(default_factory=dict)  # block -> SQNR received less its own
    first_below: str | None = None  # the first block whose loss exceeds threshold_db

    @property
    def worst(self) -> tuple[str, float]:
        name = min(self.sqnr_db, key=self.sqnr_db.get)
        return name, self.sqnr_db[name]

    @property
    def cause(self) -> str:
        """The likely cause in a few words: the first block below the threshold and what it loses, or none."""
        return f"{self.first_below} (loses {self.loss_db[self.first_below]:.1f} dB)" if self.first_below else "none"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> QuantizationReport:
        return cls(**data)

    def lines(self) -> list[str]:
        """The report as text, one block a line."""
        worst, worst_db = self.worst
        calibrated = f"calibrated on {self.calibration}" if self.calibration else "weights only, no calibration"
        head = [f"{self.mode} vs {self.against}, {self.held_out} held-out images ({calibrated})"]
        if self.top1_agreement is not None:
            head.append(f"top-1 agreement {self.top1_agreement:.1%}, mean KL {self.mean_kl:.2e} nats")
        rounded = f"input rounded at {self.input_sqnr_db:.1f} dB" if np.isfinite(self.input_sqnr_db) \
            else "input not rounded"
        head.append(f"worst block SQNR {worst_db:.1f} dB ({worst}); {rounded}; threshold: the lowest SQNR "
                    f"before a block (at most {BEST_INT8_DB:.1f} dB) less {self.threshold_db:.0f} dB")
        if not self.loss_db:
            return [*head[:-1], "outputs compared: " + ", ".join(f"{name} {db:.1f} dB SQNR"
                                                                 for name, db in self.sqnr_db.items())]
        head.append(f"first block below the threshold, the likely cause: {self.cause}" if self.first_below
                    else "no block below the threshold")
        head.append(f"  {'block':<24} {'SQNR':>8} {'loss':>8}")
        return head + [f"  {name:<24} {db:5.1f} dB {self.loss_db[name]:5.1f} dB"
                       f"{'  < threshold' if self.loss_db[name] > self.threshold_db else ''}"
                       for name, db in self.sqnr_db.items()]


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """10·log10(Σ reference² / Σ (quantized − reference)²), in float64; inf when they are equal."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((np.asarray(quantized, np.float64) - reference) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")


def softmax_kl(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(logits)) per row, in nats."""
    def log_softmax(x):
        x = np.asarray(x, np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    p_log, q_log = log_softmax(reference_logits), log_softmax(logits)
    return np.sum(np.exp(p_log) * (p_log - q_log), axis=-1)


def quantize_dequantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """`x` rounded to int8 with `scale` and `zero_point` (round half to even, as LiteRT's QUANTIZE), then
    back to float."""
    q = np.clip(np.round(np.asarray(x, np.float64) / scale) + zero_point, -128, 127)
    return (q - zero_point) * scale


def input_sqnr_db(images: np.ndarray, rounding: tuple[float, int] | None) -> float:
    """The SQNR of `images` as a quantized graph's first QUANTIZE rounds them (`rounding`: its scale and zero
    point); inf for a graph that does not round its input."""
    return float(sqnr_db(images, quantize_dequantize(images, *rounding))) if rounding else float("inf")


def compare(reference: dict[str, np.ndarray], quantized: dict[str, np.ndarray], logits: str | None, *, mode: str,
            against: str, calibration: int, input_sqnr_db: float, threshold_db: float = LOSS_THRESHOLD_DB,
            every_block: bool = True) -> QuantizationReport:
    """The report of `quantized` block outputs against `reference` ones (same names, same layout, the
    reference's order is the network's); `logits`: the name of the classifier's output, None for an encoder;
    `input_sqnr_db`: the input's own rounding (what the first block receives). `every_block` False: the
    outputs are not every block (an export with the logits only): no loss, no block named."""
    missing = [name for name in reference if name not in quantized]
    if missing:
        raise ValueError(f"the quantized model has no output {missing[0]!r}")
    sqnr = {name: round(float(sqnr_db(reference[name], quantized[name])), 3) for name in reference}
    received = list(np.minimum.accumulate([BEST_INT8_DB, input_sqnr_db, *list(sqnr.values())[:-1]]))[1:]
    loss = {name: round(float(before - db), 3) for (name, db), before in zip(sqnr.items(), received)
            if every_block}
    first = next((name for name, lost in loss.items() if lost > threshold_db), None)
    top1 = kl = None
    if logits is not None:
        top1 = float(np.mean(reference[logits].argmax(-1) == quantized[logits].argmax(-1)))
        kl = float(np.mean(softmax_kl(reference[logits], quantized[logits])))
    held_out = len(next(iter(reference.values())))
    return QuantizationReport(mode=mode, against=against, held_out=held_out, calibration=calibration,
                              threshold_db=threshold_db, input_sqnr_db=round(input_sqnr_db, 3),
                              top1_agreement=top1, mean_kl=kl, sqnr_db=sqnr, loss_db=loss, first_below=first)
