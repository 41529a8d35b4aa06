"""Facts from vLLM's Prometheus ``/metrics`` text (re-exported by ``vramphysics.engines.vllm.log``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VllmMetricsFacts:
    """What vLLM's ``/metrics`` says of its KV cache (``vllm:cache_config_info`` and usage).

    ``kv_cache_usage_perc`` is a fraction (1.0 = full) from ``vllm:kv_cache_usage_perc``, or
    from the older ``vllm:gpu_cache_usage_perc``; with several engines, the fullest one.
    """

    kv_cache_memory_bytes: int | None = None
    kv_cache_size_tokens: int | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    gpu_memory_utilization: float | None = None
    cache_dtype: str | None = None
    kv_cache_usage_perc: float | None = None

    @property
    def kv_bytes_per_token(self) -> float | None:
        """``kv_cache_memory_bytes / kv_cache_size_tokens``: exact, both are integers."""
        if self.kv_cache_memory_bytes is None or not self.kv_cache_size_tokens:
            return None
        return self.kv_cache_memory_bytes / self.kv_cache_size_tokens


def parse_metrics(text: str) -> VllmMetricsFacts:
    """Read the KV-cache figures of a Prometheus text exposition from vLLM's ``/metrics``.

    Samples with several label sets (one per engine) all count: the last
    ``vllm:cache_config_info`` wins, the highest usage wins. Malformed lines are skipped.
    """
    info: dict[str, str] = {}
    usage: list[float] = []
    usage_old: list[float] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sample = _parse_sample(line)
        if sample is None:
            logger.debug("skipping a /metrics line that is not a sample: %r", line)
            continue
        name, labels, value = sample
        if name == "vllm:cache_config_info":
            info = labels
        elif name == "vllm:kv_cache_usage_perc":
            usage.append(value)
        elif name == "vllm:gpu_cache_usage_perc":
            usage_old.append(value)
    usage_values = usage or usage_old
    return VllmMetricsFacts(
        kv_cache_memory_bytes=_label_int(info, "kv_cache_memory_bytes"),
        kv_cache_size_tokens=_label_int(info, "kv_cache_size_tokens"),
        num_gpu_blocks=_label_int(info, "num_gpu_blocks"),
        block_size=_label_int(info, "block_size"),
        gpu_memory_utilization=_label_float(info, "gpu_memory_utilization"),
        cache_dtype=_label_str(info, "cache_dtype"),
        kv_cache_usage_perc=max(usage_values) if usage_values else None,
    )


# "vllm:cache_config_info{block_size=\"16\",...} 1.0"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """``name{labels} value [timestamp]`` of the Prometheus text format, or ``None``."""
    m = _METRIC_NAME.match(line)
    if m is None:
        return None
    labels: dict[str, str] = {}
    pos = m.end()
    if line.startswith("{", pos):
        parsed = _parse_labels(line, pos + 1)
        if parsed is None:
            return None
        labels, pos = parsed
    fields = line[pos:].split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return m.group(), labels, value


def _parse_labels(line: str, pos: int) -> tuple[dict[str, str], int] | None:
    """Labels from just after ``{`` to just after ``}``; values may hold \\\\, \\" and \\n."""
    labels: dict[str, str] = {}
    while True:
        while line.startswith(" ", pos):
            pos += 1
        if line.startswith("}", pos):
            return labels, pos + 1
        name = _LABEL_NAME.match(line, pos)
        if name is None or not line.startswith('="', name.end()):
            return None
        pos = name.end() + 2
        chars: list[str] = []
        while pos < len(line) and line[pos] != '"':
            if line[pos] == "\\" and pos + 1 < len(line):
                escaped = line[pos + 1]
                chars.append(_ESCAPES.get(escaped, "\\" + escaped))
                pos += 2
            else:
                chars.append(line[pos])
                pos += 1
        if pos >= len(line):
            return None  # unterminated value
        labels[name.group()] = "".join(chars)
        pos += 1
        while line.startswith(" ", pos):
            pos += 1
        if line.startswith(",", pos):
            pos += 1
        elif not line.startswith("}", pos):
            return None


def _label_str(labels: dict[str, str], key: str) -> str | None:
    value = labels.get(key)
    return None if value in (None, "", "None") else value


def _label_int(labels: dict[str, str], key: str) -> int | None:
    value = _label_str(labels, key)
    return int(value) if value is not None and value.isdigit() else None


def _label_float(labels: dict[str, str], key: str) -> float | None:
    value = _label_str(labels, key)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
