"""`mnforge conform --shard K/N`: the K-th of N deterministic, cost-balanced parts of a selection.

Each variant is in exactly one shard. Shards are balanced by an estimated cost with the greedy
longest-processing-time rule: most costly variant first, each to the shard with the least cost so far
(ties: the lower shard). The estimate comes from the spec alone (no clock), so every machine computes
the same partition for the same selection, flavor, resolution and classes; inside a shard variants keep
the selection's order.

The estimate, in seconds of worker time on the 2-core machine of 2026-11-30: a fixed COST_FIXED per
variant plus COST_PER_GMAC per GMAC at the run's input. Fitted (least squares) to the build and ONNX
export times of the 29 variants in that machine's `make conformance` report (224x192, every run, ONNX):
19 s to 153 s a variant, rms error 14 s. MACs alone would be a poor measure: the smallest variant
costs a fifth of the largest, not 1/200th; most of a variant's time is imports of its graph, build and
export, which every variant pays.
"""

from __future__ import annotations

import argparse

from spec import describe

COST_FIXED = 33.5  # seconds of worker time per variant, whatever its size
COST_PER_GMAC = 41.4  # seconds per GMAC (1e9 multiply-accumulates) at the run's input


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type for `K/N`, 1 <= K <= N."""
    k, slash, n = text.partition("/")
    try:
        index, count = int(k), int(n)
    except ValueError:
        index = count = 0
    if not slash or count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
    return index, count


def variant_cost(loaded, variant: str, flavor: str, resolution: tuple[int, int], num_classes: int) -> float:
    return COST_FIXED + COST_PER_GMAC * describe(loaded, variant, flavor, resolution, num_classes).macs / 1e9


def partition(costs: dict[str, float], count: int) -> list[list[str]]:
    """Split `costs` (variant -> cost, in selection order) into `count` shards, each in selection order."""
    order = {name: i for i, name in enumerate(costs)}
    loads = [0.0] * count
    members: list[list[str]] = [[] for _ in range(count)]
    for name in sorted(costs, key=lambda n: (-costs[n], order[n])):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += costs[name]
        members[target].append(name)
    return [sorted(shard, key=order.__getitem__) for shard in members]


def shard_variants(loaded, variants: list[str], shard: tuple[int, int], flavor: str,
                   resolution: tuple[int, int], num_classes: int) -> list[str]:
    """The variants of shard `shard` = (K, N) of the selection `variants`."""
    index, count = shard
    costs = {v: variant_cost(loaded, v, flavor, resolution, num_classes) for v in dict.fromkeys(variants)}
    return partition(costs, count)[index - 1]
