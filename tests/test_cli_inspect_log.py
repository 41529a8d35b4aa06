"""`python -m vramphysics inspect-log --engine vllm FILE [--json]` on real vLLM log excerpts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vramphysics.cli import main

LOGS = Path(__file__).parent / "fixtures" / "vllm_logs"


def test_json_has_the_documented_keys_and_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["inspect-log", "--engine", "vllm", str(LOGS / "v1_0_7_kv_tokens.log"), "--json"]) == 0
    )
    facts = json.loads(capsys.readouterr().out)
    for key in (
        "weights_bytes",
        "available_kv_bytes",
        "kv_cache_tokens",
        "max_model_len",
        "failure",
    ):
        assert key in facts
    assert facts["kv_cache_tokens"] == 2_042_016  # "GPU KV cache size: 2,042,016 tokens"
    assert facts["failure"] is None
    assert facts["weights_bytes"] is None  # absent figures are null, never guessed


def test_v1_log_reports_max_model_len(capsys: pytest.CaptureFixture[str]) -> None:
    """A V1 log states max_model_len only as "Maximum concurrency for 32,768 tokens ..."."""
    log = LOGS / "v1_0_10_engine_core.log"
    assert main(["inspect-log", "--engine", "vllm", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_model_len"] == 32_768
    assert main(["inspect-log", "--engine", "vllm", str(log)]) == 0
    assert "max_model_len          32768" in capsys.readouterr().out.splitlines()


def test_failure_is_classified_with_the_largest_context(capsys: pytest.CaptureFixture[str]) -> None:
    log = LOGS / "fail_v1_kv_too_small_estimate.log"
    assert main(["inspect-log", "--engine", "vllm", str(log), "--json"]) == 0
    failure = json.loads(capsys.readouterr().out)["failure"]
    assert failure["kind"] == "kv_too_small"
    assert failure["max_context"] == 122080


def test_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vramphysics",
            "inspect-log",
            "--engine",
            "vllm",
            str(tmp_path / "nope.log"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "nope.log" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
