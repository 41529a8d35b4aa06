"""The physics database: round trip, merge, atomic and locked writes, corrupt files (physics_db.py)."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import pytest
import yaml

from vramphysics import physics_db
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry, db_path, find, load, merge, write_entries


def entry(
    model: str = "llamacpp:tiny.gguf",
    *,
    engine: str = "llamacpp",
    device: str = "cpu",
    probe: str = "process",
    base: float = 68_720_469.3,
    cost: float = 4243.022,
) -> PhysicsEntry:
    return PhysicsEntry(
        engine=engine,
        model=model,
        device=device,
        probe=probe,
        base_bytes=base,
        cost_per_token_bytes=cost,
        r2=0.999036,
        n_points=3,
        points=((512, 70_246_400.0), (1024, 73_420_800.0), (2048, 77_725_696.0)),
        engine_starts=3,
        theory={"kv_bytes_per_token": 4096.0, "weights_bytes": 9_978_880},
        engine_version="llama-cpp-python 0.3.16",
        calibrated_at="2026-01-02T03:04:05+00:00",
        base_stderr_bytes=321_722.7,
        cost_stderr_bytes=76.089,
        device_total_bytes=25_276_502_016,
        driver=None,
        settings={"n_gpu_layers": -1, "extra_args": []},
    )


def test_required_bytes() -> None:
    e = entry(base=1e8, cost=4096.0)
    assert e.required_bytes(0) == 1e8
    assert e.required_bytes(8192) == 1e8 + 8192 * 4096  # 133_554_432.0
    assert e.required_bytes(8192) == 133_554_432.0


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    assert path == tmp_path / "physics.yaml"
    e1 = entry()
    e2 = entry("vl_Qwen/Qwen2.5-7B-Instruct", engine="vllm", device="NVIDIA H100", probe="vllm-log")
    e2 = dataclasses.replace(e2, r2=None, theory={}, settings={})
    written = write_entries(path, [e1, e2])
    loaded = load(path)
    assert loaded == written
    assert loaded == sorted([e1, e2], key=lambda e: e.key)
    got = {e.key: e for e in loaded}
    assert got[e1.key] == e1
    assert got[e2.key] == e2
    assert got[e2.key].r2 is None
    assert got[e1.key].points == ((512, 70_246_400.0), (1024, 73_420_800.0), (2048, 77_725_696.0))
    assert isinstance(got[e1.key].points[0][0], int)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 1
    assert "bytes" in doc["units"]
    assert doc["entries"][0]["points"][0] == [512, 70_246_400.0]


def test_from_yaml_dict_coerces_numbers() -> None:
    d = entry().to_yaml_dict()
    d["base_bytes"] = 100  # an int written by hand
    d["points"] = [["512", "1.5"]]
    e = PhysicsEntry.from_yaml_dict(d, path=Path("p.yaml"), index=0)
    assert e.base_bytes == 100.0 and isinstance(e.base_bytes, float)
    assert e.points == ((512, 1.5),)


def test_load_missing_and_empty(tmp_path: Path) -> None:
    assert load(tmp_path / "none.yaml") == []
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    assert load(tmp_path / "empty.yaml") == []
    (tmp_path / "no-entries.yaml").write_text("schema_version: 1\nentries:\n", encoding="utf-8")
    assert load(tmp_path / "no-entries.yaml") == []


def test_merge_replaces_only_the_same_key() -> None:
    old = [
        entry("m1", base=1.0),
        entry("m1", probe="nvml", base=2.0),
        entry("m1", device="NVIDIA A100", base=3.0),
        entry("m1", engine="ollama", base=4.0),
        entry("m2", base=5.0),
    ]
    new = [entry("m1", base=10.0), entry("m3", base=6.0)]
    merged = merge(old, new)
    by_key = {e.key: e.base_bytes for e in merged}
    assert by_key == {
        ("llamacpp", "m1", "cpu", "process"): 10.0,  # replaced
        ("llamacpp", "m1", "cpu", "nvml"): 2.0,  # other probe kept
        ("llamacpp", "m1", "NVIDIA A100", "process"): 3.0,  # other device kept
        ("ollama", "m1", "cpu", "process"): 4.0,  # other engine kept
        ("llamacpp", "m2", "cpu", "process"): 5.0,
        ("llamacpp", "m3", "cpu", "process"): 6.0,  # added
    }
    assert [e.key for e in merged] == sorted(e.key for e in merged)  # stable order


def test_write_merges_into_the_existing_file(tmp_path: Path) -> None:
    path = db_path(tmp_path / "calibration")  # the folder is created
    write_entries(path, [entry("a", base=1.0), entry("b", base=2.0)])
    write_entries(path, [entry("a", base=11.0)])
    assert {e.model: e.base_bytes for e in load(path)} == {"a": 11.0, "b": 2.0}


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    for i in range(3):
        write_entries(path, [entry(f"m{i}")])
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    # only the database and its lock file; no `physics.yaml.*.tmp`
    assert leftovers == ["physics.yaml", "physics.yaml.lock"]
    assert len(load(path)) == 3


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = db_path(tmp_path)
    write_entries(path, [entry("a")])
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(physics_db.os, "replace", boom)
    with pytest.raises(OSError):
        write_entries(path, [entry("b")])
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


CORRUPT = [
    ("bad-yaml", "schema_version: 1\nentries:\n  - engine: [unclosed\n", 4, "corrupt physics"),
    ("no-entries-key", "schema_version: 1\n", None, "expected a mapping with 'entries'"),
    ("a-list", "- a\n- b\n", None, "expected a mapping with 'entries'"),
    ("old-schema", "schema_version: 0\nentries: []\n", None, "schema_version 0"),
    ("no-schema", "entries: []\n", None, "schema_version None"),
    ("entries-not-list", "schema_version: 1\nentries: {a: 1}\n", None, "must be a list"),
    ("entry-not-mapping", "schema_version: 1\nentries: [3]\n", None, "must be a mapping"),
]


@pytest.mark.parametrize(("name", "text", "line", "needle"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_file_is_an_error_and_never_overwritten(
    tmp_path: Path, name: str, text: str, line: int | None, needle: str
) -> None:
    path = db_path(tmp_path)
    path.write_text(text, encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == path
    assert info.value.line == line
    assert needle in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError):
        write_entries(path, [entry()])
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def _valid_doc_with(extra: dict[str, object] | None = None, drop: str | None = None) -> str:
    d = entry().to_yaml_dict()
    d.update(extra or {})
    if drop:
        del d[drop]
    return yaml.safe_dump({"schema_version": 1, "entries": [entry("x").to_yaml_dict(), d]})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (_valid_doc_with({"colour": "blue"}), "unknown field(s) ['colour']"),
        (_valid_doc_with(drop="engine"), "bad entry"),
        (_valid_doc_with(drop="base_bytes"), "bad entry"),
        (_valid_doc_with({"cost_per_token_bytes": "lots"}), "bad entry"),
        (_valid_doc_with({"points": [[512]]}), "bad entry"),
    ],
)
def test_bad_entry_names_its_index(tmp_path: Path, text: str, needle: str) -> None:
    path = db_path(tmp_path)
    path.write_text(text, encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "entries[1]"
    assert needle in str(info.value)
    with pytest.raises(ConfigError):
        write_entries(path, [entry()])
    assert path.read_bytes() == before


def test_find() -> None:
    es = [
        entry("m", device="cpu", probe="process"),
        entry("m", device="cpu", probe="nvml"),
        entry("m", device="GPU", probe="nvml"),
        entry("m", engine="ollama"),
        entry("n"),
    ]
    assert len(find(es, engine="llamacpp", model="m")) == 3
    assert len(find(es, engine="llamacpp", model="m", device="cpu")) == 2
    assert find(es, engine="llamacpp", model="m", device="cpu", probe="nvml") == [es[1]]
    assert find(es, engine="vllm", model="m") == []


def _writer(path: str, worker: int, n: int) -> None:
    for i in range(n):
        write_entries(Path(path), [entry(f"w{worker}-m{i:02d}", base=float(worker * 1000 + i))])


@pytest.mark.timeout(120)
def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 20)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=100)
    assert [p.exitcode for p in procs] == [0, 0]
    entries = load(path)
    assert len(entries) == 40
    assert {e.model for e in entries} == {f"w{w}-m{i:02d}" for w in (1, 2) for i in range(20)}
    by_model = {e.model: e.base_bytes for e in entries}
    assert by_model["w2-m17"] == 2017.0
    assert not list(tmp_path.glob("*.tmp"))
