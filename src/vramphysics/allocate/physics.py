"""Calibrated or theory: the physics a plan is computed from, chosen by device and settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from vramphysics.allocate.records import Physics
from vramphysics.engines import registry
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry, tag_matches
from vramphysics.theory import Theory


def _on_device(
    entries: Iterable[PhysicsEntry], engine: str, model: str, device: str
) -> list[PhysicsEntry]:
    return [e for e in entries if e.engine == engine and e.model == model and e.device == device]


def _best_probe(entries: Sequence[PhysicsEntry]) -> PhysicsEntry:
    """The entry from the probe its engine prefers (its own figures before memory seen from
    outside), then the best r²."""

    def rank(e: PhysicsEntry) -> tuple[int, float]:
        probes = _preferred_probes(e.engine)
        order = probes.index(e.probe) if e.probe in probes else len(probes)
        return (order, -(e.r2 if e.r2 is not None else -1.0))

    return min(entries, key=rank)


def _preferred_probes(engine: str) -> tuple[str, ...]:
    """The engine's probes, best first (an engine no longer registered: none preferred)."""
    if engine not in registry.names():
        return ()
    return registry.get(engine).probes


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
        own = _with_settings(own, settings)
    return _best_probe(own) if own else None


def _with_settings(own: Sequence[PhysicsEntry], settings: str) -> list[PhysicsEntry]:
    """The entries calibrated with `settings`; if none, those whose settings were never
    recorded (written by hand), which stand in for any."""
    matching = [e for e in own if tag_matches(e.settings_tag, settings)]
    return matching or [e for e in own if not e.settings_known]


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
    """The entry to plan from, or None and why none (an error when settings are ambiguous).
    Entries written by hand (no settings recorded) do not count as other settings beside a
    calibration: they only stand in when nothing else matches."""
    known = [e for e in own if e.settings_known]
    tags = sorted({e.settings_tag for e in (known or own)})
    if not own:
        return None, f"{engine} / {model} was never calibrated on {device}"
    if settings is not None:
        matching = _with_settings(own, settings)
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
    return _best_probe(known or own), ""


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
