"""Why a vLLM server failed, as its log says; and the log's lines without their prefixes.

``classify_failure`` is re-exported by ``vramphysics.engines.vllm.log``; ``split_messages`` is
the line splitter that ``parse_log`` reads too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FailureKind = Literal[
    "kv_too_small", "cuda_oom", "insufficient_free_memory", "model_not_found", "other"
]

# --- Line prefixes ------------------------------------------------------------------------

# ESC[0;36m ... ESC[0m; also the "^[[" form that copy-pasted logs carry.
_ANSI = re.compile(r"(?:\x1b|\^\[)\[[0-9;?]*[A-Za-z]")
# One prefix token at the start of a line, with the one space after it; stripped repeatedly.
# Indentation is kept: in a traceback it tells source lines from the exception line.
_PREFIX = re.compile(
    r"""^(?:
        [│┃|]                                    # k9s box borders, compose pipes
      | \[?\d{4}-\d{2}-\d{2}[T\ ][\d:.,]+Z?\]?   # 2025-10-14T23:59:26.998Z  [2026-02-24T20:21:58Z]
      | \([\w\ .:-]*pid=\d+\)                    # (APIServer pid=1)  (EngineCore_DP0 pid=456)
      | \[rank\d+\]:                             # [rank0]:
      | \[Stage-\d+\]                            # [Stage-1] (vllm-omni)
    )\ ?""",
    re.VERBOSE,
)
# INFO 05-12 10:11:12 [gpu_worker.py:227]    (0.8 onwards)
# INFO 07-17 23:41:16 model_runner.py:559]   (0.4 to 0.7)
_LEVEL = re.compile(
    r"^(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+"
    r"(?:\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2}(?:\.\d+)?\s+)?"
    r"(?:\[[^\]\s]+:\d+\]|[\w./-]+\.py:\d+\])\s?"
)

# --- Failures -----------------------------------------------------------------------------

# V0 / early V1: "ValueError: The model's max seq len (32768) is larger than the maximum number
# of tokens that can be stored in KV cache (16816). Try increasing `gpu_memory_utilization` ..."
_KV_TOO_SMALL_V0 = re.compile(
    r"max seq len \((?P<max_len>\d+)\) is larger than the maximum number of tokens that can be "
    r"stored in KV cache \((?P<max_context>\d+)\)"
)
# V1: "ValueError: To serve at least one request with the models's max seq len (221000), (10.12
# GiB KV cache is needed, which is larger than the available KV cache memory (5.59 GiB). Based
# on the available memory, the estimated maximum model length is 122080. Try increasing ..."
_KV_TOO_SMALL_V1 = re.compile(r"To serve at least one request with the models?'s max seq len")
_KV_ESTIMATE = re.compile(r"estimated maximum model length is (?P<max_context>\d+)")
# "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"
_NO_CACHE_BLOCKS = re.compile(r"No available memory for the cache blocks")
# "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 50.00 MiB. GPU 0 has ..."
# "RuntimeError: CUDA driver error: out of memory";  "RuntimeError: CUDA error: out of memory"
_CUDA_OOM = re.compile(r"(?:CUDA|HIP) out of memory|CUDA (?:driver )?error: out of memory")
# "ValueError: Free memory on device cuda:0 (1.54/22.05 GiB) on startup is less than desired GPU
# memory utilization (0.9, 19.84 GiB). Decrease GPU memory utilization or reduce GPU memory ..."
# (Not the newer INFO line "Free memory on device (31.23/31.86 GiB) on startup. Desired GPU
# memory utilization is (0.97, 30.9 GiB). ...", which every successful start prints.)
_FREE_MEMORY = re.compile(
    r"Free memory on device.*? on startup is less than desired GPU memory utilization"
)
# "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: ...)"
# "Repository Not Found for url: https://huggingface.co/Qwen/.../config.json."
# "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: https://huggingface.co/..."
# "OSError: Qwen/Qwen3.5-27B-AWQ is not a local folder and is not a valid model identifier ..."
# "OSError: /models/x does not appear to have a file named config.json. Checkout ..."
# "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' ..."
_MODEL_NOT_FOUND = re.compile(
    r"RepositoryNotFoundError|Repository Not Found for url|\b40[134] Client Error"
    r"|is not a local folder and is not a valid model identifier"
    r"|does not appear to have a file named config\.json|Cannot access gated repo"
    r"|HFValidationError"
)
# "ValueError: ...", "torch.OutOfMemoryError: ...", "vllm.v1.engine.exceptions.EngineDeadError: ..."
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)(?::\s|:?$)")
# Exceptions that only say "the real cause is above".
_WRAPPER = re.compile(
    r"Engine core initialization failed|EngineDeadError|EngineCore encountered an issue"
)
_TRACEBACK = "Traceback (most recent call last)"
# '  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap'
_TRACEBACK_FILE = re.compile(r'^\s*File "[^"]*", line \d+')


@dataclass(frozen=True)
class VllmFailure:
    """Why a vLLM server failed, as its log says.

    ``max_context`` is the longest context vLLM says would fit (``kv_too_small`` only, and only
    when the message states it); ``message`` is the log line it was read from, without prefixes.
    """

    kind: FailureKind
    message: str
    max_context: int | None = None


def classify_failure(text: str) -> VllmFailure | None:
    """Why vLLM failed, or ``None`` when the log shows no error.

    A specific kind (``kv_too_small``, ``insufficient_free_memory``, ``cuda_oom``,
    ``model_not_found``) beats ``other``; among specific ones the first in the log wins, as
    later errors are usually consequences. ``other`` means a traceback, an exception line or an
    ERROR line with nothing more specific; its message is the root-cause exception when there is
    one (not vLLM's "Engine core initialization failed. See root cause above." wrapper).
    """
    messages = split_messages(text)
    for message in messages:
        failure = None if message.in_traceback else _specific_failure(message.text)
        if failure is not None:
            return failure
    return _other_failure(messages)


@dataclass(frozen=True)
class _Message:
    """One log line: its level (or None), its text without colours and prefixes, and whether it
    is traceback context (a ``File "…"`` line or the source lines under it), which quotes code
    rather than saying what happened."""

    level: str | None
    text: str
    in_traceback: bool


def split_messages(text: str) -> list[_Message]:
    messages: list[_Message] = []
    file_indent: int | None = None  # indentation of the last 'File "…", line N' line
    for line in _ANSI.sub("", text).splitlines():
        level, body = _split_line(line)
        indent = len(body) - len(body.lstrip())
        is_file_line = _TRACEBACK_FILE.match(body) is not None
        if is_file_line:
            file_indent = indent
        elif file_indent is not None and (indent <= file_indent and body.strip()):
            file_indent = None
        in_traceback = is_file_line or file_indent is not None
        messages.append(_Message(level, body.strip().rstrip("│┃").rstrip(), in_traceback))
    return messages


def _split_line(line: str) -> tuple[str | None, str]:
    """(level or None, the line after its prefixes, indentation kept)."""
    rest = line
    while m := _PREFIX.match(rest):
        rest = rest[m.end() :]
    level = None
    if m := _LEVEL.match(rest.lstrip()):
        level = "WARNING" if m["level"] == "WARN" else m["level"]
        rest = rest.lstrip()[m.end() :]
    return level, rest


def _specific_failure(msg: str) -> VllmFailure | None:
    if m := _KV_TOO_SMALL_V0.search(msg):
        return VllmFailure("kv_too_small", msg, int(m["max_context"]))
    if _KV_TOO_SMALL_V1.search(msg):
        estimate = _KV_ESTIMATE.search(msg)
        return VllmFailure("kv_too_small", msg, int(estimate["max_context"]) if estimate else None)
    if _NO_CACHE_BLOCKS.search(msg):
        return VllmFailure("kv_too_small", msg)
    if _FREE_MEMORY.search(msg):
        return VllmFailure("insufficient_free_memory", msg)
    if _CUDA_OOM.search(msg):
        return VllmFailure("cuda_oom", msg)
    if _MODEL_NOT_FOUND.search(msg):
        return VllmFailure("model_not_found", msg)
    return None


def _other_failure(messages: list[_Message]) -> VllmFailure | None:
    said = [m for m in messages if not m.in_traceback and m.text]
    exceptions = [m.text for m in said if _EXCEPTION_LINE.match(m.text)]
    root_causes = [text for text in exceptions if not _WRAPPER.search(text)]
    if root_causes:
        return VllmFailure("other", root_causes[0])
    if exceptions:
        return VllmFailure("other", exceptions[0])
    for m in said:
        if _WRAPPER.search(m.text) or m.level in ("ERROR", "CRITICAL"):
            return VllmFailure("other", m.text)
    if any(_TRACEBACK in m.text for m in messages):
        return VllmFailure("other", said[-1].text if said else _TRACEBACK)
    return None


# --- Prometheus text ----------------------------------------------------------------------
