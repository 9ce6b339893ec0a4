"""report.html: the conformance table and, per variant, a plot of each framework's relative error per
block against the float64 reference (inline SVG: no plotting library, opens anywhere)."""

from __future__ import annotations

import math
from html import escape

from conformance.checks import OUTPUT_TOLERANCE, Check
from conformance.training import tolerance
from generators.frameworks import RUNS


def error_plot(checks: list[Check]) -> str:
    """Log-scale relative error per block, one line per framework (its check against the reference)."""
    series = {c.subject: {block: v["rel"] for block, v in c.figures["blocks"].items()} for c in checks
              if c.name == "outputs" and "~" not in c.subject and "blocks" in c.figures}
    return log_plot(series, -9, -3, OUTPUT_TOLERANCE) if series else "<p>No output comparison.</p>"


def gradient_plot(checks: list[Check]) -> str:
    """Log-scale gradient error per block (its worst tensor, relative to the reference's gradient), one line
    per float64 run; from rounding (1e-16) to a gradient as large as the reference's (1)."""
    series = {c.subject: {block: v["error"] for block, v in c.figures["per_block"].items()} for c in checks
              if c.name == "gradients" and "per_block" in c.figures}
    return log_plot(series, -16, 0, tolerance("float64"), height=260) if series else ""


def log_plot(series: dict[str, dict[str, float]], lo: int, hi: int, gate: float, width: int = 760,
             height: int = 220) -> str:
    """Values per block on a log scale from 1e`lo` to 1e`hi` (0 at the bottom, above the range or NaN at the
    top), one line per run in its RUNS color, the x axis the first run's blocks; dashed: the `gate`."""
    blocks = list(next(iter(series.values())))
    left, top, plot_w, plot_h = 50, 10, width - 60, height - 50
    labels = 1 if hi - lo <= 8 else 2  # a label every decade, or every other one

    def x(i: int) -> float:
        return left + plot_w * i / max(len(blocks) - 1, 1)

    def y(value: float) -> float:
        exponent = hi if math.isnan(value) else min(max(math.log10(value) if value > 0 else lo, lo), hi)
        return top + plot_h * (hi - exponent) / (hi - lo)

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="10">']
    for exponent in range(lo, hi + 1):
        labelled = (hi - exponent) % labels == 0
        label = f'<text x="5" y="{y(10.0 ** exponent) + 3:.1f}">1e{exponent}</text>' if labelled else ""
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(10.0 ** exponent):.1f}" '
                     f'y2="{y(10.0 ** exponent):.1f}" stroke="#ddd"/>{label}')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(gate):.1f}" y2="{y(gate):.1f}" stroke="#c00" '
                 f'stroke-dasharray="4"/>')
    for i, block in enumerate(blocks):
        if i % max(1, len(blocks) // 12) == 0 or i == len(blocks) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{escape(block)}</text>')
    legend = left + 10
    for subject, per_block in series.items():
        points = " ".join(f"{x(i):.1f},{y(per_block[b]):.1f}" for i, b in enumerate(blocks) if b in per_block)
        run = RUNS.get(subject.split(":")[0])  # "flax:float64": flax's color
        color = run.color if run else "#555"
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{legend}" y="{height - 5}" fill="{color}">{escape(subject)}</text>')
        legend += max(95, 6 * len(subject) + 15)  # 95: room for "keras-torch"; "keras-torch:float64" wants more
    parts.append("</svg>")
    return "".join(parts)


def html_report(title: str, rows: list[dict], checks: list[Check], columns: tuple[str, ...], intro: str,
                training: dict[str, tuple[list[str], list[list[str]]]] | None = None,
                sections: list[tuple[str, list[str], list[str], list[list[str]]]] = ()) -> str:
    """`training`: per variant, the training parity table (header, rows of cells) to show with its gradient
    plot (conformance/report.py: training_table). `sections`: tables of the whole run after the main one,
    each (title, paragraphs, header, rows of cells)."""
    by_variant: dict[str, list[Check]] = {}
    for c in checks:
        by_variant.setdefault(c.variant, []).append(c)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>"
           "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
           "padding:2px 6px;text-align:right}td:first-child{text-align:left}.ok{color:#080}.FAIL{color:#c00;"
           "font-weight:bold}</style></head><body>", f"<h1>{escape(title)}</h1><p>{escape(intro)}</p>",
           "<table><tr><th>variant</th><th>params</th><th>BN state</th><th>MACs</th>"
           + "".join(f"<th>{c}</th>" for c in columns) + "<th>max logits rel. error</th></tr>"]
    for row in rows:
        cells = "".join(f"<td class='{v}'>{v}</td>" for v in row["cells"].values())
        out.append(f"<tr><td><a href='#{row['variant']}'>{row['variant']}</a></td><td>{row['params']:,}</td>"
                   f"<td>{row['state']:,}</td><td>{row['macs']:,}</td>{cells}<td>{row['worst_logits_rel']:.2e}</td></tr>")
    out.append("</table>")
    for heading, paragraphs, header, table in sections:
        out.append(f"<h2>{escape(heading)}</h2>" + "".join(f"<p>{escape(text)}</p>" for text in paragraphs))
        out += _table_html(header, table)
    for row in rows:
        variant = row["variant"]
        out.append(f"<h2 id='{variant}'>{variant}</h2>"
                   "<p>Relative error per block against the float64 reference (log scale; dashed: the 1e-4 gate).</p>")
        out.append(error_plot(by_variant.get(variant, [])))
        if training and variant in training:
            out += _training_html(*training[variant], gradient_plot(by_variant.get(variant, [])))
        failed = [c for c in by_variant.get(variant, []) if not c.ok]
        if failed:
            out.append("<ul>" + "".join(f"<li class='FAIL'>{escape(c.name)} [{escape(c.subject)}]: "
                                        f"{escape(c.summary)}</li>" for c in failed) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _table_html(header: list[str], table: list[list[str]]) -> list[str]:
    """A table of cells; a cell that says FAIL in red."""
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td{' class=FAIL' if 'FAIL' in cell else ''}>{escape(cell)}</td>" for cell in row)
            + "</tr>" for row in table]
    return out + ["</table>"]


def _training_html(header: list[str], table: list[list[str]], plot: str) -> list[str]:
    out = ["<h3>Training parity</h3>", *_table_html(header, table)]
    if plot:
        out.append(f"<p>Gradient error per block against the float64 reference: its worst tensor, relative to "
                   f"the reference's gradient (log scale; dashed: the {tolerance('float64'):.0e} tolerance).</p>")
        out.append(plot)
    return out
