"""`python -m vramphysics plan`: a verdict for one engine, model, device and settings.

Parse -> typed call into `allocate` -> render. The calibration is chosen by its settings
(`--settings kv=q8_0`, or a tag's `#hash`); a model calibrated with several settings is never
planned from one picked silently. The rule follows the engine's memory kind: vLLM reserves
`utilization x total` up front, Ollama and llama.cpp allocate what they need.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from vramphysics import allocate, physics_db
from vramphysics.allocate import Physics, Plan
from vramphysics.errors import ConfigError
from vramphysics.theory import Theory, load_theory

GIB = allocate.GIB


@dataclass(frozen=True)
class _Device:
    total_bytes: int
    used_bytes: int
    messages: tuple[str, ...]


def _nvml_memory(device: str) -> tuple[tuple[int, int] | None, str]:
    """(total, used) of the GPU named `device`, and a sentence saying what NVML said."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable ({exc})"
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            raw = pynvml.nvmlDeviceGetName(handle)
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            names.append(name)
            if name == device:
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                total_b, used_b = int(mem.total), int(mem.used)
                return (total_b, used_b), (
                    f"NVML: GPU {i} ({name}) has {allocate.format_bytes(used_b)} of "
                    f"{allocate.format_bytes(total_b)} in use, counted as used by others"
                )
        return None, f"NVML: no GPU named {device!r} (found: {', '.join(names) or 'none'})"
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable ({exc})"
    finally:
        pynvml.nvmlShutdown()


def _check_args(args: argparse.Namespace) -> None:
    if args.total_gib is not None and not args.total_gib > 0:
        raise ConfigError(
            f"the device memory must be > 0 GiB, got {args.total_gib}", key="--total-gib"
        )
    if args.used_gib is not None and args.used_gib < 0:
        raise ConfigError(f"must be >= 0, got {args.used_gib}", key="--used-gib")
    if not 0 <= args.margin < 1:
        raise ConfigError(f"must be in [0, 1), got {args.margin}", key="--margin")
    if args.ctx is not None and args.ctx <= 0:
        raise ConfigError(f"must be a positive number of tokens, got {args.ctx}", key="--ctx")
    if args.budget_gib is not None and not args.budget_gib > 0:
        raise ConfigError(f"must be > 0 GiB, got {args.budget_gib}", key="--budget-gib")


def _theory(args: argparse.Namespace) -> Theory | None:
    if not (args.hf_config or args.gguf or args.ollama_show):
        return None
    return load_theory(
        hf_config=args.hf_config,
        gguf=args.gguf,
        ollama_show=args.ollama_show,
        kv_dtype=args.kv_dtype,
        num_parallel=args.num_parallel,
        dtype=args.dtype,
    )


def _physics(
    args: argparse.Namespace, entries: list[physics_db.PhysicsEntry], theory: Theory | None
) -> tuple[Physics, physics_db.PhysicsEntry | None]:
    """The physics to plan from and the calibration behind it (None: theory)."""
    try:
        physics = allocate.resolve_physics(
            entries, args.engine, args.model, args.device, theory, settings=args.settings
        )
    except ConfigError as exc:
        message = exc.message.replace(
            "give the model's metadata (HF config, GGUF or Ollama show)",
            "give --hf-config, --gguf or --ollama-show",
        )
        raise ConfigError(message, path=args.physics) from exc
    entry = None
    if physics.source == "calibrated":
        entry = allocate.select_physics(
            entries, args.engine, args.model, args.device, settings=physics.settings_tag
        )
    return physics, entry


def _device(args: argparse.Namespace, entry: physics_db.PhysicsEntry | None) -> _Device:
    """Total and used memory: the flags, else the calibration's total, else NVML."""
    messages: list[str] = []
    total = round(args.total_gib * GIB) if args.total_gib is not None else None
    if total is None and entry is not None and entry.device_total_bytes:
        total = int(entry.device_total_bytes)
        messages.append(f"device total {allocate.format_bytes(total)} from the calibration")
    used = round(args.used_gib * GIB) if args.used_gib is not None else None
    if total is None or used is None:
        nvml, said = _nvml_memory(args.device)
        messages.append(said)
        if nvml is not None:
            total = nvml[0] if total is None else total
            used = nvml[1] if used is None else used
    if total is None:
        raise ConfigError("the device's memory is unknown: give it", key="--total-gib")
    if used is None:
        used = 0
        messages.append("memory used by other processes unknown: taken as 0")
    if used > total:
        raise ConfigError(
            f"{allocate.format_bytes(used)} used by others is more than the device's "
            f"{allocate.format_bytes(total)}",
            key="--used-gib",
        )
    return _Device(total, used, tuple(messages))


def _vllm_commands(plan: Plan, args: argparse.Namespace) -> tuple[list[str], list[str]] | None:
    """`vllm serve ...` and `docker run ...` for a plan that fits; None otherwise."""
    if not plan.fits or plan.ctx is None or allocate.memory_kind(args.engine) != "preallocated":
        return None
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    command = allocate.vllm_command(
        plan, args.model, port=args.port, kv_cache_bytes=args.kv_cache_bytes
    )
    docker = allocate.docker_command(
        plan, args.model, hf_cache=hf_home, kv_cache_bytes=args.kv_cache_bytes
    )
    return command, docker


def _advice(plan: Plan, args: argparse.Namespace) -> list[tuple[str, str]]:
    """What to type to serve the plan, worded for the engine."""
    if not plan.fits or plan.ctx is None:
        return []
    commands = _vllm_commands(plan, args)
    if commands is not None:
        return [("command", shlex.join(commands[0])), ("docker", shlex.join(commands[1]))]
    if args.engine == "llamacpp":
        return [("llama-server", f"-c {plan.ctx} (llama-cpp-python's server: --n_ctx {plan.ctx})")]
    return [
        (
            "ollama",
            f"request option num_ctx={plan.ctx} (server default: OLLAMA_CONTEXT_LENGTH={plan.ctx})",
        )
    ]


def _vllm_flag_message() -> tuple[str, bool | None]:
    from vramphysics.engines.vllm import installed_flag_support

    version, supports = installed_flag_support()
    if version is None:
        return "no vLLM installed here: check `vllm serve --help` for --kv-cache-memory-bytes", None
    verb = "accepts" if supports else "does not accept"
    return f"the installed vLLM {version} {verb} --kv-cache-memory-bytes", supports


def _render(plan: Plan, advice: list[tuple[str, str]]) -> None:
    verdict = "FITS" if plan.fits else "REFUSED"
    print(f"{verdict}: {plan.engine} / {plan.model} on {plan.device} ({plan.source} physics)")
    if plan.settings_tag:
        print(f"settings: {plan.settings_tag}")
    print(
        f"device:   {allocate.format_bytes(plan.total_bytes)} total, "
        f"{allocate.format_bytes(plan.used_by_others_bytes)} used by others, "
        f"{allocate.format_bytes(plan.free_bytes)} free; margin {plan.margin:g}"
    )
    print(
        f"physics:  {allocate.format_bytes(plan.base_bytes)} + ctx x "
        f"{allocate.format_bytes(plan.cost_per_token_bytes)}"
    )
    if plan.ctx is not None and plan.required_bytes is not None:
        print(f"ctx {plan.ctx}: needs {allocate.format_bytes(plan.required_bytes)}")
    if plan.gpu_memory_utilization is not None:
        print(f"--gpu-memory-utilization {plan.gpu_memory_utilization:.3f}")
    if plan.max_context is not None:
        print(f"longest context: {plan.max_context} tokens")
    for message in plan.messages:
        print(f"- {message}")
    for label, text in advice:
        print(f"{label + ':':9} {text}")


def cmd_plan(args: argparse.Namespace) -> int:
    """A plan for one engine, model and device; exits 0 even when the plan is refused."""
    _check_args(args)
    entries = physics_db.load(args.physics)
    physics, entry = _physics(args, entries, _theory(args))
    device = _device(args, entry)
    try:
        plan = allocate.plan_for(
            physics,
            engine=args.engine,
            total_bytes=device.total_bytes,
            ctx=args.ctx,
            budget_bytes=args.budget_gib * GIB if args.budget_gib is not None else None,
            used_by_others_bytes=device.used_bytes,
            margin=args.margin,
            model=args.model,
            device=args.device,
        )
    except ConfigError as exc:  # figures no plan can be made from: name the file they are in
        raise ConfigError(exc.message, path=args.physics if entry else None) from exc
    plan = allocate.with_messages(plan, device.messages)
    supports: bool | None = None
    if allocate.memory_kind(args.engine) == "preallocated":
        said, supports = _vllm_flag_message()
        plan = allocate.with_messages(plan, [said])
    if args.json:
        commands = _vllm_commands(plan, args)
        doc = plan.to_dict()
        doc.update(
            command=commands[0] if commands else None,
            docker_command=commands[1] if commands else None,
            advice=dict(_advice(plan, args)),
            kv_cache_memory_bytes_supported=supports,
        )
        print(json.dumps(doc, indent=2))
        return 0
    _render(plan, _advice(plan, args))
    return 0
