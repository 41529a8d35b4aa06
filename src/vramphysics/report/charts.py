"""Native Excel charts (openpyxl), so they stay live in Excel and LibreOffice.

Per model, one band of the Charts sheet: memory vs context (measured points as markers from the
Points sheet, the fitted and the theory line from the hidden ChartData sheet), TTFT p50 and
decode throughput against prompt tokens (from the Benchmarks sheet: the model's rows at its
lowest concurrency without #warm, which come first). Charts sit on a fixed grid (every column
and row of the sheet has a set size), so none overlaps another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from openpyxl import Workbook
from openpyxl.chart import Reference, ScatterChart, Series
from openpyxl.chart.marker import Marker
from openpyxl.chart.shapes import GraphicalProperties
from openpyxl.chart.text import RichText, Text
from openpyxl.chart.title import Title
from openpyxl.drawing.line import LineProperties
from openpyxl.drawing.text import (
    CharacterProperties,
    Paragraph,
    ParagraphProperties,
    RegularTextRun,
)
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from vramphysics.report.columns import BENCH_COLUMNS
from vramphysics.report.series import ModelSeries

MIB = 2**20
CHART_W_CM = 15.0
CHART_H_CM = 7.5
SLOT_COLS = 9  # columns per chart slot, each GRID_COL_WIDTH characters wide
BAND_ROWS = 18  # rows per model: a label row, the charts, a gap
GRID_COL_WIDTH = 10.0
GRID_ROW_HEIGHT_PT = 15.0
CHARTS_PER_BAND = 3
TITLE_SIZE = 1100  # 11 pt
AXIS_TITLE_SIZE = 900
ENGINE_KV_NOTE = "vLLM reserves its KV pool up front: the points are the whole reservation"
# Columns of the sheets the charts read (1-based, as in columns.py)
POINTS_CTX, POINTS_MEASURED = 3, 4
_BENCH_HEADERS = [c.header for c in BENCH_COLUMNS]
BENCH_PROMPT = _BENCH_HEADERS.index("Prompt (tokens)") + 1
BENCH_TTFT = _BENCH_HEADERS.index("TTFT p50 (ms)") + 1
BENCH_DECODE = _BENCH_HEADERS.index("Decode (tokens/s)") + 1
Range = tuple[int, int]


@dataclass(frozen=True)
class LineBlock:
    """Where one model's lines lie in ChartData: the context column and its rows."""

    ctx_col: int
    first_row: int
    last_row: int
    fit_col: int | None
    theory_col: int | None


def write_line_data(ws: Worksheet, series: Sequence[ModelSeries]) -> dict[str, LineBlock]:
    """Each model's fit and theory lines, three columns per model, in MiB."""
    blocks: dict[str, LineBlock] = {}
    col = 1
    for s in series:
        if not s.has_memory_chart or (s.fit_bytes is None and s.theory_bytes is None):
            continue
        ws.cell(row=1, column=col, value=f"{s.model}: context (tokens)")
        ws.cell(row=1, column=col + 1, value="fit (MiB)")
        ws.cell(row=1, column=col + 2, value="theory (MiB)")
        for i, ctx in enumerate(s.line_ctx, start=2):
            ws.cell(row=i, column=col, value=ctx)
            if s.fit_bytes is not None:
                ws.cell(row=i, column=col + 1, value=round(s.fit_bytes[i - 2] / MIB, 3))
            if s.theory_bytes is not None:
                ws.cell(row=i, column=col + 2, value=round(s.theory_bytes[i - 2] / MIB, 3))
        blocks[s.model] = LineBlock(
            ctx_col=col,
            first_row=2,
            last_row=len(s.line_ctx) + 1,
            fit_col=col + 1 if s.fit_bytes is not None else None,
            theory_col=col + 2 if s.theory_bytes is not None else None,
        )
        col += 3
    return blocks


def _title(text: str, size: int) -> Title:
    """A chart or axis title at `size` hundredths of a point (openpyxl's default is 18 pt)."""
    props = CharacterProperties(sz=size, b=True)
    para = Paragraph(pPr=ParagraphProperties(defRPr=props), r=[RegularTextRun(rPr=props, t=text)])
    return Title(tx=Text(rich=RichText(p=[para])), overlay=False)


def _chart(title: str, x_title: str, y_title: str) -> ScatterChart:
    chart = ScatterChart()
    chart.title = _title(title, TITLE_SIZE)
    chart.style = 2
    chart.x_axis.title = _title(x_title, AXIS_TITLE_SIZE)
    chart.y_axis.title = _title(y_title, AXIS_TITLE_SIZE)
    chart.x_axis.delete = False  # openpyxl 3.1 hides the axes unless told
    chart.y_axis.delete = False
    chart.x_axis.number_format = "#,##0"
    chart.y_axis.number_format = "#,##0.0"
    chart.visible_cells_only = False  # the lines live on a hidden sheet
    chart.legend.position = "b"
    chart.width, chart.height = CHART_W_CM, CHART_H_CM
    return chart


def _series(
    ws: Worksheet, x_col: int, y_col: int, rows: Range, title: str, markers: bool, color: str
) -> Series:
    xs = Reference(ws, min_col=x_col, min_row=rows[0], max_row=rows[1])
    ys = Reference(ws, min_col=y_col, min_row=rows[0], max_row=rows[1])
    s = Series(ys, xs, title=title)
    if markers:
        fill = GraphicalProperties(solidFill=color, ln=LineProperties(solidFill=color))
        s.marker = Marker(symbol="circle", size=7, spPr=fill)
        s.graphicalProperties = GraphicalProperties(ln=LineProperties(noFill=True))
    else:
        s.marker = Marker(symbol="none")
        line = LineProperties(solidFill=color, w=22000)  # EMU, about 1.7 pt
        s.graphicalProperties = GraphicalProperties(ln=line)
    s.smooth = False
    return s


def memory_chart(
    s: ModelSeries, points: Worksheet, rows: Range, data: Worksheet, block: LineBlock | None
) -> ScatterChart:
    """Measured points, fitted line and theory line on one chart, in MiB."""
    chart = _chart(f"{s.model}: memory vs context", "Context (tokens)", "Memory (MiB)")
    chart.series.append(
        _series(points, POINTS_CTX, POINTS_MEASURED, rows, "measured", True, "1F77B4")
    )
    if block is not None:
        lines = (block.first_row, block.last_row)
        label = "engine KV: base + ctx x pool/tokens" if s.engine_kv else "fit: base + ctx x cost"
        if block.fit_col is not None:
            chart.series.append(
                _series(data, block.ctx_col, block.fit_col, lines, label, False, "FF7F0E")
            )
        if block.theory_col is not None:
            chart.series.append(
                _series(
                    data,
                    block.ctx_col,
                    block.theory_col,
                    lines,
                    "theory: weights + ctx x KV",
                    False,
                    "2CA02C",
                )
            )
    return chart


def bench_charts(s: ModelSeries, bench: Worksheet, rows: Range) -> list[ScatterChart]:
    ttft = _chart(f"{s.model}: TTFT p50 vs prompt", "Prompt (tokens)", "TTFT p50 (ms)")
    ttft.series.append(_series(bench, BENCH_PROMPT, BENCH_TTFT, rows, "TTFT p50", True, "D62728"))
    decode = _chart(f"{s.model}: decode vs prompt", "Prompt (tokens)", "Decode (tokens/s)")
    decode.series.append(_series(bench, BENCH_PROMPT, BENCH_DECODE, rows, "decode", True, "9467BD"))
    return [ttft, decode]


def _grid(ws: Worksheet, bands: int) -> None:
    """Set every column and row the charts sit on, so their places are known exactly."""
    for c in range(1, SLOT_COLS * CHARTS_PER_BAND + 1):
        ws.column_dimensions[get_column_letter(c)].width = GRID_COL_WIDTH
    for r in range(1, bands * BAND_ROWS + 1):
        ws.row_dimensions[r].height = GRID_ROW_HEIGHT_PT


def add_charts(
    wb: Workbook,
    series: Sequence[ModelSeries],
    point_ranges: Mapping[str, Range],
    bench_ranges: Mapping[str, Range],
) -> Worksheet | None:
    """The Charts sheet (second, after Answer) and its hidden ChartData; None: nothing to draw."""
    drawn = [s for s in series if s.model in point_ranges or s.model in bench_ranges]
    if not drawn:
        return None
    ws = wb.create_sheet("Charts", 1)
    data = wb.create_sheet("ChartData")
    data.sheet_state = "hidden"
    blocks = write_line_data(data, drawn)
    _grid(ws, len(drawn))
    for band, s in enumerate(drawn):
        top = band * BAND_ROWS + 1
        label = f"{s.model} ({s.engine}, {s.device or 'no device'})"
        note = f": {ENGINE_KV_NOTE}" if s.engine_kv else ""
        ws.cell(row=top, column=1, value=label + note).font = Font(bold=True)
        charts: list[ScatterChart] = []
        if s.model in point_ranges:
            charts.append(
                memory_chart(s, wb["Points"], point_ranges[s.model], data, blocks.get(s.model))
            )
        if s.model in bench_ranges:
            charts += bench_charts(s, wb["Benchmarks"], bench_ranges[s.model])
        for slot, chart in enumerate(charts):
            ws.add_chart(chart, f"{get_column_letter(slot * SLOT_COLS + 1)}{top + 1}")
    return ws
