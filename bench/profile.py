"""Where a PyTorch pair's time goes: `python -m bench.profile REFERENCE [--batch N] [--compiled]`.

Runs the reference and the generated model of one pair (bench/pairs.py) under torch.profiler, each for
the same number of calls after warm-up, and prints their operators side by side (self CPU time per
call, calls per forward), so that a ratio below 1 in `make bench` points at the operators that differ.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict


def profile(model, x, calls: int) -> dict[str, tuple[float, int]]:
    """operator -> (self CPU seconds per forward, calls per forward)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        model(x)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model(x)
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        out[event.key][0] += event.self_cpu_time_total / 1e6 / calls
        out[event.key][1] += event.count // calls
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="a reference name from bench/pairs.py, e.g. torchvision:mobilenet_v2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="profile the torch.compile'd models")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    import torch

    from bench.pairs import factories
    from conformance.porting import torch_refs

    torch.set_num_threads(args.threads)
    found, skipped = factories("torch", [args.reference])
    if skipped:
        print(skipped[0]["why"], file=sys.stderr)
        return 2
    pair, factory = found[0]
    models = {"reference": torch_refs.build(pair.reference), "generated": factory(flavor=pair.flavor).eval()}
    if args.compiled:
        models = {side: torch.compile(m, dynamic=False) for side, m in models.items()}
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        profiles = {side: profile(m, x, args.calls) for side, m in models.items()}
    ref, gen = profiles["reference"], profiles["generated"]
    print(f"{pair.label}, batch {args.batch}{', compiled' if args.compiled else ''}, {args.threads} thread(s): "
          f"self CPU ms per forward (calls per forward)")
    print(f"{'operator':44s} {'reference':>18s} {'generated':>18s} {'gen - ref':>10s}")
    keys = sorted(set(ref) | set(gen), key=lambda k: -max(ref.get(k, (0, 0))[0], gen.get(k, (0, 0))[0]))
    for key in keys[:args.top]:
        r, g = ref.get(key, (0.0, 0)), gen.get(key, (0.0, 0))
        print(f"{key[:44]:44s} {r[0] * 1e3:11.3f} ({r[1]:4d}) {g[0] * 1e3:11.3f} ({g[1]:4d}) {(g[0] - r[0]) * 1e3:+10.3f}")
    total_r, total_g = sum(v[0] for v in ref.values()), sum(v[0] for v in gen.values())
    print(f"{'total':44s} {total_r * 1e3:18.3f} {total_g * 1e3:18.3f} {(total_g - total_r) * 1e3:+10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
