"""`inspect-log`: an engine's own memory figures and failure kind, from its log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vramphysics.cli.options import add_common
from vramphysics.engines import registry
from vramphysics.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_log = sub.add_parser(
        "inspect-log", help="an engine's own memory figures and failure kind, from its log"
    )
    readers = [i.name for i in registry.engines() if i.inspect_log is not None]
    p_log.add_argument("--engine", required=True, choices=readers, help="engine that wrote it")
    p_log.add_argument("file", type=Path, metavar="FILE", help="the server log")
    p_log.add_argument(
        "--metrics", type=Path, metavar="FILE", help="a saved /metrics page of the same server"
    )
    p_log.add_argument("--json", action="store_true", help="print JSON")
    add_common(p_log)
    p_log.set_defaults(func=cmd_inspect_log)


def cmd_inspect_log(args: argparse.Namespace) -> int:
    read = registry.get(args.engine).inspect_log
    assert read is not None  # argparse offers only engines that have a log reader
    try:
        text = args.file.read_text(encoding="utf-8", errors="replace")
        metrics = (
            args.metrics.read_text(encoding="utf-8", errors="replace") if args.metrics else None
        )
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=exc.filename) from exc
    facts = read(text, metrics)
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
