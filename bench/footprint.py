"""`python -m bench.footprint VARIANT [--resolution R] [--batch B]`: time and memory of one forward of a
large model (MobileNetV5's 300M encoder at 768x768 is the case it is for), per framework, each in a
process of its own, the reference library's model beside the generated PyTorch one.

Per process: the model is built (random weights: time does not depend on their values), called once to
warm up (and to trace / jit), then `--calls` times; the row gives the median seconds per call, the
process's peak resident memory (ru_maxrss: model, activations, framework) and its resident memory
before the first call (model and framework only). The reference is timm's, where the porting table has
the variant (conformance/porting/references.py). Ratio = reference time / this side's time, as in
`python -m bench` (>= 1: at least as fast as the reference).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIDES = ("reference", "torch", "keras", "flax")  # the reference runs in PyTorch (timm)


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def _build(side: str, variant: str, flavor: str, resolution: int, batch: int):
    """(a zero-argument forward, its input's shape) for `side`, in this process."""
    import numpy as np

    from conformance.frameworks import set_up_process
    from generators.frameworks import FRAMEWORKS
    from generators.location import family_module
    from spec import load_spec
    from spec.resolve import variant_info

    framework = "torch" if side == "reference" else side
    set_up_process(framework)
    module = family_module(framework, variant_info(load_spec().spec, variant).family)
    channels_last = FRAMEWORKS[framework].channels_last
    shape = (batch, resolution, resolution, 3) if channels_last else (batch, 3, resolution, resolution)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if framework == "torch":
        import torch

        if side == "reference":
            from conformance.porting import references, torch_refs

            model = torch_refs.build(references.for_variant("timm", variant, flavor))
        else:
            model = getattr(module, variant)(flavor=flavor)
        model.eval()
        xt = torch.from_numpy(x)

        def forward():
            with torch.inference_mode():
                return model(xt)
        return forward
    factory = getattr(module, variant)
    if framework == "keras":
        model = factory(flavor=flavor, input_shape=(resolution, resolution, 3))
        return lambda: model.predict_on_batch(x)  # a compiled tf.function, built on the first call
    import jax
    from flax import nnx

    model = factory(flavor=flavor, rngs=nnx.Rngs(0))
    model.eval()
    graph, state = nnx.split(model)
    jitted = jax.jit(lambda s, x: nnx.merge(graph, s)(x))
    return lambda: jitted(state, x).block_until_ready()


def measure(side: str, variant: str, flavor: str, resolution: int, batch: int, calls: int) -> dict:
    start = time.perf_counter()
    forward = _build(side, variant, flavor, resolution, batch)
    built = time.perf_counter() - start
    resident = _rss_gb()
    start = time.perf_counter()
    forward()
    first = time.perf_counter() - start
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return {"side": side, "build_s": built, "first_call_s": first, "median_s": statistics.median(times),
            "calls": calls, "resident_before_gb": resident, "peak_gb": _peak_gb()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("variant")
    parser.add_argument("--resolution", type=int, default=None, help="default: the variant's published one")
    parser.add_argument("--flavor", default=None, help="default: the flavor of its timm reference")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = measure(args.worker, args.variant, args.flavor, args.resolution, args.batch, args.calls)
        print(json.dumps(row))
        return 0

    from conformance.porting import references
    from spec import load_spec
    from spec.resolve import default_resolution

    flavor = args.flavor or references.for_variant("timm", args.variant).flavor
    resolution = args.resolution or default_resolution(load_spec().spec, args.variant)
    rows = []
    for side in args.sides.split(","):
        if side not in SIDES:
            parser.error(f"unknown side {side!r}; expected {', '.join(SIDES)}")
        done = subprocess.run(
            [sys.executable, "-m", "bench.footprint", args.variant, "--worker", side, "--flavor", flavor,
             "--resolution", str(resolution), "--batch", str(args.batch), "--calls", str(args.calls)],
            capture_output=True, text=True)
        if done.returncode:
            print(f"{side}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    reference = next((r["median_s"] for r in rows if r["side"] == "reference"), None)
    print(f"{args.variant} ({flavor}) at {resolution}x{resolution}, batch {args.batch}, CPU")
    print(f"{'side':<10} {'median s':>9} {'ratio':>7} {'first s':>8} {'build s':>8} {'model GB':>9} {'peak GB':>8}")
    for r in rows:
        ratio = f"{reference / r['median_s']:.2f}" if reference else "-"
        print(f"{r['side']:<10} {r['median_s']:>9.2f} {ratio:>7} {r['first_call_s']:>8.2f} {r['build_s']:>8.1f} "
              f"{r['resident_before_gb']:>9.2f} {r['peak_gb']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"variant": args.variant, "flavor": flavor, "resolution": resolution,
                                         "batch": args.batch, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
