"""Calibration for post-training quantization, one rule for every quantizing exporter (LiteRT now, ONNX
Runtime later): which inputs calibrate, which are held out to measure, and the BatchNorm statistics
re-estimated on the calibration inputs.

Inputs are drawn as the conformance inputs are (conformance/runner.py: standard normal NCHW float32,
one value per pixel and channel), from seeds of their own, so that the calibration set, the held-out set
and the conformance batch (seed 1) never share an image.

Why re-estimate: random weights with random BatchNorm statistics (conformance/weights.py) give each
BatchNorm an input whose mean and variance have nothing to do with its running statistics, so activation
ranges grow or shrink from block to block in a way no trained network shows, and an int8 scale fitted to
them measures that, not the quantizer. `reestimate_batch_norm` sets every BatchNorm's running mean and
variance to the statistics of its own input over the calibration set (per channel, over batch, height
and width; the biased variance, the one BatchNorm normalizes with), in network order, each BatchNorm
seeing the inputs the re-estimated ones before it produce: every BatchNorm output then has about zero
mean and the variance of its scale squared (scales are drawn in [0.5, 1.5]). Scales and shifts, convs,
linears and layer scales are kept. An RMSNorm (MobileNetV5) has no running statistics: nothing to
re-estimate, it is left as it is.

The re-estimation runs once, in the PyTorch worker in float64 (`conformance/porting/worker.py`, op
`calibrate`: `write_reestimated`), and writes a neutral weight file that every framework's exporter then
loads; `conform --litert` keeps that file under `cache_key`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conformance.export_cache import content_key

CALIBRATION_SEED = 1001
HELD_OUT_SEED = 1002
CALIBRATION_IMAGES = 64  # images: BatchNorm statistics and the converter's activation ranges
HELD_OUT_IMAGES = 32  # images the float and the quantized model are compared on


def images(count: int, resolution: tuple[int, int], seed: int) -> np.ndarray:
    """`count` standard normal NCHW float32 images of `resolution` (H, W), from `seed`."""
    if count < 1:
        raise ValueError(f"the number of images must be at least 1, got {count}")
    return np.random.default_rng(seed).normal(0.0, 1.0, (count, 3, *resolution)).astype(np.float32)


def reestimate_batch_norm(model, images_nchw: np.ndarray) -> list[str]:
    """Set each BatchNorm's running statistics of a generated PyTorch `model` (in eval mode) to those of its
    input on `images_nchw`, in one forward pass (a hook runs before each BatchNorm, which then normalizes
    with the new statistics); returns the BatchNorms' canonical names in the order they were set."""
    import torch

    done: list[str] = []

    def hook(name):
        def set_statistics(module, inputs):
            (x,) = inputs
            axes = [0, *range(2, x.ndim)]  # every axis but the channels
            module.running_mean.copy_(x.mean(dim=axes))
            module.running_var.copy_(x.var(dim=axes, unbiased=False))
            done.append(name)
        return set_statistics

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            model(torch.from_numpy(images_nchw).to(dtype))
    finally:
        for handle in handles:
            handle.remove()
    return done


def write_reestimated(adapter, model, desc, count: int, path: Path) -> int:
    """Re-estimate the BatchNorm statistics of a generated PyTorch `model` (float64) on `count` calibration
    images and write its tensors, float32, as the neutral file `path`; returns the BatchNorms set."""
    from conformance import weights as neutral
    from conformance.porting.formats import classes_metadata

    names = reestimate_batch_norm(model, images(count, desc.resolution, CALIBRATION_SEED))
    tensors = {name: value.astype(np.float32) for name, value in adapter.tensors(model).items()}
    neutral.save(Path(path), tensors, {"variant": desc.variant, "flavor": desc.flavor, **classes_metadata(desc),
                                       "source": f"BatchNorm statistics re-estimated on {count} calibration images"})
    return len(names)


def cache_key(generated_torch: Path, weights: Path, count: int, flavor: str, resolution: tuple[int, int]) -> str:
    """Content hash of what `write_reestimated`'s file depends on (conformance/export_cache.py): the PyTorch
    code, the weights, this module (the images and the rule), the images' count and seed, flavor and size."""
    return content_key([generated_torch, weights, Path(__file__)],
                       ["reestimated", count, CALIBRATION_SEED, flavor, list(resolution)])
