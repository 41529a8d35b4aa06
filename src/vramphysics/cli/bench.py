"""`bench`: the benchmark grid against a server someone already runs (no start, no calibration).

    python -m vramphysics bench --url http://127.0.0.1:8000 --engine vllm --model NAME

Writes the same report as a run (Benchmarks and Requests sheets, `<run>.bench.json`/`.csv`);
`--json` prints the cells on stdout instead of the summary, with the JSON export's field names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vramphysics.cli.options import add_common
from vramphysics.config import Config, config_model, load_config
from vramphysics.engines import registry
from vramphysics.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark a server that is already running (no start, no calibration)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--engine", required=True, help="the engine that serves it (llamacpp, vllm, ollama)"
    )
    p.add_argument("--model", required=True, help="the model name the server knows")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="configuration file")
    p.add_argument(
        "--ctx",
        type=int,
        metavar="N",
        help="the context the server was started with (prompts are clipped to it; `depth` needs it)",
    )
    p.add_argument(
        "--prompt-tokens",
        type=int,
        nargs="+",
        metavar="N",
        help="prompt lengths (bench.prompt_tokens)",
    )
    p.add_argument(
        "--output-tokens",
        type=int,
        metavar="N",
        help="output tokens per request (bench.output_tokens)",
    )
    p.add_argument(
        "--repetitions",
        type=int,
        metavar="N",
        help="measured requests per cell (bench.repetitions)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        metavar="N",
        help="requests in flight (bench.concurrency)",
    )
    p.add_argument("--json", action="store_true", help="print the cells as JSON on stdout")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vramphysics.bench import Grid
    from vramphysics.runner.attached import Target, bench_attached

    engine = args.engine.lower()
    if engine not in registry.names():
        raise ConfigError(
            f"--engine {args.engine}: not an engine (known: {', '.join(registry.names())})"
        )
    if args.ctx is not None and args.ctx < 16:
        raise ConfigError(f"--ctx {args.ctx}: must be >= 16")
    cfg = _config(args.config)
    grid = Grid(
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        repetitions=args.repetitions,
        concurrency=args.concurrency,
    )
    try:
        grid.apply(cfg.bench)
    except ValueError as exc:
        raise ConfigError(f"bench options: {exc}") from exc
    result = bench_attached(cfg, Target(args.url.rstrip("/"), engine, args.model, args.ctx), grid)
    if args.json:
        json.dump(
            {"run_id": result.run_id, "cells": [c.to_json() for c in result.cells]},
            sys.stdout,
            indent=1,
        )
        print()
    else:
        from vramphysics.journal import journal_path
        from vramphysics.runner.finish import _print_done

        _print_done(result.run_id, result.done, journal_path(cfg.paths.report_dir, result.run_id))
    return 4 if result.done.errors else 0


def _config(path: Path) -> Config:
    """The config file; without one (the default path absent), the defaults."""
    if path == Path("config.yaml") and not path.exists():
        made = config_model()()
        assert isinstance(made, Config)
        return made
    return load_config(path)
