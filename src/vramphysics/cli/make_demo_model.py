"""`make-demo-model`: tiny random models (a GGUF, an HF folder, a vision-language HF folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vramphysics.cli.options import add_common
from vramphysics.errors import VramPhysicsError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_demo = sub.add_parser("make-demo-model", help="generate tiny random models for the demo")
    p_demo.add_argument("--gguf", metavar="FILE", help="write a tiny llama GGUF here")
    p_demo.add_argument("--hf", metavar="DIR", help="write a tiny HF model folder here")
    p_demo.add_argument(
        "--vlm",
        metavar="DIR",
        help="write a tiny vision-language model (Idefics3, as vLLM's CPU build serves) here",
    )
    p_demo.add_argument(
        "--sliding-window",
        type=int,
        metavar="TOKENS",
        help="with --gguf: a Gemma 2 model whose every other layer attends to this window "
        "(llama.cpp keeps two KV caches for it)",
    )
    add_common(p_demo)
    p_demo.set_defaults(func=cmd_make_demo_model)


def cmd_make_demo_model(args: argparse.Namespace) -> int:
    from vramphysics.demo_models import write_tiny_gguf

    if args.gguf:
        path = write_tiny_gguf(Path(args.gguf), sliding_window=args.sliding_window)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.hf:
        from vramphysics.demo_models import write_tiny_hf

        folder = write_tiny_hf(Path(args.hf))
        print(f"wrote {folder}")
    if args.vlm:
        from vramphysics.demo_vlm import write_tiny_vlm

        folder = write_tiny_vlm(Path(args.vlm))
        print(f"wrote {folder}")
    if not args.gguf and not args.hf and not args.vlm:
        raise VramPhysicsError("make-demo-model: give --gguf FILE, --hf DIR and/or --vlm DIR")
    return 0
