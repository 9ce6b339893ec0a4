"""Interleaved timing, framework-free: every callable runs in every round, in A,B,B,A order (so a
linear drift in machine speed hits both sides alike), and each side's time is the median over rounds.

A callable must finish its work before returning (a JAX caller blocks on its result, a CUDA caller
synchronises); the time of one round is divided by the calls in it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    warmup: int = 2  # calls of each callable before timing (after its first, compiling call)
    rounds: int = 9  # timed rounds; the median is over these
    min_round_s: float = 0.25  # each round repeats a call until it lasts about this long

    @classmethod
    def quick(cls) -> Settings:
        return cls(warmup=1, rounds=3, min_round_s=0.02)


@dataclass
class Timing:
    """Seconds per call, one sample per round."""

    samples: list[float]
    calls_per_round: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def interleaved(fns: dict[str, Callable[[], object]], settings: Settings = Settings(),
                clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time each callable in `fns`, interleaved round by round. Every callable is called the same number
    of times per round, chosen from the slowest one so that a round lasts about `min_round_s`."""
    names = list(fns)
    for _ in range(settings.warmup):
        for name in names:
            fns[name]()
    slowest = 0.0
    for name in names:
        start = clock()
        fns[name]()
        slowest = max(slowest, clock() - start)
    calls = max(1, math.ceil(settings.min_round_s / slowest)) if slowest > 0 else 1
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            start = clock()
            for _ in range(calls):
                fn()
            samples[name].append((clock() - start) / calls)
    return {name: Timing(samples[name], calls) for name in names}


def ratio(reference: Timing, generated: Timing) -> dict[str, float]:
    """reference / generated from the medians (>= 1: the generated model is at least as fast), and the
    spread of the per-round ratios: half their interquartile range, relative to the ratio."""
    value = reference.median / generated.median
    per_round = sorted(a / b for a, b in zip(reference.samples, generated.samples))
    if len(per_round) >= 4:
        q1, _, q3 = statistics.quantiles(per_round, n=4)
        spread = (q3 - q1) / 2 / value
    else:
        spread = (per_round[-1] - per_round[0]) / 2 / value
    return {"ratio": value, "spread": spread}


def settings_from(request: dict) -> Settings:
    return Settings(**request["settings"])


def timed_row(label: str, mode: str, batch: int, fns: dict[str, Callable[[], object]], settings: Settings,
              **extra) -> dict:
    """Time `fns` ("reference" and/or "generated") interleaved; one result row (seconds per batch)."""
    first = {}
    for name, fn in fns.items():  # the first call compiles (torch.compile, jit, tf.function): timed apart
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
    timings = interleaved(fns, settings)
    row = {"pair": label, "mode": mode, "batch": batch, "first_call_s": first,
           "calls_per_round": next(iter(timings.values())).calls_per_round, "rounds": settings.rounds, **extra}
    for name, timing in timings.items():
        row[f"{name}_s"] = timing.median
        row[f"{name}_samples"] = timing.samples
    if "reference" in timings and "generated" in timings:
        row.update(ratio(timings["reference"], timings["generated"]))
    return row
