"""`make fuzz`: N random families through every framework, minimal failing specs and a summary.

An *example* is one random family (a single-family spec: its architectures, variants, flavor
overrides). Examples travel in batches, one spec of K families conformed in one run, because a
worker's start (importing TensorFlow, JAX, PyTorch) costs more than building a small model:

    tier      share of examples   what each batch goes through (conformance/fuzz/pipeline.py)
    build     the rest            load, describe, render; every run builds every variant: structure,
                                  params, bit-exact round trip, block output shapes
    outputs   20%                 + the float64 reference: outputs within tolerance, MACs
    onnx      3%                  + ONNX export, checker, ONNX Runtime, canonical graph equals the spec

The plan is drawn by hypothesis from one seed, so it is the same on every machine; `--shard K/S`
runs every S-th batch starting at the K-th (disjoint shards whose union is the whole plan). A
failing family is rerun alone to confirm it, shrunk (conformance/fuzz/shrink.py) and written as a
YAML file with the command that reproduces it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

from conformance.fuzz import known_bugs
from conformance.fuzz.case import Case
from conformance.fuzz.pipeline import STATIC_CHECKS, Failure, run_case, run_cases, runs_of, use_jax_cache
from conformance.fuzz.shrink import shrink
from conformance.fuzz.strategies import batch
from spec.files import atomic_write

TIER_SHARES = {"onnx": 0.03, "outputs": 0.20}  # of the examples; `outputs` includes `onnx`
# Families per batch, so that a batch takes about a minute or two on 2 busy cores (README: Fuzzing).
FAMILIES_PER_BATCH = {"build": 6, "outputs": 5, "onnx": 2}
DEFAULT_OUT = Path("reports/fuzz")
JAX_CACHE = Path(".cache/fuzz/jax")


@dataclass(frozen=True)
class Batch:
    index: int  # in the whole plan
    tier: str
    case: Case

    @property
    def examples(self) -> int:
        return len(self.case.families)


def draw(count: int, families: int, tier: str, seed_: int) -> list[Case]:
    """`count` batches of `families` families each, drawn by hypothesis from `seed_` (no database:
    the same cases on every machine)."""
    drawn: list[Case] = []
    if count <= 0:
        return drawn

    @seed(seed_)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(batch(families, tier))
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn[:count]


def tier_examples(n: int) -> dict[str, int]:
    """How many of `n` examples each tier gets: 3% onnx, 17% more with outputs (20% in all), the rest build."""
    onnx = math.ceil(n * TIER_SHARES["onnx"]) if n >= 10 else 0
    outputs = max(math.ceil(n * TIER_SHARES["outputs"]) - onnx, 0) if n >= 5 else 0
    return {"build": n - onnx - outputs, "outputs": outputs, "onnx": onnx}


def plan(n: int, seed_: int = 0, sizes: dict[str, int] | None = None) -> list[Batch]:
    """The whole campaign's batches, tiers interleaved evenly; every shard derives the same plan."""
    sizes = {**FAMILIES_PER_BATCH, **(sizes or {})}
    per_tier: dict[str, list[Case]] = {}
    for t, (tier, examples) in enumerate(tier_examples(n).items()):
        k = sizes[tier]
        cases = draw(math.ceil(examples / k), k, tier, seed_ * 10 + t)
        left = examples - k * (len(cases) - 1)
        if cases and left < k:  # the last batch carries the remainder
            cases[-1] = _first_families(cases[-1], left)
        per_tier[tier] = cases
    ordered = sorted(((i + 0.5) / len(cases), tier, case) for tier, cases in per_tier.items()
                     for i, case in enumerate(cases))
    return [Batch(index, tier, case) for index, (_, tier, case) in enumerate(ordered)]


def _first_families(case: Case, count: int) -> Case:
    keep = case.families[:count]

    def edit(data: dict) -> None:
        data["families"] = {name: data["families"][name] for name in keep}
        for flavor in data["flavors"].values():
            if "families" in flavor:
                flavor["families"] = {k: v for k, v in flavor["families"].items() if k in keep}
                if not flavor["families"]:
                    del flavor["families"]
    return case.edited(edit)


def parse_shard(text: str) -> tuple[int, int]:
    """"K/S" -> (K, S), 1 <= K <= S."""
    try:
        k, s = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"expected a shard as K/S (1 <= K <= S), got {text!r}") from None
    if not 1 <= k <= s:
        raise ValueError(f"expected a shard as K/S (1 <= K <= S), got {text!r}")
    return k, s


def shard(batches: list[Batch], k: int, of: int) -> list[Batch]:
    return [b for b in batches if b.index % of == k - 1]


# ---- failures --------------------------------------------------------------------------------------------


@dataclass
class Found:
    """A failing family: what failed, whether it fails alone, and its minimal spec."""

    batch: int
    tier: str
    family: str
    failures: list[Failure]
    confirmed: bool = False
    duplicate_of: str | None = None  # a file already written for the same signature
    file: str | None = None  # the minimal spec
    command: str | None = None
    shrink_steps: list[str] = field(default_factory=list)
    shrink_seconds: float = 0.0

    @property
    def primary(self) -> Failure:
        return self.failures[0]

    def to_json(self) -> dict:
        p = self.primary
        return {"batch": self.batch, "tier": self.tier, "family": self.family, "check": p.check,
                "subject": p.subject, "signature": list(p.signature), "summary": p.summary,
                "all_failures": [[f.variant, f.check, f.subject] for f in self.failures],
                "confirmed": self.confirmed, "duplicate_of": self.duplicate_of, "file": self.file,
                "command": self.command, "shrink_steps": self.shrink_steps,
                "shrink_seconds": round(self.shrink_seconds, 1)}


def tier_of(failure: Failure, found_in: str) -> str:
    """The cheapest tier that shows the failure: load, describe and render need no framework."""
    return "static" if failure.check in STATIC_CHECKS else found_in


class SameFailure:
    """The shrinker's predicate: which cases still fail with `signature`. Static cases run one by one,
    conformance cases merged into as few runs as possible (renamed apart), or one by one when `rename`
    is False. `failures` keeps the matching failure of each case that failed (by case key)."""

    def __init__(self, signature: tuple, tier: str, work: Path, parallel: int | None, rename: bool = True):
        self.signature, self.tier, self.work, self.parallel, self.rename = signature, tier, work, parallel, rename
        self.calls = 0
        self.failures: dict[str, Failure] = {}

    def __call__(self, cases: list[Case]) -> list[bool]:
        folder = self.work / f"eval{self.calls}"
        self.calls += 1
        if self.tier == "static" or not self.rename:
            outcomes = [run_case(c, self.tier, folder / str(i), self.parallel) for i, c in enumerate(cases)]
        else:
            outcomes = run_cases(cases, self.tier, folder, self.parallel)
        shutil.rmtree(folder, ignore_errors=True)
        verdicts = []
        for case, outcome in zip(cases, outcomes):
            match = next((f for f in outcome.failures if f.signature == self.signature), None)
            if match is not None:
                self.failures[case.key] = match
            verdicts.append(match is not None)
        return verdicts


def valid_for(tier: str, static: bool, avoid_known: bool = True) -> Callable[[Case], bool]:
    """A shrinking candidate must load and describe (unless the bug is that it does not), and must not
    trigger a known bug of the tier (`avoid_known`)."""
    import tempfile

    from spec import describe, load_spec

    def valid(case: Case) -> bool:
        if static:
            return True
        with tempfile.TemporaryDirectory(prefix="mnforge-fuzz-") as tmp:
            path = Path(tmp) / "spec.yaml"
            path.write_text(case.yaml())
            try:
                loaded = load_spec(path)
                s = case.settings
                for variant in case.variants():
                    describe(loaded, variant, s.flavor, s.resolution, s.num_classes)
                return not (avoid_known and known_bugs.triggered(case, loaded, tier))
            except Exception:  # noqa: BLE001 - an invalid candidate is simply not proposed
                return False
    return valid


def command(case: Case, failure: Failure, tier: str, path: Path) -> str:
    """The command that reruns a minimal spec's failure."""
    s = case.settings
    spec = f"mnforge --spec {path}"
    if failure.check == "load":
        return f"{spec} list"
    if failure.check == "render":
        return f"{spec} generate --out /tmp/mnforge-fuzz-generated"
    variants = " ".join(case.variants()) if failure.check != "describe" else failure.variant
    size = f"--resolution {s.resolution[0]}x{s.resolution[1]} --num-classes {s.num_classes}"
    if failure.check == "describe":
        return f"{spec} describe {variants} --flavor {s.flavor} {size}"
    onnx = " --onnx" if tier == "onnx" else ""
    return f"{spec} conform {variants} --flavor {s.flavor} {size} --frameworks {','.join(s.runs)}{onnx}"


def write_spec(case: Case, failure: Failure, tier: str, path: Path, origin: str) -> str:
    """The minimal spec, with a header that says what fails and how to rerun it. Returns the command."""
    rerun = command(case, failure, tier, path)
    summary = [line for line in failure.summary.splitlines() if line.strip()][:6]
    header = [f"# {origin}",
              f"# Fails: {failure.check} ({failure.subject}){f' of {failure.variant}' if failure.variant else ''}:",
              *(f"#   {line[:200]}" for line in summary),
              f"# Rerun: {rerun}",
              f"#   (in this repository: .venv/bin/python -m conformance.cli {rerun.removeprefix('mnforge ')})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(header) + case.yaml())
    return rerun


def file_name(failure: Failure, case: Case) -> str:
    check, subject, kind = failure.signature
    slug = "-".join(part for part in (check, subject.replace("~", "-"), kind.lower()) if part)
    return f"{slug.replace(':', '-').replace(' ', '_')}-{case.key[:6]}.yaml"


def investigate(found: Found, case: Case, out: Path, work: Path, parallel: int | None, shrink_budget: float,
                done: dict[tuple, str], log: Callable[[str], None], origin: str, do_shrink: bool = True,
                name: str | None = None, avoid_known: bool = True) -> None:
    """Confirm a failing family alone, shrink it (once per signature) and write its minimal spec as
    `name`.yaml (default: named by its signature). `avoid_known`: never shrink into a known bug (off to
    shrink a known bug itself)."""
    failure = found.primary
    tier = tier_of(failure, found.tier)
    single = case.only(found.family)
    if tier != "static":
        single = single.with_settings(runs=runs_of(failure, case.settings.runs))
    alone = run_case(single, tier, work / "confirm", parallel)
    found.confirmed = any(f.signature == failure.signature for f in alone.failures)
    if not found.confirmed:
        log(f"  {found.family}: {failure.check} {failure.subject} does not fail alone (an interaction, or flaky)")
        found.file = str(out / "unconfirmed" / f"{found.family}-batch{found.batch}.yaml")
        found.command = write_spec(case, failure, found.tier, Path(found.file), origin + "; does not fail alone")
        return
    if failure.signature in done:
        found.duplicate_of = done[failure.signature]
        log(f"  {found.family}: same failure as {found.duplicate_of}")
        return
    minimal, shown = single, next(f for f in alone.failures if f.signature == failure.signature)
    if do_shrink:
        rename = True
        if tier != "static":  # a bug that depends on names does not survive the renaming that merges cases
            rename = any(SameFailure(failure.signature, tier, work / "control", parallel)([single, single]))
        result = shrink(single, SameFailure(failure.signature, tier, work / "shrink", parallel, rename),
                        valid_for(tier, tier == "static", avoid_known), chunk=8 if rename else 1,
                        budget_s=shrink_budget, log=lambda line: log(f"  {line}"))
        if result.steps:  # its own spec, unrenamed: does it still fail, and with which message?
            final = SameFailure(failure.signature, tier, work / "final", parallel, rename=False)
            if final([result.case])[0]:
                minimal, shown = result.case, final.failures[result.case.key]
        found.shrink_steps, found.shrink_seconds = result.steps, result.seconds
    path = out / (f"{name}.yaml" if name else file_name(failure, minimal))
    found.file = str(path)
    found.command = write_spec(minimal, shown, tier, path, origin)
    done[failure.signature] = found.file
    log(f"  wrote {path}\n  rerun: {found.command}")


# ---- the campaign ---------------------------------------------------------------------------------------


@dataclass
class TierStats:
    batches: int = 0
    examples: int = 0
    variants: int = 0
    checks: int = 0
    seconds: float = 0.0


def run(n: int, shard_: tuple[int, int] = (1, 1), seed_: int = 0, out: Path = DEFAULT_OUT,
        parallel: int | None = 2, shrink_budget: float = 1800.0, do_shrink: bool = True,
        sizes: dict[str, int] | None = None, log: Callable[[str], None] = print) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    use_jax_cache(JAX_CACHE)
    work = out / "work"
    batches = shard(plan(n, seed_, sizes), *shard_)
    log(f"fuzz: {sum(b.examples for b in batches)} examples in {len(batches)} batches "
        f"(shard {shard_[0]}/{shard_[1]} of {n}, seed {seed_}); known bugs avoided: {', '.join(known_bugs.KNOWN_BUGS)}")
    stats = {tier: TierStats() for tier in ("build", "outputs", "onnx")}
    found: list[Found] = []
    done: dict[tuple, str] = {}
    for i, b in enumerate(batches, 1):
        outcome = run_case(b.case, b.tier, work / f"batch{b.index}", parallel)
        s = stats[b.tier]
        s.batches += 1
        s.examples += b.examples
        s.variants += len(b.case.variants())
        s.checks += outcome.checks
        s.seconds += outcome.seconds
        failing = outcome.families_failing()
        log(f"[{i}/{len(batches)}] batch {b.index} {b.tier}: {b.examples} families, {len(b.case.variants())} "
            f"variants, {outcome.checks} checks, {len(failing)} families failing, {outcome.seconds:.0f} s")
        for family, failures in failing.items():
            f = Found(b.index, b.tier, family, failures)
            log(f"  {family}: {failures[0].check} {failures[0].subject}: {failures[0].summary.splitlines()[0][:200]}")
            origin = f"Found by `make fuzz` (seed {seed_}, batch {b.index}, tier {b.tier}, family {family})"
            investigate(f, b.case, out, work / f"batch{b.index}-{family}", parallel, shrink_budget, done, log,
                        origin, do_shrink)
            found.append(f)
        shutil.rmtree(work / f"batch{b.index}", ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = {
        "n": n, "shard": f"{shard_[0]}/{shard_[1]}", "seed": seed_, "seconds": round(time.perf_counter() - start, 1),
        "tiers": {tier: {**s.__dict__, "seconds": round(s.seconds, 1),
                         "seconds_per_example": round(s.seconds / s.examples, 1) if s.examples else None}
                  for tier, s in stats.items()},
        "failures": [f.to_json() for f in found],
        "known_bugs_avoided": {name: bug.description for name, bug in known_bugs.KNOWN_BUGS.items()},
    }
    suffix = "" if shard_ == (1, 1) else f"-shard{shard_[0]}of{shard_[1]}"
    atomic_write(out / f"summary{suffix}.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(out / f"summary{suffix}.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [f"# Fuzz summary: {summary['n']} examples, shard {summary['shard']}, seed {summary['seed']}", "",
             f"{summary['seconds']:.0f} s in all.", "",
             "| tier | batches | examples | variants | checks | seconds | s / example |", "|---|---|---|---|---|---|---|"]
    for tier, s in summary["tiers"].items():
        lines.append(f"| {tier} | {s['batches']} | {s['examples']} | {s['variants']} | {s['checks']} | "
                     f"{s['seconds']:.0f} | {s['seconds_per_example'] or '-'} |")
    lines += ["", f"## Failures ({len(summary['failures'])})", ""]
    for f in summary["failures"]:
        where = f["file"] or f"same as {f['duplicate_of']}"
        lines.append(f"* batch {f['batch']} ({f['tier']}), family `{f['family']}`: **{f['check']}** "
                     f"({f['subject']}){'' if f['confirmed'] else ', not confirmed alone'}: "
                     f"{f['summary'].splitlines()[0][:160]}; {where}" + (f"; `{f['command']}`" if f["command"] else ""))
    lines += ["", "## Known bugs avoided by the strategies", ""]
    lines += [f"* `{name}`: {text}" for name, text in summary["known_bugs_avoided"].items()]
    return "\n".join(lines) + "\n"
