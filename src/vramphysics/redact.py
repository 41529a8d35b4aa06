"""Secrets never reach a log, a journal or a report.

Two kinds of secret are masked: the values of secret-looking environment variables, and the value
that follows a secret-looking command-line flag (`--api-key X`, `--api_key=X`, `--hf-token X`).
Log records are masked where they are made (`install_log_redaction`), so that a handler swapped in
later (tqdm's console handler during a sweep) cannot drop the masking.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
_MIN_LEN = 6  # shorter values would mask ordinary words
MASK = "***"

# a flag is secret when one of its words (split on - and _) is one of these: `--api-key`,
# `--api_key`, `--hf-token`, `--ssl-key-file`; not `--tokenizer` nor `--max-num-batched-tokens`
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd"})
_FLAG = r"--?[A-Za-z0-9][A-Za-z0-9_-]*"
# in free text: the flag, then `=`, blanks, or the `', '` / `", "` between list items
_FLAG_IN_TEXT = re.compile(
    rf"(?<![\w-])(?P<flag>{_FLAG})(?P<sep>=|\s+|['\"]\s*,\s*['\"])(?P<value>[^\s'\",\]\}}]+)"
)


def is_secret_flag(flag: str) -> bool:
    """Does this command-line flag take a secret value (`--api-key`, `--hf_token`, ...)?"""
    if not flag.startswith("-"):
        return False
    words = re.split(r"[-_]+", flag.lstrip("-").lower())
    return any(w in _SECRET_WORDS for w in words)


def redact_args(argv: Sequence[str]) -> list[str]:
    """The arguments with the value of every secret flag masked (`--api-key X`, `--api-key=X`)."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next and not arg.startswith("-"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        flag, eq, _value = arg.partition("=")
        if is_secret_flag(flag):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                mask_next = True
            continue
        out.append(arg)
    return out


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_LEN}
    return sorted(values, key=len, reverse=True)


def _mask_flag_values(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if not is_secret_flag(m["flag"]):
            return m[0]
        if m["sep"] != "=" and m["value"].startswith("-"):
            return m[0]  # the next flag, not a value
        return f"{m['flag']}{m['sep']}{MASK}"

    return _FLAG_IN_TEXT.sub(sub, text)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    for value in secret_values(env):
        text = text.replace(value, MASK)
        # as it reads inside a JSON string (the journal): quotes, backslashes, \uXXXX escaped
        text = text.replace(json.dumps(value)[1:-1], MASK)
    return _mask_flag_values(text)


def redact_value(value: Any) -> Any:
    """A JSON-like value with every string masked and every list of strings masked as arguments
    (so that `["--api-key", "X"]` keeps its shape: `["--api-key", "***"]`)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str) for v in value):
            return [redact(v) for v in redact_args(value)]
        return [redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every message (and in its traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call, e.g. log.warning("%s %s", x):
            message = f"{record.msg} {record.args!r}"  # logged as written, never raised
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _RedactingFactory:
    """A log record factory that masks each record as it is made: every handler, whether
    installed now or swapped in later, then sees the masked message."""

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner
        self._filter = RedactingFilter()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        self._filter.filter(record)
        return record


def install_log_redaction() -> None:
    """Mask every log record of this process where it is made (idempotent), and add the filter
    to the root logger's handlers as well."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    add_redacting_filter(logging.getLogger().handlers)


def uninstall_log_redaction() -> None:
    """Undo `install_log_redaction` (tests)."""
    factory = logging.getLogRecordFactory()
    if isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(factory.inner)


def add_redacting_filter(handlers: Sequence[logging.Handler]) -> None:
    """Give each handler a RedactingFilter unless it has one."""
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
