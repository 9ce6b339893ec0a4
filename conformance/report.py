"""Conformance reports: the terminal table, report.md, report.json, report.html and JUnit XML.

A report is one JSON-ready dict (`report_dict`): the run's settings, its variants' rows, its checks and
its timing. The four files are written from that dict alone (`write_report_files`), so `mnforge report
merge` (`merge_reports`) can combine the report.json files of several runs, e.g. the shards of one
`conform --all --shard K/N` matrix, into the report one run over all of them would have written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from conformance.checks import Check
from conformance.console import console
from conformance.quantization import LOSS_THRESHOLD_DB
from conformance.report_html import html_report
from conformance.runner import RunResult
from conformance.training import TRAIN_STEPS, block_of, tolerance
from spec import describe
from spec.files import atomic_write

CHECKS = ("build", "structure", "params", "round_trip", "shapes", "macs", "resolutions", "outputs", "onnx", "litert",
          "litert_int8")
REPORT_FORMAT = 2  # 2: spec, frameworks, options, selection and shard recorded (what `report merge` needs)
SAME_RUN = ("flavor", "resolution", "num_classes", "frameworks", "options")  # and the spec's sha256


def _rows(loaded, run: RunResult, checks: list[Check]) -> list[dict]:
    by_variant: dict[str, dict[str, list[Check]]] = defaultdict(lambda: defaultdict(list))
    for c in checks:
        by_variant[c.variant][c.name].append(c)
    training = training_summary(checks)
    rows = []
    for variant in run.variants:
        desc = describe(loaded, variant, run.flavor, run.resolution, run.num_classes)
        cells = {}
        for name in CHECKS:
            group = by_variant[variant].get(name, [])
            cells[name] = "–" if not group else ("ok" if all(c.ok for c in group) else "FAIL")
        outputs = [c for c in by_variant[variant].get("outputs", []) if "logits_rel" in c.figures]
        worst = max((c.figures["logits_rel"] for c in outputs), default=float("nan"))
        seconds = sum(sum(r.timings.values()) for (v, _), r in run.results.items() if v == variant)
        row = {"variant": variant, "params": desc.params, "state": desc.state, "macs": desc.macs,
               "cells": cells, "worst_logits_rel": worst, "worker_seconds": seconds}
        if variant in training:
            row["training"] = training[variant]
        rows.append(row)
    return rows


def time_split(run: RunResult) -> dict[str, float]:
    """Where a run's time went: the frameworks' own work (imports, build, weights, forward, MAC counting)
    summed over workers, the workers' wall time, and the runner's own preparation."""
    split: dict[str, float] = defaultdict(float)
    for run_ in run.workers:
        results = [r for (v, key), r in run.results.items()
                   if key == run_.worker.key and run_.worker.runs(v, run.variants)]
        split["import"] += results[0].import_s if results else 0.0
        for result in results:
            for phase, seconds in result.timings.items():
                split[phase] += seconds
        split["worker wall"] += run_.seconds
    split["prepare (spec, weights)"] = run.spec_seconds
    if "reestimate_seconds" in run.extra:
        split["re-estimate BatchNorm (int8)"] = run.extra["reestimate_seconds"]
    split["checks"] = run.extra.get("check_seconds", 0.0)
    split["total wall"] = run.seconds
    return dict(split)


def report_dict(loaded, run: RunResult, checks: list[Check], selection: list[str] | None = None,
                shard: tuple[int, int] | None = None) -> dict:
    """Everything the report files show, JSON-ready. `selection`: the variants asked for before `--shard`
    (default: the run's); `shard`: (K, N) when the run was the K-th of N shards of that selection."""
    config = run.config
    return {
        "format": REPORT_FORMAT,
        "spec": {"path": str(loaded.path), "sha256": loaded.sha256, "variants": list(loaded.spec.variants())},
        "flavor": run.flavor, "resolution": list(run.resolution), "num_classes": run.num_classes,
        "frameworks": [w.key for w in config.workers],
        "options": {"onnx": config.options.onnx, "litert": config.options.litert, "device": config.options.device},
        "selection": list(run.variants if selection is None else selection),
        "shard": list(shard) if shard else None,
        "seconds": run.seconds, "time_split": time_split(run),
        "workers": [{"worker": r.worker.key, "seconds": r.seconds, "returncode": r.returncode,
                     "timed_out": r.timed_out} for r in run.workers],
        "failed": sum(not c.ok for c in checks),
        "variants": _rows(loaded, run, checks),
        "checks": [c.to_json() for c in checks],
    }


def check_from_json(data: dict) -> Check:
    """A Check back from report.json (Check.to_json writes every field; graph_equals_spec may be absent)."""
    return Check(**{f.name: data[f.name] for f in fields(Check) if f.name in data})


def print_summary(loaded, run: RunResult, checks: list[Check], seconds: float) -> None:
    print_report(report_dict(loaded, run, checks), checks, seconds)


def print_report(report: dict, checks: list[Check] | None = None, seconds: float | None = None) -> None:
    """The terminal table of a report dict, its first failures and its time split."""
    from rich.table import Table

    checks = [check_from_json(c) for c in report["checks"]] if checks is None else checks
    seconds = report["seconds"] if seconds is None else seconds
    console_ = console()
    h, w = report["resolution"]
    table = Table(title=f"Conformance: {len(report['variants'])} variants, {report['flavor']} flavor, {h}x{w} "
                        f"input, frameworks {', '.join(report['frameworks'])}")
    table.add_column("variant")
    for column in ("params", "BN state", "MACs"):
        table.add_column(column, justify="right")
    for name in CHECKS:
        table.add_column(name, justify="center")
    table.add_column("max logits err", justify="right")
    for row in report["variants"]:
        cells = [f"[green]{v}[/]" if v == "ok" else f"[red]{v}[/]" if v == "FAIL" else v for v in row["cells"].values()]
        table.add_row(row["variant"], f"{row['params']:,}", f"{row['state']:,}", f"{row['macs'] / 1e6:.2f} M",
                      *cells, f"{row['worst_logits_rel']:.1e}")
    console_.print(table)
    failed = [c for c in checks if not c.ok]
    for c in failed[:30]:
        console_.print(f"[red]FAIL[/] {c.variant} {c.name} [{c.subject}]: {c.summary}")
    if len(failed) > 30:
        console_.print(f"... and {len(failed) - 30} more failures (see the report)")
    workers = ", ".join(f"{r['worker']} {r['seconds']:.0f} s" for r in report["workers"]) or "none"
    split = ", ".join(f"{phase} {value:.0f} s" for phase, value in report["time_split"].items())
    console_.print(f"time split: {split}")
    console_.print(f"{len(checks) - len(failed)}/{len(checks)} checks passed in {seconds:.0f} s "
                  f"(spec and weights {report['time_split'].get('prepare (spec, weights)', 0.0):.1f} s; "
                  f"workers: {workers})")


def write_reports(folder: Path, loaded, run: RunResult, checks: list[Check], selection: list[str] | None = None,
                  shard: tuple[int, int] | None = None) -> dict:
    report = report_dict(loaded, run, checks, selection, shard)
    write_report_files(folder, report)
    return report


def write_report_files(folder: Path, report: dict) -> None:
    """report.json, report.md, report.html and junit.xml from a report dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checks = [check_from_json(c) for c in report["checks"]]
    atomic_write(folder / "report.json", json.dumps(report, indent=1, default=str))
    atomic_write(folder / "report.md", _markdown(report, checks))
    int8 = int8_summary(checks)
    atomic_write(folder / "report.html", html_report(
        "MobileNet Forge conformance", report["variants"], checks, CHECKS,
        f"{_settings(report)}; {sum(c.ok for c in checks)}/{len(checks)} checks passed in "
        f"{report['seconds']:.0f} s." + "".join(f" {line}" for line in _provenance(report)),
        {variant: training_table(runs) for variant, runs in training_summary(checks).items()},
        [(INT8_TITLE, [INT8_INTRO, *int8[2]], int8[0], int8[1])] if int8 else []))
    atomic_write(folder / "junit.xml", _junit(checks))


def _settings(report: dict) -> str:
    h, w = report["resolution"]
    return (f"{len(report['variants'])} variants, flavor {report['flavor']}, input {h}x{w}, "
            f"{report['num_classes']} classes")


def _provenance(report: dict) -> list[str]:
    """Sentences saying what part of a selection this report covers, or which reports it merges."""
    lines = []
    if report.get("shard"):
        k, n = report["shard"]
        lines.append(f"Shard {k}/{n} of {len(report['selection'])} selected variants"
                     + (": no variants in this shard." if not report["variants"] else "."))
    merged = report.get("merged_from")
    if merged:
        parts = [f"{m['report']} ({'shard ' + '/'.join(map(str, m['shard'])) + ', ' if m['shard'] else ''}"
                 f"{m['variants']} variants, {m['seconds']:.0f} s)" for m in merged]
        lines.append(f"Merged from {len(merged)} reports: {', '.join(parts)}; worker times summed, "
                     "wall time the longest.")
        present = {row["variant"] for row in report["variants"]}
        missing = [v for v in report["selection"] if v not in present]
        if missing:
            lines.append(f"Partial: {len(present)} of {len(report['selection'])} selected variants; missing "
                         f"{', '.join(missing[:10])}{f' and {len(missing) - 10} more' if len(missing) > 10 else ''}.")
    return lines


def _markdown(report: dict, checks: list[Check]) -> str:
    h, w = report["resolution"]
    rows = report["variants"]
    workers = ", ".join(f"{r['worker']} ({r['seconds']:.0f} s)" for r in report["workers"])
    lines = ["# Conformance report", "",
             f"{len(rows)} variants, flavor `{report['flavor']}`, input {h}x{w}, {report['num_classes']} classes; "
             f"workers: {workers}; total {report['seconds']:.0f} s.", ""]
    provenance = _provenance(report)
    if provenance:
        lines += [" ".join(provenance), ""]
    lines += ["| variant | params | BN state | MACs | " + " | ".join(CHECKS) + " | max logits rel. error |",
              "|---|---:|---:|---:|" + "---|" * len(CHECKS) + "---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['params']:,} | {row['state']:,} | {row['macs']:,} | "
                     + " | ".join(row["cells"].values()) + f" | {row['worst_logits_rel']:.2e} |")
    failed = [c for c in checks if not c.ok]
    lines += ["", f"## Failures ({len(failed)})", ""]
    lines += [f"- `{c.variant}` {c.name} [{c.subject}]: {c.summary}" for c in failed] or ["None."]
    lines += _onnx_section(checks)
    lines += _litert_section(checks)
    lines += _int8_section(checks)
    lines += _training_section(checks)
    lines += ["", "## Output errors per block (relative to max |float64 reference|)", ""]
    for c in checks:
        if c.name == "outputs" and "blocks" in c.figures:
            worst = max(c.figures["blocks"].items(), key=lambda item: item[1]["rel"])
            lines.append(f"- `{c.variant}` {c.subject}: logits {c.figures['logits_rel']:.2e} "
                         f"(abs {c.figures['logits_abs']:.2e}); worst block {worst[0]} {worst[1]['rel']:.2e}")
    return "\n".join(lines) + "\n"


def _failed_export_row(c: Check, empty_cells: int) -> str:
    """An export table's row for a failed export: its summary on one line, the other cells empty."""
    detail = c.summary.replace("|", "/").replace("\n", " ")
    return f"| {c.variant} | {c.subject} | FAILED: {detail} |" + " – |" * empty_cells


def _export_cell(info: dict) -> str:
    return "cached" if info["cached"] else f"{info['export_s']:.1f} s"


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
        if "canonical" not in info:  # the export (or reading it) failed: the check's summary says why
            lines.append(_failed_export_row(c, empty_cells=6))
            continue
        others = [ok for (variant, pair), ok in pairs.items() if variant == c.variant and c.subject in pair.split("~")]
        export = _export_cell(info)
        reference = info.get("reference_evaluator_rel_error")
        ops = ", ".join(f"{k} {v}" for k, v in info["canonical"]["ops"].items())
        lines.append(f"| {c.variant} | {c.subject} | {export} | ok | {info['ort_rel_error']:.2e} | "
                     f"{'–' if reference is None else f'{reference:.2e}'} | "
                     f"{'yes' if c.graph_equals_spec else 'NO'} | "
                     f"{'yes' if others and all(others) else 'NO' if others else '–'} | {ops} |")
    return lines


def _litert_section(checks: list[Check]) -> list[str]:
    rows = [c for c in checks if c.name == "litert"]
    if not rows:
        return []
    lines = ["", "## LiteRT (float)", "",
             ("| variant | framework | export | ops | not allowed | logits rel. error vs framework | "
              "vs float64 | check |"), "|---|---|---:|---|---|---:|---:|---|"]
    for c in rows:
        info = c.figures
        if "ops" not in info:  # the export (or its run) failed: the check's summary says why
            lines.append(_failed_export_row(c, empty_cells=5))
            continue
        export = _export_cell(info)
        ops = ", ".join(f"{k} {v}" for k, v in info["ops"].items())
        own, ref = info.get(f"vs_{c.subject}"), info.get("vs_float64")
        ref_error = f"{ref['logits_rel']:.2e}" if ref else "–"
        lines.append(f"| {c.variant} | {c.subject} | {export} | {ops} | {', '.join(info['problems']) or 'none'} | "
                     f"{own['logits_rel']:.2e} | {ref_error} | {'ok' if c.ok else 'FAIL'} |")
    return lines


INT8_TITLE = "int8: LiteRT vs ONNX Runtime"
INT8_INTRO = ("Full-integer LiteRT exports (`conform --litert`, README: LiteRT) of the variants chosen for int8, "
              "every block an output, from the run's weights with their BatchNorm statistics re-estimated on the "
              "calibration images, against the same framework's float32 model on the held-out images; ONNX "
              "Runtime's static QDQ int8 of the same weights (with --onnx) beside it, its logits only. The check "
              "fails a variant whose graph breaks an int8 op rule, or that quantizes poorly: a block loses more "
              f"than {LOSS_THRESHOLD_DB:.0f} dB of the SQNR it receives (the likely cause). cached: a reused "
              "export.")


def int8_summary(checks: list[Check]) -> tuple[list[str], list[list[str]], list[str]] | None:
    """The int8 checks as the side-by-side table of conformance/int8_table.py, a row per variant (and run,
    where more than one is exported), and the verdict: which variants quantize poorly and where, and which
    failed to export. (header, rows, verdict sentences), or None without int8 checks."""
    from conformance.int8_table import HEADER, Int8Row, cells
    from conformance.quantization import QuantizationReport

    int8 = [c for c in checks if c.name == "litert_int8"]
    if not int8:
        return None
    several = len({c.subject for c in int8}) > 1
    rows, verdict = [], []
    for c in int8:
        label = f"{c.variant} ({c.subject})" if several else c.variant
        info = c.figures
        if "report" not in info:  # re-estimation or export failed: the check's summary says why
            verdict.append(f"{label}: {c.summary}")
            continue
        ort = info.get("ort")
        rows.append(cells(Int8Row(label, QuantizationReport.from_json(info["report"]),
                                  None if info["cached"] else info["export_s"],
                                  QuantizationReport.from_json(ort["report"]) if ort else None,
                                  None if not ort or ort["cached"] else ort["seconds"])))
        if info["poorly"]:
            verdict.append(f"{label} {' and '.join(info['poorly'])}.")
        if info.get("ort_error"):
            verdict.append(f"{label}: ORT int8 failed: {info['ort_error']}")
    if not any(c.figures.get("poorly") for c in int8):
        verdict.insert(0, f"No variant quantizes poorly: every int8 graph keeps the op rules and no block loses "
                          f"more than {LOSS_THRESHOLD_DB:.0f} dB.")
    return HEADER, rows, verdict


def _int8_section(checks: list[Check]) -> list[str]:
    int8 = int8_summary(checks)
    if int8 is None:
        return []
    header, rows, verdict = int8
    return ["", f"## {INT8_TITLE}", "", INT8_INTRO, "", *[f"- {line}" for line in verdict], "",
            *_markdown_table(header, rows)]


TRAINING_CHECKS = ("train", "train_forward", "running_stats", "gradients", "sgd", "adamw", "dropout")


def training_summary(checks: list[Check]) -> dict[str, dict[str, dict]]:
    """Per variant, per run with training checks (`conform --train`): its tolerance, whether all its training
    checks passed, and each one's headline (report.json's rows; report.md's and report.html's tables).
    A headline's `error` is the check's worst (forward: the logits'; the others relative to the reference's
    change, conformance/training.py), with its tensor and block, and `first_diverging`, the first block
    past the tolerance (None while the check passes)."""
    summary: dict[str, dict[str, dict]] = {}
    for c in checks:
        if c.name not in TRAINING_CHECKS:
            continue
        dtype = c.subject.rpartition(":")[2] if ":" in c.subject else "float32"
        run = summary.setdefault(c.variant, {}).setdefault(c.subject, {"tolerance": tolerance(dtype), "ok": True})
        run["ok"] = run["ok"] and c.ok
        run[c.name] = _headline(c)
    return summary


def _headline(c: Check) -> dict:
    figures = c.figures
    if c.name == "train_forward":
        output = figures.get("output", "classifier")  # the logits, or an encoder's feature map
        return {"ok": c.ok, "error": figures["blocks"].get(output),
                "allowed": figures["allowed"][output], "top1_same": figures["top1_same"],
                "first_diverging": figures["first_diverging"]}
    if c.name in ("running_stats", "gradients"):
        return {"ok": c.ok, **_worst(figures)}
    if c.name in ("sgd", "adamw"):  # the parameters after the last step; where they first went wrong
        steps = figures["steps"]
        failing = next((i for i, step in enumerate(steps) if step["failing_count"]), None)
        headline = {"ok": c.ok, "params_ok": failing is None, "step": len(steps), **_worst(steps[-1]),
                    "first_failing_step": None if failing is None else failing + 1}
        if failing is not None:
            headline["first_diverging"] = steps[failing]["first_diverging"]
        if "eval_logits_rel" in figures:  # after SGD: the fine-tuned model's eval-mode logits
            headline.update(eval_logits_error=figures["eval_logits_rel"], eval_top1_same=figures["eval_top1_same"])
        return headline
    if c.name == "dropout":
        return {"ok": c.ok, "rate": figures["rate"]}
    return {"ok": c.ok, "summary": c.summary}  # "train": the run wrote no training results


def _worst(section: dict) -> dict:
    worst = section["worst"] or {"tensor": None, "error": None, "allowed": None}
    return {"error": worst["error"], "allowed": worst["allowed"], "tensor": worst["tensor"],
            "block": block_of(worst["tensor"]) if worst["tensor"] else None,
            "first_diverging": section["first_diverging"]}


def training_table(runs: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """A variant's training parity table from its training_summary: (header, a row of cells per run)."""
    steps = {name: max((run[name]["step"] for run in runs.values() if name in run), default=TRAIN_STEPS)
             for name in ("sgd", "adamw")}
    header = ["run", "tolerance", "forward logits", "worst gradient (block)", "running statistics (block)",
              f"SGD params after step {steps['sgd']}", "fine-tuned eval logits",
              f"AdamW params after step {steps['adamw']}", "dropout"]
    rows = []
    for subject, run in runs.items():
        if "train" in run:
            rows.append([subject, f"{run['tolerance']:.0e}", f"FAIL: {run['train']['summary']}"] + ["–"] * 6)
            continue
        sgd, dropout = run.get("sgd"), run.get("dropout")
        fine_tuned = None
        if sgd and "eval_logits_error" in sgd:
            fine_tuned = {"error": sgd["eval_logits_error"], "top1_same": sgd["eval_top1_same"],
                          "ok": sgd["eval_logits_error"] <= run["tolerance"] and sgd["eval_top1_same"]}
        rows.append([subject, f"{run['tolerance']:.0e}", _cell(run.get("train_forward")),
                     *(_cell(run.get(name)) for name in ("gradients", "running_stats", "sgd")), _cell(fine_tuned),
                     _cell(run.get("adamw")),
                     "–" if not dropout else f"{'ok' if dropout['ok'] else 'FAIL'} (rate {dropout['rate']})"])
    return header, rows


def _cell(headline: dict | None) -> str:
    """An error cell: the error, its block, and where it failed FAIL with the first diverging block (for an
    optimizer, at which step; an optimizer failing on its eval logits only fails the eval cell)."""
    if headline is None:
        return "–"
    text = "–" if headline["error"] is None else f"{headline['error']:.2e}"
    if headline.get("block"):
        text += f" ({headline['block']})"
    if headline.get("top1_same") is False:
        text += ", top-1 DIFFERS"
    if not headline.get("params_ok", headline["ok"]):
        text += " FAIL"
        if headline.get("first_diverging"):
            step = headline.get("first_failing_step")
            text += f", first diverging: {headline['first_diverging']}" + (f" at step {step}" if step else "")
    return text


def gradient_table(checks: list[Check]) -> tuple[list[str], list[list[str]]] | None:
    """A variant's gradient error per block (its worst tensor) for each float64 run: (header, rows), or None
    without gradient checks. A failing block says FAIL; the first diverging one says so."""
    series = {c.subject: c.figures for c in checks if c.name == "gradients" and "per_block" in c.figures}
    if not series:
        return None
    blocks = list(dict.fromkeys(block for figures in series.values() for block in figures["per_block"]))
    rows = []
    for block in blocks:
        cells = [block]
        for figures in series.values():
            entry = figures["per_block"].get(block)
            cells.append("–" if entry is None else f"{entry['error']:.2e}" + (
                "" if entry["ratio"] <= 1.0 else " FAIL (first diverging)" if block == figures["first_diverging"]
                else " FAIL"))
        rows.append(cells)
    return ["block", *series], rows


def _training_section(checks: list[Check]) -> list[str]:
    summary = training_summary(checks)
    if not summary:
        return []
    intro = ("Training-mode parity against the float64 PyTorch reference (`conform --train`, "
             "conformance/training.py), from the same weights and batch. Errors are relative to what the reference "
             "changed (a gradient, a running-statistics or parameter update), per tensor; the worst is shown with "
             f"its block. Tolerance {tolerance('float32'):.0e} for float32 runs, {tolerance('float64'):.0e} for "
             f"float64 runs ({tolerance('float64', optimizer=True):.0e} for optimizer steps); gradients and "
             "optimizer steps are compared in float64 runs, dropout in float32 runs.")
    lines = ["", "## Training parity", "", intro]
    by_variant: dict[str, list[Check]] = defaultdict(list)
    for c in checks:
        by_variant[c.variant].append(c)
    for variant, runs in summary.items():
        lines += ["", f"### `{variant}`", ""]
        lines += _markdown_table(*training_table(runs))
        gradients = gradient_table(by_variant[variant])
        if gradients:
            lines += ["", "Gradient error per block (its worst tensor):", ""]
            lines += _markdown_table(*gradients)
    return lines


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _junit(checks: list[Check]) -> str:
    failures = sum(not c.ok for c in checks)
    cases = []
    for c in checks:
        name = quoteattr(f"{c.name}[{c.subject}]")
        body = "" if c.ok else f"<failure message={quoteattr(c.summary[:200])}>{escape(c.summary)}</failure>"
        cases.append(f'  <testcase classname={quoteattr(c.variant)} name={name}>{body}</testcase>')
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="mnforge-conformance" tests="{len(checks)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


class MergeError(ValueError):
    """Reports that cannot be one run's: a one-line reason."""


def load_report(folder: Path) -> dict:
    """A report folder's report.json, refused in one line when absent, unreadable or of an older format."""
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"{folder}: no report.json (write one with `mnforge conform ... --report {folder}`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"{path}: not a readable report ({exc})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise MergeError(f"{path}: report format {report.get('format') if isinstance(report, dict) else None!r}, "
                         f"expected {REPORT_FORMAT} (written by an older mnforge; run conform again)")
    return report


def merge_reports(reports: list[tuple[str, dict]], partial: bool = False) -> dict:
    """One report from several (name, report dict) of the same spec and settings, as one run over all of
    their variants would have written it: rows and checks in the spec's order, worker times summed per
    worker, wall time the longest. Refused (MergeError) when the spec or a setting differs, a variant is
    in two reports, or, when the reports are shards of one selection, a shard is missing (unless
    `partial`)."""
    if not reports:
        raise MergeError("no reports to merge")
    first_name, first = reports[0]
    for name, report in reports[1:]:
        if report["spec"]["sha256"] != first["spec"]["sha256"]:
            raise MergeError(f"cannot merge {first_name} and {name}: different specs ({first['spec']['path']} "
                             f"sha256 {first['spec']['sha256'][:12]} vs {report['spec']['path']} "
                             f"sha256 {report['spec']['sha256'][:12]})")
        for key in SAME_RUN:
            if report[key] != first[key]:
                raise MergeError(f"cannot merge {first_name} and {name}: different {key} "
                                 f"({_show(first[key])} vs {_show(report[key])})")
    owner: dict[str, str] = {}
    for name, report in reports:
        for row in report["variants"]:
            if row["variant"] in owner:
                raise MergeError(f"cannot merge: {row['variant']} is in both {owner[row['variant']]} and {name}")
            owner[row["variant"]] = name
    order = {v: i for i, v in enumerate(first["spec"]["variants"])}
    selection = _merged_selection(reports, partial, order)

    def spec_order(variant: str) -> int:
        return order.get(variant, len(order))

    rows = sorted((row for _, r in reports for row in r["variants"]), key=lambda row: spec_order(row["variant"]))
    checks = sorted((c for _, r in reports for c in r["checks"]), key=lambda c: spec_order(c["variant"]))
    workers: dict[str, dict] = {}
    for _, report in reports:
        for w in report["workers"]:
            merged = workers.setdefault(w["worker"], {"worker": w["worker"], "seconds": 0.0, "returncode": 0,
                                                      "timed_out": False})
            merged["seconds"] += w["seconds"]
            merged["returncode"] = merged["returncode"] or w["returncode"]
            merged["timed_out"] = merged["timed_out"] or w["timed_out"]
    split: dict[str, float] = defaultdict(float)
    for _, report in reports:
        for phase, seconds in report["time_split"].items():
            split[phase] = max(split[phase], seconds) if phase == "total wall" else split[phase] + seconds
    return {
        "format": REPORT_FORMAT,
        "spec": first["spec"], **{key: first[key] for key in SAME_RUN},
        "selection": selection, "shard": None,
        "seconds": max(r["seconds"] for _, r in reports), "time_split": dict(split),
        "workers": sorted(workers.values(), key=lambda w: _index(first["frameworks"], w["worker"])),
        "failed": sum(not c["ok"] for c in checks),
        "variants": rows, "checks": checks,
        "merged_from": [{"report": name, "shard": r["shard"], "variants": len(r["variants"]),
                         "seconds": r["seconds"], "failed": r["failed"]} for name, r in reports],
    }


def _merged_selection(reports: list[tuple[str, dict]], partial: bool, order: dict[str, int]) -> list[str]:
    """Shards (any report a shard): all must be shards K/N of one selection and one N, every K in 1..N
    present once (unless `partial`); the merged selection is theirs. Whole runs: the union of their
    selections, in the spec's order."""
    first_name, first = reports[0]
    if not any(r["shard"] for _, r in reports):
        union = dict.fromkeys(v for _, r in reports for v in r["selection"])
        return sorted(union, key=lambda v: order.get(v, len(order)))
    for name, report in reports:
        if not (report["shard"] and first["shard"] and report["shard"][1] == first["shard"][1]
                and report["selection"] == first["selection"]):
            raise MergeError(f"cannot merge {first_name} ({_what(first)}) and {name} ({_what(report)}): "
                             "shards must split one selection the same number of ways")
    count = first["shard"][1]
    seen: dict[int, str] = {}
    for name, report in reports:
        k = report["shard"][0]
        if k in seen:
            raise MergeError(f"cannot merge: shard {k}/{count} given twice ({seen[k]} and {name})")
        seen[k] = name
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in seen]
    if missing and not partial:
        raise MergeError(f"missing shard(s) {', '.join(missing)} of the {len(first['selection'])} selected "
                         "variants; pass --partial to merge the others anyway")
    return list(first["selection"])


def _what(report: dict) -> str:
    selected = f"{len(report['selection'])} selected variants"
    return f"shard {report['shard'][0]}/{report['shard'][1]} of {selected}" if report["shard"] else f"all {selected}"


def _index(items: list, item) -> int:
    return items.index(item) if item in items else len(items)


def _show(value) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)
