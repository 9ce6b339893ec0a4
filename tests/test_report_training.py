"""The training section of the reports (`conform --train`): report.md's tables, report.html's gradient
plot and report.json's per-run summary, from synthetic training figures (the workers' own comparison,
conformance/worker.py, on made-up tensors: no framework runs), and `report merge` keeping them."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from conformance import training
from conformance.checks import _train_checks
from conformance.cli import main
from conformance.report import load_report, training_summary, write_report_files, write_reports
from conformance.results import WorkerResult
from conformance.runner import Options, RunConfig, RunResult, WorkerRun
from conformance.worker import _compare_optimizer, _compare_training
from spec import load_spec

SPEC = load_spec()
VARIANTS = ["mobilenet_v1_025", "mobilenet_v3_small_035"]
FRAMEWORKS = ["flax", "keras"]
ORDER = ["stem", "blocks.0", "blocks.1", "pool", "classifier"]
LAYERS = {"stem.conv.weight": (8, 3, 3, 3), "blocks.0.expand.conv.weight": (8, 8, 1, 1),
          "blocks.1.project.conv.weight": (8, 8, 1, 1), "classifier.weight": (10, 8), "classifier.bias": (10,)}
BN = ("stem.bn", "blocks.0.expand.bn", "blocks.1.project.bn")
BAD = ("mobilenet_v3_small_035", "keras:float64")  # its blocks.1 gradient and SGD update are 1e-3 off


def _reference(rng) -> tuple[dict, dict]:
    """(weights before training, the float64 reference's file as conformance/worker.py writes it)."""
    params = {name: rng.normal(size=shape) for name, shape in LAYERS.items()}
    params |= {f"{bn}.{p}": rng.normal(size=8) for bn in BN for p in ("weight", "bias")}
    stats = {f"{bn}.{s}": rng.uniform(0.5, 1.5, size=8) for bn in BN for s in ("running_mean", "running_var")}
    reference = {f"blocks/{name}": rng.normal(size=(4, 8)) for name in ORDER}
    reference |= {f"grad/{name}": rng.normal(size=v.shape) * 1e-2 for name, v in params.items()}
    reference |= {f"stats/{name}": v + rng.normal(size=8) * 1e-2 for name, v in stats.items()}
    for optimizer in ("sgd", "adamw"):
        current = params
        for i in range(training.TRAIN_STEPS):
            current = {name: v + rng.normal(size=v.shape) * 1e-3 for name, v in current.items()}
            reference |= {f"{optimizer}{i}/{name}": v for name, v in current.items()}
    reference["sgd_eval_logits"] = rng.normal(size=(4, 10))
    reference["loss"] = np.float64(2.3)
    return params | stats, reference


def _train(variant: str, key: str, weights: dict, reference: dict, rng) -> dict:
    """A run's training figures: the reference's values with rounding noise (float32: 1e-7, float64: 1e-15
    of each value), and the planted error in BAD."""
    float64 = key.endswith(":float64")
    noise = 1e-15 if float64 else 1e-7

    def near(prefix: str) -> dict:
        return {name[len(prefix) + 1:]: v * (1 + noise * rng.uniform(-1, 1, v.shape))
                for name, v in reference.items() if name.startswith(prefix + "/")}

    step = SimpleNamespace(blocks=near("blocks"), gradients=near("grad"), loss=2.3)
    fitted, eval_logits = {}, None
    if float64:
        fitted = {name: [near(f"{name}{i}") for i in range(training.TRAIN_STEPS)] for name in ("sgd", "adamw")}
        eval_logits = reference["sgd_eval_logits"] * (1 + noise)
        if (variant, key) == BAD:
            gradient = reference["grad/blocks.1.project.conv.weight"]
            step.gradients["blocks.1.project.conv.weight"] += 1e-3 * np.max(np.abs(gradient))
            for params in fitted["sgd"]:
                params["blocks.1.project.conv.weight"] += 1e-3 * 1e-3
    dtype = "float64" if float64 else "float32"
    figures = {"loss": step.loss, **_compare_training(reference, step, near("stats"), weights, dtype, "classifier")}
    for name, steps in fitted.items():
        figures[name] = _compare_optimizer(reference, name, iter(steps), lambda: eval_logits, weights, dtype)
    if not float64:
        figures["dropout"] = {"rate": 0.2, "samples": training.DROPOUT_SAMPLES, "blocks_varying_before_classifier": [],
                              "max_abs_z": 2.5, "variance_ratio": 1.1}
    return figures


def _run(variants: list[str]) -> tuple[RunResult, list]:
    """A `conform --train` run over `variants` as the report sees it, and its training checks."""
    config = RunConfig.for_frameworks(SPEC, variants, FRAMEWORKS, "tf", (64, 64), options=Options(train=True))
    keys = [w.key for w in config.workers]
    results = {}
    for variant in variants:
        rng = np.random.default_rng(VARIANTS.index(variant))
        weights, reference = _reference(rng)
        for key in keys:
            train = {"role": "reference"} if key == "torch:float64" else _train(variant, key, weights, reference, rng)
            results[(variant, key)] = WorkerResult(key, variant, train=train, timings={"train": 1.0})
    run = RunResult(config, [WorkerRun(w, 0, 2.0) for w in config.workers], results, config.work, 5.0)
    return run, [c for v in variants for c in _train_checks(v, run, keys, "classifier")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-report")
    run, checks = _run(VARIANTS)
    write_reports(folder, SPEC, run, checks)
    return folder, checks


def test_the_synthetic_runs_fail_only_where_an_error_was_planted(report):
    _, checks = report
    assert {c.subject for c in checks} == {"flax", "keras", "flax:float64", "keras:float64"}
    failed = {(c.variant, c.subject, c.name) for c in checks if not c.ok}
    assert failed == {(*BAD, "gradients"), (*BAD, "sgd")}, [c.summary for c in checks if not c.ok]


def _section(markdown: str, variant: str) -> str:
    return markdown.split(f"### `{variant}`")[1].split("###")[0]


def _rows(section: str) -> dict[str, list[str]]:
    """The rows of a markdown section's first table, its header left out: first cell -> the other cells."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---")) + 1
    rows = {}
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_markdown_training_table_per_variant(report):
    folder, checks = report
    markdown = (folder / "report.md").read_text()
    assert markdown.count("## Training parity") == 1
    assert markdown.index("## Training parity") < markdown.index("## Output errors per block")
    section = _section(markdown, "mobilenet_v1_025")
    header = next(line for line in section.splitlines() if line.startswith("| run |"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "run", "tolerance", "forward logits", "worst gradient (block)", "running statistics (block)",
        "SGD params after step 3", "fine-tuned eval logits", "AdamW params after step 3", "dropout"]
    rows = _rows(section)
    # float32 runs: forward, running statistics, dropout; no gradients or optimizer steps
    assert rows["flax"][0] == "1e-04" and rows["flax"][-1] == "ok (rate 0.2)"
    assert rows["flax"][2] == rows["flax"][4] == rows["flax"][5] == rows["flax"][6] == "–"
    # float64 runs: every column but dropout; the figures are the checks'
    by_name = {c.name: c.figures for c in checks if c.variant == "mobilenet_v1_025" and c.subject == "flax:float64"}
    flax64 = rows["flax:float64"]
    assert flax64[0] == "1e-09" and flax64[-1] == "–"
    assert flax64[1] == f"{by_name['train_forward']['blocks']['classifier']:.2e}"
    gradients = by_name["gradients"]["worst"]
    assert flax64[2] == f"{gradients['error']:.2e} ({training.block_of(gradients['tensor'])})"
    assert flax64[4].startswith(f"{by_name['sgd']['steps'][-1]['worst']['error']:.2e} (")
    assert flax64[5] == f"{by_name['sgd']['eval_logits_rel']:.2e}"
    assert flax64[6].startswith(f"{by_name['adamw']['steps'][-1]['worst']['error']:.2e} (")
    assert "FAIL" not in section


def test_a_failing_check_names_its_first_diverging_block(report):
    folder, _ = report
    section = _section((folder / "report.md").read_text(), BAD[0])
    bad = _rows(section)[BAD[1]]
    assert bad[2] == "1.00e-03 (blocks.1) FAIL, first diverging: blocks.1"
    assert bad[4].endswith("(blocks.1) FAIL, first diverging: blocks.1 at step 1")
    assert "FAIL" not in bad[5] and "FAIL" not in bad[6]  # eval logits and AdamW are fine
    assert "FAIL" not in "".join(_rows(section)["flax:float64"])


def test_markdown_gradient_error_per_block(report):
    folder, checks = report
    section = _section((folder / "report.md").read_text(), BAD[0])
    table = section.split("Gradient error per block")[1]
    header = next(line for line in table.splitlines() if line.startswith("| block |"))
    assert [h.strip() for h in header.strip("|").split("|")] == ["block", "flax:float64", "keras:float64"]
    rows = _rows(table)
    assert list(rows) == ["stem", "blocks.0", "blocks.1", "classifier"]  # network order; pool has no parameters
    per_block = next(c.figures["per_block"] for c in checks if (c.variant, c.subject, c.name) == (*BAD, "gradients"))
    assert rows["blocks.1"][1] == f"{per_block['blocks.1']['error']:.2e} FAIL (first diverging)"
    assert rows["stem"][1] == f"{per_block['stem']['error']:.2e}"
    assert all(float(cell) <= training.FLOAT64_TOLERANCE for cell in (row[0] for row in rows.values()))


def test_html_plots_gradient_error_per_block_one_line_per_float64_run(report):
    folder, _ = report
    html = (folder / "report.html").read_text()
    for variant in VARIANTS:
        part = html.split(f"<h2 id='{variant}'>")[1].split("<h2 ")[0]
        assert "<h3>Training parity</h3>" in part and "keras:float64" in part
        plot = part.split("Gradient error per block")[1]
        svg = plot[plot.index("<svg"):plot.index("</svg>")]
        assert svg.count("<polyline") == 2
        assert "1e-16" in svg and "1e0" in svg and 'stroke-dasharray="4"' in svg  # range and the tolerance
        assert "1e-09 tolerance" in plot.split("<svg")[0]
    bad = html.split(f"<h2 id='{BAD[0]}'>")[1]
    assert "<td class=FAIL>1.00e-03 (blocks.1) FAIL, first diverging: blocks.1</td>" in bad


def test_json_keeps_the_checks_and_summarises_each_run(report):
    folder, checks = report
    data = json.loads((folder / "report.json").read_text())
    names = {c["name"] for c in data["checks"]}
    assert names == {"train_forward", "running_stats", "gradients", "sgd", "adamw", "dropout"}
    gradients = next(c for c in data["checks"] if (c["variant"], c["subject"], c["name"]) == (*BAD, "gradients"))
    assert gradients["figures"]["per_block"]["blocks.1"]["ratio"] > 1
    row = next(r for r in data["variants"] if r["variant"] == BAD[0])
    assert list(row["training"]) == ["flax", "keras", "flax:float64", "keras:float64"]
    bad = row["training"][BAD[1]]
    assert not bad["ok"] and bad["tolerance"] == training.FLOAT64_TOLERANCE
    assert bad["gradients"]["block"] == bad["gradients"]["first_diverging"] == "blocks.1"
    assert bad["gradients"]["error"] == pytest.approx(1e-3)
    assert bad["sgd"]["first_failing_step"] == 1 and not bad["sgd"]["params_ok"] and bad["adamw"]["params_ok"]
    assert row["training"]["flax"]["dropout"] == {"ok": True, "rate": 0.2}
    assert "gradients" not in row["training"]["flax"]
    assert row["training"] == json.loads(json.dumps(training_summary(checks)[BAD[0]]))


def test_a_report_without_training_checks_has_no_training_section(report, tmp_path):
    folder, _ = report
    data = load_report(folder)
    data["checks"] = [c for c in data["checks"] if c["name"] not in ("train_forward", "running_stats", "gradients",
                                                                     "sgd", "adamw", "dropout")]
    for row in data["variants"]:
        del row["training"]
    write_report_files(tmp_path, data)
    assert "Training parity" not in (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "Training parity" not in html and "Gradient error" not in html


def test_a_run_without_training_results_says_so_in_its_row(tmp_path):
    run, checks = _run(VARIANTS[:1])
    run.results[(VARIANTS[0], "keras")].train = None
    checks = _train_checks(VARIANTS[0], run, [w.key for w in run.config.workers], "classifier")
    write_reports(tmp_path, SPEC, run, checks)
    rows = _rows(_section((tmp_path / "report.md").read_text(), VARIANTS[0]))
    assert rows["keras"][1] == "FAIL: no training results" and rows["keras"][2:] == ["–"] * 6


def test_report_merge_keeps_the_training_checks_and_sections(report, tmp_path, capsys):
    folder, _ = report
    whole = load_report(folder)
    for k, variant in enumerate(VARIANTS, start=1):
        run, checks = _run([variant])
        write_reports(tmp_path / f"shard-{k}", SPEC, run, checks, VARIANTS, (k, 2))
    code = main(["report", "merge", str(tmp_path / "shard-2"), str(tmp_path / "shard-1"), "-o", str(tmp_path / "m")])
    assert code == 1  # BAD's gradients and SGD fail
    merged = load_report(tmp_path / "m")
    assert merged["checks"] == whole["checks"] and merged["failed"] == whole["failed"] == 2
    assert [r["training"] for r in merged["variants"]] == [r["training"] for r in whole["variants"]]
    markdown = (tmp_path / "m" / "report.md").read_text()
    training_md = markdown.split("## Training parity")[1].split("\n## ")[0]
    assert training_md == (folder / "report.md").read_text().split("## Training parity")[1].split("\n## ")[0]
    assert len(re.findall(r"<polyline", (tmp_path / "m" / "report.html").read_text())) == 4
