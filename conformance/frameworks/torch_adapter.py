"""PyTorch: generated/pytorch. The neutral layout is PyTorch's own, so tensors move unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from conformance.frameworks.protocol import MacCount, OptimizerConfig, TrainStep, classifier_options
from conformance.weights import WeightError
from generators.location import family_module


class Adapter:
    run_key = "torch"
    device = "cpu"  # the worker sets "cuda" for `mnforge conform --device gpu`

    def __init__(self):
        import torch

        torch.set_num_threads(1)
        self.torch = torch

    def build(self, family: str, variant: str, flavor: str, num_classes: int | None, resolution: tuple[int, int],
              dtype: str = "float32", abstract: bool = False, dropout: float | None = None):
        module = family_module("torch", family)
        options = classifier_options(num_classes, dropout)
        model = module.VARIANTS[variant](flavor=flavor, **options).eval().to(self.device)
        if dtype == "float64":
            _exact_hard_sigmoid(model)
            return model.double()
        return model

    def tensors(self, model) -> dict[str, np.ndarray]:
        return {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()
                if not name.endswith("num_batches_tracked")}

    def shapes(self, model) -> dict[str, tuple[int, ...]]:
        return {name: tuple(value.shape) for name, value in model.state_dict().items()
                if not name.endswith("num_batches_tracked")}

    def trainable(self, model) -> dict[str, int]:
        return {name: p.numel() for name, p in model.named_parameters()}

    def load(self, model, tensors: dict[str, np.ndarray]) -> None:
        own = self.shapes(model)
        for name, value in tensors.items():
            if name in own and own[name] != value.shape:
                raise WeightError(f"{name}: shape {value.shape}, the model has {own[name]}")
        state = {name: self.torch.from_numpy(np.asarray(value)) for name, value in tensors.items()}
        dtype = next(model.parameters()).dtype
        state = {name: value.to(dtype) for name, value in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise WeightError(f"PyTorch model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def forward_blocks(self, model, images_nchw: np.ndarray) -> dict[str, np.ndarray]:
        dtype = next(model.parameters()).dtype
        with self.torch.no_grad():
            outputs = model.forward_intermediates(self.torch.from_numpy(images_nchw).to(self.device, dtype))
        return {name: value.cpu().numpy() for name, value in outputs.items()}

    def logits(self, model, images_nchw: np.ndarray) -> np.ndarray:
        dtype = next(model.parameters()).dtype
        with self.torch.no_grad():
            return model(self.torch.from_numpy(images_nchw).to(self.device, dtype)).cpu().numpy()

    def _batch(self, model, images_nchw: np.ndarray, labels: np.ndarray):
        dtype = next(model.parameters()).dtype
        return (self.torch.from_numpy(images_nchw).to(self.device, dtype),
                self.torch.from_numpy(np.asarray(labels, np.int64)).to(self.device))

    def train_step(self, model, images_nchw: np.ndarray, labels: np.ndarray) -> TrainStep:
        x, y = self._batch(model, images_nchw, labels)
        model.train()
        model.zero_grad(set_to_none=True)
        try:
            blocks = model.forward_intermediates(x)
            loss = _loss(blocks[next(reversed(blocks))], y)
            loss.backward()
        finally:
            model.eval()
        return TrainStep({name: value.detach().cpu().numpy() for name, value in blocks.items()}, loss.detach().item(),
                         {name: p.grad.detach().cpu().numpy().copy() for name, p in model.named_parameters()})

    def fit(self, model, images_nchw: np.ndarray, labels: np.ndarray, optimizer: OptimizerConfig,
            steps: int) -> Iterator[dict[str, np.ndarray]]:
        x, y = self._batch(model, images_nchw, labels)
        o = optimizer
        if o.name == "sgd":
            step = self.torch.optim.SGD(model.parameters(), lr=o.learning_rate, momentum=o.momentum)
        else:
            step = self.torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.beta1, o.beta2),
                                          eps=o.epsilon, weight_decay=o.weight_decay)
        model.train()
        try:
            for _ in range(steps):
                step.zero_grad(set_to_none=True)
                _loss(model(x), y).backward()
                step.step()
                yield {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters()}
        finally:
            model.eval()

    def train_outputs(self, model, images_nchw: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        x, _ = self._batch(model, images_nchw, np.zeros(len(images_nchw)))
        self.torch.manual_seed(seed)
        model.train()
        try:
            with self.torch.no_grad():
                outputs = model.forward_intermediates(x)
        finally:
            model.eval()
        return {name: value.cpu().numpy() for name, value in outputs.items()}

    def logits_at(self, model, desc, resolution: tuple[int, int], batch: int) -> np.ndarray:
        return self.logits(model, np.zeros((batch, 3, *resolution), np.float32))

    def count_macs(self, model, resolution: tuple[int, int]) -> MacCount:
        """FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions and matmuls. PyTorch gives
        it a formula for the CUDA attention kernels only; the CPU one gets the same two products here."""
        from torch.utils.flop_counter import FlopCounterMode

        aten = self.torch.ops.aten

        def cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
            batch, heads, queries, key_dim = query
            return 2 * batch * heads * queries * key[-2] * (key_dim + value[-1])

        x = self.torch.zeros(1, 3, *resolution, dtype=next(model.parameters()).dtype, device=self.device)
        mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter, self.torch.no_grad():
            model(x)
        flops = counter.get_total_flops()
        return MacCount("torch.utils.flop_counter.FlopCounterMode (FLOPs / 2)", flops // 2, details={"flops": flops})


def _loss(output, labels):
    """Mean softmax cross-entropy of the logits, or of an encoder's feature map averaged over its positions
    (conformance/training.py)."""
    import torch

    scores = output.mean((2, 3)) if output.dim() == 4 else output
    return torch.nn.functional.cross_entropy(scores, labels)


def _exact_hard_sigmoid(model) -> None:
    """PyTorch's hardsigmoid backward multiplies by the float32 constant 1/6 in float64 too (3e-8 relative:
    every gradient through a squeeze-excite gate, 2.14.1), which would make the float64 reference only as
    exact as float32 there. The reference computes relu6(x + 3) / 6, the same function, in float64."""
    import torch

    class ExactHardSigmoid(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu6(x + 3.0) / 6.0

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Hardsigmoid):
                setattr(parent, name, ExactHardSigmoid())
