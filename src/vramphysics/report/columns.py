"""The columns of every report sheet: header (with its unit), comment, width and number format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vramphysics.errors import FAILURE_KINDS

# Number formats show the unit beside the figure, so a cell copied elsewhere still says it.
F_GIB = '0.000 "GiB"'
F_MIB = '0.0 "MiB"'
F_BYTES_TOKEN = '#,##0.0 "B/token"'
F_BYTES = '#,##0 "B"'
F_TOKENS = '#,##0 "tokens"'
F_MS = '0.00 "ms"'
F_TOKS = '0.0 "tok/s"'
F_S = '0.00 "s"'
F_RATIO = "0.000"


@dataclass(frozen=True)
class Column:
    header: str
    comment: str
    width: int = 14  # the most the width may grow to fit the values
    number_format: str | None = None


@dataclass(frozen=True)
class ExtraSheet:
    """A sheet another module contributes (e.g. the Plan sheet from the planner)."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]


CALIBRATION_COLUMNS = (
    Column("Model", "Model ID as written in the test setups", 34),
    Column("Engine", "the engine, as its model ID names it (the registry's name)", 10),
    Column(
        "Status", "OK, MISSING (not on disk, nothing started), FAILED, NO_FIT (too few points)", 10
    ),
    Column("Reason", "Why this status; for failures the engine's own message", 40),
    Column("Device", "GPU name from NVML, or cpu for the process-tree probe", 14),
    Column(
        "Probe",
        "What measured the memory: nvml (device used), process (USS of the engine's process tree), engine figures",
        10,
    ),
    Column(
        "Base (GiB)",
        "Intercept of bytes = base + ctx x cost: memory at context 0 (weights, runtime, fixed buffers)",
        12,
        F_GIB,
    ),
    Column("Cost per token (B)", "Slope: bytes per token of context, measured", 14, F_BYTES_TOKEN),
    Column("GiB per 10k tokens", "Slope x 10,000 tokens, in GiB", 12, F_GIB),
    Column("r2", "Coefficient of determination of the linear fit", 8, "0.0000"),
    Column("Points", "Number of contexts measured (one fresh engine start each)", 8),
    Column(
        "Base stderr (MiB)",
        "Standard error of the intercept of the regression (fitted entries only)",
        12,
        F_MIB,
    ),
    Column(
        "Cost stderr (B)",
        "Standard error of the slope of the regression (fitted entries only)",
        12,
        F_BYTES_TOKEN,
    ),
    Column(
        "Base spread of starts (MiB)",
        "Engine-KV entries (vLLM): no regression; half the range of measured - KV pool over the "
        "engine starts. Not a standard error",
        12,
        F_MIB,
    ),
    Column(
        "Cost spread of starts (B)",
        "Engine-KV entries (vLLM): half the range of pool / KV tokens over the engine starts. "
        "Not a standard error",
        12,
        F_BYTES_TOKEN,
    ),
    Column(
        "Theory KV (B/token)",
        "2 x layers x KV heads x head dim x bytes per value, from the model's own metadata",
        14,
        F_BYTES_TOKEN,
    ),
    Column(
        "Theory weights (GiB)", "Sum of the weight tensors' sizes from the model file", 12, F_GIB
    ),
    Column("Measured/theory", "Measured cost per token / theory KV bytes per token", 12, F_RATIO),
    Column(
        "Engine KV (B/token)",
        "KV bytes per token from the engine's own log or metrics (pool / cells)",
        14,
        F_BYTES_TOKEN,
    ),
    Column("Engine version", "Engine and version that produced the figures", 22),
    Column("Warnings", "Guardrail and other warnings for this model", 40),
)

POINT_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "Context size the engine was started with", 12, F_TOKENS),
    Column(
        "Measured (MiB)",
        "Steady memory after warm-up minus the baseline before the start",
        12,
        F_MIB,
    ),
    Column("Peak (MiB)", "Highest sample of the start minus the baseline", 12, F_MIB),
    Column(
        "Baseline (MiB)",
        "Memory in use before the engine started (NVML) or 0 (process tree)",
        12,
        F_MIB,
    ),
    Column(
        "Fit residual (MiB)",
        "Measured minus the fitted line; empty for engine-KV entries (vLLM), which are not a "
        "regression over these points",
        12,
        F_MIB,
    ),
    Column("Samples", "Probe samples taken during the start", 8),
    Column("Ready (s)", "Launch until the engine answered", 10, F_S),
    Column("Probe", "nvml or process", 10),
    Column("Device", "GPU name or cpu", 14),
    Column("Engine KV pool (MiB)", "KV cache size the engine reports for this start", 12, F_MIB),
    Column("Engine compute (MiB)", "Compute buffers the engine reports for this start", 12, F_MIB),
    Column("Engine weights (MiB)", "Weight buffers the engine reports for this start", 12, F_MIB),
    Column("At (UTC)", "When the point was measured", 20),
)

BENCH_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "Context size of the benchmark start", 12, F_TOKENS),
    Column(
        "TTFT (ms)",
        "Request sent until the first chunk carrying text (role-only chunks excluded)",
        10,
        F_MS,
    ),
    Column(
        "Decode (tokens/s)",
        "(output tokens - 1) / (last text - first text): excludes TTFT",
        12,
        F_TOKS,
    ),
    Column("End-to-end (tokens/s)", "Output tokens / whole request time", 12, F_TOKS),
    Column(
        "Prefill (tokens/s)",
        "Prompt tokens / TTFT, when the engine reports prompt tokens",
        12,
        F_TOKS,
    ),
    Column(
        "Output tokens",
        "From the engine's usage figures or its own tokenizer (see Token source)",
        10,
    ),
    Column("Prompt tokens", "From the engine", 10),
    Column(
        "Token source",
        "engine-usage: the engine's usage object; engine-tokenizer: the engine's own tokenizer on the output",
        16,
    ),
    Column("Setup (s)", "Launch, ready, warm-up and steady sampling", 10, F_S),
    Column("Exec (s)", "The benchmark request", 10, F_S),
    Column("Cleanup (s)", "Stopping the engine's whole process tree", 10, F_S),
    Column(
        "Load (s)", "Cold-start load time reported by the engine (Ollama load_duration)", 10, F_S
    ),
    Column(
        "Peak memory (GiB)",
        "Highest probe sample during the start, minus the baseline",
        12,
        F_GIB,
    ),
    Column("Probe", "What measured the peak", 10),
    Column("Device", "GPU name or cpu", 14),
    Column("Engine version", "Engine and version", 22),
    Column("Status", "OK or FAILED", 8),
)

FAILURE_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "The step's context (empty: the whole model)", 12, F_TOKENS),
    Column(
        "Kind",
        ", ".join(FAILURE_KINDS),
        18,
    ),
    Column("Reason", "The engine's message", 50),
    Column(
        "Max context (tokens)",
        "Largest context the engine said would fit, when it said so",
        12,
        F_TOKENS,
    ),
    Column("Log tail", "The end of the engine's log (secrets masked)", 80),
)

ANSWER_COLUMNS = (
    Column("Model", "Model ID as written in the test setups", 34),
    Column("Engine", "the engine, as its model ID names it (the registry's name)", 10),
    Column("Device", "Device the calibration was measured on", 14),
    Column("Status", "OK, NO_FIT, MISSING, FAILED, INCOMPLETE (see Calibration)", 10),
    Column(
        "Free (GiB)",
        "Device total minus what other processes used when the run started (NVML; 0 used "
        "when unknown, e.g. on the CPU)",
        10,
        F_GIB,
    ),
    Column(
        "Max context (tokens)",
        "Longest context that fits in the free memory, by the same rule as `vramphysics plan`",
        14,
        F_TOKENS,
    ),
    Column(
        "Max context @ 90% free (tokens)",
        "Longest context that fits in 90% of the free memory (room for anything else you run)",
        14,
        F_TOKENS,
    ),
    Column(
        "Context (tokens)",
        "The context the next columns plan for: the model's #ctx, else its benchmark context",
        12,
        F_TOKENS,
    ),
    Column("Needs (GiB)", "base + context x cost per token, from the calibration", 10, F_GIB),
    Column(
        "vLLM util",
        "--gpu-memory-utilization for the context (vLLM rows only: the others allocate on demand)",
        10,
        "0.000",
    ),
    Column(
        "vLLM KV cache (B)",
        "--kv-cache-memory-bytes for the context (vLLM rows only)",
        14,
        F_BYTES,
    ),
    Column("GiB per 10k tokens", "Cost per token x 10,000 tokens", 10, F_GIB),
    Column("Measured/theory", "Measured cost per token / theory KV bytes per token", 10, F_RATIO),
    Column(
        "TTFT p50 small prompt (ms)", "Median time to first token at the smallest prompt", 12, F_MS
    ),
    Column(
        "TTFT p50 large prompt (ms)", "Median time to first token at the largest prompt", 12, F_MS
    ),
    Column("Decode small prompt (tok/s)", "Decode throughput at the smallest prompt", 12, F_TOKS),
    Column("Decode large prompt (tok/s)", "Decode throughput at the largest prompt", 12, F_TOKS),
    Column("Warning", "The one thing to know before you trust this row", 50),
)
