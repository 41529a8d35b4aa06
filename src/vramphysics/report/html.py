"""`reports/<run>.html`: the answer table, the charts and the benchmark cells' main figures in
one self-contained page.

No network: the styles are inline and the charts inline SVG. On a phone the answer table turns
into one card per model; printed, every chart stays whole on its page.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from vramphysics.outcome import Outcome
from vramphysics.redact import redact
from vramphysics.report.answer import AnswerRow
from vramphysics.report.bench_tables import cell_row
from vramphysics.report.columns import ANSWER_COLUMNS, BENCH_COLUMNS
from vramphysics.report.series import ModelSeries, cell_order
from vramphysics.report.svg import model_figures
from vramphysics.report.tables import answer_table

_CSS = """
:root { --ok:#d9ead3; --missing:#fff2cc; --failed:#f4c7c3; --warn:#fce5cd; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       padding: 1rem; color: #222; max-width: 1400px; }
h1 { font-size: 1.35rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; }
.meta { color: #555; margin: 0 0 1rem; }
.table-wrap { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .3rem .45rem; vertical-align: top; }
th { background: #f3f3f3; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.OK td { background: var(--ok); } tr.MISSING td { background: var(--missing); }
tr.FAILED td { background: var(--failed); }
tr.NO_FIT td, tr.INCOMPLETE td { background: var(--warn); }
.charts { display: flex; flex-wrap: wrap; gap: .8rem; }
figure { margin: 0; flex: 1 1 360px; max-width: 560px; break-inside: avoid; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: .8rem; color: #555; }
@media (max-width: 700px) {
  table, thead, tbody, tr, td { display: block; } thead { display: none; }
  tr { margin-bottom: .8rem; border: 1px solid #bbb; }
  td { border: none; border-bottom: 1px solid #e3e3e3; text-align: left !important;
       white-space: normal; }
  td::before { content: attr(data-label) ": "; font-weight: 600; }
  td:empty { display: none; }
}
@media print { body { max-width: none; padding: 0; } .table-wrap { overflow: visible; }
  h2 { break-after: avoid; } section { break-inside: avoid; } }
"""


def _cell(value: object, header: str, source: str | None) -> str:
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = "" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))
    title = f' title="{escape(redact(source))}"' if source and value is not None else ""
    cls = ' class="num"' if num else ""
    return f'<td{cls} data-label="{escape(header)}"{title}>{escape(redact(text))}</td>'


def answer_table_html(answers: Sequence[AnswerRow]) -> str:
    headers = [c.header for c in ANSWER_COLUMNS]
    head = "".join(
        f'<th title="{escape(c.comment)}">{escape(c.header)}</th>' for c in ANSWER_COLUMNS
    )
    body = []
    for a, values in zip(answers, answer_table(tuple(answers)), strict=True):
        cells = "".join(_cell(v, h, a.source(h)) for h, v in zip(headers, values, strict=True))
        body.append(f'<tr class="{escape(a.status)}">{cells}</tr>')
    return (
        '<div class="table-wrap"><table><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )


# the Benchmarks sheet's columns the page shows (the workbook and the JSON export have them all)
HTML_BENCH_HEADERS = (
    "Model",
    "Context (tokens)",
    "Cell",
    "Prompt (tokens)",
    "N measured",
    "N failed",
    "TTFT p50 (ms)",
    "TTFT p90 (ms)",
    "TTFT p99 (ms)",
    "TPOT p50 (ms)",
    "ITL p50 (ms)",
    "E2E p50 (ms)",
    "Decode (tokens/s)",
    "Output (tokens/s)",
    "Cold TTFT (ms)",
    "Peak/predicted",
    "Status",
)


def bench_table_html(outcome: Outcome) -> str:
    """The cells, one row each, in the Benchmarks sheet's order; empty when there are none."""
    headers = [c.header for c in BENCH_COLUMNS]
    idx = [headers.index(h) for h in HTML_BENCH_HEADERS]
    comments = {c.header: c.comment for c in BENCH_COLUMNS}
    order = {m.model: i for i, m in enumerate(outcome.models)}
    cells = sorted(outcome.cells, key=lambda c: (order.get(c.model, len(order)), cell_order(c)))
    if not cells:
        return ""
    head = "".join(
        f'<th title="{escape(comments[h])}">{escape(h)}</th>' for h in HTML_BENCH_HEADERS
    )
    body = []
    for c in cells:
        row = cell_row(c)
        tds = "".join(_cell(row[i], h, None) for i, h in zip(idx, HTML_BENCH_HEADERS, strict=True))
        status = "OK" if row[-1] == "OK" else ("FAILED" if row[-1] == "FAILED" else "INCOMPLETE")
        body.append(f'<tr class="{status}">{tds}</tr>')
    return (
        '<h2>Benchmark cells</h2><div class="table-wrap"><table><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )


def _model_section(s: ModelSeries) -> str:
    figures = "".join(
        f'<figure role="img" aria-label="{escape(alt)}">{svg}'
        f"<figcaption>{escape(alt)}</figcaption></figure>"
        for alt, svg in model_figures(s)
    )
    title = escape(f"{s.model} ({s.engine}, {s.device or 'no device'})")
    return f'<section><h2>{title}</h2><div class="charts">{figures}</div></section>'


def _meta(outcome: Outcome) -> str:
    h = outcome.header
    if h is None:
        return "no run header in the journal"
    devices = "; ".join(
        f"{d.get('name')} ({(d.get('total_bytes') or 0) / 2**30:.1f} GiB)" for d in h.devices
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.status_counts().items()))
    return redact(
        f"run {h.run_id}, started {h.started_at} on {h.host}; devices: {devices}; "
        f"probe: {h.probe}; models: {counts or 'none'}"
    )


def render_html(
    outcome: Outcome, answers: Sequence[AnswerRow], series: Sequence[ModelSeries]
) -> str:
    run = outcome.header.run_id if outcome.header else "report"
    sections = "".join(_model_section(s) for s in series)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vram-physics {escape(run)}</title><style>{_CSS}</style></head><body>"
        f"<h1>vram-physics: what fits, what to give vLLM, how fast</h1>"
        f'<p class="meta">{escape(_meta(outcome))}</p>'
        f"{answer_table_html(answers)}"
        f"{sections or '<p>No model has points or benchmarks to draw.</p>'}"
        f"{bench_table_html(outcome)}"
        "</body></html>\n"
    )
