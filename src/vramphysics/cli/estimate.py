"""`estimate`: weights, KV cache per token and the total at a context, from one metadata file."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.allocate import format_bytes
from vramphysics.cli.options import add_common, add_model_metadata
from vramphysics.errors import ConfigError
from vramphysics.theory import Theory, load_theory
from vramphysics.theory.vision import (
    MediaTokens,
    image_tokens,
    parse_size,
    video_tokens,
)
from vramphysics.theory.vision_load import load_vision_processor
from vramphysics.theory.vision_weights import VisionWeights, vision_weights_from_safetensors


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_est = sub.add_parser(
        "estimate", help="weights, KV cache per token and the total at a context, from metadata"
    )
    add_model_metadata(p_est, required=True)
    p_est.add_argument("--ctx", type=int, metavar="N", help="context length for the total")
    p_est.add_argument("--json", action="store_true", help="print JSON")
    _add_vision_options(p_est)
    add_common(p_est)
    p_est.set_defaults(func=cmd_estimate)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Theory from one metadata file: weights, KV per token, the total at --ctx."""
    if args.ctx is not None and args.ctx <= 0:
        raise ConfigError(f"must be a positive number of tokens, got {args.ctx}", key="--ctx")
    if args.num_parallel < 1:
        raise ConfigError(f"must be >= 1, got {args.num_parallel}", key="--num-parallel")
    vision = _vision(args)  # the vision options are checked before the model is read
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
        doc.update(vision.to_dict())
        print(json.dumps(doc, indent=2))
        return 0
    print(_render(theory, args.ctx, n_seq, kv, total))
    for line in vision.lines():
        print(line)
    return 0


def _add_vision_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vision (with --hf-config of a vision-language model)")
    g.add_argument(
        "--preprocessor-config",
        metavar="FILE",
        type=Path,
        help="the image processor's settings (default: preprocessor_config.json beside the config)",
    )
    g.add_argument("--image", metavar="WxH", help="prompt tokens of one image, e.g. 1280x720")
    g.add_argument("--video", metavar="WxH", help="prompt tokens of one video of --frames")
    g.add_argument(
        "--frames", type=int, metavar="N", help="with --video: frames given to the model"
    )
    g.add_argument(
        "--fps", type=float, metavar="F", default=2.0, help="with --video: their rate (default 2)"
    )


@dataclass(frozen=True)
class _Vision:
    """What `estimate` says about the vision side: media tokens and the tower's weights."""

    image: MediaTokens | None = None
    video: MediaTokens | None = None
    weights: VisionWeights | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.image is not None:
            doc.update(image_tokens=self.image.tokens, image=self.image.to_dict())
        if self.video is not None:
            doc.update(video_tokens=self.video.tokens, video=self.video.to_dict())
        if self.weights is not None:
            doc["vision_weights"] = self.weights.to_dict()
        return doc

    def lines(self) -> list[str]:
        out = [_media_line(m) for m in (self.image, self.video) if m is not None]
        w = self.weights
        if w is not None:
            out.append(
                f"vision:   tower {format_bytes(w.vision_bytes)}, projector "
                f"{format_bytes(w.projector_bytes)}, language model "
                f"{format_bytes(w.language_bytes)} (as stored)"
            )
        notes = [n for m in (self.image, self.video) if m is not None for n in m.notes]
        out.extend(f"note:     {n}" for n in dict.fromkeys(notes))  # each once, in order
        return out


def _vision(args: argparse.Namespace) -> _Vision:
    """Media tokens for --image / --video and the vision tower's weights (HF configs only)."""
    wants_media = args.image is not None or args.video is not None
    if args.hf_config is None:
        if wants_media or args.preprocessor_config is not None:
            raise ConfigError(
                "needs --hf-config (a vision-language model's config.json)", key="--image"
            )
        return _Vision()
    if args.video is None and args.frames is not None:
        raise ConfigError("--frames goes with --video WxH", key="--frames")
    if args.video is not None and args.frames is None:
        raise ConfigError("give the number of frames with --frames N", key="--video")
    image = video = None
    if wants_media:
        proc = load_vision_processor(args.hf_config, args.preprocessor_config)
        if args.image is not None:
            image = image_tokens(proc, *parse_size(args.image, key="--image"))
        if args.video is not None:
            width, height = parse_size(args.video, key="--video")
            video = video_tokens(proc, width, height, args.frames, args.fps)
    path = Path(args.hf_config)
    weights = vision_weights_from_safetensors(path if path.is_dir() else path.parent)
    if weights is not None and weights.vision_tensors == 0:
        weights = None  # a text model: nothing to split
    return _Vision(image, video, weights)


def _media_line(m: MediaTokens) -> str:
    size = f"{m.width}x{m.height} -> {m.resized_width}x{m.resized_height}"
    what = f"{m.feature_tokens} features + {m.marker_tokens} markers"
    if m.kind == "video" and m.seconds:
        per_s = m.tokens_per_second or 0.0
        return (
            f"video:    {size}, {m.frames} frames over {m.seconds:g} s: {m.tokens} tokens "
            f"({what}; {per_s:.0f} per second)"
        )
    return f"image:    {size}: {m.tokens} tokens ({what})"


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
