"""PyTorch: generated vs torchvision / timm in one process, eager and torch.compile; `--gpu`: fp32 with
TF32 off, bf16 + channels_last, and bf16 + channels_last compiled, on CUDA."""

from __future__ import annotations

import copy

from bench.pairs import factories
from bench.timing import settings_from, timed_row
from bench.worker import BenchError

CPU_MODES = ("eager", "compiled")
GPU_MODES = ("fp32", "bf16+channels_last", "bf16+channels_last compiled")


def versions() -> dict:
    import timm
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__}


def setup(device: str, threads: int) -> dict:
    import torch

    if device == "gpu":
        if not torch.cuda.is_available():
            raise BenchError("--gpu: PyTorch sees no CUDA device (torch.cuda.is_available() is False). "
                             "Run `python -m bench --gpu` on a machine with an NVIDIA GPU and a CUDA build of PyTorch.")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        return {"device_name": torch.cuda.get_device_name(0), "tf32": False}
    torch.set_num_threads(threads)
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}


def prepare(model, mode: str, device: str):
    """The model as `mode` runs it (a copy where the mode changes dtype or layout)."""
    import torch

    if device == "cpu":
        return torch.compile(model, dynamic=False) if mode == "compiled" else model
    if mode == "fp32":
        return model.to("cuda")
    model = copy.deepcopy(model).to("cuda", torch.bfloat16, memory_format=torch.channels_last)
    return torch.compile(model, dynamic=False) if mode.endswith("compiled") else model


def input_for(batch: int, mode: str, device: str):
    import torch

    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    if device == "gpu":
        x = x.to("cuda")
        if mode != "fp32":
            x = x.to(torch.bfloat16, memory_format=torch.channels_last)
    return x


def caller(model, x, device: str):
    import torch

    if device == "gpu":
        def call():
            model(x)
            torch.cuda.synchronize()
        return call
    return lambda: model(x)


def run(request: dict, progress) -> dict:
    import torch

    from conformance.porting import torch_refs

    device, settings = request["device"], settings_from(request)
    info = setup(device, request["threads"])
    modes = GPU_MODES if device == "gpu" else CPU_MODES
    found, skipped = factories("torch", request["pairs"])
    rows = []
    for pair, factory in found:
        models = {"reference": torch_refs.build(pair.reference)}
        if not request.get("reference_only"):
            models["generated"] = factory(num_classes=1000, flavor=pair.flavor).eval()
        params = {side: sum(p.numel() for p in m.parameters()) for side, m in models.items()}
        if len(set(params.values())) > 1:
            raise BenchError(f"{pair.label}: the two models differ in size ({params}); not the same network")
        for mode in modes:
            prepared = {side: prepare(m, mode, device) for side, m in models.items()}
            for batch in request["batches"]:
                progress(f"torch {pair.label}: {mode}, batch {batch}")
                x = input_for(batch, mode, device)
                with torch.inference_mode():
                    fns = {side: caller(m, x, device) for side, m in prepared.items()}
                    rows.append(timed_row(pair.label, mode, batch, fns, settings, reference=pair.reference.name,
                                          variant=pair.variant, flavor=pair.flavor, params=params["reference"]))
        torch._dynamo.reset()  # compiled graphs of this pair are not needed again
    return {"rows": rows, "skipped": skipped, "versions": versions(), "setup": info}
