"""The checks of a conformance run: what the workers measured against the spec and against each other.

Tolerances are anchored in float64: PyTorch runs each variant in float64 as the reference, and each
float32 run is measured against it as relative error = max|a - b| / max|reference|. Logits of every
framework must be within OUTPUT_TOLERANCE of the reference and of every other framework, with the
same top-1. A real bug (wrong epsilon, padding or layout) shows as 1e-2 or more.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from conformance.litert.export import FORBIDDEN
from conformance.results import WorkerResult
from conformance.runner import REFERENCE, RunResult
from conformance.weights import is_state
from spec import describe
from spec.loader import LoadedSpec

OUTPUT_TOLERANCE = 1e-4
REFERENCE_KEY = f"{REFERENCE[0]}:{REFERENCE[1]}"


@dataclass
class Check:
    variant: str
    name: str  # build, structure, params, round_trip, shapes, macs, outputs
    subject: str  # a framework, a pair "a~b", or "spec"
    ok: bool
    summary: str
    figures: dict = field(default_factory=dict)
    graph_equals_spec: bool | None = None  # onnx checks of one framework: its canonical graph is the spec's

    def to_json(self) -> dict:
        """For report.json and `conform --json`: every field, graph_equals_spec only where it was checked."""
        data = dict(self.__dict__)
        if self.graph_equals_spec is None:
            del data["graph_equals_spec"]
        return data


def evaluate(loaded: LoadedSpec, run: RunResult) -> list[Check]:
    checks: list[Check] = []
    for variant in run.variants:
        desc = describe(loaded, variant, run.flavor, run.resolution, run.num_classes)
        ran = [r for r in run.workers if r.worker.runs(variant, run.variants)]  # a worker per key (runner.phases)
        keys = [r.worker.key for r in ran]
        crashed = {r.worker.key: r for r in ran if r.returncode != 0 or r.timed_out}
        usable = []
        for key in keys:
            result = run.results.get((variant, key))
            if result is None or result.error is not None:
                checks.append(Check(variant, "build", key, False, _failure(key, result, crashed)))
                continue
            built = f"built in {result.timings.get('build', 0):.1f} s"
            checks.append(Check(variant, "build", key, True, built))
            usable.append(key)
            checks += _structure_checks(variant, key, result, desc)
        checks += _mac_checks(variant, run, usable, desc)
        checks += _logits_shape_checks(variant, run, usable, loaded)
        checks += _onnx_checks(variant, run, usable, desc)
        checks += _litert_checks(variant, run, usable, desc)
        checks += _litert_int8_checks(variant, run, usable)
        if any(key == REFERENCE_KEY for key in keys):
            checks += _output_checks(variant, run, usable, desc)
        checks += _train_checks(variant, run, usable, desc.output)
    return checks


def _failure(key: str, result: WorkerResult | None, crashed: dict) -> str:
    if result is not None:
        return result.error
    worker = crashed.get(key)
    if worker is None:
        return "no result written"
    if worker.timed_out:
        how = "timed out"
    elif worker.returncode == -signal.SIGKILL:  # the runner kills only on a timeout: this is the system
        how = ("was killed (SIGKILL), on Linux most often by the out-of-memory killer: see README, "
               "MobileNetV5 needs memory")
    else:
        how = f"exited with code {worker.returncode}"
    return f"worker {how}; stderr tail:\n{worker.stderr_tail}"


def _structure_checks(variant: str, key: str, result: WorkerResult, desc) -> list[Check]:
    checks = []
    error = result.structure_error
    checks.append(Check(variant, "structure", key, error is None,
                        error or f"{len(result.tensor_shapes)} tensors, names and shapes as the spec"))
    per_layer: dict[str, int] = defaultdict(int)
    for tensor, count in result.trainable.items():
        per_layer[tensor.rsplit(".", 1)[0]] += count
    state = sum(int(np.prod(shape)) for name, shape in result.tensor_shapes.items() if is_state(name))
    spec_layers = desc.params_by_layer()
    differing = sorted(set(per_layer) ^ set(spec_layers) | {n for n in per_layer if per_layer[n] != spec_layers.get(n)})
    total = sum(per_layer.values())
    ok = not differing and total == desc.params and state == desc.state
    summary = (f"{total:,} params, {state:,} BN state (spec {desc.params:,} / {desc.state:,})"
               + (f"; layers differing: {differing[:5]}" if differing else ""))
    checks.append(Check(variant, "params", key, ok, summary, {"params": total, "state": state}))
    rt = result.round_trip
    if rt is not None:
        checks.append(Check(variant, "round_trip", key, rt.ok,
                            f"{rt.tensors} tensors bit-exact" if rt.ok
                            else f"{rt.differing_count} tensors changed: {rt.differing}"))
    if result.block_shapes is not None:
        blocks = result.block_shapes
        batch = next(iter(blocks.values()))[0]
        expected = {name: [batch, shape[0]] if name in ("pool", "fc", "classifier") else [batch, *shape]
                    for name, shape in desc.block_shapes.items()}
        wrong = [f"{n}: {blocks.get(n)} (spec {s})" for n, s in expected.items() if blocks.get(n) != s]
        extra = sorted(set(blocks) - set(expected))
        checks.append(Check(variant, "shapes", key, not wrong and not extra,
                            f"{len(expected)} block outputs as the spec" if not wrong and not extra
                            else f"differing: {wrong[:3]} extra: {extra[:3]}"))
    return checks


def _mac_checks(variant: str, run: RunResult, keys: list[str], desc) -> list[Check]:
    checks = []
    for key in keys:
        macs = run.results[(variant, key)].macs
        if not macs:
            continue
        ok = macs.macs == desc.macs
        summary = f"{macs.macs:,} MACs by {macs.counter}; the spec: {desc.macs:,}"
        checks.append(Check(variant, "macs", key, ok, summary, {"macs": macs.macs, "spec": desc.macs}))
    return checks


def _logits_shape_checks(variant: str, run: RunResult, keys: list[str], loaded: LoadedSpec) -> list[Check]:
    """The output's shape at other resolutions, as the spec gives it: (2, classes), or an encoder's map."""
    checks = []
    for key in keys:
        shapes = run.results[(variant, key)].logits_shapes
        if shapes:
            expected = {}
            for size in shapes:
                at = describe(loaded, variant, run.flavor, tuple(int(n) for n in size.split("x")), run.num_classes)
                expected[size] = [2, *at.block_shapes[at.output][:1 if at.output == "classifier" else 3]]
            wrong = {size: f"{shape} (spec {expected[size]})" for size, shape in shapes.items()
                     if shape != expected[size]}
            what = "logits" if all(len(shape) == 2 for shape in expected.values()) else "outputs"
            checks.append(Check(variant, "resolutions", key, not wrong,
                                f"{what} {', '.join(f'{tuple(expected[s])} at {s}' for s in shapes)}" if not wrong
                                else f"wrong {what} shapes: {wrong}"))
    return checks


def _onnx_checks(variant: str, run: RunResult, keys: list[str], desc) -> list[Check]:
    """Per framework: export, checker, ONNX Runtime (and reference evaluator) against the framework's own
    logits, and the canonical graph against the spec's; then the canonical graphs of every pair."""
    from conformance.onnx.canonical import compare
    from conformance.onnx.from_spec import from_spec

    checks, canonical = [], {}
    for key in keys:
        error = run.results[(variant, key)].onnx_error
        if error is not None:
            checks.append(Check(variant, "onnx", key, False, f"export failed: {error}"))
    exports = {key: run.results[(variant, key)].onnx for key in keys}
    exports = {key: info for key, info in exports.items() if info is not None}
    if not exports:
        return checks
    expected = from_spec(desc).summary()
    for key, info in exports.items():
        errors = {"ONNX Runtime": info.ort_rel_error}
        if info.reference_evaluator_rel_error is not None:
            errors["onnx.reference"] = info.reference_evaluator_rel_error
        difference = compare(expected, info.canonical, ("spec", key))
        canonical[key] = info.canonical
        ok = all(e <= OUTPUT_TOLERANCE for e in errors.values()) and info.ort_top1_same and difference is None
        how = "cached" if info.cached else f"exported in {info.export_s:.1f} s"
        summary = (f"opset {info.opset}, {info.layout} input, {how}, checker ok; "
                   + ", ".join(f"{k} rel. error {v:.2e}" for k, v in errors.items())
                   + ("" if info.ort_top1_same else "; top-1 DIFFERS")
                   + (f"; canonical graph = spec ({len(expected['sequence'])} ops, {expected['params']:,} params "
                      f"with BatchNorm folded, {expected['macs']:,} MACs)" if difference is None
                      else f"; canonical graph differs from the spec at {difference}"))
        checks.append(Check(variant, "onnx", key, ok, summary, info.to_json(),
                            graph_equals_spec=difference is None))
    for a, b in combinations(sorted(canonical), 2):
        difference = compare(canonical[a], canonical[b], (a, b))
        checks.append(Check(variant, "onnx", f"{a}~{b}", difference is None,
                            "canonical graphs equal" if difference is None else f"graphs differ at {difference}"))
    return checks


def _litert_checks(variant: str, run: RunResult, keys: list[str], desc) -> list[Check]:
    """Per framework exported to LiteRT (float; conformance/litert): the op inventory (no TRANSPOSE, GATHER
    or Flex op; every hard-swish the native HARD_SWISH), and the interpreter's output of every block against
    the framework's own and the float64 reference's, by the rule of the outputs check (`_compare`: relative
    to max |reference|, OUTPUT_TOLERANCE, same top-1; the tolerance ONNX Runtime meets too)."""
    checks = []
    reference = run.outputs(variant, REFERENCE_KEY)
    for key in keys:
        result = run.results[(variant, key)]
        if result.litert_error is not None:
            checks.append(Check(variant, "litert", key, False, f"export failed: {result.litert_error}"))
        info = result.litert
        own = run.outputs(variant, key)
        if info is None or own is None:
            continue
        with np.load(info.outputs) as data:
            litert = {name: data[name] for name in data.files}
        against = {key: own, **({"float64": reference} if reference is not None else {})}
        compared = {name: _compare(variant, key, litert, expected, expected,
                                   None if desc.encoder else np.argmax(expected[desc.output], -1), desc.output)
                    for name, expected in against.items()}
        ok = not info.problems and all(c.ok for c in compared.values())
        how = "cached" if info.cached else f"exported in {info.export_s:.1f} s"
        summary = (f"{how}, {sum(info.ops.values())} ops, {len(litert)} block outputs, "
                   + (f"NOT ALLOWED: {', '.join(info.problems)}" if info.problems
                      else "no " + "/".join(FORBIDDEN) + "/Flex" + (f", {info.ops['HARD_SWISH']} HARD_SWISH"
                                                         if info.ops.get("HARD_SWISH") else ""))
                   + "; " + "; ".join(f"vs {name}: {c.summary}" for name, c in compared.items()))
        figures = {**info.to_json(), **{f"vs_{name}": c.figures for name, c in compared.items()}}
        checks.append(Check(variant, "litert", key, ok, summary, figures))
    return checks


def _litert_int8_checks(variant: str, run: RunResult, keys: list[str]) -> list[Check]:
    """Per run exported in int8 (a variant chosen for int8; conformance/litert/quantized.py): fails on a
    broken int8 op rule (the float rules, and no op left in float), on a block named as the likely cause
    (one that loses more than LOSS_THRESHOLD_DB of the SQNR it receives: no clean variant has one, README:
    LiteRT), and on a failed step (the re-estimation, the export, ORT's int8 with --onnx). Top-1, KL and SQNR
    are figures, not gates: on random weights they measure the float network's own chaos as much as the
    quantizer. `figures["poorly"]`: what fails, each to be read after the variant's name (the report's verdict)."""
    from conformance.quantization import LOSS_THRESHOLD_DB

    checks = []
    for key in keys:
        result = run.results[(variant, key)]
        if result.litert_int8_error is not None:
            checks.append(Check(variant, "litert_int8", key, False, f"int8 failed: {result.litert_int8_error}"))
        info = result.litert_int8
        if info is None:
            continue
        report = info.report
        poorly = [f"breaks the int8 op rules: {', '.join(info.problems)}"] if info.problems else []
        if report.first_below:
            poorly.append(f"quantizes poorly at {report.first_below}: it loses {report.loss_db[report.first_below]:.1f} "
                          f"dB, over the {LOSS_THRESHOLD_DB:.0f} dB threshold")
        worst, worst_db = report.worst
        how = "cached" if info.cached else f"exported in {info.export_s:.1f} s"
        rules = f"NOT ALLOWED: {', '.join(info.problems)}" if info.problems else "every op int8"
        summary = (f"{how}, {sum(info.ops.values())} ops, {rules}; "
                   f"vs {key} float32 on {report.held_out} held-out images: {_int8_figures(report)}, worst block "
                   f"{worst} {worst_db:.1f} dB; likely cause: {report.cause}")
        if info.ort is not None:
            summary += f"; ORT int8: {_int8_figures(info.ort.report)}"
        if info.ort_error:
            summary += f"; ORT int8 FAILED: {info.ort_error}"
        if poorly:
            summary += "; FAIL: " + "; ".join(poorly)
        checks.append(Check(variant, "litert_int8", key, not poorly and not info.ort_error, summary,
                            {**info.to_json(), "poorly": poorly}))
    return checks


def _int8_figures(report) -> str:
    """A quantization report's headline: top-1 agreement and KL (a classifier), and its output's SQNR."""
    output, db = list(report.sqnr_db.items())[-1]
    top1 = "" if report.top1_agreement is None else (f"top-1 agreement {report.top1_agreement:.0%}, "
                                                     f"mean KL {report.mean_kl:.2e}, ")
    return f"{top1}{output} SQNR {db:.1f} dB"


def _output_checks(variant: str, run: RunResult, keys: list[str], desc) -> list[Check]:
    outputs = {key: run.outputs(variant, key) for key in keys}
    outputs = {key: value for key, value in outputs.items() if value is not None}
    reference = outputs.get(REFERENCE_KEY)
    if reference is None:
        return [Check(variant, "outputs", "spec", False, "no float64 reference output")]
    checks = []
    floats = [key for key in outputs if key != REFERENCE_KEY]
    # top-1: of logits; an encoder's feature map is compared by its error alone
    reference_top1 = None if desc.encoder else np.argmax(reference["classifier"], axis=-1)
    for key in floats:
        checks.append(_compare(variant, key, outputs[key], reference, reference, reference_top1, desc.output))
    for a, b in combinations(floats, 2):
        checks.append(_compare(variant, f"{a}~{b}", outputs[a], outputs[b], reference, reference_top1, desc.output))
    return checks


def _compare(variant, subject, a, b, reference, reference_top1, output: str) -> Check:
    per_block = {}
    first_bad = None
    for block, ref in reference.items():
        if block not in a or block not in b or a[block].shape != b[block].shape:
            per_block[block] = {"abs": float("inf"), "rel": float("inf")}
        else:
            diff = float(np.max(np.abs(a[block].astype(np.float64) - b[block].astype(np.float64))))
            per_block[block] = {"abs": diff, "rel": diff / (float(np.max(np.abs(ref))) or 1.0)}
        if first_bad is None and per_block[block]["rel"] > OUTPUT_TOLERANCE:
            first_bad = block
    logits = per_block[output]["rel"]
    if reference_top1 is None:  # an encoder
        same_top1 = True
        summary = f"{output} output rel. error {logits:.2e} (tolerance {OUTPUT_TOLERANCE:.0e})"
    else:
        same_top1 = (np.array_equal(np.argmax(a[output], -1), reference_top1)
                     and np.array_equal(np.argmax(b[output], -1), reference_top1))
        summary = (f"logits rel. error {logits:.2e} (tolerance {OUTPUT_TOLERANCE:.0e}), "
                   f"top-1 {'same' if same_top1 else 'DIFFERS'}")
    ok = logits <= OUTPUT_TOLERANCE and same_top1
    if first_bad is not None:
        summary += f"; first diverging block: {first_bad} (rel. error {per_block[first_bad]['rel']:.2e})"
    max_block = max(v["rel"] for v in per_block.values())
    return Check(variant, "outputs", subject, ok, summary,
                 {"logits_rel": logits, "logits_abs": per_block[output]["abs"], "max_block_rel": max_block,
                  "first_diverging": first_bad, "blocks": per_block})


def _train_checks(variant: str, run: RunResult, keys: list[str], output: str) -> list[Check]:
    """Training-mode parity against the float64 reference (conformance/training.py), per run: the forward
    pass with batch statistics and the running statistics after one step (every run), dropout's place and
    rate (float32 runs), the gradients and the parameters after each SGD and AdamW step, with the fine-tuned
    model's eval logits (float64 runs). `output`: the logits' stage, or an encoder's last."""
    from conformance.training import dropout_ok

    if not run.config.options.train:
        return []
    checks = []
    for key in keys:
        train = run.results[(variant, key)].train
        if key == REFERENCE_KEY:
            continue
        if train is None or train.get("reference_missing"):
            checks.append(Check(variant, "train", key, False, "no training results from the float64 reference"
                                if train else "no training results"))
            continue
        tolerance = train["tolerance"]
        forward = train["forward"]
        logits, allowed = forward["blocks"][output], forward["allowed"][output]
        ok = forward["first_diverging"] is None and forward["top1_same"]
        summary = (f"training-mode {'logits' if output == 'classifier' else output + ' output'} rel. error {logits:.2e} (tolerance {allowed:.0e}), top-1 "
                   f"{'same' if forward['top1_same'] else 'DIFFERS'}; loss {train['loss']:.6f} "
                   f"(reference {train['loss_reference']:.6f})")
        if forward["first_diverging"]:
            block = forward["first_diverging"]
            summary += (f"; first diverging block: {block} (rel. error {forward['blocks'][block]:.2e}, allowed "
                        f"{forward['allowed'][block]:.0e})")
        checks.append(Check(variant, "train_forward", key, ok, summary, forward))
        checks.append(Check(variant, "running_stats", key, train["statistics"]["failing_count"] == 0,
                            _section_summary("running statistics after one step", train["statistics"]),
                            train["statistics"]))
        if "gradients" in train:
            checks.append(Check(variant, "gradients", key, train["gradients"]["failing_count"] == 0,
                                _section_summary("gradients", train["gradients"]), train["gradients"]))
        for name in ("sgd", "adamw"):
            if name not in train:
                continue
            steps = train[name]["steps"]
            bad = [i + 1 for i, step in enumerate(steps) if step["failing_count"]]
            summary = _section_summary(f"parameters after {len(steps)} {name} steps", steps[-1])
            if bad:
                first = steps[bad[0] - 1]
                summary += f"; first failing at step {bad[0]} in block {first['first_diverging']}: {first['failing'][:3]}"
            ok = not bad
            if name == "sgd":  # the fine-tuned model's eval logits carry the optimizer's rounding
                rel, same = train[name]["eval_logits_rel"], train[name]["eval_top1_same"]
                ok = ok and rel <= train[name].get("tolerance", tolerance) and same
                summary += f"; fine-tuned eval logits rel. error {rel:.2e}, top-1 {'same' if same else 'DIFFERS'}"
            if train[name].get("excluded"):
                summary += (f"; {len(train[name]['excluded'])} tensors with a gradient of zero but for rounding "
                            "left out (Adam scales rounding up to full steps; their gradients are checked)")
            checks.append(Check(variant, name, key, ok, summary, train[name]))
        if "dropout" in train:
            ok, summary = dropout_ok(train["dropout"])
            checks.append(Check(variant, "dropout", key, ok, summary, train["dropout"]))
    return checks


def _section_summary(what: str, section: dict) -> str:
    worst = section["worst"]
    if worst is None:  # nothing to compare: no running statistics (an RMSNorm model)
        return f"{what}: none on either side"
    text = (f"{what}: {section['tensors']} tensors, worst {worst['tensor']} {worst['error']:.2e} "
            f"(allowed {worst['allowed']:.1e}, relative to the reference's change)")
    if section["first_diverging"]:
        text += f"; first diverging block: {section['first_diverging']}"
    return text
