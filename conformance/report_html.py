"""report.html: the conformance table and, per variant, a plot of each framework's relative error per
block against the float64 reference (inline SVG: no plotting library, opens anywhere)."""

from __future__ import annotations

import math
from html import escape

from conformance.checks import Check
from generators.frameworks import RUNS


def error_plot(checks: list[Check], width: int = 760, height: int = 220) -> str:
    """Log-scale relative error per block, one line per framework (its check against the reference)."""
    series = {c.subject: c.figures["blocks"] for c in checks
              if c.name == "outputs" and "~" not in c.subject and "blocks" in c.figures}
    if not series:
        return "<p>No output comparison.</p>"
    blocks = list(next(iter(series.values())))
    lo, hi = -9, -3  # 1e-9 .. 1e-3; the gate 1e-4 is drawn
    left, top, plot_w, plot_h = 50, 10, width - 60, height - 50

    def x(i: int) -> float:
        return left + plot_w * i / max(len(blocks) - 1, 1)

    def y(value: float) -> float:
        exponent = min(max(math.log10(value) if value > 0 else lo, lo), hi)
        return top + plot_h * (hi - exponent) / (hi - lo)

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="10">']
    for exponent in range(lo, hi + 1):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(10.0 ** exponent):.1f}" '
                     f'y2="{y(10.0 ** exponent):.1f}" stroke="#ddd"/><text x="5" y="{y(10.0 ** exponent) + 3:.1f}">'
                     f'1e{exponent}</text>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(1e-4):.1f}" y2="{y(1e-4):.1f}" stroke="#c00" '
                 f'stroke-dasharray="4"/>')
    for i, block in enumerate(blocks):
        if i % max(1, len(blocks) // 12) == 0 or i == len(blocks) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{escape(block)}</text>')
    for n, (subject, per_block) in enumerate(series.items()):
        points = " ".join(f"{x(i):.1f},{y(per_block[b]['rel']):.1f}" for i, b in enumerate(blocks) if b in per_block)
        color = RUNS[subject].color if subject in RUNS else "#555"
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{left + 10 + 95 * n}" y="{height - 5}" fill="{color}">{escape(subject)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_report(title: str, rows: list[dict], checks: list[Check], columns: tuple[str, ...], intro: str) -> str:
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
    for row in rows:
        variant = row["variant"]
        out.append(f"<h2 id='{variant}'>{variant}</h2>"
                   "<p>Relative error per block against the float64 reference (log scale; dashed: the 1e-4 gate).</p>")
        out.append(error_plot(by_variant.get(variant, [])))
        failed = [c for c in by_variant.get(variant, []) if not c.ok]
        if failed:
            out.append("<ul>" + "".join(f"<li class='FAIL'>{escape(c.name)} [{escape(c.subject)}]: "
                                        f"{escape(c.summary)}</li>" for c in failed) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)
