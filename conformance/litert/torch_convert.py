"""PyTorch to LiteRT with litert-torch, in its own environment (`.venv-litert-torch`; README: LiteRT).

litert-torch cannot be installed beside the main environment's pins (its dependency xdsl needs
typing-extensions<4.13, the main environment's anyio needs >=4.16), so the PyTorch export runs here, in a
process of its own, started by the main environment's PyTorch process (conformance/litert/torch_env.py)
with a request file, as every framework worker is: the weights as safetensors, the generated module's
file, the options; it writes the flatbuffer and a JSON result (`seconds`, or `error`) where the request
says. This module imports the standard library, torch, litert_torch and the generated module
(by its file), nothing of this project and nothing of the main environment, and never TensorFlow: imported
before litert_torch, TensorFlow crashes the process (SIGSEGV, through torchao).

    python -m conformance.litert.torch_convert REQUEST.json

The graph's interface is NHWC, as the Keras and Flax exports': the model is wrapped so that it takes an
NHWC image and gives NHWC maps, and litert-torch's layout pass then runs the network in NHWC, with no
TRANSPOSE where every op has an NHWC form (a zero pad gets one here: _constant_pad_in_nhwc).
Quantization is PT2E (torch.export, then litert-torch's quantizer), `dynamic` only: int8 weights per
output channel; full-integer int8 is refused (export.NOT_QUANTIZED: measured, its graph's input and
outputs become int8).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path


def _generated_module(path: str):
    """The generated PyTorch module at `path` (self-contained: torch and the standard library only)."""
    name = f"mnforge_litert_torch_{Path(path).stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up by name
    module_spec.loader.exec_module(module)
    return module


def _channels_last(network, blocks: bool, output: str):
    import torch

    class ChannelsLast(torch.nn.Module):
        """`network` with an NHWC input and NHWC feature-map outputs, by name: every block's, or `output`."""

        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, image):
            x = image.permute(0, 3, 1, 2)
            outputs = self.network.forward_intermediates(x) if blocks else {output: self.network(x)}
            return {name: value.permute(0, 2, 3, 1) if value.ndim == 4 else value for name, value in outputs.items()}

    return ChannelsLast().eval()


def _constant_pad_in_nhwc() -> None:
    """Teach litert-torch's layout pass (0.10) a zero pad in NHWC, which it lacks (it has the reflect and
    replicate pads): without it, a pad stays NCHW, and where the padded map is also read elsewhere (Mobile
    MQA's TF-SAME pad before its key and value downsampling; the query reads the same map), TRANSPOSE ops
    around it survive (MobileNetV4-Hybrid-Medium, tf flavor: 12). The same pad with its amounts moved to
    NHWC's axes; the converter then folds it into the convolution that reads it, as elsewhere."""
    import torch
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import layout_rewrite

    pad_nd = torch.ops.aten.constant_pad_nd.default
    if pad_nd in layout_rewrite.rewriters:
        return  # a litert-torch that has its own

    def constant_pad_nhwc(x, pad, value=0.0):
        # F.pad's amounts come in (before, after) pairs from NCHW's last axis: W, H, C, N
        pairs = [list(pad[i:i + 2]) for i in range(0, len(pad), 2)] + [[0, 0]] * (4 - len(pad) // 2)
        width, height, channels, batch = pairs
        return torch.nn.functional.pad(x, [*channels, *width, *height, *batch], value=value)

    @layout_rewrite.rewriters.register(pad_nd)
    def _rewrite(node):
        node.target = constant_pad_nhwc


def _nearest_as_pytorch(model, sample):
    """`model` exported (torch.export), its `nearest` resizes that litert-torch would get wrong rewritten as
    row and column picks; `model` itself where it has none. litert-torch 0.10 lowers
    F.interpolate(mode="nearest") to a half-pixel RESIZE_NEAREST_NEIGHBOR, which is PyTorch's
    "nearest-exact"; PyTorch's "nearest" picks other rows where the two differ (factors that are not
    whole, mostly: MobileNetV5's fusion neck at 72x40, neck rel. error 0.81, measured). There, each axis
    becomes SLICE ops of the source rows and a CONCATENATION (no GATHER), the rows being those PyTorch's
    own resize picks from an index ramp."""
    import torch
    import torch.nn.functional as F

    def sources(size: int, out: int, mode: str) -> list[int]:
        ramp = torch.arange(size, dtype=torch.float32).reshape(1, 1, size, 1)
        return F.interpolate(ramp, size=(out, 1), mode=mode).flatten().long().tolist()

    aten = torch.ops.aten
    exported = torch.export.export(model, (sample,)).module()
    graph, rewritten = exported.graph, False
    for node in list(graph.nodes):
        if node.target not in (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default):
            continue
        x = node.args[0]
        axes = [(axis, size, out) for axis, size, out in zip(
            (2, 3), x.meta["val"].shape[-2:], node.meta["val"].shape[-2:])]
        if all(sources(size, out, "nearest") == sources(size, out, "nearest-exact") for _, size, out in axes):
            continue
        with graph.inserting_before(node):
            y = x
            for axis, size, out in axes:
                picked = sources(size, out, "nearest")
                rows = {i: graph.call_function(aten.slice.Tensor, (y, axis, i, i + 1)) for i in sorted(set(picked))}
                y = graph.call_function(aten.cat.default, ([rows[i] for i in picked], axis))
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        rewritten = True
    if not rewritten:
        return model  # the module itself: litert-torch exports it once more anyway
    exported.recompile()
    return exported


def _dynamic_range(model, sample):
    """`model` through PT2E with litert-torch's dynamic quantizer (int8 weights per output channel), and the
    converter's quantization config. Full-integer int8 is refused before this process starts
    (export.NOT_QUANTIZED)."""
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, (sample,)).module(), quantizer)
    with torch.no_grad():
        prepared(sample)  # one pass, so that the per-channel observers see the weights
    return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)


def convert(request: dict) -> float:
    """Write the request's model as a LiteRT flatbuffer to request["output"]; returns the seconds."""
    import litert_torch
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    _constant_pad_in_nhwc()
    start = time.perf_counter()
    module = _generated_module(request["generated"])
    network = module.VARIANTS[request["variant"]](flavor=request["flavor"], **request["options"]).eval()
    network.load_state_dict(load_file(request["weights"]))
    model = _channels_last(network, request["blocks"], request["output_name"])
    sample = torch.zeros(1, *request["resolution"], 3)
    model = _nearest_as_pytorch(model, sample)
    quant_config = None
    if request["quantize"] == "dynamic":
        model, quant_config = _dynamic_range(model, sample)
    edge = litert_torch.convert(model, (sample,), quant_config=quant_config)
    edge.export(request["output"])
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    try:
        result = {"seconds": convert(request)}
    except Exception as exc:  # noqa: BLE001  the main process reports its first line; the trace goes to stderr
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"}
    Path(request["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
