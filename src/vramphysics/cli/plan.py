"""`python -m vramphysics plan`: a verdict for one engine, model, device and settings.

Parse -> typed call into `allocate` -> render. The calibration is chosen by its settings
(`--settings kv=q8_0`, or a tag's `#hash`); a model calibrated with several settings is never
planned from one picked silently. The rule follows the engine's memory kind: vLLM reserves
`utilization x total` up front, Ollama and llama.cpp allocate what they need.

A calibration measured with another engine version than the one installed here is planned from
all the same, with a warning; the installed version is a fact of the engine's advice
(`installed_engine_version`), and when the engine cannot tell it, plan says nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vramphysics import allocate, physics_db
from vramphysics.allocate import Physics, Plan, PlanDevice
from vramphysics.cli.options import add_common, add_model_metadata
from vramphysics.engines import registry
from vramphysics.engines.registry import Advice, AdviceRequest
from vramphysics.errors import ConfigError
from vramphysics.physics_db import DB_FILENAME
from vramphysics.theory import Theory, load_theory

GIB = allocate.GIB
# the fact an engine's advice gives for the version installed here, worded as its entries' engine
# version (`vllm 0.32.0`); absent or None when the engine cannot tell without starting
INSTALLED_VERSION_FACT = "installed_engine_version"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_plan = sub.add_parser(
        "plan", help="vLLM utilization / longest context / fit verdict from calibrated physics"
    )
    p_plan.add_argument(
        "--physics",
        type=Path,
        default=Path("calibration") / DB_FILENAME,
        metavar="FILE",
        help=f"physics database (default calibration/{DB_FILENAME})",
    )
    p_plan.add_argument(
        "--engine",
        required=True,
        choices=registry.names(),
        help="the engine (its memory rule: reserved up front, or taken on demand)",
    )
    p_plan.add_argument("--model", required=True, metavar="ID", help="model ID as calibrated")
    p_plan.add_argument("--device", required=True, metavar="NAME", help="GPU name as calibrated")
    p_plan.add_argument(
        "--settings",
        metavar="TAG",
        help="the calibration's memory settings, when the model was calibrated with several: "
        "parts of its tag (kv=q8_0 or kv=q8_0,np=1), its #hash, or the whole tag",
    )
    _add_device_and_target(p_plan)
    add_model_metadata(p_plan, required=False)
    p_plan.add_argument(
        "--kv-cache-bytes",
        action="store_true",
        help="vLLM command with --kv-cache-memory-bytes instead of --gpu-memory-utilization",
    )
    p_plan.add_argument("--port", type=int, default=8000, help="port in the vLLM command")
    p_plan.add_argument("--json", action="store_true", help="print JSON")
    add_common(p_plan)
    p_plan.set_defaults(func=cmd_plan)


def _add_device_and_target(p_plan: argparse.ArgumentParser) -> None:
    """The device's figures, the context or budget to plan, and the margin."""
    p_plan.add_argument(
        "--total-gib",
        type=float,
        metavar="G",
        help="device memory (default: from the calibration, else NVML)",
    )
    target = p_plan.add_mutually_exclusive_group(required=True)
    target.add_argument("--ctx", type=int, metavar="N", help="plan this context length")
    target.add_argument(
        "--budget-gib", type=float, metavar="B", help="longest context within this memory"
    )
    p_plan.add_argument(
        "--margin", type=float, default=0.05, help="safety margin, fraction of the device (0.05)"
    )
    p_plan.add_argument(
        "--used-gib",
        type=float,
        metavar="U",
        help="memory used by other processes (default: NVML's used memory, else 0)",
    )


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


def _device(args: argparse.Namespace, entry: physics_db.PhysicsEntry | None) -> PlanDevice:
    """Total and used memory: the flags, else the calibration's total, else NVML."""
    return allocate.resolve_device(
        args.device,
        total_bytes=round(args.total_gib * GIB) if args.total_gib is not None else None,
        used_bytes=round(args.used_gib * GIB) if args.used_gib is not None else None,
        calibrated_total_bytes=entry.device_total_bytes if entry is not None else None,
        total_key="--total-gib",
        used_key="--used-gib",
    )


def _advice(plan: Plan, args: argparse.Namespace) -> Advice:
    """What to type to serve the plan, worded by the engine."""
    request = AdviceRequest(model=args.model, port=args.port, kv_cache_bytes=args.kv_cache_bytes)
    return registry.get(args.engine).advice(plan, request)


def _known_version(version: object) -> str | None:
    """A version that names a release (`vllm 0.32.0`), not a placeholder such as `unknown`,
    `vllm (unknown)` or `llama-server`; None otherwise."""
    if not isinstance(version, str):
        return None
    text = version.strip()
    if not text or "(" in text or not any(ch.isdigit() for ch in text):
        return None
    return text


def version_warning(entry: physics_db.PhysicsEntry | None, advice: Advice) -> tuple[str, ...]:
    """A warning when the calibration was measured with another engine version than the one
    installed here; nothing when either version is not known."""
    if entry is None:
        return ()
    measured = _known_version(entry.engine_version)
    installed = _known_version(advice.facts.get(INSTALLED_VERSION_FACT))
    if measured is None or installed is None or measured == installed:
        return ()
    return (
        f"warning: this calibration was measured with {measured}, but {installed} is "
        "installed here: its memory figures may differ; recalibrate to be sure",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """A plan for one engine, model and device; exits 0 even when the plan is refused."""
    plan, entry = _make_plan(args)
    advice = _advice(plan, args)
    plan = allocate.with_messages(plan, version_warning(entry, advice) + advice.notes)
    if args.json:
        doc = plan.to_dict()
        doc.update({"command": None, **advice.commands, "advice": dict(advice.lines)})
        doc.update(advice.facts)
        print(json.dumps(doc, indent=2))
        return 0
    print(allocate.render_plan(plan, list(advice.lines)))
    return 0


def _make_plan(args: argparse.Namespace) -> tuple[Plan, physics_db.PhysicsEntry | None]:
    """The plan, with where its figures came from, and the calibration it used (None: theory)."""
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
    return allocate.with_messages(plan, device.messages), entry
