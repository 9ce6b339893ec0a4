"""Scale-out: `conform --shard K/N` splits a selection into deterministic, cost-balanced parts (every
variant in exactly one), `report merge` combines the parts' reports into the one a single run would
have written, refusing reports that cannot be one run's; the CI workflow runs commands that exist."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conformance.cli import main, quick_variants
from conformance.report import REPORT_FORMAT, MergeError, load_report, merge_reports, write_report_files
from conformance.shard import parse_shard, partition, shard_variants, variant_cost
from spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec()
ALL = list(SPEC.spec.variants())
SETTINGS = ("tf", (224, 192), 1000)


COSTS = {v: variant_cost(SPEC, v, *SETTINGS) for v in ALL}


def _shards(selection, count):
    return partition({v: COSTS[v] for v in selection}, count)


def test_shard_k_of_n_is_the_kth_part_of_the_partition():
    selection = quick_variants(SPEC.spec)
    for k in (1, 2, 3):
        assert shard_variants(SPEC, selection, (k, 3), *SETTINGS) == _shards(selection, 3)[k - 1]


@pytest.mark.parametrize("selection", [ALL, quick_variants(SPEC.spec), ALL[:3]], ids=["all", "quick", "three"])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 40])
def test_shards_cover_every_variant_exactly_once_in_selection_order(selection, count):
    shards = _shards(selection, count)
    assert len(shards) == count
    assert sorted(v for shard in shards for v in shard) == sorted(selection)
    for shard in shards:
        assert shard == [v for v in selection if v in shard]  # each shard keeps the selection's order
    assert _shards(selection, count) == shards  # deterministic
    assert sum(not shard for shard in shards) == max(0, count - len(selection))  # empty only when N > variants


def test_shards_are_balanced_in_cost():
    for count in (2, 3, 4, 6):
        shards = _shards(ALL, count)
        loads = [sum(COSTS[v] for v in shard) for shard in shards]
        biggest = max(COSTS.values())
        assert max(loads) <= sum(loads) / count + biggest  # the greedy rule's bound
        # A variant that alone outweighs a shard of many (MobileNetV5's) has a shard to itself; the rest balance.
        shared = [load for shard, load in zip(shards, loads) if len(shard) > 1]
        assert max(shared) / min(shared) < 1.25, (count, loads)
        assert all(load >= min(shared) for shard, load in zip(shards, loads) if len(shard) == 1), (count, loads)


def test_partition_is_longest_processing_time_first():
    assert partition({"a": 10, "b": 1, "c": 1, "d": 8}, 2) == [["a"], ["b", "c", "d"]]
    assert partition({"a": 1, "b": 1}, 3) == [["a"], ["b"], []]  # ties: the lower shard; then empty ones
    # a variant's cost is a fixed part plus its MACs at the run's input, so many small ones weigh as much
    # as one large one (the measured worker time), and the partition follows the run's settings
    assert variant_cost(SPEC, "mobilenet_v4_hybrid_large", *SETTINGS) < 4 * variant_cost(SPEC, "mobilenet_v1_025",
                                                                                          *SETTINGS)


@pytest.mark.parametrize("text", ["0/4", "5/4", "4", "a/b", "1/0", "-1/2", "", "1/2/3", "2/"])
def test_bad_shard_values_are_refused_in_one_line(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_shard(text)
    with pytest.raises(SystemExit) as exc:
        main(["conform", "--all", f"--shard={text}"])
    assert exc.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mnforge conform: error")]
    assert len(error) == 1 and "expected K/N with 1 <= K <= N" in error[0], error


def test_good_shard_values():
    assert parse_shard("1/1") == (1, 1) and parse_shard("3/4") == (3, 4) and parse_shard(" 2/ 8") == (2, 8)


def test_an_empty_shard_succeeds_and_writes_an_empty_valid_report(tmp_path, capsys):
    assert main(["conform", "mobilenet_v1_025", "--frameworks", "torch", "--resolution", "64",
                 "--shard", "2/2", "--report", str(tmp_path)]) == 0
    assert "shard 2/2: 0 of 1 selected variants; nothing to run" in capsys.readouterr().err
    report = load_report(tmp_path)
    assert report["variants"] == [] and report["checks"] == [] and report["failed"] == 0
    assert report["shard"] == [2, 2] and report["selection"] == ["mobilenet_v1_025"]
    assert report["frameworks"] == ["torch:float64", "torch"] and report["spec"]["sha256"] == SPEC.sha256
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.html", "junit.xml"}
    assert 'tests="0" failures="0"' in (tmp_path / "junit.xml").read_text()
    assert "no variants in this shard" in (tmp_path / "report.md").read_text()


# Merging: report dicts built by hand (the same keys `conform --report` writes).

def _report(variants, failing=(), shard=None, selection=None, **settings) -> dict:
    checks, rows = [], []
    for v in variants:
        for name in ("build", "outputs"):
            ok = (v, name) not in failing
            checks.append({"variant": v, "name": name, "subject": "torch", "ok": ok, "summary": "fine" if ok else "bad",
                           "figures": {"logits_rel": 1e-6, "logits_abs": 1e-6, "blocks": {"stem": {"abs": 0, "rel": 1e-7}}}
                           if name == "outputs" else {}})
        rows.append({"variant": v, "params": 1, "state": 2, "macs": 3, "worker_seconds": 1.0,
                     "cells": {"build": "ok", "outputs": "ok" if (v, "outputs") not in failing else "FAIL"},
                     "worst_logits_rel": 1e-6})
    report = {"format": REPORT_FORMAT, "spec": {"path": "spec.yaml", "sha256": SPEC.sha256, "variants": ALL},
              "flavor": "tf", "resolution": [64, 64], "num_classes": 1000, "frameworks": ["torch:float64", "torch"],
              "options": {"onnx": False, "device": "cpu"}, "selection": list(selection or variants),
              "shard": list(shard) if shard else None, "seconds": 10.0 * len(variants),
              "time_split": {"build": 2.0 * len(variants), "worker wall": 5.0 * len(variants),
                             "total wall": 10.0 * len(variants)},
              "workers": [{"worker": "torch:float64", "seconds": 4.0, "returncode": 0, "timed_out": False},
                          {"worker": "torch", "seconds": 5.0, "returncode": 0, "timed_out": False}],
              "failed": sum(not c["ok"] for c in checks), "variants": rows, "checks": checks}
    report.update(settings)
    return report


def test_merge_orders_variants_and_checks_as_the_spec_and_sums_worker_time():
    selection = [ALL[0], ALL[5], ALL[9]]
    one = _report([ALL[9]], shard=(1, 2), selection=selection, failing=[(ALL[9], "outputs")])
    two = _report([ALL[0], ALL[5]], shard=(2, 2), selection=selection)
    merged = merge_reports([("b", one), ("a", two)])
    assert [r["variant"] for r in merged["variants"]] == selection
    assert [c["variant"] for c in merged["checks"]] == [v for v in selection for _ in range(2)]
    assert merged["failed"] == 1 and merged["selection"] == selection and merged["shard"] is None
    assert merged["seconds"] == 20.0 and merged["time_split"]["total wall"] == 20.0  # the longest wall
    assert merged["time_split"]["build"] == 6.0 and merged["time_split"]["worker wall"] == 15.0  # summed
    assert [(w["worker"], w["seconds"]) for w in merged["workers"]] == [("torch:float64", 8.0), ("torch", 10.0)]
    assert [m["report"] for m in merged["merged_from"]] == ["b", "a"]
    # the same as one run over the union
    union = _report(selection, failing=[(ALL[9], "outputs")])
    for key in ("variants", "checks", "failed", "flavor", "resolution", "num_classes", "frameworks", "spec"):
        assert merged[key] == union[key], key


def test_merged_report_files_exit_code_and_provenance(tmp_path, capsys):
    selection = [ALL[0], ALL[1]]
    for k, (v, failing) in enumerate([(ALL[0], ()), (ALL[1], [(ALL[1], "build")])], start=1):
        write_report_files(tmp_path / f"shard-{k}", _report([v], failing, shard=(k, 2), selection=selection))
    assert main(["report", "merge", str(tmp_path / "shard-1"), "-o", str(tmp_path / "ok")]) == 2  # 2/2 missing
    assert "missing shard(s) 2/2" in capsys.readouterr().err
    code = main(["report", "merge", str(tmp_path / "shard-1"), str(tmp_path / "shard-2"), "--out", str(tmp_path / "m")])
    assert code == 1  # a check failed: CI fails on the merged report
    assert "3/4 checks" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"report.json", "report.md", "report.html", "junit.xml"}
    markdown = (tmp_path / "m" / "report.md").read_text()
    assert "## Failures (1)" in markdown and "Merged from 2 reports" in markdown
    assert 'tests="4" failures="1"' in (tmp_path / "m" / "junit.xml").read_text()
    assert load_report(tmp_path / "m")["failed"] == 1  # a merged report is a report: it can be merged again
    write_report_files(tmp_path / "fixed", _report([ALL[1]], shard=(2, 2), selection=selection))
    assert main(["report", "merge", str(tmp_path / "shard-1"), str(tmp_path / "fixed"), "-o", str(tmp_path / "m")]) == 0
    assert main(["report", "merge", str(tmp_path / "shard-1"), "-o", str(tmp_path / "p"), "--partial"]) == 0
    assert "Partial: 1 of 2 selected variants; missing " + ALL[1] in (tmp_path / "p" / "report.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"flavor": "torchvision"}, "different flavor (tf vs torchvision)"),
    ({"resolution": [96, 96]}, "different resolution ([64,64] vs [96,96])"),
    ({"num_classes": 10}, "different num_classes (1000 vs 10)"),
    ({"frameworks": ["torch:float64", "torch", "flax"]}, "different frameworks"),
    ({"options": {"onnx": True, "device": "cpu"}}, "different options"),
    ({"spec": {"path": "other.yaml", "sha256": "0" * 64, "variants": ALL}}, "different specs"),
])
def test_merge_refuses_reports_of_different_runs(change, message):
    with pytest.raises(MergeError, match=re.escape(message)) as exc:
        merge_reports([("a", _report([ALL[0]])), ("b", _report([ALL[1]], **change))])
    assert "\n" not in str(exc.value) and "cannot merge a and b" in str(exc.value)


@pytest.mark.parametrize("reports, message", [
    ([_report([ALL[0], ALL[1]]), _report([ALL[1]])], f"{ALL[1]} is in both a and b"),
    ([_report([ALL[0]], shard=(1, 2), selection=ALL[:2]), _report([], shard=(1, 2), selection=ALL[:2])],
     "shard 1/2 given twice (a and b)"),
    ([_report([ALL[0]], shard=(1, 2), selection=ALL[:2]), _report([ALL[1]], shard=(2, 3), selection=ALL[:2])],
     "shards must split one selection the same number of ways"),
    ([_report([ALL[0]], shard=(1, 2), selection=ALL[:2]), _report([ALL[1]])],
     "shards must split one selection the same number of ways"),
    ([_report([ALL[0]], shard=(1, 3), selection=ALL[:3]), _report([ALL[1]], shard=(3, 3), selection=ALL[:3])],
     "missing shard(s) 2/3 of the 3 selected variants"),
])
def test_merge_refuses_overlaps_and_incomplete_shards(reports, message):
    with pytest.raises(MergeError, match=re.escape(message)) as exc:
        merge_reports(list(zip("ab", reports)))
    assert "\n" not in str(exc.value)


def test_merge_refuses_folders_without_a_current_report(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps({"flavor": "tf", "variants": [], "checks": []}))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{")
    for folder, message in (("missing", "no report.json"), ("old", "written by an older mnforge"),
                            ("bad", "not a readable report")):
        assert main(["report", "merge", str(tmp_path / folder), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


# Real runs: two shards of two small variants, merged, against one run over both.

VARIANTS = ["mobilenet_v1_025", "mobilenet_v3_small_035"]
RUN = ["--frameworks", "torch", "--resolution", "64"]


@pytest.fixture(scope="module")
def real_reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    codes = {name: main(["conform", *VARIANTS, *RUN, *shard, "--report", str(root / name)])
             for name, shard in (("union", []), ("shard-1", ["--shard", "1/2"]), ("shard-2", ["--shard", "2/2"]))}
    assert codes == {"union": 0, "shard-1": 0, "shard-2": 0}
    return root


def _essence(check: dict) -> tuple:
    figures = check["figures"]
    return (check["variant"], check["name"], check["subject"], check["ok"],
            figures.get("logits_rel"), figures.get("params"), figures.get("macs"))


def test_merged_shards_equal_one_run_over_the_union(real_reports, capsys):
    shards = [load_report(real_reports / f"shard-{k}") for k in (1, 2)]
    assert [len(r["variants"]) for r in shards] == [1, 1] and all(r["selection"] == VARIANTS for r in shards)
    code = main(["report", "merge", str(real_reports / "shard-2"), str(real_reports / "shard-1"),
                 "-o", str(real_reports / "merged")])
    assert code == 0, capsys.readouterr().err
    merged, union = load_report(real_reports / "merged"), load_report(real_reports / "union")
    assert [r["variant"] for r in merged["variants"]] == [r["variant"] for r in union["variants"]] == VARIANTS
    for a, b in zip(merged["variants"], union["variants"]):
        assert {k: v for k, v in a.items() if k != "worker_seconds"} == {k: v for k, v in b.items()
                                                                          if k != "worker_seconds"}
    assert [_essence(c) for c in merged["checks"]] == [_essence(c) for c in union["checks"]]
    assert merged["failed"] == union["failed"] == 0 and len(merged["checks"]) == len(union["checks"]) > 10
    junit = (real_reports / "merged" / "junit.xml").read_text()
    assert f'tests="{len(union["checks"])}" failures="0"' in junit
    assert merged["time_split"]["worker wall"] == pytest.approx(sum(r["time_split"]["worker wall"] for r in shards))
    assert merged["seconds"] == max(r["seconds"] for r in shards)


def test_report_files_from_the_json_form_are_the_files_of_the_run(real_reports, tmp_path):
    """The writers need only report.json: rewriting a run's report from it gives the same four files."""
    write_report_files(tmp_path, load_report(real_reports / "union"))
    for name in ("report.json", "report.md", "report.html", "junit.xml"):
        assert (tmp_path / name).read_text() == (real_reports / "union" / name).read_text(), name


# CI: .github/workflows/conformance.yml

WORKFLOW = ROOT / ".github" / "workflows" / "conformance.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _commands(job: dict) -> list[str]:
    lines = []
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_workflow_jobs_and_matrices():
    jobs = _workflow()["jobs"]
    assert set(jobs) == {"test", "conformance", "merge", "fuzz"}
    assert "./.ci/run" in _commands(jobs["test"])
    shards = jobs["conformance"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)) and len(shards) >= 2
    assert jobs["conformance"]["strategy"]["fail-fast"] is False
    conform = next(c for c in _commands(jobs["conformance"]) if " conform " in c)
    assert conform.startswith(".venv/bin/mnforge conform --all --onnx"), conform
    assert "--shard ${{ matrix.shard }}/${{ strategy.job-total }}" in conform  # N: the matrix's size
    assert "--report reports/shard-${{ matrix.shard }}" in conform
    assert "make setup" in _commands(jobs["conformance"])
    uploads = [s for s in jobs["conformance"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"].startswith("reports/shard-${{ matrix.shard }}")
    assert jobs["merge"]["needs"] == "conformance" and "!cancelled()" in jobs["merge"]["if"]
    downloads = [s for s in jobs["merge"]["steps"] if s.get("uses", "").startswith("actions/download-artifact")]
    assert downloads and downloads[0]["with"]["pattern"] == "conformance-shard-*"
    merge = next(c for c in _commands(jobs["merge"]) if "report merge" in c)
    assert "conformance-shard-*" in merge and " -o " in merge
    assert jobs["fuzz"]["strategy"]["matrix"]["shard"] == [1, 2, 3, 4]
    fuzz = next(c for c in _commands(jobs["fuzz"]) if c.startswith("make fuzz"))
    assert fuzz == "make fuzz N=1000 SHARD=${{ matrix.shard }}/${{ strategy.job-total }}"
    caches = [s["with"] for job in jobs.values() for s in job["steps"] if s.get("uses", "").startswith("actions/cache")]
    venv = [c["key"] for c in caches if c["path"] == ".venv"]
    assert len(venv) == len(jobs) and all("hashFiles('constraints.txt', 'pyproject.toml')" in k for k in venv)
    assert any(c["path"] == ".cache/onnx" for c in caches)


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):(?!=)", text, re.MULTILINE)}


def test_workflow_runs_only_commands_that_exist(capsys):
    """Every `make T` is a Makefile target (`fuzz` too, once that change lands: until then it is allowed),
    every `mnforge C [S]` a subcommand of the CLI (its --help exits 0), and `.ci/run` is executable."""
    targets = _make_targets() | {"fuzz"}
    seen = 0
    for job in _workflow()["jobs"].values():
        for command in _commands(job):
            words = shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "1", command))
            if words[0] == "make":
                names = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
                assert names and set(names) <= targets, command
                seen += 1
            elif words[0].endswith("/mnforge"):
                subcommand = [w for w in words[1:3] if re.fullmatch(r"[a-z]+", w)]
                with pytest.raises(SystemExit) as exc:
                    main([*subcommand, "--help"])
                assert exc.value.code == 0, command
                seen += 1
            else:
                assert words[0] in ("./.ci/run", "touch"), command
    capsys.readouterr()
    assert seen >= 5
    ci = ROOT / ".ci" / "run"
    assert ci.exists() and ci.stat().st_mode & 0o111
