"""Calibration accuracy at a held-out context, on the real llama.cpp engine.

Run: `make bench`. Calibrates the demo model on 512..4096 (one fresh start each), predicts the
memory at 8192 from the fit, measures 8192 for real, and prints the error on the part that
depends on the context: (predicted - base) against (measured - base). An error on the total
bytes would hide a wrong slope behind the base (5 % of the total lets ~15 % of the slope through
on this model). Also prints the slope against a fit over all five points and against theory.
Uses models/tiny-llama.gguf (made by `make demo-model`).
"""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

from vramphysics.calibrate import context_part_error, fit_linear, measure_point
from vramphysics.demo_models import write_tiny_gguf
from vramphysics.engines.llamacpp import LlamaCppEngine
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.probes import ProcessTreeProbe
from vramphysics.setups import parse_model_id
from vramphysics.theory import theory_from_gguf

FIT_CONTEXTS = (512, 1024, 2048, 4096)
HELD_OUT = 8192
BOUND = 0.05  # on the context-dependent part


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    model = Path("models/tiny-llama.gguf")
    if not model.exists():
        write_tiny_gguf(model)
    spec = parse_model_id(f"llamacpp:{model.name}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LlamaCppConfig(port=_port(), model_dir=model.parent)
        points = {}
        with LlamaCppEngine(cfg, state_dir=Path(tmp), log_dir=Path(tmp)) as engine:
            for ctx in (*FIT_CONTEXTS, HELD_OUT):
                point, _trace, _times = measure_point(
                    engine,
                    spec,
                    ctx,
                    make_probe=lambda e: ProcessTreeProbe(e.root_pid),
                    interval_s=0.05,
                    settle_s=1.0,
                    warmup_tokens=4,
                )
                engine.stop()
                points[ctx] = point.measured_bytes
    fit = fit_linear([(c, points[c]) for c in FIT_CONTEXTS])
    every = fit_linear(list(points.items()))
    predicted = fit.predict(HELD_OUT)
    error = context_part_error(fit, HELD_OUT, points[HELD_OUT])
    total_error = (predicted - points[HELD_OUT]) / points[HELD_OUT]
    slope_error = fit.cost_per_token_bytes / every.cost_per_token_bytes - 1
    theory = theory_from_gguf(model).kv_bytes_per_token
    print(
        f"fit on {FIT_CONTEXTS}: base {fit.base_bytes / 2**20:.1f} MiB, "
        f"cost {fit.cost_per_token_bytes:.0f} B/token (theory {theory:.0f}, "
        f"ratio {fit.cost_per_token_bytes / theory:.3f}), r2 {fit.r2:.5f}"
    )
    print(
        f"slope against a fit over all {len(points)} points "
        f"({every.cost_per_token_bytes:.0f} B/token): {slope_error * 100:+.2f}%"
    )
    print(
        f"held out ctx {HELD_OUT}: predicted {predicted / 2**20:.1f} MiB, "
        f"measured {points[HELD_OUT] / 2**20:.1f} MiB; error on the context-dependent part "
        f"{error * 100:+.2f}% (bound {BOUND * 100:.0f}%), on the total {total_error * 100:+.2f}%"
    )
    return 0 if abs(error) < BOUND else 1


if __name__ == "__main__":
    sys.exit(main())
