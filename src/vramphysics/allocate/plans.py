"""Smart allocation: the memory a context needs, the context a budget allows, and the verdict.

Pure functions over plain values; no I/O. Everything rests on one line,

    required_bytes(ctx) = base_bytes + ctx * cost_per_token_bytes,

measured by a calibration (`PhysicsEntry`, source "calibrated") or, when the device was never
calibrated, worked out from model metadata (`Theory`, source "theory": weights + KV cache only).

Two rules, one per kind of engine (`memory_kind`):
- preallocated (vLLM): the engine takes a fraction of the device's TOTAL memory up front
  (`--gpu-memory-utilization`), and memory other processes hold counts against that fraction,
  so a plan is refused when `utilization x total` exceeds what is free (`plan_preallocated`);
- on demand (Ollama, llama.cpp): the engine allocates what it needs, so the verdict is
  `required + margin x total <= free` (`plan_on_demand`).

A calibration is chosen by its memory settings too (`settings`: a tag like `kv=q8_0` or its
hash); a model calibrated with several settings is never planned from one picked silently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry, tag_matches
from vramphysics.theory import Theory

if TYPE_CHECKING:
    from vramphysics.probes import GpuInfo

MemoryKind = Literal["preallocated", "on_demand"]

GIB = 2**30
# Most direct first: vLLM's own KV figure, its log, then memory seen from outside.
PROBE_PREFERENCE: tuple[str, ...] = ("vllm-metrics", "vllm-log", "nvml", "ollama-ps", "process")
MIN_UTIL = 0.05
MAX_UTIL = 0.98
VLLM_BLOCK_TOKENS = 16  # vLLM's default KV block: a sequence occupies whole blocks
SHEET_CONTEXTS: tuple[int, ...] = (4096, 8192, 16384, 32768, 131072)
SHEET_UTILIZATION = 0.9
_PREALLOCATING_ENGINES = frozenset({"vllm"})


def memory_kind(engine: str) -> MemoryKind:
    """How an engine takes memory: `preallocated` (vLLM reserves utilization x total up front)
    or `on_demand` (Ollama, llama.cpp allocate what the context needs)."""
    return "preallocated" if engine in _PREALLOCATING_ENGINES else "on_demand"


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
    settings_tag: str | None = None  # the calibration's memory settings
    max_context_tokens: int | None = None  # the model's own limit (max position embeddings)


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
    settings_tag: str | None = None

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
    settings_tag: str = ""  # the calibration's memory settings

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["utilization"] = {str(c): u for c, u in self.utilization}
        return d


@dataclass(frozen=True)
class DeviceMemory:
    """The memory a start can use: the GPUs it is pinned to, the name physics is keyed by,
    and the total and free bytes that bind (the smallest GPU's)."""

    name: str
    total_bytes: int
    free_bytes: int
    gpu_indices: tuple[int, ...] = ()


def device_memory(
    visible: Sequence[GpuInfo],
    pinned: tuple[int, ...] | None,
    assume_free_bytes: int | None = None,
) -> DeviceMemory | None:
    """The device figures of a start pinned to `pinned` (None: every visible GPU; (): none).

    vLLM applies its utilization to each GPU's own total, so with several GPUs the smallest
    total (and the smallest free figure) binds; its name keys the physics. `assume_free_bytes`
    replaces the free figure (and stands in for the total without a GPU). None when nothing
    is known: no GPU figures and no assumption, or a pinned GPU that is not visible.
    """
    chosen = [g for g in visible if pinned is None or g.index in pinned]
    if pinned is not None and len(chosen) != len(set(pinned)):
        chosen = []  # a pinned GPU NVML does not show: its figures are unknown
    if not chosen:
        if assume_free_bytes is None:
            return None
        return DeviceMemory("cpu", assume_free_bytes, assume_free_bytes)
    binding = min(chosen, key=lambda g: (g.total_bytes, g.index))
    free = min(g.free_bytes for g in chosen)
    return DeviceMemory(
        name=binding.name,
        total_bytes=binding.total_bytes,
        free_bytes=free if assume_free_bytes is None else assume_free_bytes,
        gpu_indices=tuple(g.index for g in chosen),
    )


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
    figure (`plan_preallocated` refuses such a plan).
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


def _on_device(
    entries: Iterable[PhysicsEntry], engine: str, model: str, device: str
) -> list[PhysicsEntry]:
    return [e for e in entries if e.engine == engine and e.model == model and e.device == device]


def _best_probe(entries: Sequence[PhysicsEntry]) -> PhysicsEntry:
    def rank(e: PhysicsEntry) -> tuple[int, float]:
        order = PROBE_PREFERENCE.index(e.probe) if e.probe in PROBE_PREFERENCE else 99
        return (order, -(e.r2 if e.r2 is not None else -1.0))

    return min(entries, key=rank)


def select_physics(
    entries: Iterable[PhysicsEntry],
    engine: str,
    model: str,
    device: str,
    settings: str | None = None,
) -> PhysicsEntry | None:
    """The calibration of this engine and model on THIS device, best probe first; else None.

    `settings` narrows to the calibrations whose settings tag matches (a full tag, `#hash`, or
    parts like `kv=q8_0`); None takes any settings (prefer `resolve_physics`, which refuses to
    choose between different settings). An entry measured on another device is never returned.
    """
    own = _on_device(entries, engine, model, device)
    if settings is not None:
        own = [e for e in own if tag_matches(e.settings_tag, settings)]
    return _best_probe(own) if own else None


def calibrated_devices(entries: Iterable[PhysicsEntry], engine: str, model: str) -> list[str]:
    """The devices this engine and model were calibrated on."""
    return sorted({e.device for e in entries if e.engine == engine and e.model == model})


def settings_tags(
    entries: Iterable[PhysicsEntry], engine: str, model: str, device: str
) -> list[str]:
    """The settings tags this engine and model were calibrated with on `device`."""
    return sorted({e.settings_tag for e in _on_device(entries, engine, model, device)})


def physics_from_entry(entry: PhysicsEntry) -> Physics:
    max_tokens = entry.theory.get("max_context_tokens")
    return Physics(
        source="calibrated",
        base_bytes=float(entry.base_bytes),
        cost_per_token_bytes=float(entry.cost_per_token_bytes),
        engine=entry.engine,
        model=entry.model,
        device=entry.device,
        probe=entry.probe,
        settings_tag=entry.settings_tag,
        max_context_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
        messages=(
            f"calibrated on {entry.device} with settings {entry.settings_tag} ({entry.probe}, "
            f"{entry.n_points} points"
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
        max_context_tokens=theory.max_context_tokens,
        messages=tuple(messages),
    )


def _choose_entry(
    own: Sequence[PhysicsEntry], engine: str, model: str, device: str, settings: str | None
) -> tuple[PhysicsEntry | None, str]:
    """The entry to plan from, or None and why none (an error when settings are ambiguous)."""
    tags = sorted({e.settings_tag for e in own})
    if not own:
        return None, f"{engine} / {model} was never calibrated on {device}"
    if settings is not None:
        matching = [e for e in own if tag_matches(e.settings_tag, settings)]
        if not matching:
            return None, (
                f"no calibration of {engine} / {model} on {device} has settings {settings!r} "
                f"(calibrated with: {'; '.join(tags)})"
            )
        found = sorted({e.settings_tag for e in matching})
        if len(found) > 1:
            raise ConfigError(
                f"settings {settings!r} match {len(found)} calibrations of {engine} / {model} "
                f"on {device}: {'; '.join(found)}; name one by more settings or its #hash"
            )
        return _best_probe(matching), ""
    if len(tags) > 1:
        raise ConfigError(
            f"{engine} / {model} was calibrated on {device} with {len(tags)} different "
            f"settings: {'; '.join(tags)}; choose one (e.g. --settings kv=q8_0 or its #hash)"
        )
    return _best_probe(own), ""


def resolve_physics(
    entries: Iterable[PhysicsEntry],
    engine: str,
    model: str,
    device: str,
    theory: Theory | None = None,
    settings: str | None = None,
) -> Physics:
    """Calibrated physics for this device and settings when there is some; else theory, saying
    why. Several calibrations with different settings and no `settings` is a ConfigError that
    lists their tags: the plan never picks one silently."""
    entries = list(entries)
    entry, why_not = _choose_entry(
        _on_device(entries, engine, model, device), engine, model, device, settings
    )
    if entry is not None:
        phys = physics_from_entry(entry)
        if phys.max_context_tokens is None and theory is not None:
            phys = dataclasses.replace(phys, max_context_tokens=theory.max_context_tokens)
        return phys
    others = [d for d in calibrated_devices(entries, engine, model) if d != device]
    if others and not _on_device(entries, engine, model, device):
        why_not = f"calibrated on {', '.join(others)}, not {device}"
    if theory is None:
        raise ConfigError(
            why_not
            + ": give the model's metadata (HF config, GGUF or Ollama show) for a theory estimate"
        )
    physics = physics_from_theory(theory)
    return dataclasses.replace(
        physics,
        engine=engine,
        model=model,
        device=device,
        messages=(why_not + "; using theory", *physics.messages),
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
        raise ConfigError(f"the device total must be > 0 bytes, got {total_bytes}")
    if used_by_others_bytes < 0:
        raise ConfigError(f"memory used by others must be >= 0 bytes, got {used_by_others_bytes}")
    if not 0 <= margin < 1:
        raise ConfigError(f"the margin must be in [0, 1), got {margin}")


def _check_physics(phys: Physics) -> None:
    """Figures no plan can be made from are a ConfigError naming where they came from."""
    cost = phys.cost_per_token_bytes
    if not (math.isfinite(cost) and cost > 0) or not math.isfinite(phys.base_bytes):
        where = (
            f"the calibration of {phys.engine} / {phys.model} on {phys.device} "
            f"({phys.settings_tag}, {phys.probe})"
            if phys.source == "calibrated"
            else f"the {phys.source} physics"
        )
        raise ConfigError(
            f"{where} has base {phys.base_bytes} bytes and cost {cost} bytes per token: "
            "the cost per token must be a number > 0 (memory must grow with the context)"
        )


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
        settings_tag=phys.settings_tag,
        messages=tuple(messages),
        **verdict,
    )


def _cap_at_model(longest: int, phys: Physics, messages: list[str]) -> int:
    """The model's own maximum context bounds every context a plan names; say so when it does."""
    limit = phys.max_context_tokens
    if limit is not None and longest > limit:
        messages.append(
            f"capped at the model's maximum context of {limit} tokens "
            f"(max position embeddings); memory alone would hold {longest}"
        )
        return limit
    return longest


def _preallocated_verdict(
    base: float, cost: float, ctx: int, total: int, free: int, margin: float, max_util: float
) -> tuple[float, float, str | None]:
    """(raw utilization, rounded utilization, why refused or None) of the forward rule."""
    req = required_bytes(base, cost, ctx)
    raw = req / total + margin
    util = vllm_utilization(req, total, margin, max_util=max_util)
    if raw > max_util:
        return (
            raw,
            util,
            (
                f"refused: ctx {ctx} needs {_gib(req)} + margin = {raw:.3f} of the device, above "
                f"the {max_util} cap"
            ),
        )
    if util * total > free:
        return (
            raw,
            util,
            (
                f"refused: vLLM would reserve {util:.3f} x {_gib(total)} = {_gib(util * total)}, "
                f"but only {_gib(free)} is free ({_gib(total - free)} used by other processes)"
            ),
        )
    return raw, util, None


def longest_preallocated(
    base: float, cost: float, total: int, free: int, margin: float, max_util: float = MAX_UTIL
) -> int:
    """The longest context the forward rule accepts, with its utilization ROUNDED as printed.

    The rounded utilization must stay within `max_util` and within the free memory, so the
    budget is the largest 3-decimal utilization both allow, less the margin.
    """
    cap = min(max_util, free / total)
    util_cap = math.floor(round(cap * 1000, 6)) / 1000
    if util_cap < MIN_UTIL:
        return 0
    ctx = max_context((util_cap - margin) * total, base, cost)
    while ctx > 0 and _preallocated_verdict(base, cost, ctx, total, free, margin, max_util)[2]:
        ctx -= 1  # float noise at the boundary: step down to a context the check accepts
    return ctx


def plan_preallocated(
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
    """Forward (ctx -> utilization) or inverse (budget -> longest context) plan for an engine
    that reserves `utilization x total` up front (vLLM).

    Forward: `utilization = required/total + margin`, rounded up; refused when it passes
    `max_util` or when `utilization x total` exceeds the free memory (`total - used_by_others`).
    Inverse: the longest context the budget holds, `floor((budget - base) / cost)`, no longer
    than what the forward rule accepts on this device nor the model's own maximum, so the
    context it names always passes the forward check with the utilization it prints.
    """
    if (ctx is None) == (budget_bytes is None):
        raise ValueError("give exactly one of ctx and budget_bytes")
    if ctx is not None and ctx <= 0:
        raise ConfigError(f"the context must be > 0 tokens, got {ctx}")
    _check_device(total_bytes, used_by_others_bytes, margin)
    phys = _as_physics(source)
    _check_physics(phys)
    base, cost = phys.base_bytes, phys.cost_per_token_bytes
    free = total_bytes - used_by_others_bytes
    messages = list(phys.messages)
    longest = longest_preallocated(base, cost, total_bytes, free, margin, max_util)
    longest = _cap_at_model(longest, phys, messages)

    if budget_bytes is not None:
        inverse_ctx = max_context(budget_bytes, base, cost)
        if phys.max_context_tokens is not None:
            inverse_ctx = min(inverse_ctx, phys.max_context_tokens)
        if inverse_ctx > longest:
            messages.append(
                f"the budget {_gib(budget_bytes)} would hold {inverse_ctx} tokens, but with the "
                f"margin only {longest} fit in the {_gib(free)} free "
                f"({_gib(used_by_others_bytes)} used by other processes)"
            )
            inverse_ctx = longest
        if inverse_ctx == 0:
            messages.append(
                f"refused: the budget {_gib(budget_bytes)} and the {_gib(free)} free do not "
                f"hold the base {_gib(base)} and a context"
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
    _raw, util, refused = _preallocated_verdict(
        base, cost, ctx, total_bytes, free, margin, max_util
    )
    if refused:
        messages.append(refused)
    if phys.max_context_tokens is not None and ctx > phys.max_context_tokens:
        messages.append(
            f"ctx {ctx} is beyond the model's maximum context of {phys.max_context_tokens} "
            "tokens (vLLM refuses a --max-model-len above it)"
        )
        refused = refused or "beyond the model's maximum"
    if not refused and budget_bytes is None:
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
        fits=refused is None,
    )


def plan_on_demand(
    source: PhysicsEntry | Theory | Physics,
    *,
    total_bytes: int,
    ctx: int | None = None,
    budget_bytes: float | None = None,
    used_by_others_bytes: int = 0,
    margin: float = 0.05,
    engine: str = "llamacpp",
    model: str | None = None,
    device: str | None = None,
) -> Plan:
    """Verdict for engines that allocate what they need (Ollama, llama.cpp).

    `fits` = required + margin x total <= free; `max_context` = the longest context that fits
    in the free memory (or in `budget_bytes`, when smaller), no longer than the model's own
    maximum. Without `ctx`, fits says whether any context fits.
    """
    _check_device(total_bytes, used_by_others_bytes, margin)
    if ctx is not None and ctx <= 0:
        raise ConfigError(f"the context must be > 0 tokens, got {ctx}")
    phys = _as_physics(source)
    _check_physics(phys)
    base, cost = phys.base_bytes, phys.cost_per_token_bytes
    free = total_bytes - used_by_others_bytes
    room = free if budget_bytes is None else min(free, budget_bytes)
    messages = list(phys.messages)

    def passes(c: int) -> bool:
        return required_bytes(base, cost, c) + margin * total_bytes <= room

    longest = max_context(room - margin * total_bytes, base, cost)
    while longest > 0 and not passes(longest):
        longest -= 1  # float noise at the boundary
    longest = _cap_at_model(longest, phys, messages)
    if ctx is None:
        ctx = longest or None
        fits = longest > 0
        req = required_bytes(base, cost, ctx) if ctx is not None else None
        if not fits:
            messages.append(f"refused: the base {_gib(base)} + margin does not fit in {_gib(room)}")
    else:
        req = required_bytes(base, cost, ctx)
        fits = passes(ctx)
        if not fits:
            messages.append(
                f"refused: ctx {ctx} needs {_gib(req)} + margin {_gib(margin * total_bytes)}, "
                f"but only {_gib(room)} is available "
                f"({_gib(used_by_others_bytes)} used by other processes)"
            )
        if phys.max_context_tokens is not None and ctx > phys.max_context_tokens:
            messages.append(
                f"ctx {ctx} is beyond the model's maximum context of {phys.max_context_tokens} "
                "tokens: the engine may accept it, but the model was not trained for it"
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


def plan_for(
    source: PhysicsEntry | Theory | Physics,
    *,
    engine: str,
    total_bytes: int,
    ctx: int | None = None,
    budget_bytes: float | None = None,
    used_by_others_bytes: int = 0,
    margin: float = 0.05,
    model: str | None = None,
    device: str | None = None,
) -> Plan:
    """The plan by the engine's memory kind: `plan_preallocated` or `plan_on_demand`."""
    common: dict[str, Any] = dict(
        total_bytes=total_bytes,
        ctx=ctx,
        budget_bytes=budget_bytes,
        used_by_others_bytes=used_by_others_bytes,
        margin=margin,
        engine=engine,
        model=model,
        device=device,
    )
    if memory_kind(engine) == "preallocated":
        return plan_preallocated(source, **common)
    return plan_on_demand(source, **common)


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
    """Per calibrated entry (one per settings): the utilization for each context and the
    longest context at 90%.

    A device's total comes from `device_totals`, else from the entry; entries whose device
    total is unknown are left out. "Longest context at 90%" uses the same rule as the plans:
    `floor(((utilization - margin) x total - base) / cost)`.
    """
    entries = list(entries)
    if best_probe_only:  # one row per engine, model, device and settings
        keys = sorted({(e.engine, e.model, e.device, e.settings_tag) for e in entries})
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
                settings_tag=e.settings_tag,
            )
        )
    return rows
