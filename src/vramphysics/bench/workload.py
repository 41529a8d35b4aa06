"""The benchmark grid of one model at one context: which cells to run, and what was adjusted.

A cell is (prompt tokens, concurrency) at the benchmark context; its ID reads
`p{prompt}-o{output}-c{concurrency}` (`-warm` for `#warm`). Prompt lengths come from
`bench.prompt_tokens` and `bench.depth` x context, clipped so that the prompt and the output fit
in the context; concurrency levels above what the engine serves at once are held to its limit.
Every adjustment is said in the cell's `note`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramphysics.bench.media import MediaSpec
from vramphysics.config import BenchConfig


@dataclass(frozen=True)
class CellPlan:
    cell: str
    prompt_tokens: int
    output_tokens: int
    concurrency: int
    warm: bool
    note: str = ""
    media: MediaSpec | None = None  # what each request carries beside the text


@dataclass(frozen=True)
class Grid:
    """Overrides of `bench:` for one call (`bench --prompt-tokens ...`); None keeps the config."""

    prompt_tokens: Sequence[int] | None = None
    output_tokens: int | None = None
    repetitions: int | None = None
    concurrency: Sequence[int] | None = None

    def apply(self, cfg: BenchConfig) -> BenchConfig:
        update: dict[str, object] = {}
        if self.prompt_tokens is not None:
            update.update(prompt_tokens=sorted(set(self.prompt_tokens)), depth=[])
        if self.output_tokens is not None:
            update["output_tokens"] = self.output_tokens
        if self.repetitions is not None:
            update["repetitions"] = self.repetitions
        if self.concurrency is not None:
            update["concurrency"] = sorted(set(self.concurrency))
        return BenchConfig.model_validate({**cfg.model_dump(), **update})


def cell_id(
    prompt_tokens: int,
    output_tokens: int,
    concurrency: int,
    *,
    warm: bool,
    media: MediaSpec | None = None,
) -> str:
    media_part = media.suffix if media is not None else ""
    return f"p{prompt_tokens}-o{output_tokens}-c{concurrency}{media_part}" + (
        "-warm" if warm else ""
    )


def media_axis(cfg: BenchConfig) -> list[MediaSpec | None]:
    """Text only, then each `bench.images` and `bench.videos` entry."""
    out: list[MediaSpec | None] = [None]
    out += [MediaSpec("image", i.count, i.width, i.height) for i in cfg.images]
    out += [MediaSpec("video", v.count, v.width, v.height, v.frames, v.fps) for v in cfg.videos]
    return out


def _prompt_lengths(cfg: BenchConfig, ctx: int | None) -> list[tuple[int, str]]:
    """Each distinct prompt length with the note of how it was reached (clipped, depth)."""
    asked: list[tuple[int, str]] = [(n, "") for n in cfg.prompt_tokens]
    if ctx is not None:
        asked += [(max(1, round(d * ctx)), f"depth {d:g} of ctx {ctx}") for d in cfg.depth]
    room = None if ctx is None else ctx - cfg.output_tokens - 1
    out: dict[int, str] = {}
    for n, why in sorted(asked):
        if room is not None and n > room:
            clipped = f"{n} prompt tokens asked, clipped to {room}: ctx {ctx} holds the prompt "
            why = clipped + f"and {cfg.output_tokens} output tokens" + (f" ({why})" if why else "")
            n = room
        if n >= 1 and n not in out:
            out[n] = why
    return sorted(out.items())


def plan_cells(
    cfg: BenchConfig,
    ctx: int | None,
    *,
    max_concurrency: tuple[int | None, str] = (None, ""),
    warm: bool = False,
) -> list[CellPlan]:
    """The cells of one model at context `ctx` (None: unknown, nothing is clipped)."""
    limit, why = max_concurrency
    levels: dict[int, str] = {}
    for c in cfg.concurrency:
        if limit is not None and c > limit:
            levels.setdefault(limit, f"concurrency {c} asked, held to {limit}: {why}")
        else:
            levels.setdefault(c, "")
    cells = []
    for n, n_note in _prompt_lengths(cfg, ctx):
        for c, c_note in sorted(levels.items()):
            note = "; ".join(x for x in (n_note, c_note) if x)
            for media in media_axis(cfg):
                cells.append(
                    CellPlan(
                        cell=cell_id(n, cfg.output_tokens, c, warm=warm, media=media),
                        prompt_tokens=n,
                        output_tokens=cfg.output_tokens,
                        concurrency=c,
                        warm=warm,
                        note=note,
                        media=media,
                    )
                )
    return cells
