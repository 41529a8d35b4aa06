"""The Excel workbook (openpyxl) from an Outcome and its answers, and nothing else.

Sheets: Answer (first), Charts, Summary, Calibration, Points, Benchmarks, Requests, Failures,
then any extra sheet (Plan) and the hidden ChartData the charts' lines read from. Every header states its
unit, carries a comment saying what the column means, and every figure cell shows its unit.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.comments import Comment
from openpyxl.formatting.rule import ColorScaleRule
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from vramphysics.outcome import Outcome
from vramphysics.physics_db import PhysicsEntry
from vramphysics.redact import redact
from vramphysics.report.answer import AnswerRow, answer_rows
from vramphysics.report.bench_tables import bench_rows, request_rows
from vramphysics.report.charts import add_charts
from vramphysics.report.columns import (
    ANSWER_COLUMNS,
    BENCH_COLUMNS,
    CALIBRATION_COLUMNS,
    FAILURE_COLUMNS,
    POINT_COLUMNS,
    REQUEST_COLUMNS,
    Column,
    ExtraSheet,
)
from vramphysics.report.series import all_series
from vramphysics.report.tables import (
    answer_table,
    calibration_rows,
    failure_rows,
    point_rows,
)

FILL_OK = PatternFill("solid", start_color="D9EAD3", end_color="D9EAD3")  # green
FILL_MISSING = PatternFill("solid", start_color="FFF2CC", end_color="FFF2CC")  # yellow
FILL_FAILED = PatternFill("solid", start_color="F4C7C3", end_color="F4C7C3")  # red
FILL_WARN = PatternFill("solid", start_color="FCE5CD", end_color="FCE5CD")  # orange
_STATUS_FILL = {
    "MISSING": FILL_MISSING,
    "FAILED": FILL_FAILED,
    "NO_FIT": FILL_WARN,
    "INCOMPLETE": FILL_WARN,
    "PARTIAL": FILL_WARN,
}
AUTHOR = "vram-physics"
# lower is better: green -> red; higher is better: red -> green
_LOW_GOOD = ("63BE7B", "FFEB84", "F8696B")
_HIGH_GOOD = ("F8696B", "FFEB84", "63BE7B")


def _shown(value: Any, number_format: str | None) -> int:
    """About how many characters a cell shows: the figure with separators and its unit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return len(str(value))
    unit = number_format.split('"')[1] if number_format and '"' in number_format else ""
    decimals = (
        len(number_format.split(".")[1].split(" ")[0])
        if number_format and "." in number_format
        else (0 if number_format else 3)
    )
    return len(f"{value:,.{decimals}f}") + len(unit) + 1


def _fit_width(col: Column, values: Sequence[Any]) -> float:
    """Wide enough for every figure (never ###), text up to the column's own limit."""
    figures = [_shown(v, col.number_format) for v in values if isinstance(v, (int, float))]
    texts = [len(str(v)) for v in values if v is not None and not isinstance(v, (int, float))]
    text_width = min(col.width, max(texts, default=0))
    return float(max(8, min(len(col.header), 14), text_width + 2, max(figures, default=0) + 2))


def _header_height(columns: Sequence[Column], ws: Worksheet) -> float:
    """Tall enough for the longest wrapped header (LibreOffice does not grow it itself)."""
    lines = 1
    for i, col in enumerate(columns, start=1):
        width = ws.column_dimensions[get_column_letter(i)].width or 8
        lines = max(lines, -(-len(col.header) // max(int(width) - 1, 1)))
    return 15.0 * lines


def write_sheet(
    wb: Workbook, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]
) -> Worksheet:
    """One table: bold commented headers, figures with their units, frozen header, filter."""
    ws = wb.create_sheet(title)
    for r, row in enumerate(rows, start=2):
        for c, value in enumerate(row, start=1):
            cell = ws.cell(
                row=r, column=c, value=redact(value) if isinstance(value, str) else value
            )
            fmt = columns[c - 1].number_format if c <= len(columns) else None
            if fmt and isinstance(value, (int, float)):
                cell.number_format = fmt
    for i, col in enumerate(columns, start=1):
        cell = ws.cell(row=1, column=i, value=col.header)
        cell.font = Font(bold=True)
        cell.alignment = Alignment(wrap_text=True, vertical="top")
        cell.comment = Comment(col.comment, AUTHOR)
        values = [row[i - 1] for row in rows if len(row) >= i]
        ws.column_dimensions[get_column_letter(i)].width = _fit_width(col, values)
    ws.row_dimensions[1].height = _header_height(columns, ws)
    ws.freeze_panes = "B2" if columns and columns[0].header == "Model" else "A2"
    if columns:
        ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{max(len(rows) + 1, 2)}"
    return ws


def fill_status(ws: Worksheet, status_col: int, ok_fill: PatternFill | None = None) -> None:
    for row in ws.iter_rows(min_row=2):
        status = str(row[status_col - 1].value)
        fill = ok_fill if status == "OK" and ok_fill is not None else _STATUS_FILL.get(status)
        if fill is not None:
            for cell in row:
                cell.fill = fill


def color_scale(ws: Worksheet, columns: Sequence[Column], header: str, low_good: bool) -> None:
    """A three-colour scale over one figure column (TTFT: low is good; throughput: high)."""
    idx = [c.header for c in columns].index(header) + 1
    if ws.max_row < 2:
        return
    letter = get_column_letter(idx)
    start, mid, end = _LOW_GOOD if low_good else _HIGH_GOOD
    rule = ColorScaleRule(
        start_type="min",
        start_color=start,
        mid_type="percentile",
        mid_value=50,
        mid_color=mid,
        end_type="max",
        end_color=end,
    )
    ws.conditional_formatting.add(f"{letter}2:{letter}{ws.max_row}", rule)


def _summary(ws: Worksheet, outcome: Outcome) -> None:
    ws.title = "Summary"
    h = outcome.header
    rows: list[tuple[str, Any]] = []
    if h is not None:
        devices = "; ".join(
            f"{d.get('name')} ({(d.get('total_bytes') or 0) / 2**30:.1f} GiB)" for d in h.devices
        )
        rows += [
            ("Run", h.run_id),
            ("Started (UTC)", h.started_at),
            ("Host", h.host),
            ("Platform", h.platform),
            ("Python", h.python),
            ("Devices", devices),
            ("Driver", h.driver or "none (no NVIDIA GPU)"),
            ("Probe", f"{h.probe}: {h.probe_reason}"),
            ("Sweep contexts", ", ".join(map(str, h.sweep_contexts))),
            ("Setups", ", ".join(h.setups)),
            ("Git commit", h.git_commit),
            ("vram-physics", h.tool_version),
            ("Command", " ".join(h.argv)),
        ]
    for engine, version in sorted(outcome.engine_versions.items()):
        rows.append((f"Engine {engine}", version))
    for status, n in sorted(outcome.status_counts().items()):
        rows.append((f"Models {status}", n))
    rows.append(("Points measured", len(outcome.points)))
    rows.append(("Physics entries", len(outcome.entries)))
    rows.append(("Benchmark cells", len(outcome.cells)))
    rows.append(("Benchmark requests", len(outcome.requests)))
    for r, (k, v) in enumerate(rows, start=1):
        ws.cell(row=r, column=1, value=k).font = Font(bold=True)
        ws.cell(row=r, column=2, value=redact(v) if isinstance(v, str) else v)
    ws.column_dimensions["A"].width = 18
    ws.column_dimensions["B"].width = 80


def answer_sheet(wb: Workbook, answers: tuple[AnswerRow, ...]) -> Worksheet:
    """The first sheet: one answer per model, coloured by status, each figure commented."""
    ws = write_sheet(wb, "Answer", ANSWER_COLUMNS, answer_table(answers))
    wb.move_sheet(ws, offset=-len(wb.sheetnames) + 1)
    fill_status(ws, 4, ok_fill=FILL_OK)
    headers = [c.header for c in ANSWER_COLUMNS]
    for r, a in enumerate(answers, start=2):
        for header, text in a.sources:
            cell = ws.cell(row=r, column=headers.index(header) + 1)
            if cell.value is not None:
                cell.comment = Comment(redact(text), AUTHOR, width=420, height=90)
        ws.cell(row=r, column=len(headers)).alignment = Alignment(wrap_text=True)
    for header in ("TTFT p50 small prompt (ms)", "TTFT p50 large prompt (ms)"):
        color_scale(ws, ANSWER_COLUMNS, header, low_good=True)
    for header in ("Decode small prompt (tok/s)", "Decode large prompt (tok/s)"):
        color_scale(ws, ANSWER_COLUMNS, header, low_good=False)
    return ws


def data_sheets(wb: Workbook, outcome: Outcome) -> tuple[dict[str, tuple[int, int]], ...]:
    """Calibration, Points, Benchmarks, Requests and Failures; returns the Points and Benchmarks ranges."""
    ws = write_sheet(wb, "Calibration", CALIBRATION_COLUMNS, calibration_rows(outcome))
    fill_status(ws, 3)
    for row in ws.iter_rows(min_row=2):
        if row[-1].value:
            row[-1].fill = FILL_WARN
    prows, point_ranges = point_rows(outcome)
    write_sheet(wb, "Points", POINT_COLUMNS, prows)
    brows, bench_ranges = bench_rows(outcome)
    ws = write_sheet(wb, "Benchmarks", BENCH_COLUMNS, brows)
    fill_status(ws, len(BENCH_COLUMNS))
    for header in ("TTFT p50 (ms)", "TPOT p50 (ms)", "E2E p50 (ms)"):
        color_scale(ws, BENCH_COLUMNS, header, low_good=True)
    for header in ("Decode (tokens/s)", "Output (tokens/s)", "Prefill (tokens/s)"):
        color_scale(ws, BENCH_COLUMNS, header, low_good=False)
    ws = write_sheet(wb, "Requests", REQUEST_COLUMNS, request_rows(outcome))
    ok_col = [c.header for c in REQUEST_COLUMNS].index("OK")
    for row in ws.iter_rows(min_row=2):
        if row[ok_col].value == "no":
            for cell in row:
                cell.fill = FILL_FAILED
    ws = write_sheet(wb, "Failures", FAILURE_COLUMNS, failure_rows(outcome))
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            cell.fill = FILL_FAILED
    return point_ranges, bench_ranges


def write_atomically(path: Path, data: bytes) -> Path:
    """Write through a temporary file (a reader never sees half a file); on any failure, e.g. a
    full disk, one OSError and no temporary file left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomically(wb: Workbook, path: Path) -> Path:
    """The workbook is built in memory and written by us: a full disk is one OSError, not a
    half-written zip file whose clean-up prints a second traceback from zipfile."""
    buf = io.BytesIO()
    wb.save(buf)
    return write_atomically(path, buf.getvalue())


def build_workbook(
    outcome: Outcome, answers: tuple[AnswerRow, ...], extra: Sequence[ExtraSheet] = ()
) -> Workbook:
    wb = Workbook()
    first = wb.active
    assert first is not None
    _summary(first, outcome)
    point_ranges, bench_ranges = data_sheets(wb, outcome)
    for sheet in extra:
        write_sheet(wb, sheet.title, sheet.columns, sheet.rows)
    answer_sheet(wb, answers)
    add_charts(wb, all_series(outcome), point_ranges, bench_ranges)
    for ws in wb.worksheets:
        print_one_page_wide(ws)
    wb.active = 0
    return wb


def print_one_page_wide(ws: Worksheet) -> None:
    """Printed (or converted to PDF) landscape, one page wide, as many pages long as it takes."""
    ws.page_setup.orientation = "landscape"
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True


def write_report(
    path: Path,
    outcome: Outcome,
    extra: Sequence[ExtraSheet] = (),
    entries: Sequence[PhysicsEntry] | None = None,
) -> Path:
    """Write the workbook atomically. `entries`: the physics database the Answer sheet plans
    with (default: the entries of this run)."""
    answers = answer_rows(outcome, outcome.entries if entries is None else entries)
    return save_atomically(build_workbook(outcome, answers, extra), path)
