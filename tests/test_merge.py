"""`python -m vramphysics merge DB... -o OUT` (cli/merge.py) and its core (physics_merge.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from vramphysics.cli import main
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry, load, write_entries
from vramphysics.physics_merge import InputDb, Tolerance, find_conflicts, merge_inputs
from vramphysics.provenance import Provenance

GIB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
RTX = "NVIDIA GeForce RTX 4090"


def cal(
    *,
    device: str = H100,
    host: str = "box-a",
    run_id: str = "run-a",
    at: str = "2026-01-02T03:04:05+00:00",
    base: float = 8 * GIB,
    cost: float = 131_072.0,
    base_se: float | None = 10 * 2**20,
    cost_se: float | None = 100.0,
) -> PhysicsEntry:
    """A vLLM calibration of one model, measured on `host` by run `run_id`."""
    return PhysicsEntry(
        engine="vllm",
        model="org/model",
        device=device,
        probe="nvml",
        base_bytes=base,
        cost_per_token_bytes=cost,
        n_points=3,
        engine_version="vllm 0.32.0",
        calibrated_at=at,
        base_stderr_bytes=base_se,
        cost_stderr_bytes=cost_se,
        driver="550.54",
        settings={"kv_cache_type": "auto"},
        provenance=Provenance(host=host, run_id=run_id, tool_version="0.1.0"),
    )


def db(tmp_path: Path, name: str, entries: list[PhysicsEntry]) -> Path:
    path = tmp_path / name
    write_entries(path, entries)
    return path


def merge_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["merge", *argv, "--json"]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


# --------------------------------------------------------------------------- merging


def test_two_machines_two_devices_give_one_entry_each_with_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = db(tmp_path, "a.yaml", [cal(device=H100, host="box-a", run_id="run-a")])
    b = db(tmp_path, "b.yaml", [cal(device=RTX, host="box-b", run_id="run-b", base=6 * GIB)])
    out = tmp_path / "merged" / "physics.yaml"
    doc = merge_json(capsys, str(a), str(b), "-o", str(out))
    assert (doc["entries"], doc["set_aside"], doc["conflicts"]) == (2, 0, [])
    merged = {e.device: e for e in load(out)}
    assert set(merged) == {H100, RTX}
    assert (merged[H100].provenance.host, merged[H100].provenance.run_id) == ("box-a", "run-a")
    assert (merged[RTX].provenance.host, merged[RTX].provenance.run_id) == ("box-b", "run-b")
    assert merged[RTX].base_bytes == 6 * GIB


def test_a_conflict_is_reported_and_the_newer_kept_with_the_older_as_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = cal(host="box-a", run_id="run-a", at="2026-01-01T00:00:00+00:00", cost=131_072.0)
    new = cal(host="box-b", run_id="run-b", at="2026-02-01T00:00:00+00:00", cost=65_536.0)
    # the newer one is named first: the time decides, not the order
    b = db(tmp_path, "b.yaml", [new])
    a = db(tmp_path, "a.yaml", [old])
    out = tmp_path / "out.yaml"
    doc = merge_json(capsys, str(b), str(a), "-o", str(out))
    (kept,) = load(out)
    assert kept.cost_per_token_bytes == 65_536.0
    assert kept.provenance.host == "box-b"
    (source,) = kept.provenance.sources
    assert (source.host, source.run_id, source.database) == ("box-a", "run-a", str(a))
    assert (source.cost_per_token_bytes, source.calibrated_at) == (131_072.0, old.calibrated_at)
    assert doc["set_aside"] == 1
    (conflict,) = doc["conflicts"]  # type: ignore[misc]
    assert conflict["figure"] == "cost_per_token_bytes"
    assert (conflict["kept"], conflict["other"]) == (65_536.0, 131_072.0)
    assert (conflict["kept_from"], conflict["other_from"]) == (str(b), str(a))
    assert conflict["basis"] == "stderr"
    assert conflict["tolerance"] == pytest.approx(2 * (2 * 100.0**2) ** 0.5)
    # and the table says the same
    assert main(["merge", str(b), str(a), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 conflict(s)" in text
    table = [line for line in text.splitlines() if line.startswith("vllm ")]
    assert len(table) == 1
    assert "cost/token" in table[0] and "65,536.0 B/token" in table[0]
    assert "131,072.0 B/token" in table[0] and "(stderr)" in table[0]


def test_agreeing_calibrations_are_merged_without_a_conflict(tmp_path: Path) -> None:
    old = cal(at="2026-01-01T00:00:00+00:00", run_id="run-a", cost=131_000.0)
    new = cal(at="2026-02-01T00:00:00+00:00", run_id="run-b", cost=131_200.0)  # 200 < 2 x 141
    result = merge_inputs([InputDb(Path("a"), (old,)), InputDb(Path("b"), (new,))], Tolerance())
    assert result.conflicts == ()
    (kept,) = result.entries
    assert kept.provenance.run_id == "run-b"
    assert [s.run_id for s in kept.provenance.sources] == ["run-a"]


def test_without_standard_errors_the_relative_tolerance_decides() -> None:
    a = cal(base_se=None, cost_se=None, cost=100_000.0)
    near = cal(base_se=None, cost_se=None, cost=104_000.0)  # 4 % apart
    far = cal(base_se=None, cost_se=None, cost=110_000.0)  # 10 % apart
    assert find_conflicts(a, Path("a"), near, Path("b"), Tolerance(relative=0.05)) == []
    (c,) = find_conflicts(a, Path("a"), far, Path("b"), Tolerance(relative=0.05))
    assert (c.figure, c.basis, c.tolerance) == ("cost_per_token_bytes", "relative", 5_500.0)
    assert find_conflicts(a, Path("a"), far, Path("b"), Tolerance(relative=0.2)) == []
    # one entry with standard errors and one without: the relative tolerance too
    with_se = cal(cost=110_000.0)
    (c,) = find_conflicts(a, Path("a"), with_se, Path("b"), Tolerance(relative=0.05))
    assert c.basis == "relative"


def test_the_same_calibration_twice_is_one_entry_and_no_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = db(tmp_path, "a.yaml", [cal()])
    out = tmp_path / "out.yaml"
    doc = merge_json(capsys, str(a), str(a), "-o", str(out))
    assert (doc["entries"], doc["set_aside"], doc["conflicts"]) == (1, 0, [])
    (kept,) = load(out)
    assert kept == cal()


def test_merging_again_keeps_every_source_once(tmp_path: Path) -> None:
    """A merged database merged with a newer one: the sources it had are kept, not repeated."""
    e1 = cal(run_id="r1", at="2026-01-01T00:00:00+00:00")
    e2 = cal(run_id="r2", at="2026-01-02T00:00:00+00:00")
    e3 = cal(run_id="r3", at="2026-01-03T00:00:00+00:00")
    first = merge_inputs([InputDb(Path("1"), (e1,)), InputDb(Path("2"), (e2,))], Tolerance())
    again = merge_inputs(
        [InputDb(Path("m"), first.entries), InputDb(Path("m2"), first.entries)], Tolerance()
    )
    assert again.entries == first.entries
    third = merge_inputs(
        [InputDb(Path("m"), first.entries), InputDb(Path("3"), (e3,))], Tolerance()
    )
    (kept,) = third.entries
    assert kept.provenance.run_id == "r3"
    assert [s.run_id for s in kept.provenance.sources] == ["r1", "r2"]


def test_a_tie_goes_to_the_input_named_later_and_an_entry_without_time_is_oldest() -> None:
    x = cal(run_id="x", at="")
    y = cal(run_id="y", at="2020-01-01")  # a date typed by hand: midnight UTC
    z = cal(run_id="z", at="2020-01-01T00:00:00+00:00")
    (kept,) = merge_inputs(
        [InputDb(Path("y"), (y,)), InputDb(Path("x"), (x,))], Tolerance()
    ).entries
    assert kept.provenance.run_id == "y"
    (kept,) = merge_inputs(
        [InputDb(Path("y"), (y,)), InputDb(Path("z"), (z,))], Tolerance()
    ).entries
    assert kept.provenance.run_id == "z"
    (kept,) = merge_inputs(
        [InputDb(Path("z"), (z,)), InputDb(Path("y"), (y,))], Tolerance()
    ).entries
    assert kept.provenance.run_id == "y"


def test_different_settings_are_different_keys(tmp_path: Path) -> None:
    f16 = cal()
    q8 = dataclasses.replace(cal(cost=65_536.0), settings={"kv_cache_type": "fp8"})
    result = merge_inputs([InputDb(Path("a"), (f16,)), InputDb(Path("b"), (q8,))], Tolerance())
    assert len(result.entries) == 2 and result.conflicts == () and result.set_aside == 0


def test_old_schema_inputs_merge_and_the_output_is_schema_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = cal(device=RTX).to_yaml_dict()
    del old["provenance"]
    del old["settings_tag"]
    a = tmp_path / "old.yaml"
    a.write_text(yaml.safe_dump({"schema_version": 1, "entries": [old]}), encoding="utf-8")
    b = db(tmp_path, "new.yaml", [cal()])
    out = tmp_path / "out.yaml"
    assert merge_json(capsys, str(a), str(b), "-o", str(out))["entries"] == 2
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["schema_version"] == 3
    merged = {e.device: e for e in load(out)}
    assert merged[RTX].provenance == Provenance()


def test_output_may_be_one_of_the_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = db(tmp_path, "a.yaml", [cal(device=H100)])
    b = db(tmp_path, "b.yaml", [cal(device=RTX)])
    assert merge_json(capsys, str(a), str(b), "-o", str(a))["entries"] == 2
    assert {e.device for e in load(a)} == {H100, RTX}


# --------------------------------------------------------------------------- bad input


CORRUPT = [
    ("bad-yaml", "schema_version: 3\nentries:\n  - engine: [unclosed\n", 4, "invalid YAML"),
    ("bad-json", '{"schema_version": 3, "entries": [\n  {"engine": "vllm",,}\n]}\n', 2, "YAML"),
    (
        "wrong-schema",
        "schema_version: 3\nentries:\n  - engine: vllm\n    model: m\n    device: d\n"
        "    base_bytes: 1\n    cost_per_tok: 2\n",
        7,
        "unknown field 'cost_per_tok'",
    ),
    ("future-schema", "schema_version: 9\nentries: []\n", 1, "schema_version 9"),
    (
        "bad-time",
        "schema_version: 3\nentries:\n  - engine: vllm\n    model: m\n    device: d\n"
        "    base_bytes: 1\n    cost_per_token_bytes: 2\n    calibrated_at: last tuesday\n",
        8,
        "not an ISO date",
    ),
]


@pytest.mark.parametrize(("name", "text", "line", "needle"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_corrupt_input_is_one_line_naming_file_and_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, line: int, needle: str
) -> None:
    good = db(tmp_path, "good.yaml", [cal()])
    bad = tmp_path / f"{name}.yaml"
    bad.write_text(text, encoding="utf-8")
    out = tmp_path / "out" / "physics.yaml"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["merge", str(good), str(bad), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"vramphysics: error: {bad}:{line}: ")
    assert needle in err
    assert not out.exists() and not out.parent.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_missing_input_is_an_error_not_an_empty_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = db(tmp_path, "good.yaml", [cal()])
    out = tmp_path / "out.yaml"
    assert main(["merge", str(good), str(tmp_path / "nope.yaml"), "-o", str(out)]) == 2
    assert "nope.yaml: physics database file not found" in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_output_is_left_alone_when_an_input_is_corrupt(tmp_path: Path) -> None:
    out = db(tmp_path, "out.yaml", [cal(device=RTX)])
    before = out.read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 3\nentries: [3]\n", encoding="utf-8")
    assert main(["merge", str(bad), "-o", str(out)]) == 2
    assert out.read_bytes() == before


def test_tolerances_must_make_sense(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = db(tmp_path, "a.yaml", [cal()])
    assert main(["merge", str(a), "-o", str(tmp_path / "o.yaml"), "--rel-tol", "0"]) == 2
    assert "--rel-tol: must be in (0, 1)" in capsys.readouterr().err
    assert main(["merge", str(a), "-o", str(tmp_path / "o.yaml"), "--sigmas", "-1"]) == 2
    assert "--sigmas: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "o.yaml").exists()


def test_help_says_which_uncertainty_decides(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "standard errors" in text and "--sigmas x sqrt(se_a^2 + se_b^2)" in text
    assert "relative tolerance" in text and "--rel-tol x the larger figure" in text


def test_calibrated_at_is_checked_before_anything_is_written() -> None:
    from vramphysics.physics_merge import calibrated_time

    with pytest.raises(ConfigError, match="not an ISO date"):
        calibrated_time(cal(at="soon"), Path("x.yaml"), 0)


def test_an_output_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = db(tmp_path, "a.yaml", [cal()])
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["merge", str(a), "-o", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vramphysics: error: {folder}: cannot write the merged database")
    assert list(folder.iterdir()) == []
    assert not list(tmp_path.glob("*.tmp"))
