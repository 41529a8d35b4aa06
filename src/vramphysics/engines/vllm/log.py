"""Facts from vLLM's own words: its server log and its Prometheus ``/metrics`` text.

A pure parser: text in, frozen records out (``parse_log_file`` is the one function that reads a
file). It knows the log lines of vLLM's V0 engine (0.4 to 0.8), of the V1 engine (0.7 onwards)
and of the newest releases, on GPU and on CPU, under the prefixes each version and launcher puts
in front of them (``INFO 05-12 10:11:12 [gpu_worker.py:227]``, ``(EngineCore_DP0 pid=456)``,
docker and CI timestamps, ANSI colours). Real excerpts live in ``tests/fixtures/vllm_logs``.

Figures are only ever read, never guessed: a figure the log does not state is ``None``. The one
convention applied is vLLM's own V0 default block size of 16 (see ``_resolve_block_size``).

Units: vLLM prints ``GB`` in some versions (``Loading model weights took 14.9888 GB``) but
computes it as bytes / 2**30, so every ``GB`` here is a GiB. All sizes come out in bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vramphysics.engines.vllm.failure import (
    FailureKind,
    VllmFailure,
    classify_failure,
    split_messages,
)
from vramphysics.engines.vllm.metrics import VllmMetricsFacts, parse_metrics

__all__ = [
    "Device",
    "FailureKind",
    "VllmFailure",
    "VllmLogFacts",
    "VllmMetricsFacts",
    "classify_failure",
    "parse_log",
    "parse_log_file",
    "parse_metrics",
    "to_json_dict",
]

Device = Literal["gpu", "cpu"]

GIB = 2**30
_UNIT_BYTES = {"GiB": GIB, "GB": GIB, "MiB": 2**20, "MB": 2**20}

# vLLM's default KV block size (tokens per block) on GPUs in the V0 engine and early V1.
V0_DEFAULT_BLOCK_SIZE = 16
# Block sizes tried when reading the block size back from the "Maximum concurrency" line.
_BLOCK_SIZE_CANDIDATES = tuple(2**i for i in range(12))  # 1 .. 2048

_NUM = r"\d+(?:\.\d+)?"
_INT = r"\d{1,3}(?:,\d{3})+|\d+"  # 1,234,560 or 1234560
_SIZE = rf"(?P<num>{_NUM}) ?(?P<unit>GiB|GB|MiB|MB)\b"

# --- Figures ------------------------------------------------------------------------------

# V0:      "Loading model weights took 14.9888 GB"
# V0 0.8 / V1: "Model loading took 14.9888 GB and 28.719376 seconds"
# V1:      "Model loading took 2.2845 GiB and 74.270197 seconds"
# newest:  "Model loading took 12.66 GiB memory and 31.657031 seconds"
_WEIGHTS = re.compile(rf"(?:Loading model weights|Model loading) took {_SIZE}")
# V0 profile summary (a fallback, rounded to 2 decimals): "model weights take 0.47GiB; ..."
_WEIGHTS_SUMMARY = re.compile(rf"model weights take {_SIZE}")

# V1 and newer:  "Available KV cache memory: 6.51 GiB"  ("... 37.18 GiB (process-scoped)")
_AVAILABLE_KV = re.compile(rf"Available KV cache memory: {_SIZE}")
# V0 0.6.6-0.8:  "... the rest of the memory reserved for KV Cache is 13.40GiB."
_KV_RESERVED_V0 = re.compile(rf"memory reserved for KV Cache is {_SIZE}")
# V0 0.6.4-0.6.5: "Memory profiling results: ... kv_cache_size=2.89GiB gpu_memory_utilization=0.90"
_KV_PROFILE_V0 = re.compile(rf"\bkv_cache_size={_SIZE}")
# --kv-cache-memory: "Reserved 4.0 GiB memory for KV Cache as specified by kv_cache_memory_bytes"
_KV_RESERVED_EXPLICIT = re.compile(rf"[Rr]eserved {_SIZE} memory for KV Cache")
# CPU (VLLM_CPU_KVCACHE_SPACE): "Explicitly set (1.0/7.84) GiB for KV cache on node 0."
_CPU_KV_SPACE = re.compile(rf"Explicitly set \((?P<num>{_NUM})/{_NUM}\) GiB for KV cache")

# V1: "GPU KV cache size: 42,656 tokens"
# newest, merged: "CPU KV cache size: 524,288 tokens, Maximum concurrency for 2,048 tokens ..."
_KV_TOKENS = re.compile(rf"\b(?P<dev>[A-Za-z]+) KV cache size: (?P<tokens>{_INT}) tokens")
# V0:     "# GPU blocks: 27089, # CPU blocks: 2048"   (the CPU blocks there are swap space)
# V0 0.7: "# CUDA blocks: 1258, # CPU blocks: 4096";  0.8: "# cuda blocks: 12200, ..."
# V0 CPU: "# cpu blocks: 1170, # CPU blocks: 0";  V1 0.7: "# GPU blocks: 127626"
_BLOCKS = re.compile(
    r"(?:#\s*)?\b(?P<dev>(?i:gpu|cpu|cuda|rocm|xpu|hpu|tpu|npu|neuron)) blocks: (?P<blocks>\d+)"
)
# V1 stat logger: "Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: 2762"
_BLOCKS_V1_INIT = re.compile(r"num_gpu_blocks is: (?P<blocks>\d+)")
# "Overriding num_gpu_blocks=0 with num_gpu_blocks_override=512"
_BLOCKS_OVERRIDE = re.compile(
    r"Overriding num_gpu_blocks=\d+ with num_gpu_blocks_override=(?P<blocks>\d+)"
)
# "Maximum concurrency for 32,768 tokens per request: 1.30x"  (0.6: "... 131072 tokens ...")
_CONCURRENCY = re.compile(
    rf"Maximum concurrency for (?P<tokens>{_INT}) tokens per request: (?P<x>{_NUM})x"
)
# args dumps: "Namespace(..., block_size=16, ...)", "non-default args: {'block_size': 32}",
# or a pasted metrics label 'block_size="128"'
_BLOCK_SIZE_ARG = re.compile(r"""(?:\bblock_size=|['"]block_size['"]:\s*)["']?(?P<bs>\d+)""")
# "Initializing ... with config: ..., max_seq_len=131072, ..."; "Namespace(..., max_model_len=8192"
# "non-default args: {'max_model_len': 2048}";  0.10+: "Using max model len 32768"
_MAX_MODEL_LEN = re.compile(
    r"""(?:\bmax_seq_len=|\bmax_model_len=|['"]max_model_len['"]:\s*|Using max model len )"""
    r"(?P<n>\d+)"
)
# "Graph capturing finished in 14 secs, took 0.21 GiB"  (before Nov 2024: no "took" part)
_CUDA_GRAPH = re.compile(rf"Graph capturing finished in {_NUM} secs?, took {_SIZE}")

# multimodal models: "Encoder cache will be initialized with a budget of 8192 tokens, and
# profiled with 3 video items of the maximum feature size."  (GPU and CPU alike)
_ENCODER_CACHE = re.compile(
    rf"Encoder cache will be initialized with a budget of (?P<budget>{_INT}) tokens, "
    rf"and profiled with (?P<items>{_INT}) (?P<modality>\w+) items"
)

# "vLLM API server version 0.7.1"
_VERSION_API = re.compile(r"vLLM API server version v?(?P<v>\d[\w.+-]*)")
# "Initializing an LLM engine (v0.6.1.dev238+ge2c6e0a82) with config"
# "Initializing a V1 LLM engine (v0.10.2) with config"
_VERSION_ENGINE = re.compile(
    r"Initializing an? (?:V\d+ )?LLM engine \(v?(?P<v>[^)\s]+)\) with config"
)
# newest start-up banner: "▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.16.0"
_VERSION_BANNER = re.compile(r"[█▄▀]\s+version\s+v?(?P<v>\d[\w.+-]*)")

# "... kv_cache_dtype=auto, device_config=cuda, ..."
_DEVICE_CONFIG = re.compile(r"\bdevice_config=(?P<dev>\w+)")
# "Automatically detected platform cuda."
_PLATFORM = re.compile(r"Automatically detected platform (?P<dev>\w+)")
_DEVICE_WORDS: dict[str, Device] = {
    "gpu": "gpu",
    "cuda": "gpu",
    "rocm": "gpu",
    "xpu": "gpu",
    "cpu": "cpu",
}


@dataclass(frozen=True)
class VllmLogFacts:
    """The figures one vLLM server log states; ``None`` wherever it does not state them.

    When a figure appears more than once (several workers, or restarts in one log) the last one
    wins. ``concurrency_tokens`` is the per-request length of the "Maximum concurrency" line,
    which vLLM computes from its ``max_model_len``; ``max_model_len`` is the last length the log
    states, in an args dump, a config line or that line (V1 logs state it there only).
    """

    weights_bytes: int | None = None
    available_kv_bytes: int | None = None
    kv_cache_tokens: int | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    max_model_len: int | None = None
    cuda_graph_bytes: int | None = None
    vllm_version: str | None = None
    device: Device | None = None
    failure: VllmFailure | None = None
    # multimodal models: the encoder cache's budget and what the profiling run fed the tower
    encoder_budget_tokens: int | None = None
    encoder_profiled_items: int | None = None
    encoder_profiled_modality: str | None = None

    @property
    def kv_bytes_per_token(self) -> float | None:
        """``available_kv_bytes / kv_cache_tokens``: approximate.

        The log prints the pool in GiB rounded to 2 decimals, so for a 1 GiB pool this is off by
        up to 0.5% (a 50 GiB pool: 0.01%). For hybrid models (sliding window, Mamba, several KV
        groups) newer vLLM derives its token count from the concurrency, so this ratio is not a
        per-token cost there. ``/metrics`` (``parse_metrics``) gives exact bytes.
        """
        if self.available_kv_bytes is None or not self.kv_cache_tokens:
            return None
        return self.available_kv_bytes / self.kv_cache_tokens


def parse_log(text: str, *, metrics: VllmMetricsFacts | None = None) -> VllmLogFacts:
    """Read every figure a vLLM server log states (see ``VllmLogFacts``).

    ``metrics``, when given, supplies the block size (over the log's own) for V0 logs, which
    print a block count rather than a token count.
    """
    acc = _Accumulator()
    for message in split_messages(text):
        acc.take(message.text)
    block_size = _resolve_block_size(acc, metrics)
    tokens = acc.kv_tokens
    if tokens is None and acc.num_gpu_blocks is not None and block_size is not None:
        tokens = acc.num_gpu_blocks * block_size
    weights = acc.weights_bytes if acc.weights_bytes is not None else acc.weights_summary_bytes
    return VllmLogFacts(
        weights_bytes=weights,
        available_kv_bytes=acc.available_kv_bytes,
        kv_cache_tokens=tokens,
        num_gpu_blocks=acc.num_gpu_blocks,
        block_size=block_size,
        max_concurrency=acc.max_concurrency,
        concurrency_tokens=acc.concurrency_tokens,
        max_model_len=acc.max_model_len,
        cuda_graph_bytes=acc.cuda_graph_bytes,
        vllm_version=acc.vllm_version,
        device=acc.device,
        failure=classify_failure(text),
        encoder_budget_tokens=acc.encoder_budget_tokens,
        encoder_profiled_items=acc.encoder_profiled_items,
        encoder_profiled_modality=acc.encoder_profiled_modality,
    )


def parse_log_file(path: str | Path) -> VllmLogFacts:
    """``parse_log`` of a log file (undecodable bytes are replaced, not fatal)."""
    return parse_log(Path(path).read_text(encoding="utf-8", errors="replace"))


def to_json_dict(facts: VllmLogFacts) -> dict[str, object]:
    """A JSON-ready dict of log facts: sizes in bytes as integers, absent figures as null."""
    failure = facts.failure
    return {
        "weights_bytes": facts.weights_bytes,
        "available_kv_bytes": facts.available_kv_bytes,
        "kv_cache_tokens": facts.kv_cache_tokens,
        "max_model_len": facts.max_model_len,
        "failure": None
        if failure is None
        else {"kind": failure.kind, "message": failure.message, "max_context": failure.max_context},
        "num_gpu_blocks": facts.num_gpu_blocks,
        "block_size": facts.block_size,
        "max_concurrency": facts.max_concurrency,
        "concurrency_tokens": facts.concurrency_tokens,
        "cuda_graph_bytes": facts.cuda_graph_bytes,
        "vllm_version": facts.vllm_version,
        "kv_bytes_per_token": facts.kv_bytes_per_token,
        "device": facts.device,
        "encoder_budget_tokens": facts.encoder_budget_tokens,
        "encoder_profiled_items": facts.encoder_profiled_items,
        "encoder_profiled_modality": facts.encoder_profiled_modality,
    }


def encoder_components(facts: VllmLogFacts) -> dict[str, object]:
    """The encoder cache facts a log states, as calibration points carry them in
    ``engine_components`` (``MemoryComponents.extra``); empty for a text-only model."""
    out: dict[str, object] = {
        "encoder_budget_tokens": facts.encoder_budget_tokens,
        "encoder_profiled_items": facts.encoder_profiled_items,
        "encoder_profiled_modality": facts.encoder_profiled_modality,
    }
    return {k: v for k, v in out.items() if v is not None}


# --- Log scanning -------------------------------------------------------------------------


class _Accumulator:
    """The last value of each figure seen so far, while scanning one log."""

    def __init__(self) -> None:
        self.weights_bytes: int | None = None
        self.weights_summary_bytes: int | None = None
        self.available_kv_bytes: int | None = None
        self.kv_tokens: int | None = None
        self.num_gpu_blocks: int | None = None
        self.block_size_arg: int | None = None
        self.max_concurrency: float | None = None
        self.concurrency_tokens: int | None = None
        self.max_model_len: int | None = None
        self.cuda_graph_bytes: int | None = None
        self.vllm_version: str | None = None
        self.device: Device | None = None
        self.encoder_budget_tokens: int | None = None
        self.encoder_profiled_items: int | None = None
        self.encoder_profiled_modality: str | None = None

    def take(self, msg: str) -> None:
        """Record every figure one log message states."""
        if m := _WEIGHTS.search(msg):
            self.weights_bytes = _bytes(m)
        if m := _WEIGHTS_SUMMARY.search(msg):
            self.weights_summary_bytes = _bytes(m)
        for pattern in (_AVAILABLE_KV, _KV_RESERVED_V0, _KV_PROFILE_V0, _KV_RESERVED_EXPLICIT):
            if m := pattern.search(msg):
                self.available_kv_bytes = _bytes(m)
        if m := _CPU_KV_SPACE.search(msg):
            self.available_kv_bytes = round(float(m["num"]) * GIB)
            self.device = "cpu"
        if m := _KV_TOKENS.search(msg):
            self.kv_tokens = _int(m["tokens"])
            self._set_device(m["dev"])
        if m := _BLOCKS.search(msg):
            self.num_gpu_blocks = int(m["blocks"])
            self._set_device(m["dev"])
        for pattern in (_BLOCKS_V1_INIT, _BLOCKS_OVERRIDE):
            if m := pattern.search(msg):
                self.num_gpu_blocks = int(m["blocks"])
        if m := _CONCURRENCY.search(msg):
            self.concurrency_tokens = _int(m["tokens"])
            self.max_concurrency = float(m["x"])
            # vLLM formats this figure from max_model_len (V0 and V1): the length it serves,
            # and the only place V1 logs state it.
            self.max_model_len = self.concurrency_tokens
        if m := _BLOCK_SIZE_ARG.search(msg):
            self.block_size_arg = int(m["bs"])
        if m := _MAX_MODEL_LEN.search(msg):
            self.max_model_len = int(m["n"])
        if m := _CUDA_GRAPH.search(msg):
            self.cuda_graph_bytes = _bytes(m)
        for pattern in (_VERSION_API, _VERSION_ENGINE, _VERSION_BANNER):
            if m := pattern.search(msg):
                self.vllm_version = m["v"]
        for pattern in (_DEVICE_CONFIG, _PLATFORM):
            if m := pattern.search(msg):
                self._set_device(m["dev"])
        if m := _ENCODER_CACHE.search(msg):
            self.encoder_budget_tokens = _int(m["budget"])
            self.encoder_profiled_items = _int(m["items"])
            self.encoder_profiled_modality = m["modality"]

    def _set_device(self, word: str) -> None:
        device = _DEVICE_WORDS.get(word.lower())
        if device is not None:
            self.device = device


def _resolve_block_size(acc: _Accumulator, metrics: VllmMetricsFacts | None) -> int | None:
    """The KV block size, from the first of these that tells.

    1. a ``block_size`` in the log's args dump, or in ``metrics``;
    2. the "Maximum concurrency" line, which vLLM (V0, early V1) computes as
       blocks × block_size / max_model_len and prints with 2 decimals: the one power of two that
       reproduces the printed figure exactly (V0 on CPU uses 128, not 16);
    3. vLLM's GPU default of 16, when the log prints a block count, does not run on the CPU, and
       has no concurrency line contradicting it.
    """
    if metrics is not None and metrics.block_size is not None:
        return metrics.block_size
    if acc.block_size_arg is not None:
        return acc.block_size_arg
    if acc.num_gpu_blocks is None:
        return None
    if acc.max_concurrency is not None and acc.concurrency_tokens:
        return _infer_block_size(acc.num_gpu_blocks, acc.concurrency_tokens, acc.max_concurrency)
    if acc.device == "cpu":
        return None
    return V0_DEFAULT_BLOCK_SIZE


def _infer_block_size(blocks: int, tokens_per_request: int, concurrency: float) -> int | None:
    shown = f"{concurrency:.2f}"
    fits = [
        size
        for size in _BLOCK_SIZE_CANDIDATES
        if f"{blocks * size / tokens_per_request:.2f}" == shown
    ]
    return fits[0] if len(fits) == 1 else None


def _bytes(m: re.Match[str]) -> int:
    return round(float(m["num"]) * _UNIT_BYTES[m["unit"]])


def _int(digits: str) -> int:
    return int(digits.replace(",", ""))


def inspect_log(text: str, metrics_text: str | None) -> dict[str, Any]:
    """What `inspect-log` shows: the figures and failure read from a log (and /metrics)."""
    metrics = parse_metrics(metrics_text) if metrics_text is not None else None
    return to_json_dict(parse_log(text, metrics=metrics))
