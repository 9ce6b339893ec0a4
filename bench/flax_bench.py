"""Flax NNX: the generated model, jitted, alone in its process; the driver sets its times against the
PyTorch reference's (torchvision / timm, eager and compiled), timed in the PyTorch process just before.

The model is split once into its graph and state and `jax.jit` runs `nnx.merge(graph, state)(x)`: the
usual way to serve an NNX model (nnx.jit would walk the module graph in Python on every call).
`--gpu`: fp32 with the default matmul precision "highest" (no TF32), and bf16 (state and input).
"""

from __future__ import annotations

from bench.pairs import factories
from bench.timing import settings_from, timed_row
from bench.worker import BenchError

CPU_MODES = ("jit",)
GPU_MODES = ("fp32 jit", "bf16 jit")


def run(request: dict, progress) -> dict:
    import flax
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    device, settings = request["device"], settings_from(request)
    if device == "gpu":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError as exc:
            raise BenchError(f"--gpu: JAX sees no GPU ({exc}). Run `python -m bench --gpu` on a machine with an "
                             "NVIDIA GPU and jax[cuda] installed.") from None
        jax.config.update("jax_default_matmul_precision", "highest")
        target = gpus[0]
    else:
        target = jax.devices("cpu")[0]
    modes = GPU_MODES if device == "gpu" else CPU_MODES
    found, skipped = factories("flax", request["pairs"])
    rows = []
    for pair, factory in found:
        model = factory(num_classes=1000, flavor=pair.flavor, rngs=nnx.Rngs(0))
        model.eval()
        graph, state = nnx.split(model)
        forward = jax.jit(lambda s, x, graph=graph: nnx.merge(graph, s)(x))
        for mode in modes:
            dtype = jnp.bfloat16 if mode.startswith("bf16") else jnp.float32
            mode_state = jax.device_put(jax.tree.map(lambda a, dtype=dtype: a.astype(dtype)
                                                     if jnp.issubdtype(a.dtype, jnp.floating) else a, state), target)
            for batch in request["batches"]:
                progress(f"flax {pair.label}: {mode}, batch {batch}")
                x = np.random.default_rng(batch).normal(size=(batch, 224, 224, 3)).astype(np.float32)
                x = jax.device_put(jnp.asarray(x, dtype), target)
                fns = {"generated": lambda f=forward, s=mode_state, x=x: f(s, x).block_until_ready()}
                rows.append(timed_row(pair.label, mode, batch, fns, settings, reference=pair.reference.name,
                                      variant=pair.variant, flavor=pair.flavor))
    versions = {"jax": jax.__version__, "flax": flax.__version__}
    return {"rows": rows, "skipped": skipped, "versions": versions, "setup": {"jax_device": str(target)}}
