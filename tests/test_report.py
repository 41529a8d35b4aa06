"""The Excel report, read back with openpyxl (report.write_report)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from openpyxl import Workbook, load_workbook
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet
from report_data import FAILED_ID, MIB, MISSING_ID, OK_ID, SECRET, VLLM_ID, records, vllm_records

from vramphysics.outcome import build_outcome
from vramphysics.report import (
    BENCH_COLUMNS,
    CALIBRATION_COLUMNS,
    FAILURE_COLUMNS,
    POINT_COLUMNS,
    REQUEST_COLUMNS,
    Column,
    ExtraSheet,
    write_report,
)

GIB = 2**30
YELLOW = "FFF2CC"
RED = "F4C7C3"


@pytest.fixture
def workbook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workbook:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    path = write_report(tmp_path / "out" / "run.xlsx", build_outcome(records()))
    assert path == tmp_path / "out" / "run.xlsx"
    assert not list(path.parent.glob("*.tmp"))  # written atomically, nothing left over
    return load_workbook(path)


def _rows(ws: Worksheet) -> list[dict[str, object]]:
    headers = [c.value for c in ws[1]]
    return [
        dict(zip(headers, [c.value for c in row], strict=True)) for row in ws.iter_rows(min_row=2)
    ]


def _row_by(ws: Worksheet, model: str) -> int:
    for r in range(2, ws.max_row + 1):
        if ws.cell(row=r, column=1).value == model:
            return r
    raise AssertionError(f"{model} not in {ws.title}")


def _fill(ws: Worksheet, row: int, col: int) -> str:
    return str(ws.cell(row=row, column=col).fill.start_color.rgb)


def test_sheets(workbook: Workbook) -> None:
    assert workbook.sheetnames == [
        "Answer",
        "Charts",
        "Summary",
        "Calibration",
        "Points",
        "Benchmarks",
        "Requests",
        "Failures",
        "ChartData",
    ]
    assert workbook["ChartData"].sheet_state == "hidden"
    assert workbook.active.title == "Answer"


@pytest.mark.parametrize(
    ("sheet", "columns"),
    [
        ("Calibration", CALIBRATION_COLUMNS),
        ("Points", POINT_COLUMNS),
        ("Benchmarks", BENCH_COLUMNS),
        ("Requests", REQUEST_COLUMNS),
        ("Failures", FAILURE_COLUMNS),
    ],
)
def test_every_header_has_a_comment(
    workbook: Workbook, sheet: str, columns: tuple[Column, ...]
) -> None:
    ws = workbook[sheet]
    headers = [c for c in ws[1] if c.value is not None]
    assert [c.value for c in headers] == [c.header for c in columns]
    for cell in headers:
        assert cell.comment is not None, f"{sheet}!{cell.coordinate} has no comment"
        assert cell.comment.text.strip()
        assert cell.font.bold


@pytest.mark.parametrize(
    ("sheet", "header"),
    [
        ("Calibration", "Base (GiB)"),
        ("Calibration", "Cost per token (B)"),
        ("Calibration", "Base stderr (MiB)"),
        ("Calibration", "Theory KV (B/token)"),
        ("Points", "Context (tokens)"),
        ("Points", "Measured (MiB)"),
        ("Points", "Ready (s)"),
        ("Benchmarks", "TTFT p50 (ms)"),
        ("Benchmarks", "TPOT p99 (ms)"),
        ("Benchmarks", "ITL p90 (ms)"),
        ("Benchmarks", "E2E p50 (ms)"),
        ("Benchmarks", "Decode (tokens/s)"),
        ("Benchmarks", "Requests (req/s)"),
        ("Benchmarks", "Peak memory (GiB)"),
        ("Benchmarks", "Predicted memory (GiB)"),
        ("Requests", "TTFT (ms)"),
        ("Requests", "ITL p50 (ms)"),
        ("Failures", "Max context (tokens)"),
    ],
)
def test_units_in_headers(workbook: Workbook, sheet: str, header: str) -> None:
    assert header in [c.value for c in workbook[sheet][1]]


def test_every_figure_column_names_a_unit() -> None:
    dimensionless = {
        "r2",
        "Points",
        "Samples",
        "Measured/theory",
        "Peak/predicted",
        "N measured",
        "ITL count",
    }
    figure_words = re.compile(
        r"Base|Cost|GiB|Theory|Engine KV|Measured|Peak|Baseline|residual|Ready|TTFT|TPOT|ITL|"
        r"E2E|Decode|Prefill|Load|Context|Window|Requests|Output|Prompt|Steady|Predicted|Start"
    )
    for col in (
        *CALIBRATION_COLUMNS,
        *POINT_COLUMNS,
        *BENCH_COLUMNS,
        *REQUEST_COLUMNS,
        *FAILURE_COLUMNS,
    ):
        if figure_words.search(col.header) and col.header not in dimensionless:
            unit = r"\((GiB|MiB|B|B/token|tokens|tokens/s|req/s|ms|s)\)|GiB"
            assert re.search(unit, col.header), col.header


def test_calibration_figures(workbook: Workbook) -> None:
    rows = {r["Model"]: r for r in _rows(workbook["Calibration"])}
    ok = rows[OK_ID]
    assert ok["Status"] == "OK"
    # base 1e8 B = 0.0931 GiB; 4096 B/token; 4096 * 10_000 B = 0.0381 GiB
    assert ok["Base (GiB)"] == pytest.approx(round(1e8 / GIB, 4))
    assert ok["Cost per token (B)"] == pytest.approx(4096.0)
    assert ok["GiB per 10k tokens"] == pytest.approx(round(4096 * 10_000 / GIB, 4))
    assert ok["Points"] == 3
    assert ok["Theory KV (B/token)"] == 4096.0
    assert ok["Theory weights (GiB)"] == 1.0
    assert ok["Measured/theory"] == pytest.approx(1.0)
    assert ok["Engine KV (B/token)"] == 4096.0
    assert rows[MISSING_ID]["Status"] == "MISSING"
    assert rows[MISSING_ID]["Warnings"] == "predicted 9 GiB > 8 GiB"
    assert rows[FAILED_ID]["Status"] == "FAILED"


def test_missing_row_is_yellow_and_failed_row_is_red(workbook: Workbook) -> None:
    ws = workbook["Calibration"]
    missing, failed, ok = _row_by(ws, MISSING_ID), _row_by(ws, FAILED_ID), _row_by(ws, OK_ID)
    for col in range(1, 5):
        assert _fill(ws, missing, col).endswith(YELLOW)
        assert _fill(ws, failed, col).endswith(RED)
        assert not _fill(ws, ok, col).endswith((YELLOW, RED))
    fails = workbook["Failures"]
    for r in range(2, fails.max_row + 1):
        assert _fill(fails, r, 1).endswith(RED)


def test_points_sheet(workbook: Workbook) -> None:
    rows = _rows(workbook["Points"])
    assert [r["Context (tokens)"] for r in rows] == [512, 1024, 2048]
    first = rows[0]
    # 1e8 + 4096 * 512 = 102_097_152 B = 97.3674 MiB
    assert first["Measured (MiB)"] == pytest.approx(round(102_097_152 / MIB, 3))
    assert first["Peak (MiB)"] == pytest.approx(round(102_097_152 / MIB, 3) + 1.0)
    assert first["Fit residual (MiB)"] == pytest.approx(0.0, abs=1e-3)
    assert first["Engine KV pool (MiB)"] == 2.0  # 4096 * 512 B
    assert first["Engine compute (MiB)"] is None


def test_benchmarks_sheet_has_numbers(workbook: Workbook) -> None:
    ws = workbook["Benchmarks"]
    r = _row_by(ws, OK_ID)  # the model's first row: its smallest prompt, one at a time
    headers = [c.value for c in ws[1]]
    ttft = ws.cell(row=r, column=headers.index("TTFT p50 (ms)") + 1)
    assert ttft.data_type == "n"
    assert ttft.value == 12.35  # rounded to 2 places
    row = _rows(ws)[r - 2]
    assert row["Decode (tokens/s)"] == 250.0
    assert row["Output (tokens)"] == 64
    assert row["Peak memory (GiB)"] == round(110_000_000 / GIB, 4)
    assert row["Status"] == "OK"


def test_failures_sheet(workbook: Workbook) -> None:
    rows = _rows(workbook["Failures"])
    assert len(rows) == 2
    step = rows[0]
    assert step["Model"] == FAILED_ID
    assert step["Context (tokens)"] == 8192
    assert step["Kind"] == "cuda_oom"
    assert step["Max context (tokens)"] == 4096
    assert "CUDA error: out of memory" in str(step["Log tail"])


def test_summary(workbook: Workbook) -> None:
    ws = workbook["Summary"]
    summary = {
        ws.cell(row=r, column=1).value: ws.cell(row=r, column=2).value
        for r in range(1, ws.max_row + 1)
    }
    assert summary["Run"] == "20260101-000000"
    assert summary["Devices"] == "cpu (16.0 GiB)"
    assert summary["Driver"] == "none (no NVIDIA GPU)"
    assert summary["Models OK"] == 1
    assert summary["Models MISSING"] == 1
    assert summary["Models FAILED"] == 1
    assert summary["Points measured"] == 3
    assert summary["Physics entries"] == 1
    assert summary["Benchmark cells"] == 3
    assert summary["Benchmark requests"] == 9  # cold, 2 warm-up, 5 measured, 1 failed
    assert summary["Engine llamacpp"] == "llama.cpp b1"


def test_secrets_are_redacted(workbook: Workbook) -> None:
    seen = []
    for ws in workbook.worksheets:
        for row in ws.iter_rows():
            for cell in row:
                if isinstance(cell.value, str):
                    seen.append(cell.value)
                    assert SECRET not in cell.value, f"{ws.title}!{cell.coordinate}"
    text = "\n".join(seen)
    assert "runner.py --token ***" in text
    assert "download refused with token ***" in text
    assert "HF_TOKEN=***" in text


def test_extra_sheet(tmp_path: Path) -> None:
    extra = ExtraSheet(
        title="Plan",
        columns=(Column("Context (tokens)", "planned context"), Column("Fits", "yes or no")),
        rows=((4096, "yes"), (131072, "no")),
    )
    path = write_report(tmp_path / "r.xlsx", build_outcome([]), extra=[extra])
    wb = load_workbook(path)
    assert wb.sheetnames[-1] == "Plan"  # Answer first, extra sheets after the data
    ws = wb["Plan"]
    assert ws["A1"].comment is not None and ws["A1"].comment.text == "planned context"
    assert [[c.value for c in row] for row in ws.iter_rows(min_row=2)] == [
        [4096, "yes"],
        [131072, "no"],
    ]


def test_an_empty_outcome_still_writes_every_sheet(tmp_path: Path) -> None:
    wb = load_workbook(write_report(tmp_path / "empty.xlsx", build_outcome([])))
    # nothing to draw: no Charts sheet and no hidden data; the Answer sheet is still first
    assert wb.sheetnames == [
        "Answer",
        "Summary",
        "Calibration",
        "Points",
        "Benchmarks",
        "Requests",
        "Failures",
    ]
    assert wb["Calibration"].max_row == 1


def test_missing_and_failed_rows_in_benchmarks(workbook: Workbook) -> None:
    ws = workbook["Benchmarks"]
    assert ws.max_column == len(BENCH_COLUMNS)
    status_col = len(BENCH_COLUMNS)
    missing, failed = _row_by(ws, MISSING_ID), _row_by(ws, FAILED_ID)
    assert ws.cell(row=missing, column=status_col).value == "MISSING"
    assert ws.cell(row=failed, column=status_col).value == "FAILED"
    assert _fill(ws, missing, 1).endswith(YELLOW)
    assert _fill(ws, failed, 1).endswith(RED)


def test_engine_kv_entries_show_no_residual_and_name_their_spread(tmp_path: Path) -> None:
    """vLLM's engine-KV fit is not a regression over the points: no residuals, and the
    half-range of its two starts is called a spread of starts, not a standard error."""
    path = write_report(tmp_path / "v.xlsx", build_outcome(records() + vllm_records()[1:]))
    wb = load_workbook(path)
    points = _rows(wb["Points"])
    vllm = [p for p in points if p["Model"] == VLLM_ID]
    assert len(vllm) == 2
    assert [p["Fit residual (MiB)"] for p in vllm] == [None, None]
    fitted = [p for p in points if p["Model"] == OK_ID]
    assert all(p["Fit residual (MiB)"] == pytest.approx(0.0, abs=1e-3) for p in fitted)
    cal = {r["Model"]: r for r in _rows(wb["Calibration"])}
    kv = cal[VLLM_ID]
    assert kv["Base stderr (MiB)"] is None and kv["Cost stderr (B)"] is None
    assert kv["Base spread of starts (MiB)"] == pytest.approx(4.0)  # bases 8 MiB apart
    assert kv["Cost spread of starts (B)"] == pytest.approx(0.0, abs=0.01)
    ok = cal[OK_ID]
    assert ok["Base stderr (MiB)"] is not None and ok["Base spread of starts (MiB)"] is None


def test_figure_cells_show_their_unit(workbook: Workbook) -> None:
    ws = workbook["Benchmarks"]
    r = _row_by(ws, OK_ID)
    headers = [c.value for c in ws[1]]
    col = {h: headers.index(h) + 1 for h in headers}
    assert ws.cell(row=r, column=col["TTFT p50 (ms)"]).number_format == '0.00 "ms"'
    assert ws.cell(row=r, column=col["Decode (tokens/s)"]).number_format == '0.0 "tok/s"'
    assert ws.cell(row=r, column=col["Requests (req/s)"]).number_format == '0.00 "req/s"'
    last = get_column_letter(len(BENCH_COLUMNS))
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref == f"A1:{last}{ws.max_row}"
    scaled = {str(rule.sqref) for rule in ws.conditional_formatting}
    for header in ("TTFT p50 (ms)", "Decode (tokens/s)"):
        letter = get_column_letter(col[header])
        assert f"{letter}2:{letter}{ws.max_row}" in scaled
