"""The run journal: durable appends, read-back of every record kind, torn lines (journal.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import pytest
from bench_data import a_cell, a_request

from vramphysics import journal as journal_mod
from vramphysics.errors import ConfigError
from vramphysics.journal import Journal, journal_path, latest_run_id, read_journal
from vramphysics.records import (
    RECORD_TYPES,
    BenchResult,
    CalibrationPoint,
    ModelInfo,
    Record,
    RunHeader,
    StatusRow,
    WarningRow,
    record_from_json,
)


def one_of_each() -> list[Record]:
    return [
        RunHeader(
            run_id="20260101-000000",
            started_at="2026-01-01T00:00:00+00:00",
            host="box",
            platform="Linux",
            python="3.12.1",
            git_commit="abc1234",
            tool_version="0.1.0",
            config_path="config.yaml",
            setups_path="test_setups.yaml",
            setups=["demo"],
            probe="process",
            probe_reason="no NVIDIA GPU",
            devices=[{"name": "cpu", "total_bytes": 16 * 2**30}],
            driver=None,
            sweep_contexts=[512, 1024, 2048],
            argv=["runner.py", "--setup", "demo"],
            at="2026-01-01T00:00:00+00:00",
        ),
        ModelInfo(
            model="llamacpp:tiny.gguf#ctx=2048",
            setup="demo",
            engine="llamacpp",
            engine_version="b1234",
            available=True,
            location="/m/tiny.gguf",
            theory={"kv_bytes_per_token": 4096.0, "weights_bytes": 9_978_880},
            settings={"n_gpu_layers": -1},
        ),
        CalibrationPoint(
            model="llamacpp:tiny.gguf#ctx=2048",
            engine="llamacpp",
            ctx=512,
            probe="process",
            device="cpu",
            measured_bytes=70_246_400,
            peak_bytes=71_000_000,
            baseline_bytes=0,
            n_samples=40,
            ready_s=1.25,
            engine_version="b1234",
            engine_components={"source": "llamacpp-log", "kv_pool_bytes": 2_097_152},
        ),
        BenchResult(
            model="llamacpp:tiny.gguf#ctx=2048",
            engine="llamacpp",
            ctx=2048,
            ttft_ms=12.5,
            output_tokens=64,
            prompt_tokens=17,
            token_source="engine-usage",
            decode_tokens_per_s=250.0,
            e2e_tokens_per_s=200.0,
            prefill_tokens_per_s=1360.0,
            setup_s=2.0,
            exec_s=0.32,
            cleanup_s=0.1,
            peak_bytes=80_000_000,
            probe="process",
            device="cpu",
            engine_version="b1234",
        ),
        a_cell(),
        a_request(),
        StatusRow(
            model="ol_x:1",
            engine="ollama",
            status="FAILED",
            reason="boom",
            failure_kind="cuda_oom",
            ctx=8192,
            log_tail="CUDA out of memory",
            max_context=4096,
        ),
        WarningRow(
            model="ol_x:1",
            engine="ollama",
            ctx=8192,
            message="predicted 9 GiB > free 8 GiB",
            predicted_bytes=9.0 * 2**30,
            free_bytes=8 * 2**30,
        ),
    ]


def test_every_record_kind_is_covered() -> None:
    assert {type(r) for r in one_of_each()} == set(RECORD_TYPES.values())
    assert set(RECORD_TYPES) == {
        "run",
        "model",
        "point",
        "bench",
        "bench_cell",
        "request",
        "status",
        "warning",
    }


def test_append_and_read_back_every_kind(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "reports", "r1")
    assert path == tmp_path / "reports" / "r1.journal.jsonl"
    j = Journal(path)
    records = one_of_each()
    for r in records:
        j.append(r)
    j.close()
    j.close()  # twice is fine
    back = read_journal(path)
    assert len(back) == len(records)
    for before, after in zip(records, back, strict=True):
        assert type(after) is type(before)
        # `at` is stamped on append when empty
        stamped = after.to_json()["at"]
        if before.to_json()["at"]:
            assert after == before
        else:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", stamped)
            assert after == dataclasses.replace(before, at=stamped)  # type: ignore[call-arg]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["kind"] for x in lines] == [
        "run",
        "model",
        "point",
        "bench",
        "bench_cell",
        "request",
        "status",
        "warning",
    ]


def test_append_is_durable_before_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(journal_mod.os, "fsync", fsync)
    path = tmp_path / "r.journal.jsonl"
    j = Journal(path)
    records = one_of_each()[:3]
    for n, r in enumerate(records, start=1):
        j.append(r)
        assert len(synced) == n  # one fsync per line, before append returns
        # another reader sees the whole line already, with its newline
        assert path.read_text(encoding="utf-8").count("\n") == n
        assert len(read_journal(path)) == n
    j.close()


def test_appends_to_an_existing_journal(tmp_path: Path) -> None:
    path = tmp_path / "r.journal.jsonl"
    a, b = one_of_each()[:2]
    j = Journal(path)
    j.append(a)
    j.close()
    j = Journal(path)  # --resume opens the same file again
    j.append(b)
    j.close()
    assert [type(r) for r in read_journal(path)] == [RunHeader, ModelInfo]


def _write_lines(path: Path, records: list[Record]) -> str:
    text = "".join(json.dumps(r.to_json()) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    return text


@pytest.mark.parametrize(
    "torn",
    [
        '{"kind": "point", "model": "llamacpp:tiny.gg',  # cut mid-string
        "{",
        '{"kind": "status", "model": "m", "engine": "e"}',  # valid JSON, missing fields
    ],
)
def test_torn_last_line_is_ignored(tmp_path: Path, torn: str) -> None:
    path = tmp_path / "r.journal.jsonl"
    records = one_of_each()[:3]
    text = _write_lines(path, records)
    path.write_text(text + torn, encoding="utf-8")  # no trailing newline
    assert read_journal(path) == records


def test_bad_last_line_with_a_newline_is_an_error(tmp_path: Path) -> None:
    # a complete line (it has its newline) that does not parse is corruption, not a torn write
    path = tmp_path / "r.journal.jsonl"
    text = _write_lines(path, one_of_each()[:2])
    path.write_text(text + "{not json\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_journal(path)
    assert info.value.line == 3


@pytest.mark.parametrize(
    "bad",
    ['{"kind": "point", "model": "x', "not json at all", '{"kind": "nope"}', "[1, 2]"],
)
def test_bad_middle_line_names_its_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "r.journal.jsonl"
    recs = one_of_each()
    head = "".join(json.dumps(r.to_json()) + "\n" for r in recs[:2])
    tail = "".join(json.dumps(r.to_json()) + "\n" for r in recs[2:4])
    path.write_text(head + bad + "\n" + tail, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_journal(path)
    assert info.value.path == path
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: bad journal line")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "r.journal.jsonl"
    recs = one_of_each()[:2]
    path.write_text(
        "\n" + json.dumps(recs[0].to_json()) + "\n\n" + json.dumps(recs[1].to_json()) + "\n",
        encoding="utf-8",
    )
    assert read_journal(path) == recs


def test_missing_journal(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="journal not found"):
        read_journal(tmp_path / "none.journal.jsonl")


def test_unknown_fields_are_dropped_on_read() -> None:
    d = one_of_each()[4].to_json()
    d["added_in_a_later_version"] = 1
    assert record_from_json(d) == one_of_each()[4]
    with pytest.raises(ValueError, match="unknown record kind"):
        record_from_json({"model": "x"})


def test_latest_run_id(tmp_path: Path) -> None:
    assert latest_run_id(tmp_path) is None
    (tmp_path / "20260101-000000.xlsx").write_text("x")  # not a journal
    assert latest_run_id(tmp_path) is None
    now = time.time()
    for i, run_id in enumerate(["20260101-000002", "20260101-000001", "20260101-000003-2"]):
        p = journal_path(tmp_path, run_id)
        p.write_text("")
        os.utime(p, (now + i, now + i))
    # the most recently written journal, not the largest name
    assert latest_run_id(tmp_path) == "20260101-000003-2"
    os.utime(journal_path(tmp_path, "20260101-000001"), (now + 10, now + 10))
    assert latest_run_id(tmp_path) == "20260101-000001"


SECRETS = {
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz",
    "OPENAI_API_KEY": "sk-test-1234567890",
    "VP_CLIENT_SECRET": 'pa"ss\\word-42',  # JSON escapes it as pa\"ss\\word-42
    "DB_PASSWORD": "pässwörd-99",  # JSON escapes it as p\u00e4ssw\u00f6rd-99
}


def test_secrets_never_reach_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "r.journal.jsonl"
    j = Journal(path)
    everything = " ".join(SECRETS.values())
    j.append(
        StatusRow(
            model="vl_org/model",
            engine="vllm",
            status="FAILED",
            reason=f"401 with token {SECRETS['HF_TOKEN']}",
            failure_kind="model_not_found",
            log_tail=f"env: {everything}",
        )
    )
    header = one_of_each()[0]
    j.append(
        RunHeader(**{**header.__dict__, "argv": ["runner.py", "--key", SECRETS["OPENAI_API_KEY"]]})
    )
    j.close()
    raw = path.read_bytes().decode("utf-8")
    for value in SECRETS.values():
        assert value not in raw
        assert json.dumps(value)[1:-1] not in raw  # nor its JSON-escaped form
    assert "***" in raw
    back = read_journal(path)
    assert isinstance(back[0], StatusRow)
    assert back[0].reason == "401 with token ***"
    assert back[0].log_tail == "env: *** *** *** ***"
    assert isinstance(back[1], RunHeader)
    assert back[1].argv == ["runner.py", "--key", "***"]
