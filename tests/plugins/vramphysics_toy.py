"""A toy engine: a real child process that holds `base + ctx x cost` bytes of memory.

It is the worked example of docs/adding-an-engine.md and the proof that an engine registered
from outside the package works end to end (setups, calibration, plan, guardrail).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pydantic import Field

from vramphysics.allocate import Plan
from vramphysics.config_base import EngineConfig
from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    MemoryComponents,
    Usage,
)
from vramphysics.engines.process import ManagedProcess
from vramphysics.engines.registry import Advice, AdviceRequest, EngineInfo
from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec
from vramphysics.theory import Theory

# The "server": allocate base + ctx * cost bytes, touch every page, say so, then wait.
_SERVER = """
import sys, time
base, cost, ctx = (int(a) for a in sys.argv[1:4])
block = bytearray(base + ctx * cost)
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
while True:
    time.sleep(1)
"""


class ToyConfig(EngineConfig):
    """`engines.toy` in config.yaml."""

    base_bytes: int = Field(8 * 2**20, ge=0)
    cost_per_token_bytes: int = Field(16 * 2**10, ge=1)


class ToyEngine(Engine):
    name = "toy"

    def __init__(self, cfg: ToyConfig, *, state_dir: Any, log_dir: Any) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self._proc: ManagedProcess | None = None
        self._ctx = 0

    def version(self) -> str:
        return "toy 0.1"

    def check_available(self, spec: ModelSpec) -> Availability:
        present = not spec.name.startswith("missing")
        return Availability(present, "toy models exist unless named missing*")

    def theory(self, spec: ModelSpec) -> Theory | None:
        return Theory(
            source="toy",
            arch="toy",
            n_layers=1,
            n_kv_heads=None,
            k_head_dim=None,
            v_head_dim=None,
            kv_dtype="f16",
            kv_bytes_per_token=float(self.cfg.cost_per_token_bytes),
            weights_bytes=self.cfg.base_bytes,
        )

    def settings(self) -> dict[str, Any]:
        return {"cost_per_token_bytes": self.cfg.cost_per_token_bytes}

    def start(self, spec: ModelSpec, ctx: int) -> None:
        self.stop()
        self._ctx = ctx
        argv = [sys.executable, "-c", _SERVER, str(self.cfg.base_bytes)]
        argv += [str(self.cfg.cost_per_token_bytes), str(ctx)]
        self._proc = ManagedProcess(
            argv,
            log_path=self.log_dir / f"toy-{spec.name}-ctx{ctx}.log",
            label=f"toy {spec.name}",
            state_dir=self.state_dir,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if "ready" in self.log_tail(5):
                return
            time.sleep(0.05)
        raise EngineError("timeout", "the toy server never said ready")

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        self.check_alive()
        t0 = time.monotonic()
        steps = [t0 + 0.001 * (i + 1) for i in range(max_tokens)]
        usage = Usage(len(prompt.split()), max_tokens, "engine-usage")
        return Completion(t0, steps[0], steps[-1], steps[-1], usage, max_tokens)

    def root_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def memory_report(self) -> MemoryComponents | None:
        kv = self._ctx * self.cfg.cost_per_token_bytes
        return MemoryComponents("toy", kv_pool_bytes=kv, kv_tokens=self._ctx, device_resident=False)

    def log_tail(self, n_lines: int = 40) -> str:
        return self._proc.log_tail(n_lines) if self._proc is not None else ""

    def check_alive(self) -> None:
        if self._proc is not None and not self._proc.alive():
            raise EngineError("engine_crashed", "the toy server exited", log_tail=self.log_tail())

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(self.cfg.stop_timeout_s)
            self._proc = None


def _advice(plan: Plan, request: AdviceRequest) -> Advice:
    if not plan.fits or plan.ctx is None:
        return Advice()
    argv = ["toy-serve", request.model, "--ctx", str(plan.ctx)]
    return Advice(lines=(("toy", " ".join(argv)),), commands={"command": argv})


ENGINE = EngineInfo(
    name="toy",
    label="Toy",
    prefixes=("toy:",),
    config_model=ToyConfig,
    engine_module=__name__,
    engine_class_name="ToyEngine",
    memory_kind="on_demand",
    probes=("process",),
    advice=_advice,
)
