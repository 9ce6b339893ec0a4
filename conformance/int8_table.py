"""LiteRT int8 beside ONNX Runtime int8, per variant: the same weights (BatchNorm statistics re-estimated
once, conformance/calibration.py, from the conformance run's random weights), the same calibration images,
the same held-out images, one framework's exports (Keras by default: it exports to both).
`python -m conformance.int8_table VARIANT... [--resolution HxW]` prints the table (markdown); `conform
--litert`'s report shows the same table (`cells`) from its int8 checks (conformance/report.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conformance.quantization import QuantizationReport


@dataclass(frozen=True)
class Int8Row:
    variant: str
    litert: QuantizationReport
    litert_seconds: float | None  # None: the export was reused from the cache
    ort: QuantizationReport | None  # None: not measured (`conform --litert` without --onnx)
    ort_seconds: float | None


def measure(loaded, variants: list[str], resolution: tuple[int, int], framework: str = "keras",
            flavor: str | None = None) -> list[Int8Row]:
    from conformance import calibration
    from conformance import weights as neutral
    from conformance.litert import command
    from conformance.porting.port import run_worker
    from spec import describe

    rows = []
    for variant in variants:
        desc = describe(loaded, variant, flavor, resolution)
        request = command.request_of(loaded, desc, desc.flavor, None, calibration.CALIBRATION_IMAGES,
                                     calibration.HELD_OUT_IMAGES)
        with tempfile.TemporaryDirectory(prefix="mnforge-int8-") as tmp:
            own = Path(tmp) / "random.safetensors"  # the conformance run's weights (seed 0)
            neutral.save(own, neutral.random_weights(desc), {"variant": variant, "flavor": desc.flavor,
                                                             "num_classes": str(desc.num_classes)})
            weights = command.calibrate({**request, "weights": str(own)}, desc,
                                        Path(tmp) / "calibrated.safetensors")
            litert = command.export(loaded, desc, framework, Path(tmp) / "int8.tflite", flavor=desc.flavor,
                                    weights=weights, quantize="int8", bn_stats="weights")
            ort = run_worker({**request, "weights": str(weights), "op": "ort_int8", "framework": framework,
                              "path": str(Path(tmp) / "int8.onnx")}, framework, f"ORT int8 of {variant}")
        rows.append(Int8Row(variant, litert.report, litert.seconds, QuantizationReport.from_json(ort["report"]),
                            ort["seconds"]))
    return rows


HEADER = ["variant", "LiteRT top-1", "LiteRT KL", "LiteRT logits SQNR", "LiteRT worst block SQNR",
          "LiteRT largest loss", "LiteRT likely cause", "LiteRT export s", "ORT top-1", "ORT KL", "ORT logits SQNR",
          "ORT export+quantize s"]


def cells(row: Int8Row) -> list[str]:
    """A row of the side-by-side table: LiteRT's report (every block), then ORT's (the logits only)."""
    def top1(report):
        return "-" if report.top1_agreement is None else f"{report.top1_agreement:.0%}"

    def kl(report):
        return "-" if report.mean_kl is None else f"{report.mean_kl:.2e}"

    def seconds(value):
        return "cached" if value is None else f"{value:.1f}"

    def output_sqnr(report):  # the logits, or an encoder's output
        return f"{list(report.sqnr_db.values())[-1]:.1f} dB"

    litert = row.litert
    worst, worst_db = litert.worst
    lossy = max(litert.loss_db, key=litert.loss_db.get)
    ort = ([top1(row.ort), kl(row.ort), output_sqnr(row.ort), seconds(row.ort_seconds)] if row.ort is not None
           else ["–"] * 4)
    return [row.variant, top1(litert), kl(litert), output_sqnr(litert), f"{worst_db:.1f} dB ({worst})",
            f"{litert.loss_db[lossy]:.1f} dB ({lossy})", litert.first_below or "none", seconds(row.litert_seconds),
            *ort]


def table(rows: list[Int8Row]) -> str:
    """The side-by-side table, markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|"]
    return "\n".join(lines + ["| " + " | ".join(cells(row)) + " |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    from conformance.cli import _resolution
    from spec import load_spec

    parser = argparse.ArgumentParser(prog="python -m conformance.int8_table")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--resolution", type=_resolution, default=(64, 48))
    parser.add_argument("--framework", default="keras")
    args = parser.parse_args(argv)
    rows = []
    for variant in args.variants:  # a row as soon as it is measured
        rows += measure(load_spec(), [variant], args.resolution, args.framework)
        print(table(rows).splitlines()[-1] if len(rows) > 1 else table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
