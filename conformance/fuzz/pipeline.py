"""A fuzz case through every stage a user's spec goes through, down to the failing checks per family.

    static    write the YAML, load it (the validator must accept it), describe every variant at the
              case's resolution and class count, render the code of every framework
    build     + every run (generators/frameworks.py RUNS) builds every variant: tensor names and shapes,
              params per layer, bit-exact weight round trip, every block's output shape
    outputs   + the float64 PyTorch reference and each framework's own MAC counter: outputs within the
              float64-anchored tolerance (conformance/checks.py), MACs equal to the spec
    onnx      + ONNX export of each framework: checker, ONNX Runtime, canonical graph equal to the spec

A stage that fails for the whole spec (a load, describe or render error) is traced to the families
that fail it alone; the other families go on. Conformance checks (conformance.checks.evaluate) name
their variant, and so their family.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conformance.checks import evaluate
from conformance.fuzz.case import Case
from conformance.runner import REFERENCE, Options, RunConfig, Worker, execute
from spec import describe, load_spec

TIERS = ("static", "build", "outputs", "onnx")
STATIC_CHECKS = ("load", "describe", "render")


@dataclass(frozen=True)
class Failure:
    family: str
    variant: str | None  # None: the whole family (load, render)
    check: str  # load, describe, render, or a conformance check: build, structure, params, round_trip, ...
    subject: str  # a run, a pair of runs "a~b", "spec", or the stage
    summary: str

    @property
    def signature(self) -> tuple[str, str, str]:
        """What makes two failures the same bug: the check, its subject and, for an error, its type."""
        kind = error_kind(self.summary) if self.check in (*STATIC_CHECKS, "build") else ""
        return self.check, self.subject, kind


def error_kind(summary: str) -> str:
    """`ValueError: ...` -> ValueError; a worker that died or hung -> crash, timeout."""
    head = summary.split(":", 1)[0].strip()
    if head.isidentifier():
        return head
    if summary.startswith("worker timed out"):
        return "timeout"
    return "crash" if summary.startswith("worker exited") else head[:40]


@dataclass
class Outcome:
    case: Case
    tier: str
    failures: list[Failure] = field(default_factory=list)
    checks: int = 0  # conformance checks evaluated (each one ok or in `failures`)
    check_names: set[str] = field(default_factory=set)  # the kinds of check evaluated: build, params, ...
    seconds: float = 0.0
    worker_seconds: dict[str, float] = field(default_factory=dict)

    def families_failing(self) -> dict[str, list[Failure]]:
        by_family: dict[str, list[Failure]] = {}
        for failure in self.failures:
            by_family.setdefault(failure.family, []).append(failure)
        return by_family


def use_jax_cache(folder: Path) -> None:
    """Let every worker keep what XLA compiles in `folder` (inherited through the environment).

    Keras on JAX compiles one random initializer per new weight shape (1-3 s each on a busy core);
    fuzz batches repeat small shapes, so that later batches reuse them. Compiled code is keyed by
    the computation and the JAX version: the results are the same with or without it."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder.resolve()))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def run_case(case: Case, tier: str, work: Path, parallel: int | None = None,
             timeout_per_variant: float = 240.0) -> Outcome:
    """Every stage of `tier` for `case`, in the folder `work` (emptied first)."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    start = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    outcome = Outcome(case, tier)
    case, loaded, generated = _static(case, work, outcome.failures)
    if loaded is not None and tier != "static":
        _conform(case, loaded, generated, tier, work / "run", outcome, parallel, timeout_per_variant)
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_cases(cases: list[Case], tier: str, work: Path, parallel: int | None = None) -> list[Outcome]:
    """Several single-family cases, as few conformance runs as possible: cases that share everything
    but their family (conformance.fuzz.case.shared_part) go into one spec, renamed apart."""
    from conformance.fuzz.case import merge, shared_part

    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(shared_part(case), []).append(i)
    outcomes: list[Outcome | None] = [None] * len(cases)
    for g, indices in enumerate(groups.values()):
        renamed = {i: cases[i].renamed(f"_c{i}") if len(indices) > 1 else cases[i] for i in indices}
        merged = merge([renamed[i] for i in indices])
        outcome = run_case(merged, tier, work / f"group{g}", parallel)
        by_family = outcome.families_failing()
        for i in indices:
            (name,) = renamed[i].families
            outcomes[i] = Outcome(cases[i], tier, [_unrenamed(f, f"_c{i}") for f in by_family.get(name, [])],
                                  outcome.checks, outcome.seconds / len(indices), outcome.worker_seconds)
    return outcomes


def _unrenamed(failure: Failure, suffix: str) -> Failure:
    strip = lambda name: name.removesuffix(suffix) if name else name
    return Failure(strip(failure.family), strip(failure.variant), failure.check, failure.subject, failure.summary)


# ---- static stages -------------------------------------------------------------------------------------


def _static(case: Case, work: Path, failures: list[Failure]):
    """Load, describe and render; families that fail are recorded and left out of the rest.
    Returns (the case that goes on, its LoadedSpec or None, its generated folder or None)."""
    for check, attempt in (("load", _load), ("describe", _describe), ("render", _render)):
        error = _error(attempt, case, work / check)
        if error is None:
            continue
        failing = {}
        if len(case.families) > 1:
            for family in case.families:
                alone = _error(attempt, case.only(family), work / check / family)
                if alone is not None:
                    failing[family] = alone
        if not failing:  # no family fails alone (or there is one family): the spec as a whole does
            failing = {family: error for family in case.families}
        for family, (variant, message) in failing.items():
            failures.append(Failure(family, variant, check, check, message))
        kept = [f for f in case.families if f not in failing]
        if not kept:
            return case, None, None
        case = case.edited(lambda data: _keep_families(data, kept))
    path = work / "spec.yaml"
    path.write_text(case.yaml())
    loaded = load_spec(path)
    generated = work / "generated"
    _write_generated(loaded, generated)
    return case, loaded, generated


def _keep_families(data: dict, kept: list[str]) -> None:
    data["families"] = {name: value for name, value in data["families"].items() if name in kept}
    for flavor in data["flavors"].values():
        if "families" in flavor:
            flavor["families"] = {n: v for n, v in flavor["families"].items() if n in kept}
            if not flavor["families"]:
                del flavor["families"]


def _error(attempt: Callable, case: Case, work: Path) -> tuple[str | None, str] | None:
    """None, or (the variant it concerns, or None; the error as `Type: message`)."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        attempt(case, work)
    except _VariantError as exc:
        return exc.variant, f"{type(exc.__cause__).__name__}: {exc.__cause__}"
    except Exception as exc:  # noqa: BLE001 - any exception is a finding, reported with its type
        return None, f"{type(exc).__name__}: {exc}"
    return None


class _VariantError(Exception):
    def __init__(self, variant: str):
        super().__init__(variant)
        self.variant = variant


def _load(case: Case, work: Path):
    path = work / "spec.yaml"
    path.write_text(case.yaml())
    return load_spec(path)


def _describe(case: Case, work: Path) -> None:
    loaded = _load(case, work)
    s = case.settings
    for variant in case.variants():
        try:
            describe(loaded, variant, s.flavor, s.resolution, s.num_classes)
        except Exception as exc:
            raise _VariantError(variant) from exc


def _render(case: Case, work: Path) -> None:
    from generators.generate import render_all

    for path, text in render_all(_load(case, work)).items():
        compile(text, path, "exec")  # ruff formats only what parses, but be explicit


def _write_generated(loaded, folder: Path) -> None:
    from generators.generate import render_all, write

    write(render_all(loaded), folder)


# ---- conformance ---------------------------------------------------------------------------------------


def run_config(case: Case, loaded, generated: Path, tier: str, work: Path, parallel: int | None = None,
               timeout_per_variant: float = 240.0) -> RunConfig:
    """The conformance run of a tier: `build` runs each framework without the float64 reference (no
    output comparison, no MAC counters); `outputs` adds both; `onnx` adds the exports."""
    s = case.settings
    common = dict(num_classes=s.num_classes, work=work, generated=generated, parallel=parallel,
                  timeout_per_variant=timeout_per_variant)
    variants = list(case.variants())
    if tier == "build":
        return RunConfig(loaded, tuple(variants), tuple(Worker(r) for r in s.runs), s.flavor, s.resolution,
                         options=Options(outputs=True, count_macs=False), **common)
    options = Options(onnx=tier == "onnx", onnx_dir=str(work / "onnx"))
    return RunConfig.for_frameworks(loaded, variants, s.runs, s.flavor, s.resolution, options, **common)


def _conform(case: Case, loaded, generated: Path, tier: str, work: Path, outcome: Outcome,
             parallel: int | None, timeout_per_variant: float) -> None:
    result = execute(run_config(case, loaded, generated, tier, work, parallel, timeout_per_variant))
    outcome.worker_seconds = {w.worker.key: round(w.seconds, 1) for w in result.workers}
    variants = case.variants()
    checks = evaluate(loaded, result)
    outcome.checks = len(checks)
    outcome.check_names = {c.name for c in checks}
    outcome.failures += [Failure(variants[c.variant], c.variant, c.name, c.subject, c.summary)
                         for c in checks if not c.ok]


def runs_of(failure: Failure, runs: tuple[str, ...]) -> tuple[str, ...]:
    """The runs a failure needs to show again: its subject's (both of a pair), else all of `runs`."""
    reference = f"{REFERENCE[0]}:{REFERENCE[1]}"
    named = [part for part in failure.subject.split("~") if part in runs and part != reference]
    return tuple(named) or runs
