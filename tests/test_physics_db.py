"""The physics database: round trip, merge, atomic and locked writes, corrupt files (physics_db.py)."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import pytest
import yaml

from vramphysics import physics_db
from vramphysics.errors import ConfigError
from vramphysics.physics_db import (
    PhysicsEntry,
    db_path,
    find,
    load,
    merge,
    settings_hash,
    settings_tag,
    tag_matches,
    write_entries,
)
from vramphysics.provenance import Provenance, Source
from vramphysics.yamlio import dump_yaml


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
    assert doc["schema_version"] == 3
    assert doc["entries"][0]["settings_tag"] == e1.settings_tag  # written for readers
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
    tag = "kv=default,ngl=all#" + settings_hash({"n_gpu_layers": -1})
    assert entry().settings_tag == tag
    assert by_key == {
        ("llamacpp", "m1", "cpu", tag, "process"): 10.0,  # replaced
        ("llamacpp", "m1", "cpu", tag, "nvml"): 2.0,  # other probe kept
        ("llamacpp", "m1", "NVIDIA A100", tag, "process"): 3.0,  # other device kept
        ("ollama", "m1", "cpu", tag, "process"): 4.0,  # other engine kept
        ("llamacpp", "m2", "cpu", tag, "process"): 5.0,
        ("llamacpp", "m3", "cpu", tag, "process"): 6.0,  # added
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
    ("old-schema", "schema_version: 0\nentries: []\n", 1, "schema_version 0"),
    ("no-schema", "entries: []\n", 1, "schema_version None"),
    ("entries-not-list", "schema_version: 1\nentries: {a: 1}\n", 2, "must be a list"),
    ("entry-not-mapping", "schema_version: 1\nentries: [3]\n", 2, "must be a mapping"),
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
    ("text", "needle", "line"),
    [
        (_valid_doc_with({"colour": "blue"}), "unknown field 'colour'", "colour"),
        (_valid_doc_with(drop="engine"), "field 'engine' is missing", None),
        (_valid_doc_with(drop="base_bytes"), "field 'base_bytes' is missing", None),
        (_valid_doc_with({"cost_per_token_bytes": "lots"}), "field 'cost_per_token_bytes'", "lots"),
        (_valid_doc_with({"points": [[512]]}), "field 'points[0][1]': a value is missing", "512"),
    ],
)
def test_bad_entry_names_its_field_index_and_line(
    tmp_path: Path, text: str, needle: str, line: str | None
) -> None:
    path = db_path(tmp_path)
    path.write_text(text, encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "entries[1]"
    assert needle in str(info.value)
    assert "PhysicsEntry" not in str(info.value) and "__init__" not in str(info.value)
    lines = text.splitlines()
    assert info.value.line is not None
    if line is None:  # a missing field: the line where the entry starts
        assert lines[info.value.line - 1].startswith("- ")
    else:  # the field's own line
        assert line in lines[info.value.line - 1]
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


# --------------------------------------------------------------------------- settings (item 3)

F16 = {"kv_cache_type": "f16", "num_parallel": 1, "flash_attention": None, "host": "127.0.0.1"}
Q8 = {"kv_cache_type": "q8_0", "num_parallel": 1, "flash_attention": "1", "host": "127.0.0.1"}


def test_settings_tag_is_readable_and_hashes_only_memory_settings() -> None:
    assert settings_tag(Q8) == "kv=q8_0,np=1,fa=on#" + settings_hash(Q8)
    assert settings_tag(F16).startswith("kv=f16,np=1#")
    # host, port, launcher and where a value came from do not split physics
    moved = {**Q8, "host": "0.0.0.0", "port": 1, "kv_cache_type_source": "config"}
    assert settings_tag(moved) == settings_tag(Q8)
    # llama.cpp: the flags in extra_args are read, and every extra argument counts
    ngl = {"n_gpu_layers": -1, "extra_args": ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]}
    assert settings_tag(ngl).startswith("kv=q8_0,ngl=all,fa=on,args=6#")
    other = {"n_gpu_layers": -1, "extra_args": ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "off"]}
    assert settings_hash(other) != settings_hash(ngl)
    assert settings_tag({"extra_args": ["--kv-cache-dtype=fp8"]}).startswith("kv=fp8,args=1#")
    assert settings_tag({"n_gpu_layers": 20, "extra_args": ["-ngl", "-1"]}).startswith(
        "kv=default,ngl=all,args=2#"  # the later flag wins, as in llama.cpp
    )
    assert settings_tag({}) == settings_tag({"extra_args": [], "flash_attention": None})


def test_tag_matches_parts_hash_or_whole_tag() -> None:
    tag = settings_tag(Q8)
    digest = tag.split("#")[1]
    assert tag_matches(tag, "kv=q8_0")
    assert tag_matches(tag, "kv=q8_0,fa=on")
    assert tag_matches(tag, "#" + digest[:4])
    assert tag_matches(tag, tag)
    assert not tag_matches(tag, "kv=f16")
    assert not tag_matches(tag, "kv=q8_0#ffffffff")


def test_two_kv_dtypes_stay_side_by_side(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    f16 = dataclasses.replace(entry("ol_llama3.1:8b", engine="ollama"), settings=F16)
    q8 = dataclasses.replace(f16, settings=Q8, cost_per_token_bytes=2100.0)
    write_entries(path, [f16])
    write_entries(path, [q8])  # before: same (engine, model, device, probe) replaced f16
    got = {e.settings_tag: e.cost_per_token_bytes for e in load(path)}
    assert got == {f16.settings_tag: 4243.022, q8.settings_tag: 2100.0}
    write_entries(path, [dataclasses.replace(q8, cost_per_token_bytes=2000.0)])
    got = {e.settings_tag: e.cost_per_token_bytes for e in load(path)}
    assert got == {f16.settings_tag: 4243.022, q8.settings_tag: 2000.0}  # only its own


def test_schema_1_file_is_migrated(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    old = entry().to_yaml_dict()
    del old["settings_tag"]
    path.write_text(yaml.safe_dump({"schema_version": 1, "entries": [old]}), encoding="utf-8")
    (loaded,) = load(path)
    assert loaded == entry()
    assert loaded.settings_tag == "kv=default,ngl=all#" + settings_hash({"n_gpu_layers": -1})
    write_entries(path, [entry("other")])
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 3
    assert [e["settings_tag"] for e in doc["entries"]] == [loaded.settings_tag] * 2


def test_settings_tag_that_disagrees_with_the_settings_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    d = entry().to_yaml_dict()
    d["settings_tag"] = "kv=q8_0#00000000"
    path.write_text(yaml.safe_dump({"schema_version": 2, "entries": [d]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="does not match the entry's settings") as info:
        load(path)
    assert info.value.line is not None
    assert "settings_tag" in path.read_text().splitlines()[info.value.line - 1]


def test_the_same_key_twice_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    d = entry().to_yaml_dict()
    path.write_text(dump_yaml({"schema_version": 2, "entries": [d, d]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"repeats entries\[0\]") as info:
        load(path)
    assert info.value.key == "entries[1]"


# --------------------------------------------------------------------------- by hand (item 12)

HAND = """schema_version: 2
entries:
  - engine: vllm
    model: Qwen/Qwen2.5-7B-Instruct
    device: NVIDIA GeForce RTX 5090
    base_bytes: 17.5e9
    cost_per_token_bytes: 57344
    calibrated_at: 2025-06-01
"""


def test_an_entry_written_by_hand_needs_only_what_plan_needs(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.write_text(HAND, encoding="utf-8")
    (e,) = load(path)
    assert (e.engine, e.device, e.base_bytes, e.cost_per_token_bytes) == (
        "vllm",
        "NVIDIA GeForce RTX 5090",
        17.5e9,
        57344.0,
    )
    assert (e.probe, e.points, e.n_points, e.engine_starts, e.r2) == ("manual", (), 0, 0, None)
    assert e.calibrated_at == "2025-06-01"  # an unquoted date typed by hand
    assert e.settings_tag.startswith("kv=default#")
    write_entries(path, [entry()])  # and it survives a merge
    assert len(load(path)) == 2


@pytest.mark.parametrize(
    ("old", "new", "needle", "on_line"),
    [
        ("    cost_per_token_bytes: 57344\n", "", "field 'cost_per_token_bytes' is missing", 3),
        ("    base_bytes: 17.5e9\n", "", "field 'base_bytes' is missing", 3),
        ("base_bytes: 17.5e9", "base_bytes: true", "field 'base_bytes': expected a number", 6),
        ("base_bytes: 17.5e9", "base_bytes: lots", "field 'base_bytes': ", 6),
        ("device: NVIDIA", "gpu: NVIDIA", "unknown field 'gpu'", 5),
        ("base_bytes: 17.5e9", "base_bytes: .inf", "field 'base_bytes': ", 6),
    ],
)
def test_hand_entry_errors_name_field_entry_and_line(
    tmp_path: Path, old: str, new: str, needle: str, on_line: int
) -> None:
    path = db_path(tmp_path)
    path.write_text(HAND.replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert f"{path}:{on_line}: entries[0]: " in message
    assert needle in message
    assert "__init__" not in message and "positional argument" not in message


def test_a_shared_value_is_written_out_not_aliased(tmp_path: Path) -> None:
    """The database is dumped without anchors: our loader refuses aliases (hostile YAML), so a
    value that occurs twice must be written out twice, or we could not read our own file."""
    from vramphysics.yamlio import load_yaml

    shared = {"kv_cache_type": "q8_0", "extra_args": ["-np", "2"]}
    text = dump_yaml({"entries": [{"settings": shared}, {"settings": shared}]})
    assert "&id" not in text and "*id" not in text
    (tmp_path / "x.yaml").write_text(text)
    doc = load_yaml(tmp_path / "x.yaml", what="physics database").data
    assert doc["entries"][0]["settings"] == doc["entries"][1]["settings"] == shared
    e = entry()
    assert physics_db._dump([e]) == dump_yaml(
        {
            "schema_version": physics_db.SCHEMA_VERSION,
            "units": "bytes; bytes = base_bytes + ctx * cost_per_token_bytes",
            "entries": [e.to_yaml_dict()],
        }
    )


# --------------------------------------------------------------------------- provenance (issue 14)


def test_provenance_round_trips_through_the_file(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    older = Source(
        database="/in/box-b.yaml",
        host="box-b",
        run_id="20260101-000000",
        tool_version="0.0.9",
        engine_version="llama-cpp-python 0.3.15",
        driver="550.54",
        calibrated_at="2026-01-01T00:00:00+00:00",
        base_bytes=7e7,
        cost_per_token_bytes=4300.0,
    )
    e = dataclasses.replace(
        entry(),
        provenance=Provenance(
            host="box-a", run_id="20260102-030405", tool_version="0.1.0", sources=(older,)
        ),
    )
    write_entries(path, [e])
    (loaded,) = load(path)
    assert loaded == e
    assert loaded.provenance.sources[0].host == "box-b"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc["entries"][0]["provenance"]["host"] == "box-a"
    assert doc["entries"][0]["provenance"]["sources"][0]["run_id"] == "20260101-000000"


def test_schema_2_file_loads_with_empty_provenance_and_is_saved_as_schema_3(
    tmp_path: Path,
) -> None:
    path = db_path(tmp_path)
    old = entry().to_yaml_dict()
    del old["provenance"]  # what schema 2 wrote
    path.write_text(yaml.safe_dump({"schema_version": 2, "entries": [old]}), encoding="utf-8")
    (loaded,) = load(path)
    assert loaded.provenance == Provenance()
    assert (loaded.provenance.host, loaded.provenance.run_id, loaded.provenance.sources) == (
        None,
        None,
        (),
    )
    write_entries(path, [entry("other")])
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 3
    assert [e["provenance"]["host"] for e in doc["entries"]] == [None, None]


def test_a_bad_provenance_field_names_the_field_and_line(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    text = HAND.replace("schema_version: 2", "schema_version: 3") + (
        "    provenance:\n      host: box\n      hots: typo\n"
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "unknown field 'provenance[hots]'" in str(info.value)
    assert info.value.line == 11
    assert "hots" in path.read_text().splitlines()[info.value.line - 1]


def test_the_runner_stamps_each_entry_with_host_run_and_versions(tmp_path: Path) -> None:
    """finalize (the runner's last step) writes entries whose provenance names the run."""
    from test_outcome import header, info, point

    from vramphysics.config import load_config
    from vramphysics.runner.finish import finalize

    (tmp_path / "config.yaml").write_text("sweep: {min_points: 3}\n", encoding="utf-8")
    cfg = load_config(tmp_path / "config.yaml")
    points = [point(c, 1e8 + c * 4096, at="2026-01-02T03:04:05+00:00") for c in (512, 1024, 2048)]
    done = finalize(cfg, "r1", [header(), info(), *points])
    assert not done.errors
    (e,) = load(db_path(cfg.paths.calibration_dir))
    assert e.provenance == Provenance(host="box", run_id="r1", tool_version="0.1.0")
    assert (e.engine_version, e.driver) == ("llamacpp 1.0", "550.54")


def test_an_entry_names_the_host_its_points_were_measured_on(tmp_path: Path) -> None:
    """A Ray node's points carry its host: the entry's provenance names it, not the driver's."""
    import dataclasses

    from test_outcome import header, info, point

    from vramphysics.config import load_config
    from vramphysics.runner.finish import finalize

    (tmp_path / "config.yaml").write_text("sweep: {min_points: 3}\n", encoding="utf-8")
    cfg = load_config(tmp_path / "config.yaml")
    points = [
        dataclasses.replace(point(c, 1e8 + c * 4096, at="2026-01-02T03:04:05+00:00"), host="node-b")
        for c in (512, 1024, 2048)
    ]
    assert not finalize(cfg, "r1", [header(), info(), *points]).errors
    (e,) = load(db_path(cfg.paths.calibration_dir))
    assert e.provenance is not None and e.provenance.host == "node-b"
