"""Secrets never reach a log, a journal or a report: values of secret-looking variables are masked."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping

_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
_MIN_LEN = 6  # shorter values would mask ordinary words
MASK = "***"


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    for value in secret_values(env):
        text = text.replace(value, MASK)
        # as it reads inside a JSON string (the journal): quotes, backslashes, \uXXXX escaped
        text = text.replace(json.dumps(value)[1:-1], MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True
