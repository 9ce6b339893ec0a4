"""The runner catches real bugs and bad workers: a wrong weight layout or BatchNorm epsilon fails the
output check and names the first diverging block; a crashing or hanging worker is that framework's
failure with its stderr; weights move through chains of frameworks bit-exactly."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from conformance import runner
from conformance import weights as neutral
from conformance.checks import evaluate
from conformance.runner import Options, RunConfig, Worker, chain, execute, prepare
from generators.frameworks import FRAMEWORKS, REFERENCE_RUN
from spec import load_spec

SPEC = load_spec()
VARIANT = "mobilenet_v3_small_100"


def _outputs_check(checks, subject):
    return next(c for c in checks if c.name == "outputs" and c.subject == subject)


def test_wrong_weight_layout_names_the_first_diverging_block(tmp_path):
    prepare(SPEC, [VARIANT], "tf", (224, 192), 1000, tmp_path)
    tensors, metadata = neutral.load(tmp_path / "weights" / f"{VARIANT}.safetensors")
    # A converter bug: a depthwise kernel with kh and kw swapped (a wrong transpose).
    tensors["blocks.3.depthwise.conv.weight"] = tensors["blocks.3.depthwise.conv.weight"].transpose(0, 1, 3, 2).copy()
    (tmp_path / "bad").mkdir()
    neutral.save(tmp_path / "bad" / f"{VARIANT}.safetensors", tensors, metadata)
    result = execute(RunConfig(SPEC, (VARIANT,), (Worker("torch", "float64"),
                                                  Worker("torch", weights=str(tmp_path / "bad"))),
                               "tf", (224, 192), work=tmp_path))
    check = _outputs_check(evaluate(SPEC, result), "torch")
    assert not check.ok
    assert check.figures["first_diverging"] == "blocks.3", check.summary
    assert check.figures["logits_rel"] > 1e-2, check.summary
    assert "first diverging block: blocks.3" in check.summary


def test_wrong_batch_norm_epsilon_names_the_first_diverging_block(tmp_path):
    # torchvision's V3 uses epsilon 1e-3, timm's 1e-5; same padding and widths at width 1.0.
    result = execute(RunConfig(SPEC, (VARIANT,), (Worker("torch", "float64"), Worker("torch", flavor="timm")),
                               "torchvision", (224, 192), work=tmp_path))
    check = _outputs_check(evaluate(SPEC, result), "torch")
    assert not check.ok, check.summary
    assert check.figures["first_diverging"] == "stem", check.summary


def _run_failing_worker(tmp_path, monkeypatch, code: str):
    """A flax run whose worker process is `python -c code`: (the run, its build checks)."""
    monkeypatch.setattr(runner, "WORKER_COMMAND", [sys.executable, "-c", code])
    result = execute(RunConfig.for_frameworks(SPEC, [VARIANT], ["flax"], "tf", (224, 192), Options(outputs=False),
                                              work=tmp_path))
    return result, [c for c in evaluate(SPEC, result) if c.name == "build"]


def test_crashing_worker_is_reported_with_its_stderr(tmp_path, monkeypatch):
    _, build = _run_failing_worker(tmp_path, monkeypatch,
                                   "import sys; sys.stderr.write('worker exploded\\n'); sys.exit(3)")
    assert build and not build[0].ok
    assert "exited with code 3" in build[0].summary and "worker exploded" in build[0].summary


def test_a_worker_killed_by_the_system_is_named_as_likely_out_of_memory(tmp_path, monkeypatch):
    """The out-of-memory killer sends SIGKILL; the runner itself kills only a worker that timed out."""
    result, build = _run_failing_worker(tmp_path, monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert not build[0].ok and not result.workers[0].timed_out
    assert "killed (SIGKILL), on Linux most often by the out-of-memory killer" in build[0].summary


FAILED_EXPORT_WORKER = """
import json, sys
from pathlib import Path
from conformance.results import WorkerResult, result_path
request = json.loads(Path(sys.argv[1]).read_text())
for job in request["jobs"]:
    path = result_path(Path(request["out"]), job["variant"], request["framework"], job["dtype"])
    path.parent.mkdir(parents=True, exist_ok=True)
    result = WorkerResult(request["framework"], job["variant"], job["dtype"], job["flavor"], 0.0, tensor_shapes={},
                          trainable={},
                          onnx_error="UserError: Invalid ranges [2:1]")
    path.write_text(result.to_json())
"""


def test_failed_onnx_export_fails_the_onnx_check_not_the_build(tmp_path, monkeypatch):
    """The model built and ran; only its export failed (issue 12: torch.export on an mqa-first table)."""
    monkeypatch.setattr(runner, "WORKER_COMMAND", [sys.executable, "-c", FAILED_EXPORT_WORKER])
    result = execute(RunConfig.for_frameworks(SPEC, [VARIANT], ["torch"], "tf", (224, 192),
                                              Options(outputs=False, onnx=True), work=tmp_path))
    checks = evaluate(SPEC, result)
    assert [c.ok for c in checks if c.name == "build"] == [True]
    onnx = [c for c in checks if c.name == "onnx"]
    assert len(onnx) == 1 and not onnx[0].ok
    assert onnx[0].summary == "export failed: UserError: Invalid ranges [2:1]"


def test_hanging_worker_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "WORKER_COMMAND", [sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(runner, "TIMEOUT_BASE", 1.0)
    start = time.perf_counter()
    result = execute(RunConfig.for_frameworks(SPEC, [VARIANT], ["keras"], "tf", (224, 192), Options(outputs=False),
                                              work=tmp_path, timeout_per_variant=0.5))
    assert time.perf_counter() - start < 30
    assert result.workers[0].timed_out
    build = [c for c in evaluate(SPEC, result) if c.name == "build"]
    assert "timed out" in build[0].summary


# Through every framework and back to the reference's, in both orders.
_OTHERS = [key for key in FRAMEWORKS if key != REFERENCE_RUN]
CHAINS = [[REFERENCE_RUN, *others, REFERENCE_RUN] for others in (_OTHERS, _OTHERS[::-1])]


# The reverse order in the slow tier: the default one already crosses every framework boundary once.
@pytest.mark.parametrize("frameworks", [CHAINS[0], pytest.param(CHAINS[1], marks=pytest.mark.slow)],
                         ids=["-".join(c) for c in CHAINS])
def test_weights_chain_through_frameworks_bit_exact(tmp_path, frameworks):
    start, end, _ = chain(SPEC, "mobilenet_v2_035", frameworks, "tf", tmp_path)
    assert set(start) == set(end)
    changed = [name for name in start if not np.array_equal(start[name], end[name])]
    assert not changed, f"{len(changed)} tensors changed: {changed[:5]}"


def test_heavy_variants_run_after_the_others_one_worker_at_a_time(tmp_path):
    """MobileNetV5's 300M variants need up to 20 GB a process: no other worker runs beside one (runner.HEAVY_PARAMS)."""
    from conformance.runner import _request, heavy, phases

    light = ("mobilenet_v1_025", "mobilenet_v2_035")
    big = ("mobilenet_v5_base",)
    assert [heavy(SPEC, v) for v in light + big] == [False, False, True]
    config = RunConfig.for_frameworks(SPEC, (light[0], *big, light[1]), ("torch", "flax"), "torchvision",
                                      (96, 64), Options(count_macs=False, train=True), work=tmp_path, parallel=2)
    planned = [([(w.key, w.variants) for w in workers], at_once) for workers, at_once in phases(config)]
    reference = REFERENCE_RUN + ":float64"
    assert planned == [
        ([(reference, light), ("flax", light), ("flax:float64", light), ("torch", light)], 2),
        ([(reference, big), ("flax", big), ("flax:float64", big), ("torch", big)], 1),
    ]
    # AdamW on the first variant of the whole run only, not again on the first of the heavy phase
    heavy_flax64 = phases(config)[1][0][2]
    assert [job["train"]["optimizers"] for job in _request(config, heavy_flax64)["jobs"]] == [["sgd"]]
    light_flax64 = phases(config)[0][0][2]
    assert [job["train"]["optimizers"] for job in _request(config, light_flax64)["jobs"]] == [["sgd", "adamw"], ["sgd"]]
    # one worker at a time anyway: one phase, the workers as given
    assert [len(w) for w, _ in phases(RunConfig.for_frameworks(SPEC, light + big, ("torch",), "torchvision",
                                                                 (96, 64), parallel=1))] == [2]
