"""Secrets are masked in logs, journals and reports (redact.py)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vramphysics.journal import Journal, read_journal
from vramphysics.records import ModelInfo
from vramphysics.redact import (
    MASK,
    RedactingFilter,
    install_log_redaction,
    is_secret_flag,
    redact,
    redact_args,
    redact_value,
    secret_values,
    uninstall_log_redaction,
)
from vramphysics.runner import console_through_tqdm

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


# -- secret command-line arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "masked"),
    [
        (["--api-key", "sk-123"], ["--api-key", MASK]),
        (["--api_key=sk-123", "-c", "512"], ["--api_key=***", "-c", "512"]),
        (["--hf-token", "hf_abc", "--port", "8400"], ["--hf-token", MASK, "--port", "8400"]),
        (["--ssl-key-file", "/k.pem"], ["--ssl-key-file", MASK]),
        (["--db-password", "pw"], ["--db-password", MASK]),
        (["--api-key"], ["--api-key"]),  # nothing follows
        (["--return-tokens-as-token-ids", "--x"], ["--return-tokens-as-token-ids", "--x"]),
        (["--tokenizer", "org/model"], ["--tokenizer", "org/model"]),
        (["--max-num-batched-tokens", "8192"], ["--max-num-batched-tokens", "8192"]),
        (["--cache-type-k", "q8_0", "-m", "x.gguf"], ["--cache-type-k", "q8_0", "-m", "x.gguf"]),
        (["api-key", "sk-123"], ["api-key", "sk-123"]),  # not a flag
    ],
)
def test_redact_args(argv: list[str], masked: list[str]) -> None:
    assert redact_args(argv) == masked


def test_secret_flags_by_their_words() -> None:
    secret = ["--api-key", "--api_key", "--hf-token", "-token", "--apikey", "--ssl-key-file"]
    plain = ["--tokenizer", "--max-num-batched-tokens", "--monkey", "api-key", "--keep", "-k"]
    assert [f for f in secret + plain if is_secret_flag(f)] == secret


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("llama-server --api-key sk-123 --port 8400", "llama-server --api-key *** --port 8400"),
        ("--api_key=sk-123", "--api_key=***"),
        (
            "['llama-server', '--api-key', 'sk-123', '-c']",
            "['llama-server', '--api-key', '***', '-c']",
        ),
        ('["--hf-token", "hf_abc"]', '["--hf-token", "***"]'),
        ("--tokenizer org/model --max-num-batched-tokens 8192", None),
        ("a key of 12 and token=abc", None),  # no flag: ordinary text stays
    ],
)
def test_flag_values_in_text(text: str, masked: str | None) -> None:
    assert redact(text, {}) == (text if masked is None else masked)


def test_redact_value_keeps_the_shape() -> None:
    settings = {
        "port": 8400,
        "extra_args": ["--api-key", "sk-abcdef-123", "-fa"],
        "launcher": "llama-server --api-key sk-abcdef-123",
        "nested": [{"argv": ["--hf_token=hf_zzz"]}],
    }
    assert redact_value(settings) == {
        "port": 8400,
        "extra_args": ["--api-key", MASK, "-fa"],
        "launcher": "llama-server --api-key ***",
        "nested": [{"argv": ["--hf_token=***"]}],
    }


def test_the_journal_stores_no_secret_argument(tmp_path: Path) -> None:
    """Engine settings reach the journal (and, derived from it, physics.yaml and the report)."""
    journal = Journal(tmp_path / "run.journal.jsonl")
    journal.append(
        ModelInfo(
            model="llamacpp:m.gguf",
            setup="s",
            engine="llamacpp",
            engine_version="llama-server",
            available=True,
            location=None,
            theory=None,
            settings={
                "extra_args": ["--api-key", "sk-live-0123456789", "--hf-token", "hf_abcdefgh"],
                "launcher": "llama-server --api_key=sk-live-0123456789",
            },
        )
    )
    journal.close()
    text = (tmp_path / "run.journal.jsonl").read_text(encoding="utf-8")
    assert "sk-live-0123456789" not in text and "hf_abcdefgh" not in text
    (info,) = read_journal(tmp_path / "run.journal.jsonl")
    assert isinstance(info, ModelInfo)
    assert info.settings["extra_args"] == ["--api-key", MASK, "--hf-token", MASK]
    assert info.settings["launcher"] == "llama-server --api_key=***"


# -- every log record is masked, whatever handler emits it ---------------------------------------


@pytest.fixture
def log_redaction() -> Iterator[None]:
    before = logging.getLogRecordFactory()
    uninstall_log_redaction()  # an earlier test of this process may have installed it
    plain = logging.getLogRecordFactory()
    install_log_redaction()
    install_log_redaction()  # idempotent: one layer
    uninstall_log_redaction()
    assert logging.getLogRecordFactory() is plain
    install_log_redaction()
    yield
    logging.setLogRecordFactory(before)


def test_records_are_masked_where_they_are_made(
    log_redaction: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VP_TEST_TOKEN", "tok-0123456789")
    seen: list[str] = []

    class ListHandler(logging.Handler):  # no filter of ours
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    logger = logging.getLogger("vramphysics.test_redact_factory")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("starting %s", ["llama-server", "--api-key", "sk-abc-123"])
        logger.warning("env secret tok-0123456789 in text")
        try:
            raise ValueError("bad key tok-0123456789")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert seen[0] == "starting ['llama-server', '--api-key', '***']"
    assert seen[1] == "env secret *** in text"
    assert "tok-0123456789" not in seen[2] and "ValueError: bad key ***" in seen[2]


def test_a_line_logged_during_the_sweep_is_masked(
    log_redaction: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """During the sweep tqdm swaps the console handler for its own (without our filters): a
    record logged then must be masked all the same."""
    monkeypatch.setenv("VP_TEST_API_KEY", "key-9876543210")
    console = logging.StreamHandler(sys.stderr)  # the console handler, on capsys's stderr
    console.addFilter(RedactingFilter())
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [console])
    monkeypatch.setattr(root, "level", logging.INFO)
    with console_through_tqdm():
        assert console not in root.handlers  # tqdm's handler is in charge now
        logging.getLogger("vramphysics.engines").warning(
            "ctx=512: %s with --api-key sk-sweep-0001", "key-9876543210"
        )
    err = capsys.readouterr().err
    assert "ctx=512: *** with --api-key ***" in err
    assert "key-9876543210" not in err and "sk-sweep-0001" not in err


def test_a_malformed_log_call_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """With redaction installed, `log.warning("%s %s", x)` must not crash the caller (logging
    itself would only print an error): the message is kept as written, masked."""
    import logging

    from vramphysics.redact import install_log_redaction

    install_log_redaction()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("vramphysics.test").warning("token %s %s", "only-one")
    assert "token %s %s" in caplog.text and "only-one" in caplog.text
