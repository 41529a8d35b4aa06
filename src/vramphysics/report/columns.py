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

F_REQS = '0.00 "req/s"'
F_COUNT = "#,##0"


def _stats_columns(name: str, what: str, extra: bool = False) -> tuple[Column, ...]:
    """p50/p90/p99 (and mean, std, min, max) of one figure over the cell's measured requests."""
    how = "percentiles interpolate between order statistics (numpy's default, as vllm bench serve)"
    out = tuple(
        Column(f"{name} {p} (ms)", f"{p} of {what}; {how}", 10, F_MS) for p in ("p50", "p90", "p99")
    )
    if extra:
        out += (
            Column(f"{name} mean (ms)", f"Mean of {what}", 10, F_MS),
            Column(f"{name} std (ms)", f"Population standard deviation of {what}", 10, F_MS),
            Column(f"{name} min (ms)", f"Smallest of {what}", 10, F_MS),
            Column(f"{name} max (ms)", f"Largest of {what}", 10, F_MS),
        )
    return out


TTFT_WHAT = "TTFT: request sent (t0) until the first content event (a chunk with text)"
TPOT_WHAT = "TPOT per request: (E2E - TTFT) / (output tokens - 1), requests with >= 2 tokens"
ITL_WHAT = "ITL: every gap between content events, pooled over the cell's requests"
E2E_WHAT = "E2E: t0 until the last content event"

BENCH_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "Context size the engine was started with", 12, F_TOKENS),
    Column("Cell", "The cell's ID: p<prompt tokens>-o<output tokens>-c<concurrency>", 16),
    Column("Prompt asked (tokens)", "Prompt length the workload asked for", 12, F_TOKENS),
    Column(
        "Prompt (tokens)",
        "Mean prompt length of the measured requests by the engine's own count",
        12,
        F_TOKENS,
    ),
    Column("Output asked (tokens)", "Output length the workload forced (min tokens)", 12, F_TOKENS),
    Column("Output (tokens)", "Mean output tokens of the measured requests", 12, F_TOKENS),
    Column("Concurrency", "Requests in flight at once", 10, F_COUNT),
    Column("Media", "What each request carried beside the text (bench.images, bench.videos)", 18),
    Column(
        "Media tokens per item",
        "(prompt tokens of this cell - those of the text-only cell of the same prompt) / items: "
        "the context one image or video takes, by the engine's own count",
        12,
        F_TOKENS,
    ),
    Column("N measured", "Measured requests that succeeded (warm-up and cold excluded)", 10),
    Column("N failed", "Measured requests that failed (see the Requests sheet)", 10),
    *_stats_columns("TTFT", TTFT_WHAT, extra=True),
    *_stats_columns("TPOT", TPOT_WHAT),
    *_stats_columns("ITL", ITL_WHAT),
    *_stats_columns("E2E", E2E_WHAT),
    Column("Window (s)", "First measured request sent until the last one done", 10, F_S),
    Column("Requests (req/s)", "Measured requests done / window", 10, F_REQS),
    Column("Output (tokens/s)", "Output tokens of the measured requests / window", 12, F_TOKS),
    Column("Decode (tokens/s)", "1 / mean TPOT: one stream's decode speed", 12, F_TOKS),
    Column("Prefill (tokens/s)", "Mean prompt tokens / mean TTFT", 12, F_TOKS),
    Column(
        "Engine prefill (tokens/s)",
        "The engine's own prompt-processing figure, mean (llama.cpp timings, Ollama "
        "prompt_eval_duration); empty where the engine reports none",
        12,
        F_TOKS,
    ),
    Column("Load (s)", "Engine start until ready, of the start the cell ran on", 10, F_S),
    Column(
        "Cold TTFT (ms)",
        "TTFT of the very first request after the engine was ready, before any warm-up; "
        "never part of the warm figures",
        10,
        F_MS,
    ),
    Column(
        "Peak memory (GiB)",
        "Highest probe sample while the cell's requests ran, above the pre-start baseline",
        12,
        F_GIB,
    ),
    Column("Steady memory (GiB)", "Median probe sample while the cell's requests ran", 12, F_GIB),
    Column(
        "Predicted memory (GiB)",
        "The calibration's base + ctx x cost for this start's context",
        12,
        F_GIB,
    ),
    Column(
        "Peak/predicted",
        "Peak memory / predicted memory: far from 1 when real use departs from the physics",
        10,
        F_RATIO,
    ),
    Column("Memory metric", "What the memory columns are: pss, rss, device-used", 10),
    Column("Probe", "What measured the memory", 10),
    Column("Device", "GPU name or cpu", 14),
    Column(
        "Token source",
        "engine-usage: the engine's usage figures; engine-timings: llama-server's timings; "
        "engine-length: stopped at max_tokens with an exact output; engine-tokenizer: the "
        "engine's own tokenizer on the text",
        16,
    ),
    Column("Engine version", "Engine and version", 22),
    Column("Warm prefix", "yes: #warm, one prompt repeated on purpose (prefix cache allowed)", 8),
    Column("Note", "What was adjusted: a clipped prompt length, concurrency held to 1, ...", 40),
    Column(
        "Status",
        "OK, PARTIAL (some measured requests failed), FAILED (none succeeded), or the model's "
        "MISSING/FAILED",
        8,
    ),
)

REQUEST_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "Context size the engine was started with", 12, F_TOKENS),
    Column("Cell", "The cell's ID (Benchmarks sheet)", 16),
    Column(
        "Phase",
        "cold: first request after ready; warmup: discarded; measured: in the cell's figures",
        10,
    ),
    Column("Index", "The request's number within its cell and phase", 8),
    Column("Prompt asked (tokens)", "Prompt length the workload asked for", 12, F_TOKENS),
    Column("Output asked (tokens)", "Output length the workload forced", 12, F_TOKENS),
    Column("Concurrency", "Requests in flight at once in its cell", 10, F_COUNT),
    Column("OK", "yes: the request succeeded", 6),
    Column("Error", "Why it failed", 40),
    Column("Prompt (tokens)", "By the engine's own count (see Token source)", 12, F_TOKENS),
    Column("Output (tokens)", "By the engine's count (see Token source)", 12, F_TOKENS),
    Column("Token source", "Where the counts came from", 16),
    Column("TTFT (ms)", TTFT_WHAT, 10, F_MS),
    Column("TPOT (ms)", "(E2E - TTFT) / (output tokens - 1)", 10, F_MS),
    Column("E2E (ms)", E2E_WHAT, 10, F_MS),
    Column("ITL count", "Number of gaps between content events", 8, F_COUNT),
    Column("ITL p50 (ms)", "Median gap between this request's content events", 10, F_MS),
    Column("Start (s)", "When it was sent, from the start of its cell's window", 10, F_S),
    Column("Finish reason", "The engine's finish reason (length, stop, ...)", 10),
    Column("Engine prefill (tokens/s)", "The engine's own prompt-processing figure", 12, F_TOKS),
    Column("At (UTC)", "When it was journaled", 20),
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
        "TTFT p50 small prompt (ms)",
        "Median time to first token of the cell with the smallest prompt (the model's cells at "
        "its lowest concurrency, #warm left out; Benchmarks sheet)",
        12,
        F_MS,
    ),
    Column(
        "TTFT p50 large prompt (ms)",
        "Median time to first token of the cell with the largest prompt (as above)",
        12,
        F_MS,
    ),
    Column(
        "Decode small prompt (tok/s)",
        "1 / mean TPOT of the cell with the smallest prompt (as above)",
        12,
        F_TOKS,
    ),
    Column(
        "Decode large prompt (tok/s)",
        "1 / mean TPOT of the cell with the largest prompt (as above)",
        12,
        F_TOKS,
    ),
    Column("Warning", "The one thing to know before you trust this row", 50),
)
