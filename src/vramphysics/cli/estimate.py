"""`estimate`: weights, KV cache per token and the total at a context, from one metadata file."""

from __future__ import annotations

import argparse
import json

from vramphysics.allocate import format_bytes
from vramphysics.cli.options import add_common, add_model_metadata
from vramphysics.errors import ConfigError
from vramphysics.theory import Theory, load_theory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_est = sub.add_parser(
        "estimate", help="weights, KV cache per token and the total at a context, from metadata"
    )
    add_model_metadata(p_est, required=True)
    p_est.add_argument("--ctx", type=int, metavar="N", help="context length for the total")
    p_est.add_argument("--json", action="store_true", help="print JSON")
    add_common(p_est)
    p_est.set_defaults(func=cmd_estimate)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Theory from one metadata file: weights, KV per token, the total at --ctx."""
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
    print(_render(theory, args.ctx, n_seq, kv, total))
    return 0


def _render(
    theory: Theory, ctx: int | None, n_seq: int, kv: float | None, total: float | None
) -> str:
    layout = (
        f"{theory.n_layers} layers x 1 latent of {theory.k_head_dim} values"
        if theory.attention == "mla"
        else f"{theory.n_layers} layers x {theory.n_kv_heads} KV heads x "
        f"({theory.k_head_dim} K + {theory.v_head_dim} V)"
    )
    lines = [
        f"model:    {theory.arch or 'unknown'} from {theory.source}, {theory.attention.upper()}"
    ]
    lines.append(f"layout:   {layout}")
    bound = " (upper bound)" if theory.upper_bound else ""
    lines.append(
        f"KV cache: {format_bytes(theory.kv_bytes_per_token)} per token per sequence{bound}, "
        f"{theory.kv_dtype} ({theory.kv_values_per_token} values)"
    )
    weights = "unknown" if theory.weights_bytes is None else format_bytes(theory.weights_bytes)
    lines.append(f"weights:  {weights}")
    if ctx is not None and kv is not None:
        seqs = f" x {n_seq} sequences" if n_seq > 1 else ""
        line = f"at ctx {ctx}{seqs}: KV {format_bytes(kv)}"
        if total is not None:
            line += f", total {format_bytes(total)} (weights + KV, no engine overhead)"
        lines.append(line)
    lines.extend(f"note:     {note}" for note in theory.notes)
    return "\n".join(lines)
