"""`python -m vramphysics`: subcommands `run`, `estimate`, `plan`, `inspect-log`, `make-demo-model`.

Every error the package raises on purpose (a VramPhysicsError) is printed in one line and gives a
non-zero exit; a traceback is shown only with --debug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vramphysics.errors import Interrupted, VramPhysicsError
from vramphysics.redact import install_log_redaction

log = logging.getLogger("vramphysics")

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _cmd_make_demo_model(args: argparse.Namespace) -> int:
    from vramphysics.demo_models import write_tiny_gguf

    if args.gguf:
        path = write_tiny_gguf(Path(args.gguf), sliding_window=args.sliding_window)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.hf:
        from vramphysics.demo_models import write_tiny_hf

        folder = write_tiny_hf(Path(args.hf))
        print(f"wrote {folder}")
    if not args.gguf and not args.hf:
        raise VramPhysicsError("make-demo-model: give --gguf FILE and/or --hf DIR")
    return 0


def _cmd_inspect_log(args: argparse.Namespace) -> int:
    import json

    from vramphysics.engines.vllm_log import parse_log, parse_metrics, to_json_dict
    from vramphysics.errors import ConfigError

    try:
        text = args.file.read_text(encoding="utf-8", errors="replace")
        metrics = (
            parse_metrics(args.metrics.read_text(encoding="utf-8", errors="replace"))
            if args.metrics
            else None
        )
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=exc.filename) from exc
    facts = to_json_dict(parse_log(text, metrics=metrics))
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    for key, value in facts.items():
        if key == "failure" and value:
            assert isinstance(value, dict)
            value = f"{value['kind']}: {value['message']}" + (
                f" (max context {value['max_context']})" if value.get("max_context") else ""
            )
        print(f"{key:22} {'-' if value is None else value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vramphysics import runner

    parser = argparse.ArgumentParser(prog="vramphysics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="calibrate and benchmark the test setups (as runner.py)")
    runner.add_arguments(p_run)
    _add_common(p_run)
    p_run.set_defaults(func=runner.run_from_args)

    p_demo = sub.add_parser("make-demo-model", help="generate tiny random models for the demo")
    p_demo.add_argument("--gguf", metavar="FILE", help="write a tiny llama GGUF here")
    p_demo.add_argument("--hf", metavar="DIR", help="write a tiny HF model folder here")
    p_demo.add_argument(
        "--sliding-window",
        type=int,
        metavar="TOKENS",
        help="with --gguf: a Gemma 2 model whose every other layer attends to this window "
        "(llama.cpp keeps two KV caches for it)",
    )
    _add_common(p_demo)
    p_demo.set_defaults(func=_cmd_make_demo_model)

    _add_analysis_commands(sub)
    return parser


def _add_analysis_commands(sub: argparse._SubParsersAction) -> None:
    """`estimate`, `plan` and `inspect-log`: read files, print figures, start nothing."""
    from vramphysics.physics_db import DB_FILENAME
    from vramphysics.setups import ENGINES
    from vramphysics.theory import KV_DTYPES

    def add_model_metadata(p: argparse.ArgumentParser, *, required: bool) -> None:
        src = p.add_mutually_exclusive_group(required=required)
        src.add_argument(
            "--hf-config",
            metavar="FILE",
            type=Path,
            help="HF config.json (or its folder); weights from the *.safetensors beside it",
        )
        src.add_argument("--gguf", metavar="FILE", type=Path, help="GGUF model file")
        src.add_argument(
            "--ollama-show", metavar="FILE", type=Path, help="saved answer of Ollama's /api/show"
        )
        p.add_argument(
            "--kv-dtype",
            default="auto",
            metavar="T",
            help=f"KV-cache dtype, one of {', '.join(KV_DTYPES)} (default: auto, the model's)",
        )
        p.add_argument(
            "--dtype",
            default="auto",
            metavar="T",
            help="vLLM's --dtype for an HF config (default: auto, which serves a float32 "
            "checkpoint in 16 bits)",
        )
        p.add_argument(
            "--num-parallel",
            type=int,
            default=1,
            metavar="N",
            help="sequences cached at once (Ollama's OLLAMA_NUM_PARALLEL; default 1)",
        )

    p_est = sub.add_parser(
        "estimate", help="weights, KV cache per token and the total at a context, from metadata"
    )
    add_model_metadata(p_est, required=True)
    p_est.add_argument("--ctx", type=int, metavar="N", help="context length for the total")
    p_est.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p_est)
    p_est.set_defaults(func=_cmd_estimate)

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
        choices=ENGINES,
        help="the engine: vllm reserves memory up front, ollama and llamacpp on demand",
    )
    p_plan.add_argument("--model", required=True, metavar="ID", help="model ID as calibrated")
    p_plan.add_argument("--device", required=True, metavar="NAME", help="GPU name as calibrated")
    p_plan.add_argument(
        "--settings",
        metavar="TAG",
        help="the calibration's memory settings, when the model was calibrated with several: "
        "parts of its tag (kv=q8_0 or kv=q8_0,np=1), its #hash, or the whole tag",
    )
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
    add_model_metadata(p_plan, required=False)
    p_plan.add_argument(
        "--kv-cache-bytes",
        action="store_true",
        help="vLLM command with --kv-cache-memory-bytes instead of --gpu-memory-utilization",
    )
    p_plan.add_argument("--port", type=int, default=8000, help="port in the vLLM command")
    p_plan.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p_plan)
    p_plan.set_defaults(func=_cmd_plan)

    p_log = sub.add_parser(
        "inspect-log", help="an engine's own memory figures and failure kind, from its log"
    )
    p_log.add_argument("--engine", required=True, choices=["vllm"], help="engine that wrote it")
    p_log.add_argument("file", type=Path, metavar="FILE", help="the server log")
    p_log.add_argument(
        "--metrics", type=Path, metavar="FILE", help="a saved /metrics page of the same server"
    )
    p_log.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p_log)
    p_log.set_defaults(func=_cmd_inspect_log)


def _cmd_estimate(args: argparse.Namespace) -> int:
    """Theory from one metadata file: weights, KV per token, the total at --ctx."""
    import json

    from vramphysics.allocate import format_bytes
    from vramphysics.errors import ConfigError
    from vramphysics.theory import load_theory

    if args.ctx is not None and args.ctx <= 0:
        raise ConfigError(f"must be a positive number of tokens, got {args.ctx}", key="--ctx")
    if args.num_parallel < 1:
        raise ConfigError(f"must be >= 1, got {args.num_parallel}", key="--num-parallel")
    theory = load_theory(
        hf_config=args.hf_config,
        gguf=args.gguf,
        ollama_show=args.ollama_show,
        kv_dtype=args.kv_dtype,
        num_parallel=args.num_parallel,
        dtype=args.dtype,
    )
    n_seq = args.num_parallel
    kv = theory.kv_bytes(args.ctx, n_seq) if args.ctx is not None else None
    total = theory.total_bytes(args.ctx, n_seq) if args.ctx is not None else None
    if args.json:
        doc = theory.to_dict()
        doc.update(ctx=args.ctx, n_seq=n_seq, kv_bytes=kv, total_bytes=total)
        print(json.dumps(doc, indent=2))
        return 0
    layout = (
        f"{theory.n_layers} layers x 1 latent of {theory.k_head_dim} values"
        if theory.attention == "mla"
        else f"{theory.n_layers} layers x {theory.n_kv_heads} KV heads x "
        f"({theory.k_head_dim} K + {theory.v_head_dim} V)"
    )
    print(f"model:    {theory.arch or 'unknown'} from {theory.source}, {theory.attention.upper()}")
    print(f"layout:   {layout}")
    bound = " (upper bound)" if theory.upper_bound else ""
    print(
        f"KV cache: {format_bytes(theory.kv_bytes_per_token)} per token per sequence{bound}, "
        f"{theory.kv_dtype} ({theory.kv_values_per_token} values)"
    )
    weights = "unknown" if theory.weights_bytes is None else format_bytes(theory.weights_bytes)
    print(f"weights:  {weights}")
    if args.ctx is not None and kv is not None:
        seqs = f" x {n_seq} sequences" if n_seq > 1 else ""
        line = f"at ctx {args.ctx}{seqs}: KV {format_bytes(kv)}"
        if total is not None:
            line += f", total {format_bytes(total)} (weights + KV, no engine overhead)"
        print(line)
    for note in theory.notes:
        print(f"note:     {note}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    """A plan for one engine, model, device and settings (see cli_plan)."""
    from vramphysics.cli_plan import cmd_plan

    return cmd_plan(args)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()  # every record is masked where it is made, whatever the handler
    for noisy in ("httpx", "httpcore", "gguf", "filelock", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def run_main(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a handler and turn our errors into one line and an exit code."""
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    try:
        return func(args)
    except Interrupted as exc:
        print(f"vramphysics: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except VramPhysicsError as exc:
        if debug:
            raise
        print(f"vramphysics: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("vramphysics: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 3
        if debug:
            raise
        log.debug("internal error", exc_info=True)
        print(
            f"vramphysics: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(args.func, args)
