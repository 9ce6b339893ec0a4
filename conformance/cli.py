"""`mnforge`: list, describe, generate and conform MobileNet variants."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from conformance.console import console
from generators import location
from generators.frameworks import FRAMEWORKS, REFERENCE_RUN, RUNS
from spec import SpecError, UnknownName, describe, load_spec
from spec.loader import DEFAULT_SPEC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnforge", description="MobileNet Forge: one spec, three frameworks.")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="spec file (default: the bundled one)")
    parser.add_argument("--generated", type=Path, default=None, metavar="DIR",
                        help="folder of the spec's generated code, rendered there when stale (default: generated/ "
                             "for the bundled spec, else a cache under .cache/generated keyed by the spec's hash)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="list every variant")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("describe", help="layer table of one variant: shapes, params, BN state, MACs")
    p.add_argument("variant")
    p.add_argument("--resolution", type=_resolution, default=None, help="R or HxW (default: 224 or the family's)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--flavor", default=None, help="numeric conventions (default: the spec's default_flavor)")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("generate", help="render the spec's code: generated/ for the bundled spec "
                                             "(`make generate`), an importable package in --out for any spec")
    p.add_argument("--spec", type=Path, default=argparse.SUPPRESS, help="spec file (as before the command)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="the package folder to write (default: generated/ for the bundled spec, else --generated "
                        "or the cache folder)")
    p.add_argument("--check", action="store_true", help="write nothing; fail if the folder is stale")

    p = commands.add_parser("conform", help="build every variant in every framework and prove them equal")
    p.add_argument("variants", nargs="*")
    p.add_argument("--all", action="store_true", help="every variant in the spec")
    p.add_argument("--quick", action="store_true", help="one variant per architecture")
    p.add_argument("--frameworks", default=",".join(RUNS),
                   help="comma-separated: " + ", ".join(f"{r.key} ({r.title})" for r in RUNS.values()))
    p.add_argument("--flavor", default=None)
    p.add_argument("--resolution", type=_resolution, default=(224, 192), help="R or HxW (default 224x192)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--report", type=Path, default=None, help="write report.md, report.json and junit.xml here")
    p.add_argument("--work", type=Path, default=None, help="keep weights, inputs and outputs in this folder")
    p.add_argument("--parallel", type=int, default=None, help="workers at a time (default: number of cores)")
    p.add_argument("--onnx", action="store_true",
                   help="also export to ONNX (opset 18): checker, ONNX Runtime vs each framework, canonical graphs")
    p.add_argument("--onnx-cache", type=Path, default=Path(".cache/onnx"),
                   help="exports are kept here under a content hash, so a re-run does not re-export")
    p.add_argument("--litert", action="store_true",
                   help="also export to LiteRT (float) from PyTorch, Keras and Flax: op inventory, every block in the "
                        "LiteRT interpreter vs each framework and the float64 reference")
    p.add_argument("--litert-cache", type=Path, default=Path(".cache/litert"),
                   help="LiteRT exports are kept here under a content hash, so a re-run does not re-export")
    p.add_argument("--litert-int8", default=None, metavar="|".join(LITERT_INT8),
                   help="with --litert, the variants also exported in int8 (BatchNorm statistics re-estimated, "
                        "the per-block report, ORT int8 beside it with --onnx): one per architecture of the "
                        "selection (default), all, or none; never those over 50 M parameters (MobileNetV5)")
    p.add_argument("--train", action="store_true",
                   help="also training-mode parity: batch-statistics forward, gradients, running statistics, "
                        "SGD and AdamW steps, dropout (README: Training parity)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: models and arrays on the GPU, TF32 off in every framework (default cpu)")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="run only the K-th of N cost-balanced parts of the selected variants (CI matrices)")

    p = commands.add_parser("report", help="work with report folders: `report merge` combines shards")
    p = p.add_subparsers(dest="report_command", required=True).add_parser(
        "merge", help="one report (report.json/.md/.html, junit.xml) from several; exits 1 if a check failed")
    p.add_argument("reports", nargs="+", type=Path, metavar="DIR", help="folders written by `conform --report`")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the merged report")
    p.add_argument("--partial", action="store_true", help="merge even if shards of the selection are missing")

    p = commands.add_parser("port", help="convert a checkpoint between formats (see README: Port a checkpoint)")
    p.add_argument("variant")
    from conformance.porting.formats import FORMATS

    p.add_argument("--from", dest="source", required=True, metavar="FORMAT:PATH",
                   help=f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]}, then the file")
    p.add_argument("--to", dest="target", required=True, metavar="FORMAT:PATH")
    p.add_argument("--flavor", default=None, help="default: recorded in the file, or implied by its format")
    p.add_argument("--num-classes", type=int, default=1000)

    p = commands.add_parser("run", help="run a generated model with weights on an .npy input, write logits")
    p.add_argument("variant")
    p.add_argument("--framework", required=True, choices=tuple(FRAMEWORKS))
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True,
                   help="float32, " + ", ".join(f"{f.layout} for {f.key}" for f in FRAMEWORKS.values()))
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--flavor", default=None, help="default: the flavor recorded with the weights")

    p = commands.add_parser("onnx", help="export a generated model to ONNX (opset 18) and validate it")
    p.add_argument("variant")
    p.add_argument("--framework", required=True, choices=tuple(FRAMEWORKS))
    p.add_argument("--flavor", default=None)
    p.add_argument("--resolution", type=_resolution, default=None, help="R or HxW (default: 224 or the family's)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--weights", type=Path, default=None, help="weights to export (default: the model's own init)")
    p.add_argument("-o", "--output", type=Path, required=True)

    p = commands.add_parser("litert", help="export a generated model to LiteRT (.tflite; float, dynamic-range or "
                                           "int8) and run it")
    p.add_argument("variant")
    p.add_argument("--framework", required=True, choices=tuple(FRAMEWORKS),
                   help="keras (TensorFlow backend), flax (through jax2tf) or torch (litert-torch, in its own "
                        "environment: README, LiteRT)")
    p.add_argument("--flavor", default=None)
    p.add_argument("--resolution", type=_resolution, default=None, help="R or HxW (default: 224 or the family's)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--weights", type=Path, default=None, help="weights to export (default: the model's own init)")
    p.add_argument("-o", "--output", type=Path, required=True)
    from conformance import calibration

    p.add_argument("--quantize", default="none", metavar="none|dynamic|int8",
                   help="none: float32; dynamic: int8 weights, float activations; int8: int8 weights and "
                        "activations, float32 input and output (default none)")
    p.add_argument("--calibration", type=int, default=calibration.CALIBRATION_IMAGES, metavar="N",
                   help=f"int8: calibration images, standard normal, seed {calibration.CALIBRATION_SEED} "
                        f"(default {calibration.CALIBRATION_IMAGES})")
    p.add_argument("--held-out", type=int, default=calibration.HELD_OUT_IMAGES, metavar="M",
                   help=f"quantized: images the report compares on, seed {calibration.HELD_OUT_SEED} "
                        f"(default {calibration.HELD_OUT_IMAGES})")
    p.add_argument("--bn-stats", default=None, metavar="calibration|weights",
                   help="quantized: BatchNorm running statistics re-estimated on the calibration images, or "
                        "the weights' own (default: calibration for the model's own init, weights with --weights)")

    args = parser.parse_args(argv)
    previous = os.environ.get(location.ENVIRONMENT)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "report":  # reports carry what they need; no spec is read
            return _report_merge(args)
        loaded = load_spec(args.spec)
        if args.command in ("port", "run", "onnx", "litert", "conform"):
            # Every worker process imports the code of this spec, from the folder this names.
            args.generated = location.generated_dir(loaded, args.generated)
            os.environ[location.ENVIRONMENT] = str(args.generated)
        if args.command == "list":
            return _list(loaded, args)
        if args.command == "describe":
            return _describe(loaded, args)
        if args.command in ("port", "run"):
            return _port_or_run(loaded, args)
        if args.command == "onnx":
            return _onnx(loaded, args)
        if args.command == "litert":
            return _litert(loaded, args)
        return _conform(loaded, args)
    except (SpecError, UnknownName, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:  # called from Python (tests, scripts): the next command chooses its own folder
        if previous is None:
            os.environ.pop(location.ENVIRONMENT, None)
        else:
            os.environ[location.ENVIRONMENT] = previous


def _generate(args) -> int:
    from generators.generate import main as generate_main
    from generators.generate import render_all, stale_files, write

    out = args.out or args.generated
    if out is None and Path(args.spec).resolve() == DEFAULT_SPEC:  # `make generate`: generated/ and the schema
        return generate_main(["--spec", str(args.spec), *(["--check"] if args.check else [])])
    loaded = load_spec(args.spec)
    if out is None:  # never over the bundled package: the spec's cache folder
        out = location.generated_dir(loaded)
        print(f"{out}: the code of {args.spec}; import it from there, or pass --out DIR")
        return 0
    rendered = render_all(loaded)
    if args.check:
        stale = stale_files(rendered, out)
        print(f"{out}: {len(stale)} of {len(rendered)} files stale" + "".join(f"\n  {p}" for p in stale))
        return 1 if stale else 0
    changed = write(rendered, out)
    print(f"{out}: {len(rendered)} files, {len(changed)} changed; a package: add {out.resolve().parent} to "
          f"sys.path and import {out.name}.pytorch.<family> (keras3, flax_nnx)")
    return 0


def _resolution(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"expected R or HxW with sizes of at least 32, got {text!r}")
    return parts[0], parts[1]


def _shard(text: str) -> tuple[int, int]:
    from conformance.shard import parse_shard

    return parse_shard(text)


def _list(loaded, args) -> int:
    rows = []
    for name in loaded.spec.variants():
        desc = describe(loaded, name)
        family = loaded.spec.families[desc.family]
        rows.append({"variant": name, "family": desc.family, "width": desc.width, "params": desc.params,
                     "macs": desc.macs, "resolution": list(desc.resolution), "resolutions": family.resolutions})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.table import Table

    table = Table(title=f"{len(rows)} variants ({loaded.spec.default_flavor} flavor, 1000 classes; "
                        "MACs at each row's input)")
    for column in ("variant", "family", "width", "params", "input", "MACs", "resolutions"):
        table.add_column(column, justify="right" if column in ("width", "params", "input", "MACs") else "left")
    for r in rows:
        h, w = r["resolution"]
        table.add_row(r["variant"], r["family"], f"{r['width']}", f"{r['params']:,}", f"{h}x{w}",
                      f"{r['macs'] / 1e6:.1f} M", " ".join(map(str, r["resolutions"])))
    console().print(table)
    return 0


def _describe(loaded, args) -> int:
    desc = describe(loaded, args.variant, args.flavor, args.resolution, args.num_classes)
    if args.json:
        print(json.dumps({
            "variant": desc.variant, "family": desc.family, "flavor": desc.flavor, "width": desc.width,
            "resolution": list(desc.resolution), "num_classes": desc.num_classes,
            "params": desc.params, "state": desc.state, "macs": desc.macs,
            "layers": [{"name": l.name, "kind": l.kind, "in": l.in_channels, "out": l.out_channels,
                        "kernel": l.kernel, "stride": l.stride, "groups": l.groups, "bias": l.bias,
                        "shape": list(l.out_shape), "params": l.params, "state": l.state, "macs": l.macs}
                       for l in desc.layers],
        }, indent=1))
        return 0
    from rich.table import Table

    h, w = desc.resolution
    table = Table(title=f"{desc.variant}: {desc.flavor} flavor, {h}x{w} input, {desc.num_classes} classes",
                  caption="params: trainable; state: BatchNorm running statistics; MACs: of convs, linears and attention "
                          "products (resizes, pools and concats count none, as every framework's counter)")
    for column in ("layer", "kind", "in → out", "k/s/g", "output (C, H, W)", "params", "state", "MACs"):
        table.add_column(column, justify="right" if column in ("params", "state", "MACs") else "left")
    for l in desc.layers:
        table.add_row(l.name, l.kind, f"{l.in_channels} → {l.out_channels}",
                      f"{l.kernel}/{l.stride}/{l.groups}" if l.kind not in ("batch_norm", "rms_norm", "pool", "linear") else "",
                      "×".join(map(str, l.out_shape)), f"{l.params:,}" if l.params else "",
                      f"{l.state:,}" if l.state else "", f"{l.macs:,}" if l.macs else "")
    table.add_section()
    table.add_row("total", "", "", "", "", f"{desc.params:,}", f"{desc.state:,}", f"{desc.macs:,}")
    console().print(table)
    return 0


def _onnx(loaded, args) -> int:
    from conformance.porting.formats import read_metadata
    from conformance.porting.port import check_target, run_worker

    check_target(None, args.output, "-o")
    desc = describe(loaded, args.variant, args.flavor, args.resolution, args.num_classes)
    flavor = args.flavor or (read_metadata(args.weights).get("flavor") if args.weights else None) or desc.flavor
    result = run_worker({"spec": str(loaded.path), "op": "onnx", "variant": desc.variant, "flavor": flavor,
                         "num_classes": desc.num_classes, "framework": args.framework,
                         "resolution": list(desc.resolution), "path": str(args.output),
                         "weights": str(args.weights) if args.weights else None},
                        args.framework, f"exporting {desc.variant} from {args.framework}")
    from conformance.onnx.export import OPSET

    layout = FRAMEWORKS[args.framework].layout
    print(f"wrote {args.output}: opset {OPSET}, input `images` {layout} (batch dynamic), output "
          f"`logits`; checker ok; exported in {result['seconds']:.1f} s", file=sys.stderr)
    return 0


def _litert(loaded, args) -> int:
    """`mnforge litert`: exit 0 when written and within the float rules (quantized: the op rules; the report
    says how far it is from the float model), 1 when the graph breaks them (the file is written all the
    same, for a look at it), 2 on bad input or a failed export (nothing written)."""
    from conformance.checks import OUTPUT_TOLERANCE
    from conformance.litert import command
    from conformance.porting.formats import read_metadata
    from conformance.porting.port import check_target

    command.check_options(args.quantize, args.calibration, args.held_out, args.bn_stats, args.framework)
    check_target(None, args.output, "-o")
    desc = describe(loaded, args.variant, args.flavor, args.resolution, args.num_classes)
    flavor = args.flavor or (read_metadata(args.weights).get("flavor") if args.weights else None) or desc.flavor
    done = command.export(loaded, desc, args.framework, args.output, flavor=flavor, weights=args.weights,
                          quantize=args.quantize, calibration_images=args.calibration, held_out=args.held_out,
                          bn_stats=args.bn_stats)
    h, w = desc.resolution
    ops = ", ".join(f"{name} {count}" for name, count in done.ops.items())
    kind = {"none": "float32", "dynamic": "dynamic-range (int8 weights, float32 activations)",
            "int8": "int8 weights and activations, float32 input and output"}[done.quantize]
    print(f"wrote {args.output}: {kind}, input NHWC (1, {h}, {w}, 3), output `logits` {tuple(done.shape[1:])} "
          f"per image; exported in {done.seconds:.1f} s\n"
          f"ops ({sum(done.ops.values())}): {ops}", file=sys.stderr)
    if done.report is None:
        top1 = "" if done.top1_same is None else f", top-1 {'same' if done.top1_same else 'DIFFERS'}"
        ok = not done.problems and done.rel_error <= OUTPUT_TOLERANCE and done.top1_same is not False
        print(f"LiteRT vs {args.framework} on 2 random images: max abs error {done.abs_error:.2e}, relative "
              f"{done.rel_error:.2e} (tolerance {OUTPUT_TOLERANCE:.0e}){top1}", file=sys.stderr)
    else:  # how far a quantized model is from the float one is the report's to tell, not a tolerance's
        ok = not done.problems
        statistics = "re-estimated on the calibration images" if done.bn_stats == "calibration" else "the weights' own"
        print(f"BatchNorm statistics: {statistics}\n" + "\n".join(done.report.lines()), file=sys.stderr)
    if done.problems:
        rules = "float rules" if done.report is None else "op rules"
        print(f"error: the graph breaks the {rules}: {', '.join(done.problems)}", file=sys.stderr)
    return 0 if ok else 1


def _port_or_run(loaded, args) -> int:
    from conformance.porting.port import port, run_model

    names = loaded.spec.variants()
    if args.variant not in names:
        raise UnknownName(f"unknown variant {args.variant!r}; `mnforge list` shows them")
    if args.command == "port":
        port(loaded, args.variant, args.source, args.target, args.flavor, args.num_classes,
             echo=lambda line: print(line, file=sys.stderr))
        return 0
    result = run_model(loaded, args.variant, args.framework, args.weights, args.input, args.output, args.flavor)
    what = "a feature map" if len(result["shape"]) == 4 else "logits"  # an encoder's output, or a classifier's
    print(f"wrote {what} {tuple(result['shape'])} to {args.output}", file=sys.stderr)
    return 0


def _conform(loaded, args) -> int:
    """`mnforge conform`: in `--work`, or in a temporary folder removed at the end (its weights, inputs and
    outputs are about 1 GB a run with MobileNetV5)."""
    if args.work is not None:
        return _conform_in(loaded, args)
    with tempfile.TemporaryDirectory(prefix="mnforge-conform-") as work:
        return _conform_in(loaded, argparse.Namespace(**{**vars(args), "work": Path(work)}))


def _conform_in(loaded, args) -> int:
    from conformance.checks import evaluate
    from conformance.report import print_summary, write_reports
    from conformance.runner import HEAVY_PARAMS, LITERT_INT8_RUNS, Options, RunConfig, RunResult, execute

    variants = selection = _select(loaded, args)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in frameworks if f not in RUNS]
    if unknown:
        raise ValueError(f"unknown framework(s) {unknown}; expected some of {', '.join(RUNS)}")
    flavor = args.flavor or loaded.spec.default_flavor
    if args.device == "gpu" and args.onnx:
        raise ValueError("--onnx exports and checks on the CPU; run it without --device gpu")
    if args.device == "gpu" and args.litert:
        raise ValueError("--litert exports and runs on the CPU; run it without --device gpu")
    if args.shard:
        from conformance.shard import shard_variants

        variants = shard_variants(loaded, selection, args.shard, flavor, args.resolution, args.num_classes)
        print(f"shard {args.shard[0]}/{args.shard[1]}: {len(variants)} of {len(selection)} selected variants"
              + (f": {', '.join(variants)}" if variants else "; nothing to run, an empty shard passes"),
              file=sys.stderr)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console_ = console(stderr=True)
    start = time.perf_counter()
    total = len(variants) * (len(frameworks) + 1)
    int8, too_large = int8_variants(loaded, selection, args.litert_int8, args.litert)
    if too_large:
        print(f"--litert: int8 leaves out {', '.join(too_large)} (over {HEAVY_PARAMS // 10**6} M parameters; "
              "README: LiteRT)", file=sys.stderr)
    if int8 and not set(frameworks) & set(LITERT_INT8_RUNS):
        print(f"--litert: int8 is exported from {', '.join(LITERT_INT8_RUNS)} only, which --frameworks leaves out",
              file=sys.stderr)
    options = Options(onnx=args.onnx, onnx_dir=str(args.onnx_cache.resolve()), litert=args.litert,
                      litert_dir=str(args.litert_cache.resolve()), litert_int8=tuple(v for v in int8 if v in variants),
                      device=args.device, train=args.train)
    if args.train:
        from conformance.training import FLOAT64_MAX_PARAMS, float64_variants

        runs64 = [f"{f}:float64" for f in frameworks if RUNS[f].float64 and f != REFERENCE_RUN]
        left_out = [v for v in variants if v not in float64_variants(loaded, variants)]
        if runs64 and left_out:
            print(f"--train: {', '.join(runs64)} leave out {', '.join(left_out)} (over {FLOAT64_MAX_PARAMS // 10**6} M "
                  "parameters: float64 training needs more than 23 GB there; README: Training parity)", file=sys.stderr)
    if not variants:  # an empty shard: no workers; its report is empty, and valid for `report merge`
        result = RunResult(RunConfig.for_frameworks(loaded, [], frameworks, flavor, args.resolution, options,
                                                    num_classes=args.num_classes), [], {}, Path(), 0.0)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console_, transient=not console_.is_terminal) as progress:
            task = progress.add_task(f"conform {len(variants)} variants x {len(frameworks) + 1} runs", total=total)

            def advance(worker: str, variant: str) -> None:
                progress.update(task, advance=1, description=f"{worker}: {variant}")

            result = execute(RunConfig.for_frameworks(
                loaded, variants, frameworks, flavor, args.resolution, options, num_classes=args.num_classes,
                work=args.work, parallel=args.parallel, generated=args.generated, progress=advance))
    device_errors = sorted({r.error for r in result.results.values() if r.device_error})
    if device_errors:
        raise ValueError("\n".join(device_errors))
    check_start = time.perf_counter()
    checks = evaluate(loaded, result)
    result.extra["check_seconds"] = time.perf_counter() - check_start
    failed = [c for c in checks if not c.ok]
    if args.report:
        write_reports(args.report, loaded, result, checks, selection, args.shard)
    if args.json:
        report = {"failed": len(failed), "checks": [c.to_json() for c in checks]}
        print(json.dumps(report, indent=1, default=str))
    else:
        print_summary(loaded, result, checks, time.perf_counter() - start)
    return 1 if failed else 0


def _report_merge(args) -> int:
    """`mnforge report merge DIR... -o OUT`: exit 1 if any merged check failed (a CI gate), 2 if refused."""
    from conformance.report import load_report, merge_reports, print_report, write_report_files

    merged = merge_reports([(str(d), load_report(d)) for d in args.reports], partial=args.partial)
    write_report_files(args.out, merged)
    print_report(merged)
    print(f"merged {len(args.reports)} reports ({len(merged['variants'])} variants, {len(merged['checks'])} "
          f"checks, {merged['failed']} failed) into {args.out}", file=sys.stderr)
    return 1 if merged["failed"] else 0


def quick_variants(spec, among: list[str] | None = None) -> list[str]:
    """One variant per architecture: its width-1.0 variant (the published default), else its first;
    `among`: of those variants only (an architecture with none of them has none)."""
    chosen: dict[str, str] = {}
    for family in spec.families.values():
        for arch_name, arch in family.architectures.items():
            variants = {n: v for n, v in arch.variants.items() if among is None or n in among}
            names = [n for n, v in variants.items() if v.width == 1.0 and not v.minimalistic]
            if variants:
                chosen[arch_name] = (names or list(variants))[0]
    return list(chosen.values())


LITERT_INT8 = ("none", "architectures", "all")


def int8_variants(loaded, selection: list[str], choice: str | None, litert: bool) -> tuple[list[str], list[str]]:
    """The variants of `selection` that `conform --litert` also exports in int8 (`--litert-int8`, default
    architectures: one per architecture, as --quick chooses), and those it would choose but leaves out: over
    runner.HEAVY_PARAMS (MobileNetV5: 28.5 G MACs an image at 224x192, not measured in int8; README: LiteRT)."""
    from conformance.runner import heavy

    if choice is not None and choice not in LITERT_INT8:
        raise ValueError(f"--litert-int8 {choice!r}: expected one of {', '.join(LITERT_INT8)}")
    if choice not in (None, "none") and not litert:
        raise ValueError(f"--litert-int8 {choice}: int8 is part of the LiteRT check; add --litert")
    if not litert or choice == "none":
        return [], []
    chosen = selection if choice == "all" else quick_variants(loaded.spec, among=selection)
    return [v for v in chosen if not heavy(loaded, v)], [v for v in chosen if heavy(loaded, v)]


def _select(loaded, args) -> list[str]:
    names = list(loaded.spec.variants())
    if args.all:
        return names
    if args.quick:
        return quick_variants(loaded.spec)
    if not args.variants:
        raise ValueError("name variants, or use --all or --quick")
    for name in args.variants:
        if name not in names:
            raise UnknownName(f"unknown variant {name!r}; `mnforge list` shows them")
    return args.variants


if __name__ == "__main__":
    sys.exit(main())
