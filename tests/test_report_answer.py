"""The Answer sheet's figures: the same as `vramphysics plan` for the same entry and device."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from openpyxl import load_workbook
from report_data import GIB, H100, MISSING_ID, OK_ID, VLLM_ID, records, vllm_records

from vramphysics import physics_db
from vramphysics.cli import main
from vramphysics.outcome import build_outcome
from vramphysics.report import (
    ANSWER_COLUMNS,
    answer_rows,
    answer_table_text,
    run_end_text,
    write_reports,
)
from vramphysics.report.answer import AnswerRow, answer_row


def _plan_json(
    capsys: pytest.CaptureFixture[str], db: Path, engine: str, model: str, device: str, *rest: str
) -> dict[str, object]:
    code = main(
        ["plan", "--physics", str(db), "--engine", engine, "--model", model, "--device", device]
        + list(rest)
        + ["--json"]
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _answers(recs: list, tmp_path: Path) -> tuple[Path, dict[str, AnswerRow]]:
    outcome = build_outcome(recs)
    db = tmp_path / "physics.yaml"
    entries = physics_db.write_entries(db, outcome.entries)
    return db, {a.model: a for a in answer_rows(outcome, entries)}


def test_demo_answer_agrees_with_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, answers = _answers(records(), tmp_path)
    a = answers[OK_ID]
    total, used = 16 * GIB, 0  # the run header's cpu device; used by others unknown: 0
    assert a.status == "OK" and a.device == "cpu" and a.ctx == 2048  # the model's #ctx
    assert a.free_bytes == total - used
    plan = _plan_json(
        capsys, db, "llamacpp", "llamacpp:tiny.gguf", "cpu",
        "--total-gib", repr(total / GIB), "--used-gib", repr(used / GIB), "--ctx", "2048",
    )  # fmt: skip
    assert a.max_context == plan["max_context"]
    assert a.required_bytes == pytest.approx(plan["required_bytes"])
    # (16 GiB - 5% margin - 1e8 B) / 4096 B per token
    assert a.max_context == (int(0.95 * 16 * GIB) - 100_000_000) // 4096
    used_90 = total - int(0.9 * total)
    plan_90 = _plan_json(
        capsys, db, "llamacpp", "llamacpp:tiny.gguf", "cpu",
        "--total-gib", repr(total / GIB), "--used-gib", repr(used_90 / GIB), "--ctx", "2048",
    )  # fmt: skip
    assert a.max_context_90 == plan_90["max_context"]
    assert a.max_context_90 < a.max_context
    assert a.gpu_memory_utilization is None  # llama.cpp allocates on demand: nothing to give vLLM
    # the cells one at a time: 128 and 1024 tokens asked; the concurrency-4 cell is not a size
    assert a.small is not None and a.small.ttft_p50_ms == 12.3456 and a.small.prompt_tokens == 127
    assert a.large is not None and a.large.ttft_p50_ms == 60.0 and a.large.prompt_tokens == 1023
    assert (a.small.n_requests, a.large.n_requests) == (5, 4)
    assert a.warning is None
    assert a.gib_per_10k == pytest.approx(4096 * 10_000 / GIB)


def test_vllm_answer_agrees_with_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, answers = _answers(vllm_records(), tmp_path)
    a = answers[VLLM_ID]
    plan = _plan_json(
        capsys, db, "vllm", "vl_org/tiny-chat", H100,
        "--total-gib", "80.0", "--used-gib", "2.0", "--ctx", "4096",
    )  # fmt: skip
    assert a.free_bytes == 78 * GIB
    assert a.gpu_memory_utilization == plan["gpu_memory_utilization"]
    assert a.kv_cache_memory_bytes == plan["kv_cache_memory_bytes"] == 4096 * 2048
    assert a.max_context == plan["max_context"]
    assert a.measured_over_theory == pytest.approx(1.0)


def test_missing_and_failed_rows_say_why(tmp_path: Path) -> None:
    _db, answers = _answers(records(), tmp_path)
    missing = answers[MISSING_ID]
    assert missing.max_context is None
    assert missing.warning == "MISSING: not in `ollama list`"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"theory": {"kv_bytes_per_token": 1024.0, "weights_bytes": GIB}}, "4.0x the theory"),
        ({"theory": {"kv_bytes_per_token": 16384.0, "weights_bytes": GIB}}, "may miss the KV"),
    ],
)
def test_one_plain_warning(tmp_path: Path, change: dict[str, object], words: str) -> None:
    outcome = build_outcome(records())
    row = dataclasses.replace(next(m for m in outcome.models if m.model == OK_ID), **change)
    a = answer_row(row, outcome.entries, outcome.header, outcome.cells)
    assert a.warning is not None and words in a.warning


def test_loose_fit_warning(tmp_path: Path) -> None:
    outcome = build_outcome(records())
    m = next(m for m in outcome.models if m.model == OK_ID)
    assert m.fit is not None
    row = dataclasses.replace(m, fit=dataclasses.replace(m.fit, r2=0.9))
    a = answer_row(row, outcome.entries, outcome.header, outcome.cells)
    assert a.warning is not None and "loose (r2 0.900)" in a.warning


def test_answer_sheet(tmp_path: Path) -> None:
    outcome = build_outcome(records())
    files = write_reports(tmp_path / "run.xlsx", outcome, outcome.entries)
    assert files.html == tmp_path / "run.html" and files.html.exists()
    wb = load_workbook(files.xlsx)
    ws = wb.worksheets[0]
    assert ws.title == "Answer"
    headers = [c.value for c in ws[1]]
    assert headers == [c.header for c in ANSWER_COLUMNS]
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref == "A1:R4"
    rows = {ws.cell(row=r, column=1).value: r for r in range(2, ws.max_row + 1)}
    ok, missing = rows[OK_ID], rows[MISSING_ID]
    fills = {r: str(ws.cell(row=r, column=1).fill.start_color.rgb)[-6:] for r in rows.values()}
    assert fills[ok] == "D9EAD3" and fills[missing] == "FFF2CC"
    col = headers.index("Max context (tokens)") + 1
    cell = ws.cell(row=ok, column=col)
    assert cell.value == files.answers[0].max_context
    assert cell.number_format == '#,##0 "tokens"'
    assert cell.comment is not None and "vramphysics plan --engine llamacpp" in cell.comment.text
    ttft = ws.cell(row=ok, column=headers.index("TTFT p50 small prompt (ms)") + 1)
    assert ttft.value == 12.35 and ttft.number_format == '0.00 "ms"'
    assert "127 prompt tokens at ctx 2048, concurrency 1, p50 of 5" in ttft.comment.text
    large = ws.cell(row=ok, column=headers.index("TTFT p50 large prompt (ms)") + 1)
    assert large.value == 60.0
    scaled = {str(r.sqref) for r in ws.conditional_formatting}
    assert {"N2:N4", "O2:O4", "P2:P4", "Q2:Q4"} <= scaled


def test_terminal_table(tmp_path: Path) -> None:
    outcome = build_outcome(records() + vllm_records()[1:])
    answers = answer_rows(outcome, outcome.entries)
    text = run_end_text(
        answers,
        xlsx=Path("reports/r.xlsx"),
        html=Path("reports/r.html"),
        database=Path("calibration/physics.yaml"),
        journal=Path("reports/r.jsonl"),
    )
    lines = text.splitlines()
    assert lines[0].split() == ["model", "status", "max", "context", "util", "TTFT", "p50", "tok/s"]
    ok = next(line for line in lines if line.startswith(OK_ID))
    a = next(a for a in answers if a.model == OK_ID)
    # TTFT p50 and decode of the largest prompt (1024 tokens)
    assert f"{a.max_context:,}" in ok and "60.0 ms" in ok and "240.0" in ok
    assert ok.split()[1] == "OK" and ok.split()[3] == "-"  # no vLLM utilization for llama.cpp
    assert any(line.startswith(MISSING_ID) and " MISSING " in line for line in lines)
    assert "report (html):    reports/r.html" in text
    assert "physics database: calibration/physics.yaml" in text
    assert "journal:          reports/r.jsonl" in text
    assert answer_table_text(()) == "model  status  max context  util  TTFT p50  tok/s"


DEMO_JOURNAL = Path(__file__).parent / "fixtures" / "report" / "demo.journal.jsonl"


def test_real_demo_answer_agrees_with_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The journal of a real demo run: its Answer row and `plan` on the same entry and device."""
    from vramphysics.journal import read_journal

    db, answers = _answers(read_journal(DEMO_JOURNAL), tmp_path)
    (a,) = answers.values()
    assert a.model == "llamacpp:tiny-llama.gguf" and a.status == "OK" and a.device == "cpu"
    total = 25276510208  # the run header's RAM; used by others unknown: 0
    assert a.free_bytes == total and a.ctx == 8192  # no #ctx: the benchmark's context
    for used, figure in ((0, a.max_context), (total - int(0.9 * total), a.max_context_90)):
        plan = _plan_json(
            capsys, db, "llamacpp", "llamacpp:tiny-llama.gguf", "cpu",
            "--total-gib", repr(total / GIB), "--used-gib", repr(used / GIB), "--ctx", "8192",
        )  # fmt: skip
        assert figure == plan["max_context"] and plan["fits"] is True
        assert a.required_bytes == pytest.approx(plan["required_bytes"])
    assert a.max_context_90 is not None and a.max_context is not None
    assert 0.85 < a.max_context_90 / a.max_context < 0.9  # 90 % of free, less the same base
    assert a.measured_over_theory is not None and 0.9 < a.measured_over_theory < 1.2
    assert a.small is not None and a.small.decode_tokens_per_s is not None


def test_terminal_names_the_benchmark_files(tmp_path: Path) -> None:
    outcome = build_outcome(records())
    files = write_reports(tmp_path / "run.xlsx", outcome, outcome.entries)
    paths = dict(xlsx=files.xlsx, html=files.html, database=tmp_path / "db", journal=tmp_path / "j")
    text = run_end_text(files.answers, **paths, bench=files.bench)
    assert f"benchmarks:       {tmp_path / 'run.bench.json'}" in text
    assert f"benchmarks (csv): {tmp_path / 'run.bench.csv'}" in text
    assert "benchmarks" not in run_end_text(files.answers, **paths)  # none written: no line
