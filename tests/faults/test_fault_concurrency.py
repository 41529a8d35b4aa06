"""Two runners at once on the same calibration, report and state folders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from filelock import FileLock

from vramphysics import physics_db

if TYPE_CHECKING:
    from conftest import Workspace  # the `ws` fixture

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(240)]

OLDER = physics_db.PhysicsEntry(
    engine="llamacpp",
    model="llamacpp:older.gguf",
    device="cpu",
    probe="process",
    base_bytes=69200725.3,
    cost_per_token_bytes=4224.9,
    r2=0.9988,
    n_points=3,
    points=((512, 70664192.0), (1024, 73953280.0), (2048, 78000000.0)),
    engine_starts=3,
)


def _final(records: list[dict[str, Any]], model: str) -> bool:
    return any(r["kind"] == "status" and r["model"] == model and r["ctx"] is None for r in records)


def test_two_runners_share_one_database_and_both_entries_land(
    ws: Workspace, figures: dict[str, Any]
) -> None:
    """Runner B starts while runner A's engine runs (B must not take it for a leftover); both
    finish their sweeps while this test holds the database lock, so both wait on it and then
    merge; an entry an earlier run wrote survives."""
    (ws.models / "other.gguf").hardlink_to(ws.models / "tiny.gguf")
    ws.configure(sweep={"contexts": [512, 2048, 8192]})  # KV 2 -> 32 MiB: above the noise
    physics_db.write_entries(ws.db_path, [OLDER])
    lock = FileLock(str(ws.db_path) + ".lock")
    lock.acquire()
    try:
        ws.setups = ["llamacpp:tiny.gguf"]
        ws.configure(sweep={"settle_s": 3.0})  # A's engines live long enough for B's start
        a = ws.start(name="a")
        ws.wait_until(lambda: bool(ws.engines()), 60, "runner A's first engine")
        a_engines = ws.engines()
        assert len(ws.journals()) == 1
        ws.new_port()
        ws.setups = ["llamacpp:other.gguf"]
        ws.configure(sweep={"settle_s": 0.3})
        b = ws.start(name="b")
        ws.wait_until(lambda: len(ws.journals()) == 2, 60, "runner B's journal")
        # B is past its clean-up of leftovers: A's engine of that time must still be running
        assert any(ws.running(p) for p in a_engines), "A's engine ran while B started"
        ws.wait_journal(
            lambda rs: _final(rs, "llamacpp:tiny.gguf") and _final(rs, "llamacpp:other.gguf"),
            120,
            "both sweeps",
        )
        assert a.poll() is None and b.poll() is None, "both wait for the database lock"
        assert [e.model for e in ws.db_entries()] == [OLDER.model]
    finally:
        lock.release()
    out_a, err_a = a.communicate(timeout=90)
    out_b, err_b = b.communicate(timeout=90)

    assert (a.returncode, b.returncode) == (0, 0), err_a + err_b
    assert "Traceback" not in err_a + err_b
    assert "leftover" not in err_b, "B took A's running engine for a leftover"
    records = ws.journal()
    assert not [r for r in records if r["kind"] == "status" and r["status"] == "FAILED"]
    assert len(ws.journals()) == 2 and len(ws.reports()) == 2
    entries = {e.model: e for e in ws.db_entries()}
    assert set(entries) == {"llamacpp:tiny.gguf", "llamacpp:other.gguf", OLDER.model}
    assert entries[OLDER.model] == OLDER
    for model in ("llamacpp:tiny.gguf", "llamacpp:other.gguf"):
        assert [c for c, _ in entries[model].points] == [512, 2048, 8192]
    figures.update(ws.invariants(), exit=f"{a.returncode},{b.returncode}")
