"""Smart allocation: the memory a context needs, the context a budget allows, and the verdict.

Pure functions over plain values; no I/O. Everything rests on one line,

    required_bytes(ctx) = base_bytes + ctx * cost_per_token_bytes,

measured by a calibration (`PhysicsEntry`, source "calibrated") or, when the device was never
calibrated, worked out from model metadata (`Theory`, source "theory": weights + KV cache only).

vLLM takes a fraction of the device's TOTAL memory (`--gpu-memory-utilization`), and memory that
other processes hold counts against that fraction, so a plan is refused when
`utilization x total` exceeds what is free. Ollama and llama.cpp allocate what they need, so
their verdict is `required + margin x total <= free`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.theory import Theory

GIB = 2**30
# Most direct first: vLLM's own KV figure, its log, then memory seen from outside.
PROBE_PREFERENCE: tuple[str, ...] = ("vllm-metrics", "vllm-log", "nvml", "ollama-ps", "process")
MIN_UTIL = 0.05
MAX_UTIL = 0.98
VLLM_BLOCK_TOKENS = 16  # vLLM's default KV block: a sequence occupies whole blocks
SHEET_CONTEXTS: tuple[int, ...] = (4096, 8192, 16384, 32768, 131072)
SHEET_UTILIZATION = 0.9


@dataclass(frozen=True)
class Physics:
    """What a plan is computed from: `bytes = base_bytes + ctx * cost_per_token_bytes`."""

    source: str  # "calibrated" | "theory"
    base_bytes: float
    cost_per_token_bytes: float
    engine: str | None = None
    model: str | None = None
    device: str | None = None
    probe: str | None = None
    upper_bound: bool = False
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A verdict for one engine, model and device, with the figures behind it."""

    engine: str
    model: str
    device: str
    source: str  # "calibrated" | "theory"
    ctx: int | None
    required_bytes: float | None
    gpu_memory_utilization: float | None  # vLLM only
    kv_cache_memory_bytes: int | None  # vLLM only: for --kv-cache-memory-bytes
    max_context: int | None
    fits: bool
    total_bytes: int
    free_bytes: int
    used_by_others_bytes: int
    margin: float
    base_bytes: float
    cost_per_token_bytes: float
    probe: str | None = None
    upper_bound: bool = False
    messages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["messages"] = list(self.messages)
        return d


@dataclass(frozen=True)
class SheetRow:
    """One line of the report's plan sheet: utilization per standard context on one device."""

    engine: str
    model: str
    device: str
    probe: str
    total_bytes: int
    base_bytes: float
    cost_per_token_bytes: float
    margin: float
    utilization: tuple[tuple[int, float | None], ...]  # (ctx, util); None: does not fit
    max_context_at_90: int  # largest ctx with --gpu-memory-utilization 0.9

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["utilization"] = {str(c): u for c, u in self.utilization}
        return d


# --------------------------------------------------------------------------- the formula


def required_bytes(base_bytes: float, cost_per_token_bytes: float, ctx: int) -> float:
    """base + ctx x cost."""
    if ctx < 0:
        raise ValueError(f"ctx must be >= 0, got {ctx}")
    return base_bytes + ctx * cost_per_token_bytes


def _ceil3(x: float) -> float:
    """Round up to 3 decimals, ignoring float noise (0.15 + 0.05 stays 0.2)."""
    return math.ceil(round(x * 1000, 6)) / 1000


def vllm_utilization(
    required_bytes: float,
    total_bytes: float,
    margin: float = 0.05,
    min_util: float = MIN_UTIL,
    max_util: float = MAX_UTIL,
) -> float:
    """required / total + margin, rounded UP to 3 decimals and clamped to [min, max].

    Rounded up because a user pastes it into `--gpu-memory-utilization`, and it must not
    under-allocate. A value clamped at `max_util` does not hold `required`: check the raw
    figure (`plan_vllm` refuses such a plan).
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be > 0, got {total_bytes}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return min(max(_ceil3(required_bytes / total_bytes + margin), min_util), max_util)


def max_context(budget_bytes: float, base_bytes: float, cost_per_token_bytes: float) -> int:
    """floor((budget - base) / cost): the longest context a budget holds; 0 when none."""
    if cost_per_token_bytes <= 0:
        raise ValueError(f"cost_per_token_bytes must be > 0, got {cost_per_token_bytes}")
    return max(0, math.floor((budget_bytes - base_bytes) / cost_per_token_bytes))


# --------------------------------------------------------------------------- calibrated or theory


def select_physics(
    entries: Iterable[PhysicsEntry], engine: str, model: str, device: str
) -> PhysicsEntry | None:
    """The calibration of this engine and model on THIS device, best probe first; else None.

    An entry measured on another device is never returned: the caller falls back to theory.
    """
    own = [e for e in entries if e.engine == engine and e.model == model and e.device == device]
    if not own:
        return None

    def rank(e: PhysicsEntry) -> tuple[int, float]:
        order = PROBE_PREFERENCE.index(e.probe) if e.probe in PROBE_PREFERENCE else 99
        return (order, -(e.r2 if e.r2 is not None else -1.0))

    return min(own, key=rank)


def calibrated_devices(entries: Iterable[PhysicsEntry], engine: str, model: str) -> list[str]:
    """The devices this engine and model were calibrated on."""
    return sorted({e.device for e in entries if e.engine == engine and e.model == model})


def physics_from_entry(entry: PhysicsEntry) -> Physics:
    return Physics(
        source="calibrated",
        base_bytes=float(entry.base_bytes),
        cost_per_token_bytes=float(entry.cost_per_token_bytes),
        engine=entry.engine,
        model=entry.model,
        device=entry.device,
        probe=entry.probe,
        messages=(
            f"calibrated on {entry.device} ({entry.probe}, {entry.n_points} points"
            + (f", r2 {entry.r2:.4f}" if entry.r2 is not None else "")
            + ")",
        ),
    )


def physics_from_theory(theory: Theory, n_seq: int | None = None) -> Physics:
    """Theory as physics: weights as base, KV per token (x sequences) as cost."""
    if theory.weights_bytes is None:
        raise ConfigError(
            f"the {theory.source} theory has no weights size, so it cannot stand in for a "
            "calibration (an HF config needs its safetensors files beside it)"
        )
    seqs = theory.n_seq if n_seq is None else n_seq
    messages = [
        "theory: weights + KV cache only; the engine also needs activations, compute buffers "
        "and a CUDA context (often 0.5-2 GiB): keep a margin"
    ]
    if theory.upper_bound:
        messages.append("theory KV is an upper bound (sliding-window layers counted in full)")
    return Physics(
        source="theory",
        base_bytes=float(theory.weights_bytes),
        cost_per_token_bytes=theory.kv_bytes_per_token * seqs,
        upper_bound=theory.upper_bound,
        messages=tuple(messages),
    )


def resolve_physics(
    entries: Iterable[PhysicsEntry],
    engine: str,
    model: str,
    device: str,
    theory: Theory | None = None,
) -> Physics:
    """Calibrated physics for this device when there is some; else theory, saying why."""
    entries = list(entries)
    entry = select_physics(entries, engine, model, device)
    if entry is not None:
        return physics_from_entry(entry)
    others = calibrated_devices(entries, engine, model)
    why = (
        f"calibrated on {', '.join(others)}, not {device}; using theory"
        if others
        else f"{engine} / {model} was never calibrated on {device}; using theory"
    )
    if theory is None:
        raise ConfigError(
            why.replace("; using theory", "")
            + ": give the model's metadata (HF config, GGUF or Ollama show) for a theory estimate"
        )
    physics = physics_from_theory(theory)
    return dataclasses.replace(
        physics,
        engine=engine,
        model=model,
        device=device,
        messages=(why, *physics.messages),
    )


def _as_physics(source: PhysicsEntry | Theory | Physics) -> Physics:
    if isinstance(source, Physics):
        return source
    if isinstance(source, PhysicsEntry):
        return physics_from_entry(source)
    return physics_from_theory(source)


# --------------------------------------------------------------------------- plans


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_bytes(n: float) -> str:
    """Bytes for people: GiB, MiB or KiB with two decimals."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def with_messages(plan: Plan, messages: Sequence[str]) -> Plan:
    """The same plan with `messages` (e.g. where the device figures came from) put first."""
    return dataclasses.replace(plan, messages=(*messages, *plan.messages))


def _check_device(total_bytes: int, used_by_others_bytes: int, margin: float) -> None:
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be > 0, got {total_bytes}")
    if used_by_others_bytes < 0:
        raise ValueError(f"used_by_others_bytes must be >= 0, got {used_by_others_bytes}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")


def _plan(
    phys: Physics,
    engine: str,
    model: str | None,
    device: str | None,
    total_bytes: int,
    used_by_others_bytes: int,
    margin: float,
    messages: Sequence[str],
    **verdict: Any,
) -> Plan:
    """A Plan from the physics and the device; `verdict` holds the plan-specific fields."""
    return Plan(
        engine=phys.engine or engine,
        model=model or phys.model or "",
        device=device or phys.device or "",
        source=phys.source,
        total_bytes=total_bytes,
        free_bytes=total_bytes - used_by_others_bytes,
        used_by_others_bytes=used_by_others_bytes,
        margin=margin,
        base_bytes=phys.base_bytes,
        cost_per_token_bytes=phys.cost_per_token_bytes,
        probe=phys.probe,
        upper_bound=phys.upper_bound,
        messages=tuple(messages),
        **verdict,
    )


def plan_vllm(
    source: PhysicsEntry | Theory | Physics,
    *,
    total_bytes: int,
    ctx: int | None = None,
    budget_bytes: float | None = None,
    used_by_others_bytes: int = 0,
    margin: float = 0.05,
    engine: str = "vllm",
    model: str | None = None,
    device: str | None = None,
    max_util: float = MAX_UTIL,
) -> Plan:
    """Forward (ctx -> utilization) or inverse (budget -> longest context) plan for vLLM.

    Forward: `utilization = required/total + margin`, rounded up; refused when it passes
    `max_util` or when `utilization x total` exceeds the free memory
    (`total - used_by_others`). Inverse: the longest context the budget holds,
    `floor((budget - base) / cost)` (the budget is the model's memory; the margin is added on
    top, in the utilization of the forward plan for that context).
    """
    if (ctx is None) == (budget_bytes is None):
        raise ValueError("give exactly one of ctx and budget_bytes")
    if ctx is not None and ctx <= 0:
        raise ValueError(f"ctx must be > 0, got {ctx}")
    _check_device(total_bytes, used_by_others_bytes, margin)
    phys = _as_physics(source)
    base, cost = phys.base_bytes, phys.cost_per_token_bytes
    free = total_bytes - used_by_others_bytes
    messages = list(phys.messages)
    ceiling = min(free, max_util * total_bytes)
    longest = max_context(ceiling - margin * total_bytes, base, cost)

    if budget_bytes is not None:
        inverse_ctx = max_context(budget_bytes, base, cost)
        if budget_bytes > free:
            messages.append(
                f"the budget {_gib(budget_bytes)} is more than the {_gib(free)} free "
                f"({_gib(used_by_others_bytes)} used by other processes)"
            )
        if inverse_ctx == 0:
            messages.append(
                f"refused: the budget {_gib(budget_bytes)} does not even hold the base {_gib(base)}"
            )
            return _plan(
                phys,
                engine,
                model,
                device,
                total_bytes,
                used_by_others_bytes,
                margin,
                messages,
                ctx=None,
                required_bytes=None,
                gpu_memory_utilization=None,
                kv_cache_memory_bytes=None,
                max_context=0,
                fits=False,
            )
        ctx, longest = inverse_ctx, inverse_ctx
        messages.append(f"the budget {_gib(budget_bytes)} holds up to {inverse_ctx} tokens")

    assert ctx is not None
    req = required_bytes(base, cost, ctx)
    raw = req / total_bytes + margin
    util = vllm_utilization(req, total_bytes, margin, max_util=max_util)
    fits = True
    if raw > max_util:
        fits = False
        messages.append(
            f"refused: ctx {ctx} needs {_gib(req)} + margin = {raw:.3f} of the device, above "
            f"the {max_util} cap"
        )
    elif util * total_bytes > free:
        fits = False
        messages.append(
            f"refused: vLLM would reserve {util:.3f} x {_gib(total_bytes)} = "
            f"{_gib(util * total_bytes)}, but only {_gib(free)} is free "
            f"({_gib(used_by_others_bytes)} used by other processes)"
        )
    if fits and budget_bytes is None:
        messages.append(f"up to {longest} tokens would fit in the memory free now")
    kv_ctx = math.ceil(ctx / VLLM_BLOCK_TOKENS) * VLLM_BLOCK_TOKENS
    return _plan(
        phys,
        engine,
        model,
        device,
        total_bytes,
        used_by_others_bytes,
        margin,
        messages,
        ctx=ctx,
        required_bytes=req,
        gpu_memory_utilization=util,
        kv_cache_memory_bytes=math.ceil(kv_ctx * cost),
        max_context=longest,
        fits=fits,
    )


def plan_ollama(
    source: PhysicsEntry | Theory | Physics,
    *,
    total_bytes: int,
    ctx: int | None = None,
    budget_bytes: float | None = None,
    used_by_others_bytes: int = 0,
    margin: float = 0.05,
    engine: str = "ollama",
    model: str | None = None,
    device: str | None = None,
) -> Plan:
    """Guardrail for engines that allocate what they need (Ollama, llama.cpp).

    `fits` = required + margin x total <= free; `max_context` = the longest context that fits
    in the free memory (or in `budget_bytes`, when smaller). Without `ctx`, fits says whether
    any context fits.
    """
    _check_device(total_bytes, used_by_others_bytes, margin)
    phys = _as_physics(source)
    base, cost = phys.base_bytes, phys.cost_per_token_bytes
    free = total_bytes - used_by_others_bytes
    room = free if budget_bytes is None else min(free, budget_bytes)
    longest = max_context(room - margin * total_bytes, base, cost)
    messages = list(phys.messages)
    if ctx is None:
        ctx = longest or None
        fits = longest > 0
        req = required_bytes(base, cost, ctx) if ctx is not None else None
        if not fits:
            messages.append(f"refused: the base {_gib(base)} + margin does not fit in {_gib(room)}")
    else:
        req = required_bytes(base, cost, ctx)
        fits = req + margin * total_bytes <= room
        if not fits:
            messages.append(
                f"refused: ctx {ctx} needs {_gib(req)} + margin {_gib(margin * total_bytes)}, "
                f"but only {_gib(room)} is available "
                f"({_gib(used_by_others_bytes)} used by other processes)"
            )
    messages.append(f"up to {longest} tokens fit in {_gib(room)}")
    return _plan(
        phys,
        engine,
        model,
        device,
        total_bytes,
        used_by_others_bytes,
        margin,
        messages,
        ctx=ctx,
        required_bytes=req,
        gpu_memory_utilization=None,
        kv_cache_memory_bytes=None,
        max_context=longest,
        fits=fits,
    )


# --------------------------------------------------------------------------- command lines


def _format_util(util: float) -> str:
    return f"{util:.3f}".rstrip("0").rstrip(".")


def _vllm_args(plan: Plan, kv_cache_bytes: bool) -> list[str]:
    if plan.ctx is None or plan.gpu_memory_utilization is None:
        raise ValueError("this plan has no context to serve (it was refused)")
    args = ["--max-model-len", str(plan.ctx)]
    if kv_cache_bytes:
        if plan.kv_cache_memory_bytes is None:
            raise ValueError("this plan has no KV-cache size")
        args += ["--kv-cache-memory-bytes", str(plan.kv_cache_memory_bytes)]
    else:
        args += ["--gpu-memory-utilization", _format_util(plan.gpu_memory_utilization)]
    return args


def vllm_command(
    plan: Plan,
    model: str,
    port: int = 8000,
    extra: Sequence[str] = (),
    kv_cache_bytes: bool = False,
) -> list[str]:
    """`vllm serve MODEL --max-model-len N --gpu-memory-utilization U` as an argument list.

    With `kv_cache_bytes`, `--kv-cache-memory-bytes B` replaces the utilization (newer vLLM).
    """
    return ["vllm", "serve", model, *_vllm_args(plan, kv_cache_bytes), "--port", str(port), *extra]


def docker_command(
    plan: Plan,
    model: str,
    host_port: int = 8300,
    container_port: int = 8000,
    image: str = "vllm/vllm-openai:latest",
    hf_cache: str = "~/.cache/huggingface",
    extra: Sequence[str] = (),
    kv_cache_bytes: bool = False,
) -> list[str]:
    """The same plan as `docker run ... vllm/vllm-openai`, published on 127.0.0.1 only.

    `hf_cache` is used as given: expand `~` before running the list without a shell.
    """
    return [
        "docker",
        "run",
        "--gpus",
        "all",
        "-p",
        f"127.0.0.1:{host_port}:{container_port}",
        "--ipc=host",
        "-v",
        f"{hf_cache}:/root/.cache/huggingface",
        image,
        "--model",
        model,
        *_vllm_args(plan, kv_cache_bytes),
        *extra,
    ]


# --------------------------------------------------------------------------- report sheet


def plan_sheet_rows(
    entries: Iterable[PhysicsEntry],
    device_totals: Mapping[str, int],
    contexts: Sequence[int] = SHEET_CONTEXTS,
    margin: float = 0.05,
    utilization: float = SHEET_UTILIZATION,
    best_probe_only: bool = True,
) -> list[SheetRow]:
    """Per calibrated entry: the utilization for each context and the longest context at 90%.

    A device's total comes from `device_totals`, else from the entry; entries whose device
    total is unknown are left out. "Longest context at 90%" uses the same rule as the plans:
    `floor(((utilization - margin) x total - base) / cost)`.
    """
    entries = list(entries)
    if best_probe_only:
        keys = sorted({(e.engine, e.model, e.device) for e in entries})
        chosen = [select_physics(entries, *k) for k in keys]
        picked = [e for e in chosen if e is not None]
    else:
        picked = sorted(entries, key=lambda e: e.key)
    rows = []
    for e in picked:
        total = device_totals.get(e.device, e.device_total_bytes)
        if not total or e.cost_per_token_bytes <= 0:
            continue  # no device size, or an entry that is not physics (written by hand?)
        utils: list[tuple[int, float | None]] = []
        for c in contexts:
            req = required_bytes(e.base_bytes, e.cost_per_token_bytes, c)
            fits = req / total + margin <= MAX_UTIL
            utils.append((c, vllm_utilization(req, total, margin) if fits else None))
        rows.append(
            SheetRow(
                engine=e.engine,
                model=e.model,
                device=e.device,
                probe=e.probe,
                total_bytes=int(total),
                base_bytes=e.base_bytes,
                cost_per_token_bytes=e.cost_per_token_bytes,
                margin=margin,
                utilization=tuple(utils),
                max_context_at_90=max_context(
                    (utilization - margin) * total, e.base_bytes, e.cost_per_token_bytes
                ),
            )
        )
    return rows
