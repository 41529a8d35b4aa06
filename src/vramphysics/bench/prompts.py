"""Benchmark prompts: real text of an exact token count, by the engine's own count.

Each prompt is a unique prefix ("71000 is request 00017 of cell p1024-o64-c1.") and then plain
English prose, cut to the length at which the engine counts exactly the tokens asked for (its
tokenizer, special tokens and chat template included: `Engine.count_prompt_tokens`). The length
is found once per cell, by a search on the number of characters, on a prefix no request uses
(Ollama counts by running the prompt, and its cache would then hold it). The prefix starts with
the request's index, digits reversed, so two requests in a row differ at their first token
(llama.cpp reuses the longest common prefix of the previous prompt; vLLM's cache hashes blocks
from the start), and all prefixes of a cell have the same shape, so every request of the cell has
the same count, give or take a token. `#warm` sends one prompt over and over, on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from vramphysics.errors import EngineError

log = logging.getLogger(__name__)

_PROSE = (
    "A language model keeps, for every token it has read, a key and a value in each attention "
    "layer, so that the next token can look back at all of them without reading the prompt "
    "again. This store is the cache, and it grows with the context: twice the tokens, twice the "
    "memory. The weights, on the other hand, are loaded once and do not change with the length "
    "of the conversation. When people ask whether a model fits on their card, they are really "
    "asking two questions at once: do the weights fit, and how many tokens of cache are left "
    "after them. Engines answer the second question in different ways. Some reserve the whole "
    "cache when they start, sized for the longest context they were told to serve; others grow "
    "it as requests arrive and free it when they finish. Some keep part of the cache in a "
    "smaller number format, which halves or quarters its size at a small cost in accuracy. "
    "Models with sliding-window layers keep only the most recent tokens in those layers, so "
    "their cache grows more slowly than a simple formula predicts. A careful measurement starts "
    "the engine at several context sizes, waits until its memory stops moving, and records what "
    "the device reports. A straight line through those points gives a fixed part and a cost per "
    "token, and the line is then checked against a context it has not seen. Speed is measured in "
    "the same spirit. The time to the first token is mostly the time it takes to read the "
    "prompt, so it grows with the prompt's length. The time per output token is set by how fast "
    "the engine can read its weights and cache for every new token, which is why it changes "
    "little with the prompt but a great deal with the size of the model and the width of the "
    "memory bus. Several requests served together share each pass over the weights, so the total "
    "output rate rises with concurrency while each request waits a little longer. None of these "
    "figures means much without the conditions under which it was taken: the device, its driver, "
    "the engine and its version, the number format of the cache, how many layers ran on the "
    "device, and what else was using the memory at the time. The farmer who plants in spring "
    "does not measure the harvest by the first green shoot, and an engineer should not judge an "
    "engine by a single short request either. Repeat the measurement, discard the first few "
    "runs, and report the middle of the distribution together with its tail, because the slow "
    "request is the one a user remembers. "
)


@dataclass(frozen=True)
class CellPrompts:
    """The prompts of one cell: `prompt(i)` is request i's; `tokens` what the engine counted
    for request 0's, `target` what was asked for."""

    cell: str
    body: str
    tokens: int
    target: int
    warm: bool

    def prompt(self, index: int) -> str:
        return prefix(self.cell, 0 if self.warm else index) + self.body


_COUNTED = 99_999  # the index of the prefix the length is found with: no request has it


def prefix(cell: str, index: int) -> str:
    return f"{f'{index:05d}'[::-1]} is request {index:05d} of cell {cell}. "


def prose(n_chars: int) -> str:
    """`n_chars` characters of the prose, repeated as often as needed."""
    reps = n_chars // len(_PROSE) + 1
    return (_PROSE * reps)[:n_chars]


def make_prompts(
    cell: str, target: int, count: Callable[[str], int], *, warm: bool = False
) -> CellPrompts:
    """The prompts of a cell, `target` tokens each by `count` (the engine's count of a prompt).

    A search on the length of the prose: grow an upper bound from a first estimate, then halve
    the interval until the count is `target` or the interval is one character. A target below
    what the prefix alone counts gets the prefix alone (said in the log)."""
    head = prefix(cell, _COUNTED)
    floor = count(head)
    if target <= floor:
        log.warning("%s: %d tokens asked, the prefix alone is %d", cell, target, floor)
        return CellPrompts(cell, "", floor, target, warm)
    lo, n_lo = 0, floor
    hi = max(64, (target - floor) * 4)
    n_hi = count(head + prose(hi))
    while n_hi < target:
        lo, n_lo = hi, n_hi
        hi *= 2
        if hi > 64 * target + 4096:
            raise EngineError("other", f"{cell}: {hi} characters still count {n_hi} < {target}")
        n_hi = count(head + prose(hi))
    while hi - lo > 1 and n_lo != target:
        mid = (lo + hi) // 2
        n_mid = count(head + prose(mid))
        if n_mid <= target:
            lo, n_lo = mid, n_mid
        else:
            hi = mid
    return CellPrompts(cell, prose(lo), n_lo, target, warm)
