"""bench/: the timing is interleaved and its ratios are reference / generated; pairs are the porting
table's references, run in the framework the registry says; --gpu without a GPU fails clearly; and `mnforge conform --device`: cpu is
unchanged (GPUs hidden from the workers), gpu without a GPU fails clearly. Correctness only, no timings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import pairs as bench_pairs
from bench.driver import ORDER, flax_vs_torch
from bench.timing import Settings, Timing, interleaved, ratio
from conformance import runner
from conformance.cli import main as mnforge
from conformance.porting.references import REFERENCES
from conformance.runner import Options, RunConfig, execute
from generators.frameworks import FRAMEWORKS
from spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "mobilenet_v3_small_100"


class FakeClock:
    """Each callable advances the clock by its own cost, so the timing is exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleaved_alternates_and_takes_the_median():
    clock, calls = FakeClock(), []

    def fn(name, cost):
        def call():
            calls.append(name)
            clock.now += cost
        return call

    timings = interleaved({"reference": fn("r", 0.02), "generated": fn("g", 0.01)},
                          Settings(warmup=1, rounds=4, min_round_s=0.05), clock=clock)
    # warm-up r g, calibration r g, then rounds of 3 calls each (0.05 / 0.02, rounded up) in A,B,B,A order
    assert calls[:4] == ["r", "g", "r", "g"]
    rounds = calls[4:]
    assert rounds == ["r"] * 3 + ["g"] * 6 + ["r"] * 6 + ["g"] * 6 + ["r"] * 3
    assert timings["reference"].calls_per_round == 3
    assert timings["reference"].median == pytest.approx(0.02)
    assert timings["generated"].median == pytest.approx(0.01)
    assert ratio(timings["reference"], timings["generated"]) == pytest.approx({"ratio": 2.0, "spread": 0.0})


def test_ratio_is_reference_over_generated_with_spread():
    reference = Timing([1.0, 1.0, 1.0, 1.0, 1.0], 1)
    generated = Timing([0.5, 1.0, 1.0, 1.0, 2.0], 1)
    result = ratio(reference, generated)
    assert result["ratio"] == pytest.approx(1.0)  # medians 1.0 / 1.0
    assert result["spread"] > 0  # per-round ratios 2, 1, 1, 1, 0.5


def test_pairs_match_the_porting_references_and_their_generated_modules_exist():
    for pair in bench_pairs.TORCH_PAIRS + bench_pairs.KERAS_PAIRS:
        assert REFERENCES[pair.reference.name] == pair.reference
    for framework, chosen in bench_pairs.PAIRS.items():
        against = FRAMEWORKS[framework].bench_against or framework
        assert chosen and all(p.reference.framework == against for p in chosen), framework
        for pair in chosen:
            assert importlib.util.find_spec(pair.module(framework)) is not None, pair.module(framework)
    assert {p.reference.name for p in bench_pairs.PAIRS["torch"]} >= {
        "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large", "torchvision:mobilenet_v3_small",
        "timm:mobilenetv1_100"}


def test_each_framework_runs_right_after_the_one_it_is_set_against():
    for framework, entry in FRAMEWORKS.items():
        if entry.bench_against:
            assert ORDER.index(framework) == ORDER.index(entry.bench_against) + 1
    assert set(ORDER) == set(FRAMEWORKS)


def test_flax_rows_are_set_against_the_torch_reference_of_the_same_pair_and_batch():
    rows = [{"framework": "torch", "reference": "r", "mode": "eager", "batch": 1, "reference_s": 0.4,
             "generated_s": 0.4},
            {"framework": "torch", "reference": "r", "mode": "compiled", "batch": 1, "reference_s": 0.2,
             "generated_s": 0.2},
            {"framework": "flax", "reference": "r", "mode": "jit", "batch": 1, "generated_s": 0.1,
             "reference_samples": None}]
    out = flax_vs_torch(rows)
    assert [(r["mode"], r["ratio"]) for r in out] == [("jit vs torch eager", pytest.approx(4.0)),
                                                      ("jit vs torch compiled", pytest.approx(2.0))]


def test_bench_gpu_without_a_gpu_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "--gpu", "--only", "torch", "--quick",
                           "--json", str(tmp_path / "gpu.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--gpu: PyTorch sees no CUDA device" in proc.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["rows"] == [] and "no CUDA device" in report["workers"]["torch"]["error"]


def test_conform_device_cpu_is_unchanged(tmp_path, monkeypatch):
    """The default request says cpu and the workers see no GPU, as before --device existed."""
    dump = tmp_path / "env.json"
    monkeypatch.setattr(runner, "WORKER_COMMAND", [sys.executable, "-c", (
        "import json, os, sys; r = json.load(open(sys.argv[1])); "
        f"json.dump({{'device': r['device'], 'env': {{k: os.environ.get(k) for k in "
        f"('CUDA_VISIBLE_DEVICES', 'JAX_PLATFORMS')}}}}, open({str(dump)!r}, 'w'))")])
    execute(RunConfig.for_frameworks(load_spec(), [VARIANT], ["torch"], "tf", (224, 192), Options(outputs=False),
                                     work=tmp_path))
    assert json.loads(dump.read_text()) == {"device": "cpu", "env": {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}}
    assert Options().device == "cpu"


def test_conform_device_cpu_runs_a_variant_and_removes_its_temporary_work_folder(tmp_path):
    # as a user runs it, in a process of its own
    result = subprocess.run([str(Path(sys.executable).with_name("mnforge")), "conform", VARIANT, "--frameworks",
                             "torch", "--device", "cpu"], capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "TMPDIR": str(tmp_path)})  # the run's own folder goes there
    assert result.returncode == 0 and "checks passed" in result.stdout, result.stderr[-2000:]
    assert not list(tmp_path.glob("mnforge-*"))  # (PyTorch keeps its own cache there: torchinductor_root)


def test_conform_device_gpu_without_a_gpu_fails_clearly(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert mnforge(["conform", VARIANT, "--frameworks", "torch", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "error: --device gpu: torch: PyTorch sees no CUDA device" in err


@pytest.mark.parametrize("only, pair", [
    pytest.param("torch", "torchvision:mobilenet_v3_small", marks=pytest.mark.slow),  # torch.compile: a minute
    ("keras", "keras-applications:MobileNetV3Small_100"),
    pytest.param("flax", "torchvision:mobilenet_v3_small", marks=pytest.mark.slow)])
def test_bench_quick_end_to_end(tmp_path, only, pair):
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", only, "--pairs", pair,
                           "--batches", "1", "--json", str(tmp_path / "bench.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    framework = "flax vs torch" if only == "flax" else only
    rows = [r for r in report["rows"] if r["framework"] == framework]
    assert rows and all(r["ratio"] > 0 and r["batch"] == 1 for r in rows)
    assert "ratio" in proc.stdout


def test_footprint_times_and_measures_each_side_in_a_process_of_its_own(tmp_path):
    """`python -m bench.footprint`, small: each side's row has its times and memory, the reference's ratio 1."""
    out = tmp_path / "footprint.json"
    result = subprocess.run([sys.executable, "-m", "bench.footprint", "mobilenet_v4_conv_small", "--resolution", "64",
                             "--calls", "1", "--sides", "reference,torch,flax", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["flavor"] == "timm" and data["resolution"] == 64  # the flavor of timm's mobilenetv4_conv_small
    rows = {row["side"]: row for row in data["rows"]}
    assert set(rows) == {"reference", "torch", "flax"}
    for row in rows.values():
        assert row["median_s"] > 0 and row["first_call_s"] > 0 and row["peak_gb"] >= row["resident_before_gb"] > 0
    assert "reference       " in result.stdout and " 1.00 " in result.stdout
