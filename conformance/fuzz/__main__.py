"""`python -m conformance.fuzz --n 1000 [--shard K/S] [--seed S] [--out reports/fuzz]` (`make fuzz`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.fuzz.campaign import DEFAULT_OUT, FAMILIES_PER_BATCH, parse_shard, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="examples (random families) in all shards (default 1000)")
    parser.add_argument("--shard", default="1/1", help="K/S: run the K-th of S disjoint shards (default 1/1)")
    parser.add_argument("--seed", type=int, default=0, help="the plan's seed: the same seed draws the same specs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="minimal failing specs and the summary")
    parser.add_argument("--parallel", type=int, default=None, help="workers at a time (default: one per core)")
    parser.add_argument("--shrink-budget", type=float, default=1800.0, help="seconds to shrink one failure")
    parser.add_argument("--no-shrink", action="store_true", help="write each failing family as found")
    parser.add_argument("--batch", action="append", default=[], metavar="TIER=K",
                        help=f"families per batch of a tier (default {FAMILIES_PER_BATCH})")
    args = parser.parse_args(argv)
    try:
        shard = parse_shard(args.shard)
        sizes = {tier: int(k) for tier, k in (item.split("=") for item in args.batch)}
    except ValueError as exc:
        parser.error(str(exc))
    summary = run(args.n, shard, args.seed, args.out, args.parallel, args.shrink_budget, not args.no_shrink, sizes)
    failed = [f for f in summary["failures"]]
    print(f"fuzz: {len(failed)} failing families; summary in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
