"""torchvision and timm references: build them (random weights, nothing downloaded), list their layers,
and move weights between their state dicts and the neutral form. Runs in a PyTorch process."""

from __future__ import annotations

import numpy as np

from conformance.porting.pairing import ReferenceLayer, from_neutral, to_neutral
from conformance.porting.references import Reference
from spec.resolve import Description

BN = ("weight", "bias", "running_mean", "running_var")


def build(ref: Reference):
    import torch

    torch.manual_seed(0)  # the random initialisation is the same in every run
    if ref.library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, ref.builder)(weights=None, **dict(ref.kwargs))
    elif ref.library == "timm":
        import timm

        model = timm.create_model(ref.builder, pretrained=False, **dict(ref.kwargs))
    else:
        raise ValueError(f"{ref.name} is not a PyTorch reference")
    return model.eval()


def layers(model) -> list[ReferenceLayer]:
    """Convolutions, norms, linear layers and layer scales in the order the model registers (and runs) them."""
    import torch

    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            tensors = {"weight": module.weight}
            if module.bias is not None:
                tensors["bias"] = module.bias
            out.append(ReferenceLayer(name, "depthwise_conv" if depthwise else "conv", _numpy(tensors)))
        elif isinstance(module, torch.nn.BatchNorm2d):
            out.append(ReferenceLayer(name, "batch_norm", _numpy({t: getattr(module, t) for t in BN})))
        elif isinstance(module, torch.nn.Linear):
            tensors = {"weight": module.weight}
            if module.bias is not None:
                tensors["bias"] = module.bias
            out.append(ReferenceLayer(name, "linear", _numpy(tensors)))
        elif is_layer_scale(module):
            out.append(ReferenceLayer(name, "layer_scale", _numpy({"gamma": module.gamma})))
        elif is_rms_norm(module):
            out.append(ReferenceLayer(name, "rms_norm", _numpy({"weight": module.weight})))
    return out


def is_rms_norm(module) -> bool:
    """timm's RmsNorm2d and RmsNormAct2d (MobileNetV5): a per-channel scale `weight` over NCHW channels."""
    return type(module).__name__.startswith("RmsNorm") and type(module).__name__.endswith("2d")


def is_layer_scale(module) -> bool:
    """timm's LayerScale / LayerScale2d: a per-channel `gamma`, no torch.nn base class to test for."""
    return type(module).__name__.startswith("LayerScale")


def _numpy(tensors: dict) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in tensors.items()}


def import_state_dict(ref: Reference, desc: Description, state_dict: dict) -> dict[str, np.ndarray]:
    """A reference checkpoint (its own names) -> neutral tensors, checked against the reference model
    (strict load: every tensor named and shaped as the reference expects) and the spec."""
    model = build(ref)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshapen = [f"{k} {tuple(v.shape)} (expected {own[k]})" for k, v in state_dict.items()
                 if k in own and tuple(v.shape) != own[k]]
    if missing or unexpected or misshapen:
        raise _mismatch(ref, missing, unexpected, misshapen)
    model.load_state_dict(state_dict, strict=False)
    return to_neutral(desc, layers(model), ref.name)


def export_state_dict(ref: Reference, desc: Description, tensors: dict[str, np.ndarray]) -> dict:
    """Neutral tensors -> the reference model's own state dict (loadable by torchvision / timm)."""
    import torch

    model = build(ref)
    filled = from_neutral(desc, layers(model), tensors, ref.name)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer in filled:
            module = modules[layer.name]
            for tensor, value in layer.tensors.items():
                getattr(module, tensor).copy_(torch.from_numpy(value))
    return model.state_dict()


def _mismatch(ref: Reference, missing: list[str], unexpected: list[str], misshapen: list[str]):
    from conformance.weights import WeightError

    def listing(items):
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing: {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s): {listing(unexpected)}")
    if misshapen:
        parts.append(f"{len(misshapen)} tensor(s) of another shape: {listing(misshapen)}")
    return WeightError(f"checkpoint is not a {ref.name}: " + "; ".join(parts))
