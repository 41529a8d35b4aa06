"""`python -m vramphysics merge DB... -o OUT`: one physics database from several machines' ones.

Parse -> `physics_merge` (read every input, merge) -> write OUT in one rename -> render. Every
input is read and checked before OUT is touched: a corrupt one is one line naming the file and
line, exit 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vramphysics import physics_db
from vramphysics.allocate import format_bytes
from vramphysics.cli.options import add_common
from vramphysics.errors import ConfigError
from vramphysics.physics_merge import (
    DEFAULT_RELATIVE,
    DEFAULT_SIGMAS,
    Conflict,
    InputDb,
    MergeResult,
    Tolerance,
    merge_inputs,
    read_inputs,
)

_DESCRIPTION = """\
Merge physics databases (calibration/physics.yaml from several machines) into one.

One entry per key (engine, model, device, settings, probe). The same key in two inputs keeps
the newer calibration (calibrated_at; on a tie, the input named later) and lists the other in
the kept entry's provenance.sources, with its figures, host and run ID: nothing is dropped.

Conflicts: two calibrations of a key whose cost per token or base differ by more than their
uncertainty are reported (a table, or --json), and the newer one is still kept. The
uncertainty is the fits' standard errors when both entries state them: a conflict is a
difference above --sigmas x sqrt(se_a^2 + se_b^2). An entry without standard errors (typed by
hand, or written by an older tool), or two that both state zero, is compared with the relative
tolerance instead: a difference above --rel-tol x the larger figure.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge physics databases from several machines into one",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("databases", nargs="+", type=Path, metavar="DB", help="input databases")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT",
        help="the merged database (written once every input is read; may be one of the inputs)",
    )
    p.add_argument(
        "--sigmas",
        type=float,
        default=DEFAULT_SIGMAS,
        metavar="K",
        help="a conflict: figures further apart than K combined standard errors "
        f"(default {DEFAULT_SIGMAS:g})",
    )
    p.add_argument(
        "--rel-tol",
        type=float,
        default=DEFAULT_RELATIVE,
        metavar="F",
        help="for entries without standard errors: a conflict is a difference above F x the "
        f"larger figure (default {DEFAULT_RELATIVE:g})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge, write OUT, and show what was merged and what disagrees (exit 0 with conflicts:
    they are reported, and the newer calibration is kept)."""
    if not args.sigmas > 0:
        raise ConfigError(f"must be > 0, got {args.sigmas}", key="--sigmas")
    if not 0 < args.rel_tol < 1:
        raise ConfigError(f"must be in (0, 1), got {args.rel_tol}", key="--rel-tol")
    tolerance = Tolerance(sigmas=args.sigmas, relative=args.rel_tol)
    inputs = read_inputs(args.databases)
    result = merge_inputs(inputs, tolerance)
    try:
        physics_db.save(args.output, result.entries)
    except OSError as exc:  # a folder in the way, a full disk: the inputs are untouched
        raise ConfigError(
            f"cannot write the merged database: {exc.strerror or exc}", path=args.output
        ) from exc
    if args.json:
        print(json.dumps(_to_json(args.output, inputs, result), indent=2))
    else:
        print(_render(args.output, inputs, result))
    return 0


def _to_json(out: Path, inputs: list[InputDb], result: MergeResult) -> dict[str, object]:
    return {
        "output": str(out),
        "inputs": [{"path": str(db.path), "entries": len(db.entries)} for db in inputs],
        "entries": len(result.entries),
        "set_aside": result.set_aside,
        "conflicts": [c.to_dict() for c in result.conflicts],
    }


def _render(out: Path, inputs: list[InputDb], result: MergeResult) -> str:
    read = sum(len(db.entries) for db in inputs)
    lines = [
        f"merged {len(inputs)} database(s), {read} entries, into {out}: "
        f"{len(result.entries)} entries, {result.set_aside} older calibration(s) kept as "
        "provenance",
    ]
    if not result.conflicts:
        lines.append("no conflicts")
        return "\n".join(lines)
    lines.append(
        f"{len(result.conflicts)} conflict(s): figures that disagree beyond their uncertainty"
    )
    rows = [
        ("engine", "model", "device", "settings", "probe", "figure", "kept", "other", "diff",
         "tolerance", "kept from", "other from"),
        *(_row(c) for c in result.conflicts),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def _figure(name: str, value: float) -> str:
    return f"{value:,.1f} B/token" if name == "cost_per_token_bytes" else format_bytes(value)


def _row(c: Conflict) -> tuple[str, ...]:
    engine, model, device, settings, probe = c.key
    figure = "cost/token" if c.figure == "cost_per_token_bytes" else "base"
    return (
        engine,
        model,
        device,
        settings,
        probe,
        figure,
        _figure(c.figure, c.kept),
        _figure(c.figure, c.other),
        _figure(c.figure, c.difference),
        f"{_figure(c.figure, c.tolerance)} ({c.basis})",
        f"{c.kept_from} ({c.kept_calibrated_at or 'no time'})",
        f"{c.other_from} ({c.other_calibrated_at or 'no time'})",
    )
