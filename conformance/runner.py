"""The conformance matrix: variants x frameworks, each framework in its own worker process.

1. From the spec alone: each variant's description, random neutral weights (with random BatchNorm
   statistics) and one shared non-square input batch.
2. Workers, at most `parallel` at a time (one per core), each with a timeout: the reference run in
   float64, then the runs asked for (generators/frameworks.py: RUNS; PyTorch, Keras on TensorFlow, JAX
   and PyTorch, Flax NNX). Each writes a WorkerResult per variant (conformance/results.py).
   Variants over HEAVY_PARAMS run after the others, one worker at a time (`phases`).
3. Checks (conformance/checks.py) on what the workers wrote.
A worker that crashes or hangs becomes that framework's failure, with the tail of its stderr.
One RunConfig carries a run's settings: `execute(RunConfig.for_frameworks(spec, variants, runs, ...))`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from conformance import training
from conformance import weights as neutral
from conformance.results import WorkerResult, outputs_path, result_path
from conformance.training import TRAIN_BATCH, TRAIN_RESOLUTION
from generators.frameworks import REFERENCE_RUN, RUNS
from generators.location import ENVIRONMENT, generated_dir
from spec import describe
from spec.loader import LoadedSpec

WORKER_COMMAND = [sys.executable, "-m", "conformance.worker"]
REFERENCE = (REFERENCE_RUN, "float64")
TIMEOUT_BASE = 120.0  # seconds for a worker's imports, on top of `timeout_per_variant` per variant
# The runs a variant chosen for int8 is exported from. Keras only: measured cold at 224x192 (MobileNetV2 1.0,
# V3-Large 1.0, V4-Conv-Small; both workers side by side on 2 cores), Flax's int8 step took 80 s to Keras'
# 90 s, and it gave the same report: every block's SQNR within 0.1 dB of Keras' (the same converter,
# weights and images). The graphs' differences (the head's ops) are what the float LiteRT check covers.
LITERT_INT8_RUNS = ("keras",)
# A variant over this many parameters (MobileNetV5's, 83M to 296M; the next largest has 11M) runs with no
# other worker beside it: one process needs up to 20 GB for it (a Keras ONNX export of the 300M encoder;
# README: MobileNetV5 needs memory), two at once were killed for memory on a 23 GB machine.
HEAVY_PARAMS = 50_000_000


def heavy(loaded: LoadedSpec, variant: str) -> bool:
    return describe(loaded, variant).params > HEAVY_PARAMS


@dataclass(frozen=True)
class Worker:
    framework: str
    dtype: str = "float32"
    flavor: str | None = None  # None: the run's flavor (tests set another to prove a wrong epsilon is caught)
    weights: str | None = None  # folder of neutral files to load instead of the run's (likewise, or a chain)
    export: str | None = None  # folder to write the weights the framework holds after loading
    variants: tuple[str, ...] | None = None  # None: every variant of the run (tests cover a matrix: fewer)

    @property
    def key(self) -> str:
        return f"{self.framework}:{self.dtype}" if self.dtype != "float32" else self.framework

    def runs(self, variant: str, run_variants: tuple[str, ...]) -> bool:
        return variant in (self.variants or run_variants)


@dataclass
class WorkerRun:
    worker: Worker
    returncode: int | None = None
    seconds: float = 0.0
    stderr_tail: str = ""
    timed_out: bool = False


@dataclass(frozen=True)
class Options:
    """What the workers do besides building and counting."""

    outputs: bool = True  # run every block on the shared input; adds the float64 reference worker
    count_macs: bool = True  # each framework's own MAC counter
    logits_at: tuple[tuple[int, int], ...] = ()  # also run logits at these resolutions (shape check)
    published_resolutions: bool = False  # ... and at each variant's published resolutions
    onnx: bool = False  # export to ONNX, validate, compare ONNX Runtime with the framework's own logits
    onnx_dir: str | None = None  # where exports are cached (content-hashed); default: the run's folder
    onnx_reference_evaluator: tuple[str, ...] = ()  # variants also run in onnx.reference (slow, pure Python)
    # export to LiteRT (float, every block an output) from Keras and Flax, run the interpreter, compare with
    # the framework's own outputs and the float64 reference's (conformance/litert)
    litert: bool = False
    litert_dir: str | None = None  # where exports are cached (content-hashed); default: the run's folder
    # with litert, these variants also in full-integer int8 from LITERT_INT8_RUNS, their BatchNorm statistics
    # re-estimated first (`reestimate`); the CLI chooses them (README: LiteRT) and leaves out HEAVY_PARAMS
    litert_int8: tuple[str, ...] = ()
    device: str = "cpu"  # "gpu": every worker runs on the GPU with TF32 off (conformance/worker.py)
    train: bool = False  # training-mode parity (conformance/training.py); needs the float64 reference


@dataclass(frozen=True)
class RunConfig:
    """Everything one conformance run is: what to build, where, and how the workers run."""

    spec: LoadedSpec
    variants: tuple[str, ...]
    workers: tuple[Worker, ...]
    flavor: str
    resolution: tuple[int, int]
    num_classes: int = 1000
    work: Path | None = None  # weights, inputs, requests and outputs; None: a new temporary folder
    parallel: int | None = None  # workers at a time; None: one per core
    timeout_per_variant: float = 240.0  # seconds, on top of TIMEOUT_BASE per worker
    options: Options = Options()
    generated: Path | None = None  # folder of the spec's generated code, ready; None: generators.location finds it
    progress: Callable[[str, str], None] | None = field(default=None, compare=False)  # (worker key, variant)

    @classmethod
    def for_frameworks(cls, spec: LoadedSpec, variants, frameworks, flavor: str, resolution: tuple[int, int],
                       options: Options = Options(), **settings) -> RunConfig:
        """The usual workers: the float64 reference (when outputs are compared), then each run named."""
        workers = ([Worker(*REFERENCE)] if options.outputs or options.train else []) + [Worker(f) for f in frameworks]
        if options.train:  # gradients and optimizer steps are compared in float64 (conformance/training.py)
            trained = training.float64_variants(spec, variants)  # up to training.FLOAT64_MAX_PARAMS
            workers += [Worker(f, "float64", variants=trained if trained != tuple(variants) else None)
                        for f in frameworks if trained and RUNS[f].float64
                        and Worker(f, "float64").key != Worker(*REFERENCE).key]
        return cls(spec, tuple(variants), tuple(workers), flavor, resolution, options=options, **settings)


@dataclass
class RunResult:
    config: RunConfig
    workers: list[WorkerRun]
    results: dict[tuple[str, str], WorkerResult]  # (variant, worker key) -> what the worker wrote
    outputs_dir: Path
    seconds: float
    spec_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def variants(self) -> tuple[str, ...]:
        return self.config.variants

    @property
    def flavor(self) -> str:
        return self.config.flavor

    @property
    def resolution(self) -> tuple[int, int]:
        return self.config.resolution

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def outputs(self, variant: str, worker_key: str) -> dict[str, np.ndarray] | None:
        framework, _, dtype = worker_key.partition(":")
        path = outputs_path(self.outputs_dir, variant, framework, dtype or "float32")
        if not path.exists():
            return None
        with np.load(path) as data:
            return {name: data[name] for name in data.files}


def prepare(loaded: LoadedSpec, variants: list[str], flavor: str, resolution: tuple[int, int], num_classes: int,
            work: Path, seed: int = 0, batch: int = 2) -> None:
    """Weights per variant and the shared input batch (NCHW; workers transpose to their layout)."""
    (work / "weights").mkdir(parents=True, exist_ok=True)
    for variant in variants:
        desc = describe(loaded, variant, flavor, resolution, num_classes)
        tensors = neutral.random_weights(desc, seed)
        neutral.save(work / "weights" / f"{variant}.safetensors", tensors,
                     {"variant": variant, "flavor": flavor, "num_classes": str(num_classes)})
    rng = np.random.default_rng(seed + 1)
    images = rng.normal(0.0, 1.0, (batch, 3, *resolution)).astype(np.float32)
    # The training batch (conformance/training.py): its own size, fixed labels.
    train_images = rng.normal(0.0, 1.0, (TRAIN_BATCH, 3, *TRAIN_RESOLUTION)).astype(np.float32)
    train_labels = rng.integers(0, num_classes, TRAIN_BATCH)
    np.savez(work / "inputs.npz", images=images, train_images=train_images, train_labels=train_labels)


def execute(config: RunConfig) -> RunResult:
    """Prepare (unless the work folder has inputs already), run every worker, read what they wrote."""
    start = time.perf_counter()
    config = replace(config, work=Path(config.work or tempfile.mkdtemp(prefix="mnforge-conform-")),
                     generated=config.generated or generated_dir(config.spec))
    if not (config.work / "inputs.npz").exists():
        prepare(config.spec, list(config.variants), config.flavor, config.resolution, config.num_classes,
                config.work)
    spec_seconds = time.perf_counter() - start
    t = time.perf_counter()
    int8 = reestimate(config)
    reestimate_seconds = time.perf_counter() - t
    runs = _run_workers(config, int8)
    out = config.work / "out"
    results = {}
    for w in config.workers:
        for variant in config.variants:
            path = result_path(out, variant, w.framework, w.dtype)
            if path.exists():
                results[(variant, w.key)] = WorkerResult.from_json(path.read_text())
    return RunResult(config, runs, results, out, time.perf_counter() - start, spec_seconds,
                     {"reestimate_seconds": reestimate_seconds} if int8 else {})


def litert_dir(config: RunConfig) -> Path:
    """Where LiteRT exports, and the weights their int8 exports start from, are kept (content-hashed)."""
    return Path(config.options.litert_dir or Path(config.work) / "litert")


def reestimate(config: RunConfig) -> dict[str, dict]:
    """Each variant chosen for int8 (Options.litert_int8), before the workers: the run's weights with their
    BatchNorm statistics re-estimated on the calibration images, once, by `mnforge litert`'s PyTorch
    worker (conformance/litert/command.py: calibrate; conformance/calibration.py), kept in `litert_dir`
    under a content hash (a warm cache starts no worker), `parallel` at a time; none without a run of
    LITERT_INT8_RUNS. Returns, per variant, its int8 job: the weights to export from and the image counts,
    or the error that ended the re-estimation."""
    from concurrent.futures import ThreadPoolExecutor

    from conformance import calibration
    from conformance.export_cache import cached_export
    from conformance.litert import command
    from generators.frameworks import framework

    options = config.options
    exported = any(w.framework in LITERT_INT8_RUNS and w.dtype == "float32" for w in config.workers)
    variants = [v for v in config.variants if v in options.litert_int8] if options.litert and exported else []
    counts = {"calibration": calibration.CALIBRATION_IMAGES, "held_out": calibration.HELD_OUT_IMAGES}

    def one(variant: str) -> dict:
        desc = describe(config.spec, variant, config.flavor, config.resolution, config.num_classes)
        weights = Path(config.work) / "weights" / f"{variant}.safetensors"
        path = litert_dir(config) / f"{variant}.{config.flavor}.reestimated.safetensors"
        generated = Path(config.generated) / framework("torch").package / f"{desc.family}.py"
        key = calibration.cache_key(generated, weights, counts["calibration"], config.flavor, config.resolution)
        request = command.request_of(config.spec, desc, config.flavor, weights, counts["calibration"],
                                     counts["held_out"])

        def calibrate() -> float:
            t = time.perf_counter()
            command.calibrate(request, desc, path)
            return time.perf_counter() - t

        try:  # a failure fails this variant's int8 check, with its message
            cached_export(path, key, calibrate)
        except Exception as exc:  # noqa: BLE001
            return {"error": f"re-estimating the BatchNorm statistics failed: {exc}"}
        return {"weights": str(path), **counts}

    if not variants:
        return {}
    litert_dir(config).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=config.parallel or os.cpu_count() or 1) as pool:
        return dict(zip(variants, pool.map(one, variants)))


def phases(config: RunConfig) -> list[tuple[list[Worker], int]]:
    """The workers in the order they start, in phases, each with the number that may run at once: the
    run's variants with `parallel` workers, then the HEAVY ones (if any) one worker at a time. A worker
    with variants in both phases is started once in each, for its variants there."""
    parallel = config.parallel or os.cpu_count() or 1
    big = tuple(v for v in config.variants if heavy(config.spec, v))
    if not big or parallel <= 1:
        split = [(config.variants, parallel)]
    else:
        split = [(tuple(v for v in config.variants if v not in big), parallel), (big, 1)]
    result = []
    for variants, at_once in split:
        workers = []
        for w in config.workers:
            ran = tuple(v for v in variants if w.runs(v, config.variants))
            if ran:
                workers.append(replace(w, variants=ran) if len(split) > 1 else w)
        # Most costly first (generators.frameworks: Run.start_cost), so that the last to start is a short one.
        workers.sort(key=lambda w: -RUNS[w.framework].start_cost)
        if config.options.train:  # every other run waits for the reference's training results: it starts first
            workers.sort(key=lambda w: (w.framework, w.dtype) != REFERENCE)
        if workers:
            result.append((workers, at_once))
    return result


def _run_workers(config: RunConfig, int8: dict[str, dict]) -> list[WorkerRun]:
    done: list[WorkerRun] = []
    for index, (workers, at_once) in enumerate(phases(config)):
        done += _run_phase(config, workers, at_once, f".{index}" if index else "", int8)
    return done


def _run_phase(config: RunConfig, pending: list[Worker], parallel: int, suffix: str,
               int8: dict[str, dict]) -> list[WorkerRun]:
    """`suffix`: of the request and stderr files of a phase after the first (a worker may be in both);
    `int8`: the int8 jobs of `reestimate`."""
    work, options = config.work, config.options
    pending = list(pending)
    running: list[tuple[WorkerRun, subprocess.Popen, float, object]] = []
    done: list[WorkerRun] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false"),
           "OMP_NUM_THREADS": "1", ENVIRONMENT: str(config.generated)}
    if options.device == "cpu":  # hide any GPU; on "gpu" every framework sees the machine's
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    else:  # workers share the GPU: JAX and TensorFlow take memory as they need it, not all up front
        env.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_FORCE_GPU_ALLOW_GROWTH="true")
    timeout = worker_timeout(config)
    # Training: each variant's reference file (16.5 GB for MobileNetV5's 300M encoder) is deleted once
    # every worker that reads it is done with the variant; only figures go into the results.
    readers = {v: {w.key for w in pending if w.runs(v, config.variants)} for v in config.variants} \
        if options.train else {}

    def finished(key: str, variants) -> None:
        for v in variants:
            if key in readers.get(v, ()):
                readers[v].discard(key)
                if not readers[v]:
                    training.reference_path(work / "out", v).unlink(missing_ok=True)

    while pending or running:
        while pending and len(running) < parallel:
            worker = pending.pop(0)
            stem = worker.key.replace(":", "-") + suffix
            request = work / f"request.{stem}.json"
            request.write_text(json.dumps(_request(config, worker, int8)))
            stderr = open(work / f"stderr.{stem}.log", "w+")
            proc = subprocess.Popen([*WORKER_COMMAND, str(request)],
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            os.set_blocking(proc.stdout.fileno(), False)
            running.append((WorkerRun(worker), proc, time.perf_counter(), stderr))
        time.sleep(0.1)
        for item in list(running):
            run_, proc, started, stderr = item
            for line in _read_lines(proc):
                if line.endswith(" done"):
                    finished(run_.worker.key, [line.split()[1]])
                    if config.progress:
                        config.progress(run_.worker.key, line.split()[1])
            elapsed = time.perf_counter() - started
            if proc.poll() is None and elapsed < timeout:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                run_.timed_out = True
            run_.returncode, run_.seconds = proc.returncode, elapsed
            stderr.seek(0)
            run_.stderr_tail = "\n".join(stderr.read().splitlines()[-20:])
            stderr.close()
            running.remove(item)
            done.append(run_)
            finished(run_.worker.key, config.variants)  # a worker that crashed or timed out reads no more
    return done


def _request(config: RunConfig, worker: Worker, int8: dict[str, dict] | None = None) -> dict:
    """What one worker process is asked to do (conformance/worker.py reads it); `int8`: per variant, the
    int8 job of `reestimate`, for the runs of LITERT_INT8_RUNS."""
    work, options, full = config.work, config.options, worker.dtype == "float32"
    int8 = (int8 or {}) if worker.framework in LITERT_INT8_RUNS else {}
    timeout = worker_timeout(config)
    # the first variant of this run's worker in the whole run, not in its phase (phases)
    first = next((v for v in config.variants for w in config.workers if w.key == worker.key
                  and w.runs(v, config.variants)), None)
    return {
        "framework": worker.framework, "spec": str(config.spec.path), "out": str(work / "out"),
        "inputs": str(work / "inputs.npz"), "device": options.device,
        "jobs": [{"variant": v, "flavor": worker.flavor or config.flavor, "resolution": list(config.resolution),
                  "num_classes": config.num_classes, "dtype": worker.dtype,
                  "weights": str(Path(worker.weights or work / "weights") / f"{v}.safetensors"),
                  "export": str(Path(worker.export) / f"{v}.safetensors") if worker.export else None,
                  "forward": options.outputs, "count_macs": options.count_macs and full,
                  "logits_at": _logits_at(config.spec, v, options) if full else [],
                  "onnx": {"dir": options.onnx_dir or str(work / "onnx"),
                           "reference_evaluator": v in options.onnx_reference_evaluator}
                  if options.onnx and full else None,
                  "litert": {"dir": str(litert_dir(config)), "int8": int8.get(v)} if options.litert and full
                  else None,
                  "train": _train_job(worker, timeout, first=v == first) if options.train else None}
                 for v in config.variants if worker.runs(v, config.variants)],
    }


def worker_timeout(config: RunConfig) -> float:
    """Seconds a worker may take: its imports, then each variant (training compiles three more functions
    per model in JAX and costs about as much again as the rest)."""
    per_variant = config.timeout_per_variant * (3 if config.options.train else 1)
    return TIMEOUT_BASE + per_variant * len(config.variants)


def _train_job(worker: Worker, wait_s: float, first: bool) -> dict:
    """`first`: the worker's first variant, where a float64 run also takes AdamW steps (training.optimizers)."""
    role = "reference" if (worker.framework, worker.dtype) == REFERENCE else worker.dtype
    return {"role": role, "reference_run": REFERENCE[0], "reference_dtype": REFERENCE[1], "wait_s": wait_s,
            "optimizers": [o.name for o in training.optimizers(role, first)]}


def _logits_at(loaded: LoadedSpec, variant: str, options: Options) -> list[list[int]]:
    sizes = list(options.logits_at)
    if options.published_resolutions:
        family = loaded.spec.variants()[variant][0]
        sizes += [(r, r) for r in loaded.spec.families[family].resolutions]
    return [list(size) for size in dict.fromkeys(sizes)]


def _read_lines(proc: subprocess.Popen) -> list[str]:
    try:
        data = proc.stdout.read()
    except (BlockingIOError, TypeError):
        return []
    return [line.strip() for line in (data or "").splitlines() if line.strip()]


def chain(loaded: LoadedSpec, variant: str, frameworks: list[str], flavor: str, work: Path,
          resolution: tuple[int, int] = (224, 192)) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list]:
    """Move weights through `frameworks` in order, each hop in its own worker process: the first loads
    the random neutral weights, each next one loads what the previous one exported.
    Returns (the weights at the start, the weights the last framework exported, the worker runs)."""
    work = Path(work)
    prepare(loaded, [variant], flavor, resolution, 1000, work)
    source, runs = work / "weights", []
    for i, framework in enumerate(frameworks):
        target = work / f"hop{i}-{framework}"
        result = execute(RunConfig(loaded, (variant,), (Worker(framework, weights=str(source), export=str(target)),),
                                   flavor, resolution, work=work, options=Options(outputs=False, count_macs=False)))
        runs.append(result)
        error = getattr(result.results.get((variant, framework)), "error", None)
        if error or not (target / f"{variant}.safetensors").exists():
            raise RuntimeError(f"hop {i} ({framework}) failed: {error or result.workers[0].stderr_tail}")
        source = target
    start, _ = neutral.load(work / "weights" / f"{variant}.safetensors")
    end, _ = neutral.load(source / f"{variant}.safetensors")
    return start, end, runs
