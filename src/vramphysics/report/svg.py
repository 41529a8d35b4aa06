"""Each model's charts as inline SVG.

matplotlib's object API (`Figure`, never pyplot): no window, no GUI backend and no global figure
state, so it runs on a headless machine exactly as the Agg backend would, without changing the
backend of a process that imports us.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vramphysics.report.series import ModelSeries

GIB = 2**30
MIB = 2**20
FIGSIZE = (4.6, 3.4)  # inches; every chart the same, so their text is the same size
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)


def memory_unit(s: ModelSeries) -> tuple[str, int]:
    """GiB for models of gigabytes, MiB for the small ones (the demo)."""
    values = [b for _, b in s.points] + list(s.fit_bytes or ()) + list(s.theory_bytes or ())
    return ("GiB", GIB) if max(values, default=0) >= 2 * GIB else ("MiB", MIB)


def _to_svg(fig: Figure, name: str) -> str:
    """The figure as an <svg> element; `name` salts its ids (unique within the page, and the
    same from one run to the next)."""
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": name}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return _PROLOG.sub("", buf.getvalue(), count=1)


def _memory(ax: Axes, s: ModelSeries) -> None:
    unit, size = memory_unit(s)
    ctx = list(s.line_ctx)
    if s.fit_bytes is not None:
        label = "engine KV: base + ctx x pool/tokens" if s.engine_kv else "fit: base + ctx x cost"
        ax.plot(ctx, [b / size for b in s.fit_bytes], color="#ff7f0e", label=label)
    if s.theory_bytes is not None:
        ax.plot(
            ctx,
            [b / size for b in s.theory_bytes],
            color="#2ca02c",
            linestyle="--",
            label="theory: weights + ctx x KV",
        )
    ax.plot(
        [c for c, _ in s.points],
        [b / size for _, b in s.points],
        "o",
        color="#1f77b4",
        label="measured",
    )
    ax.set(title="Memory vs context", xlabel="Context (tokens)", ylabel=f"Memory ({unit})")
    ax.legend(loc="best", fontsize=8)


def _scatter(
    ax: Axes, xy: Sequence[tuple[float, float]], color: str, labels: tuple[str, ...]
) -> None:
    ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", color=color)
    title, xlabel, ylabel = labels
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_ylim(bottom=0, top=max(y for _, y in xy) * 1.15)
    ax.set_xlim(left=0, right=max(x for x, _ in xy) * 1.15)  # one point still has a scale


def model_figures(s: ModelSeries) -> list[tuple[str, str]]:
    """(alt text, svg) for each chart this model has."""
    out = []
    with rc_context({"svg.fonttype": "none", "font.size": 9}):  # text stays text
        if s.has_memory_chart:
            fig = Figure(figsize=FIGSIZE)
            _memory(fig.add_subplot(), s)
            alt = f"{s.model}: memory vs context"
            out.append((alt, _to_svg(fig, alt)))
        if s.ttft:
            fig = Figure(figsize=FIGSIZE)
            labels = ("TTFT p50 vs prompt", "Prompt (tokens)", "TTFT p50 (ms)")
            _scatter(fig.add_subplot(), s.ttft, "#d62728", labels)
            alt = f"{s.model}: TTFT p50 vs prompt tokens"
            out.append((alt, _to_svg(fig, alt)))
        if s.decode:
            fig = Figure(figsize=FIGSIZE)
            labels = ("Decode vs prompt", "Prompt (tokens)", "Decode (tokens/s)")
            _scatter(fig.add_subplot(), s.decode, "#9467bd", labels)
            alt = f"{s.model}: decode tokens/s vs prompt tokens"
            out.append((alt, _to_svg(fig, alt)))
    return out
