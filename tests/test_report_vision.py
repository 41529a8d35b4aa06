"""The Vision sheet: limits, tokens per image and TTFT by image count, read back from the xlsx."""

from __future__ import annotations

from pathlib import Path

from openpyxl import load_workbook
from test_vision_summary import demo_run

from vramphysics.outcome import build_outcome
from vramphysics.report import write_reports
from vramphysics.report.vision import VISION_COLUMNS, vision_sheet


def test_a_run_with_images_gets_a_vision_sheet(tmp_path: Path) -> None:
    outcome = build_outcome(demo_run(), min_points=2)
    sheet = vision_sheet(outcome)
    assert sheet is not None and sheet.title == "Vision"
    files = write_reports(tmp_path / "run.xlsx", outcome, outcome.entries)
    ws = load_workbook(files.xlsx)["Vision"]
    headers = [c.value for c in ws[1]]
    assert headers == [c.header for c in VISION_COLUMNS]
    rows = [dict(zip(headers, (c.value for c in r), strict=True)) for r in ws.iter_rows(min_row=2)]
    whats = [r["What"] for r in rows]
    assert whats.count("limit") >= 2 and "tokens" in whats and "ttft" in whats
    limits = [r for r in rows if r["What"] == "limit"]
    assert {r["Image limit"] for r in limits} >= {1, 4}
    assert all(r["KV pool (tokens)"] for r in limits)
    failed = [r for r in rows if r["Status"] == "FAILED"]
    assert failed and all(r["Note"] for r in failed if r["What"] == "ttft")


def test_a_text_only_run_has_no_vision_sheet(tmp_path: Path) -> None:
    from report_data import records

    outcome = build_outcome(records(), min_points=3)
    assert vision_sheet(outcome) is None
    files = write_reports(tmp_path / "run.xlsx", outcome, outcome.entries)
    assert "Vision" not in load_workbook(files.xlsx).sheetnames
