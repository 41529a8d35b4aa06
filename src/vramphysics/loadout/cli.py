"""`manage_loadout.py`: status of engines and GPUs, applying a loadout preset, killing services.

The command line: `--status`, `--apply PRESET`, `--kill NAME` (see the package's docstring).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vramphysics.config import Config, load_config
from vramphysics.engines import registry
from vramphysics.errors import EngineError
from vramphysics.loadout.resident import LoadoutStatus, status
from vramphysics.loadout.start import apply, kill

GIB = 2**30


def _print_status(st: LoadoutStatus) -> None:
    for e in st.engines:
        state = "up" if e.up else "down"
        print(f"{e.name:9} {state:5} {e.url}  {e.version or ''} {e.detail}".rstrip())
        for m in e.models:
            size = f" {m.size_bytes / GIB:.2f} GiB" if m.size_bytes else ""
            vram = f" ({m.vram_bytes / GIB:.2f} GiB VRAM)" if m.vram_bytes is not None else ""
            ctx = f" ctx {m.ctx}" if m.ctx else ""
            print(f"          {m.name}{ctx}{size}{vram}")
    if not st.gpus:
        print(f"GPUs: none ({st.nvml})")
    for g in st.gpus:
        print(
            f"GPU {g.index}: {g.name}  total {g.total_bytes / GIB:.2f} GiB  used {g.used_bytes / GIB:.2f} GiB  "
            f"free {g.free_bytes / GIB:.2f} GiB  driver {g.driver}"
        )
        for pid, used in g.processes:
            print(f"          pid {pid}: {'?' if used is None else f'{used / GIB:.2f} GiB'}")
    for p in st.predictions:
        if p.predicted_bytes is not None:
            rep = f"{p.reported_bytes / GIB:.2f}" if p.reported_bytes else "?"
            print(
                f"{p.engine} {p.model}: predicted {p.predicted_bytes / GIB:.2f} GiB ({p.source}), reported {rep} GiB"
            )


def main(argv: list[str] | None = None) -> int:
    from vramphysics.cli import run_main

    p = argparse.ArgumentParser(prog="manage_loadout.py", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--status", action="store_true", help="engines, GPUs, what is loaded")
    what.add_argument("--apply", metavar="PRESET", help="start a loadout preset from config.yaml")
    what.add_argument(
        "--kill",
        metavar="NAME",
        help=f"stop a managed engine ({', '.join(registry.names())}) or all",
    )
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="configuration file")
    p.add_argument(
        "--force-download", action="store_true", help="with --apply: download missing models"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --apply: start what cannot be checked (a model with neither a calibration "
        "nor a theory, or no free-memory figure); a loadout known not to fit is still refused",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    return run_main(_run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = (
        load_config(args.config)
        if args.config.exists() or args.config != Path("config.yaml")
        else Config()
    )
    if args.status:
        st = status(cfg)
        if args.json:
            print(json.dumps(st.to_dict(), indent=2))
        else:
            _print_status(st)
        return 0
    try:
        lines = (
            apply(cfg, args.apply, force_download=args.force_download, force=args.force)
            if args.apply
            else kill(cfg, args.kill)
        )
    except EngineError as exc:
        print(f"manage_loadout: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"done": lines}, indent=2))
    else:
        print("\n".join(lines) if lines else "nothing to do")
    return 0
