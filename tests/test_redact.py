"""Secrets are masked in logs, journals and reports (redact.py)."""

from __future__ import annotations

import json
import logging

import pytest

from vramphysics.redact import MASK, RedactingFilter, redact, secret_values

ENV = {
    "HF_TOKEN": "hf_0123456789abcdef",
    "OPENAI_API_KEY": "sk-live-abcdef",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
    "db_password": "hunter22",  # names match case-insensitively
    "SHORT_TOKEN": "abc12",  # 5 characters: too short to mask safely
    "EMPTY_KEY": "",
    "HOME": "/home/someone",  # not a secret name
    "PATH": "/usr/bin:/bin",
    "MONKEY": "bananas-forever",  # contains KEY
}


def test_secret_values_by_name_and_length() -> None:
    values = secret_values(ENV)
    assert set(values) == {
        "hf_0123456789abcdef",
        "sk-live-abcdef",
        "wJalrXUtnFEMI",
        "hunter22",
        "bananas-forever",
    }
    # longest first, so that a secret containing another is masked whole
    assert [len(v) for v in values] == sorted((len(v) for v in values), reverse=True)


def test_masking() -> None:
    text = "GET /api?token=hf_0123456789abcdef&k=sk-live-abcdef by /home/someone"
    assert redact(text, ENV) == "GET /api?token=***&k=*** by /home/someone"
    assert MASK == "***"


def test_every_occurrence_is_masked() -> None:
    assert redact("hunter22 hunter22hunter22", ENV) == "*** ******"


def test_short_values_are_not_masked() -> None:
    assert redact("abc12 is an ordinary word", ENV) == "abc12 is an ordinary word"
    assert redact("exactly six: abc123", {"X_TOKEN": "abc123"}) == "exactly six: ***"


def test_nothing_to_mask() -> None:
    assert redact("plain text", {}) == "plain text"
    assert redact("", ENV) == ""


def test_a_secret_inside_another_is_masked_whole() -> None:
    env = {"A_KEY": "secret", "B_KEY": "secret-and-more"}
    assert redact("x secret-and-more y secret", env) == "x *** y ***"


def test_json_escaped_secret_is_masked() -> None:
    env = {"X_SECRET": 'ab"cd\\ef', "Y_PASSWORD": "grüße-123"}
    text = json.dumps({"a": 'ab"cd\\ef', "b": "grüße-123"})
    assert redact(text, env) == '{"a": "***", "b": "***"}'


def test_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VP_TEST_TOKEN", "zz-env-token-zz")
    assert redact("x zz-env-token-zz y") == "x *** y"
    monkeypatch.delenv("VP_TEST_TOKEN")
    assert redact("x zz-env-token-zz y") == "x zz-env-token-zz y"


def test_redacting_filter_on_a_log_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VP_TEST_API_KEY", "key-9876543210")
    record = logging.LogRecord(
        name="vramphysics.engines",
        level=logging.WARNING,
        pathname=__file__,
        lineno=1,
        msg="starting with %s and %d retries",
        args=("--api-key key-9876543210", 3),
        exc_info=None,
    )
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "starting with --api-key *** and 3 retries"
    assert record.args is None


def test_redacting_filter_on_a_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VP_TEST_SECRET", "very-secret-value")
    seen: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = ListHandler()
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("vramphysics.test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("token in message very-secret-value")
        logger.warning("token in args %s", "very-secret-value")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert seen == ["token in message ***", "token in args ***"]
