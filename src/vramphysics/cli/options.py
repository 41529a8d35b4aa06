"""Options more than one command takes."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def add_model_metadata(p: argparse.ArgumentParser, *, required: bool) -> None:
    """The model's metadata file (HF config, GGUF or Ollama's show) and the memory settings
    a theory is worked out with."""
    from vramphysics.theory import KV_DTYPES

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
