"""The run report: a JSON summary and a self-contained HTML page.

The HTML page has the per-op table, a histogram of every stat each op
computed (inline SVG), thumbnails of dropped samples with the reason, and the
list of skipped rows. It embeds everything, so it can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from array import array
from pathlib import Path
from typing import Any

from lorastory.data.recipe import report_paths
from lorastory.data.result import RunResult
from lorastory.errors import BadImageError
from lorastory.fileio import atomic_files
from lorastory.images import load_rgb

_THUMB = (160, 160)
_BINS = 30


def summary(result: RunResult) -> dict[str, Any]:
    """The report as plain data (what ``*_report.json`` holds)."""
    return {
        "input": str(result.input_path),
        "export": str(result.export_path),
        "stats": str(result.stats_path) if result.stats_path else None,
        "processes": result.processes,
        "seconds": round(result.seconds, 4),
        "samples_in": result.read.n_in,
        "samples_out": result.n_output,
        "skipped": result.n_skipped,
        "ops": [_op_row(c) for c in [result.read, *result.ops]],
        "skipped_rows": [s.as_row() for s in result.skipped],
        "skipped_rows_truncated": result.n_skipped > len(result.skipped),
        "dropped_examples": [
            {"line": e.line, "op": result.ops[e.op_index].name, "images": e.images, "why": e.detail}
            for e in result.dropped_examples
        ],
        "unknown_recipe_keys": result.unknown_keys,
        "ignored_recipe_keys": result.ignored_keys,
    }


def _op_row(counts: Any) -> dict[str, Any]:
    return {
        "op": counts.name,
        "description": counts.description,
        "in": counts.n_in,
        "kept": counts.kept,
        "dropped": counts.dropped,
        "errors": counts.errors,
        "seconds": round(counts.seconds, 4),
    }


def write_reports(result: RunResult) -> tuple[Path, Path]:
    """Write the JSON and HTML reports beside the export again; return their paths.

    :func:`lorastory.data.executor.run_recipe` already writes them together with the result;
    this rewrites them (e.g. after changing ``result``), both at once.
    """
    json_path, html_path = report_paths(result.export_path)
    data = summary(result)
    with atomic_files([json_path, html_path]) as (json_temp, html_temp):
        json_temp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        html_temp.write_text(render_html(result, data), encoding="utf-8")
    return json_path, html_path


def _histogram_svg(values: array, title: str) -> str:
    if not values:
        return ""
    values = array("d", (v for v in values if math.isfinite(v)))
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo
    bins = [0] * (_BINS if span > 0 else 1)
    for v in values:
        index = min(int((v - lo) / span * _BINS), _BINS - 1) if span > 0 else 0
        bins[index] += 1
    peak = max(bins)
    width, height, bar_w = 320, 120, 320 / len(bins)
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - count / peak * (height - 4):.1f}" '
        f'width="{max(bar_w - 1, 1):.1f}" height="{count / peak * (height - 4):.1f}"><title>{count}</title></rect>'
        for i, count in enumerate(bins)
    )
    return (
        f'<figure><figcaption>{html.escape(title)} (n={len(values)})</figcaption>'
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">{bars}</svg>'
        f'<div class="axis"><span>{_fmt(lo)}</span><span>{_fmt(hi)}</span></div></figure>'
    )


def _fmt(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return f"{int(value):,}"
    return f"{value:.4g}"


def _thumbnail(path: str) -> str | None:
    try:
        image = load_rgb(path, draft_size=_THUMB)
    except BadImageError:
        return None
    image.thumbnail(_THUMB)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(result: RunResult, data: dict[str, Any]) -> str:
    """The report page as one HTML string."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(r['op'])}</td><td><code>{esc(r['description'])}</code></td><td>{r['in']}</td>"
        f"<td>{r['kept']}</td><td>{r['dropped']}</td><td>{r['errors']}</td><td>{r['seconds']:.3f}</td></tr>"
        for r in data["ops"]
    )
    figures = "".join(
        _histogram_svg(values, key.split(":", 1)[1].replace(":", " · "))
        for key, values in result.histograms.items()
    )
    cards = []
    for example in result.dropped_examples:
        src = _thumbnail(example.images[0]) if example.images else None
        img = f'<img src="{src}" alt="">' if src else '<div class="noimg">no preview</div>'
        cards.append(
            f'<div class="card">{img}<div><b>{esc(result.ops[example.op_index].name)}</b></div>'
            f"<div>line {example.line}: {esc(example.detail)}</div></div>"
        )
    skipped = "".join(
        f"<tr><td>{s['line']}</td><td>{esc(s['stage'])}</td><td>{esc(s['reason'])}</td></tr>"
        for s in data["skipped_rows"]
    )
    more = " (list truncated)" if data["skipped_rows_truncated"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lorastory data report</title>
<style>
body{{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
figure{{display:inline-block;margin:8px}}svg rect{{fill:#4a7fb5}}
.axis{{display:flex;justify-content:space-between;font-size:12px;width:320px}}
.cards{{display:flex;flex-wrap:wrap;gap:8px}}.card{{width:170px;font-size:12px}}
.noimg{{width:160px;height:100px;background:#eee;display:flex;align-items:center;justify-content:center}}
</style></head><body>
<h1>Data report</h1>
<p>{esc(data['input'])} → {esc(data['export'])}: {data['samples_in']} rows in, {data['samples_out']} kept,
{data['skipped']} skipped, {data['seconds']:.2f} s on {data['processes']} process(es).</p>
<h2>Operators</h2>
<table><tr><th>op</th><th>parameters</th><th>in</th><th>kept</th><th>dropped</th><th>errors</th><th>seconds</th></tr>
{rows}</table>
<h2>Stats</h2>{figures or '<p>No stats.</p>'}
<h2>Dropped samples</h2><div class="cards">{''.join(cards) or '<p>None.</p>'}</div>
<h2>Skipped rows{more}</h2>
<table><tr><th>line</th><th>stage</th><th>reason</th></tr>{skipped}</table>
</body></html>
"""
