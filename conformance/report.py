"""Conformance reports: the terminal table, report.md, report.json and JUnit XML."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from conformance.checks import Check
from conformance.console import console
from conformance.report_html import html_report
from conformance.runner import RunResult
from spec import describe
from spec.files import atomic_write

CHECKS = ("build", "structure", "params", "round_trip", "shapes", "macs", "resolutions", "outputs", "onnx")


def _rows(loaded, run: RunResult, checks: list[Check]) -> list[dict]:
    by_variant: dict[str, dict[str, list[Check]]] = defaultdict(lambda: defaultdict(list))
    for c in checks:
        by_variant[c.variant][c.name].append(c)
    rows = []
    for variant in run.variants:
        desc = describe(loaded, variant, run.flavor, run.resolution, run.num_classes)
        cells = {}
        for name in CHECKS:
            group = by_variant[variant].get(name, [])
            cells[name] = "–" if not group else ("ok" if all(c.ok for c in group) else "FAIL")
        outputs = [c for c in by_variant[variant].get("outputs", []) if "logits_rel" in c.figures]
        worst = max((c.figures["logits_rel"] for c in outputs), default=float("nan"))
        rows.append({"variant": variant, "params": desc.params, "state": desc.state, "macs": desc.macs,
                     "cells": cells, "worst_logits_rel": worst})
    return rows


def time_split(run: RunResult) -> dict[str, float]:
    """Where a run's time went: the frameworks' own work (imports, build, weights, forward, MAC counting)
    summed over workers, the workers' wall time, and the runner's own preparation."""
    split: dict[str, float] = defaultdict(float)
    for run_ in run.workers:
        results = [r for (v, key), r in run.results.items() if key == run_.worker.key]
        split["import"] += results[0].import_s if results else 0.0
        for result in results:
            for phase, seconds in result.timings.items():
                split[phase] += seconds
        split["worker wall"] += run_.seconds
    split["prepare (spec, weights)"] = run.spec_seconds
    split["checks"] = run.extra.get("check_seconds", 0.0)
    split["total wall"] = run.seconds
    return dict(split)


def print_summary(loaded, run: RunResult, checks: list[Check], seconds: float) -> None:
    from rich.table import Table

    console_ = console()
    h, w = run.resolution
    table = Table(title=f"Conformance: {len(run.variants)} variants, {run.flavor} flavor, {h}x{w} input, "
                        f"frameworks {', '.join(r.worker.key for r in run.workers)}")
    table.add_column("variant")
    for column in ("params", "BN state", "MACs"):
        table.add_column(column, justify="right")
    for name in CHECKS:
        table.add_column(name, justify="center")
    table.add_column("max logits err", justify="right")
    for row in _rows(loaded, run, checks):
        cells = [f"[green]{v}[/]" if v == "ok" else f"[red]{v}[/]" if v == "FAIL" else v for v in row["cells"].values()]
        table.add_row(row["variant"], f"{row['params']:,}", f"{row['state']:,}", f"{row['macs'] / 1e6:.2f} M",
                      *cells, f"{row['worst_logits_rel']:.1e}")
    console_.print(table)
    failed = [c for c in checks if not c.ok]
    for c in failed[:30]:
        console_.print(f"[red]FAIL[/] {c.variant} {c.name} [{c.subject}]: {c.summary}")
    if len(failed) > 30:
        console_.print(f"... and {len(failed) - 30} more failures (see the report)")
    workers = ", ".join(f"{r.worker.key} {r.seconds:.0f} s" for r in run.workers)
    split = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in time_split(run).items())
    console_.print(f"time split: {split}")
    console_.print(f"{len(checks) - len(failed)}/{len(checks)} checks passed in {seconds:.0f} s "
                  f"(spec and weights {run.spec_seconds:.1f} s; workers: {workers})")


def write_reports(folder: Path, loaded, run: RunResult, checks: list[Check]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(loaded, run, checks)
    atomic_write(folder / "report.json", json.dumps({
        "flavor": run.flavor, "resolution": list(run.resolution), "num_classes": run.num_classes,
        "seconds": run.seconds, "time_split": time_split(run),
        "workers": [{"worker": r.worker.key, "seconds": r.seconds, "returncode": r.returncode,
                     "timed_out": r.timed_out} for r in run.workers],
        "variants": rows,
        "checks": [c.to_json() for c in checks],
    }, indent=1, default=str))
    atomic_write(folder / "report.md", _markdown(run, rows, checks))
    h, w = run.resolution
    atomic_write(folder / "report.html", html_report(
        "MobileNet Forge conformance", rows, checks, CHECKS,
        f"{len(run.variants)} variants, flavor {run.flavor}, input {h}x{w}, {run.num_classes} classes; "
        f"{sum(c.ok for c in checks)}/{len(checks)} checks passed in {run.seconds:.0f} s."))
    atomic_write(folder / "junit.xml", _junit(checks))


def _markdown(run: RunResult, rows: list[dict], checks: list[Check]) -> str:
    h, w = run.resolution
    lines = ["# Conformance report", "",
             f"{len(run.variants)} variants, flavor `{run.flavor}`, input {h}x{w}, {run.num_classes} classes; "
             f"workers: {', '.join(f'{r.worker.key} ({r.seconds:.0f} s)' for r in run.workers)}; "
             f"total {run.seconds:.0f} s.", "",
             "| variant | params | BN state | MACs | " + " | ".join(CHECKS) + " | max logits rel. error |",
             "|---|---:|---:|---:|" + "---|" * len(CHECKS) + "---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['params']:,} | {row['state']:,} | {row['macs']:,} | "
                     + " | ".join(row["cells"].values()) + f" | {row['worst_logits_rel']:.2e} |")
    failed = [c for c in checks if not c.ok]
    lines += ["", f"## Failures ({len(failed)})", ""]
    lines += [f"- `{c.variant}` {c.name} [{c.subject}]: {c.summary}" for c in failed] or ["None."]
    lines += _onnx_section(checks)
    lines += ["", "## Output errors per block (relative to max |float64 reference|)", ""]
    for c in checks:
        if c.name == "outputs" and "blocks" in c.figures:
            worst = max(c.figures["blocks"].items(), key=lambda item: item[1]["rel"])
            lines.append(f"- `{c.variant}` {c.subject}: logits {c.figures['logits_rel']:.2e} "
                         f"(abs {c.figures['logits_abs']:.2e}); worst block {worst[0]} {worst[1]['rel']:.2e}")
    return "\n".join(lines) + "\n"


def _onnx_section(checks: list[Check]) -> list[str]:
    rows = [c for c in checks if c.name == "onnx" and "~" not in c.subject]
    if not rows:
        return []
    pairs = {(c.variant, c.subject): c.ok for c in checks if c.name == "onnx" and "~" in c.subject}
    lines = ["", "## ONNX (opset 18)", "",
             "| variant | framework | export | checker | ORT rel. error | reference evaluator | graph = spec | "
             "graph = other frameworks | canonical ops |", "|---|---|---:|---|---:|---:|---|---|---|"]
    for c in rows:
        info = c.figures
        others = [ok for (variant, pair), ok in pairs.items() if variant == c.variant and c.subject in pair.split("~")]
        export = "cached" if info["cached"] else f"{info['export_s']:.1f} s"
        reference = info.get("reference_evaluator_rel_error")
        ops = ", ".join(f"{k} {v}" for k, v in info["canonical"]["ops"].items())
        lines.append(f"| {c.variant} | {c.subject} | {export} | ok | {info['ort_rel_error']:.2e} | "
                     f"{'–' if reference is None else f'{reference:.2e}'} | "
                     f"{'yes' if c.graph_equals_spec else 'NO'} | "
                     f"{'yes' if others and all(others) else 'NO' if others else '–'} | {ops} |")
    return lines


def _junit(checks: list[Check]) -> str:
    failures = sum(not c.ok for c in checks)
    cases = []
    for c in checks:
        name = quoteattr(f"{c.name}[{c.subject}]")
        body = "" if c.ok else f"<failure message={quoteattr(c.summary[:200])}>{escape(c.summary)}</failure>"
        cases.append(f'  <testcase classname={quoteattr(c.variant)} name={name}>{body}</testcase>')
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="mnforge-conformance" tests="{len(checks)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")
