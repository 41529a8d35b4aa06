"""Bad inputs: a corrupt database, a folder that cannot be written, a model name with `..`.

Each is refused in one line that names the file (and line), with no traceback and no engine
started; a corrupt database is never rewritten.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from vramphysics import physics_db

if TYPE_CHECKING:
    from conftest import Workspace  # the `ws` fixture

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(120)]


def _real_db_text(tmp: Path) -> str:
    entry = physics_db.PhysicsEntry(
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
    physics_db.write_entries(tmp / "physics.yaml", [entry])
    return (tmp / "physics.yaml").read_text(encoding="utf-8")


def _torn(text: str) -> bytes:
    """The file as a crash in the middle of a non-atomic write would leave it."""
    cut = text.index("[512, ") + len("[512, 7066")
    return text[:cut].encode()


_UNCLOSED = b"schema_version: 1\nentries:\n- engine: llamacpp\n  model: [unclosed\n"
_TAB = b"schema_version: 1\nentries:\n- engine: llamacpp\n\tmodel: x\n"
_BAD_ENTRY = b"schema_version: 1\nentries:\n- engine: llamacpp\n  model: x\n"
_FUTURE = b"schema_version: 99\nentries: []\n"

CORRUPT = [
    pytest.param(lambda t: _UNCLOSED, 5, id="unclosed-bracket"),
    pytest.param(lambda t: _TAB, 4, id="tab-indent"),
    pytest.param(_torn, "any", id="torn-write"),
    pytest.param(lambda t: _BAD_ENTRY, None, id="entry-without-figures"),
    pytest.param(lambda t: _FUTURE, None, id="future-schema"),
    pytest.param(
        lambda t: b"\0" * 4096,
        None,
        id="nul-filled",
    ),
    pytest.param(
        lambda t: b"schema_version: 1\nentries:\n- engine: llama\xe7pp\n",
        None,
        id="not-utf8",
    ),
]


@pytest.mark.parametrize(("content", "line"), CORRUPT)
def test_corrupt_database_is_refused_in_one_line_and_left_untouched(
    ws: Workspace, figures: dict[str, Any], tmp_path: Path, content: Any, line: int | str | None
) -> None:
    """`line`: the line the message must name, "any" line, or None (a key is named instead)."""
    data: bytes = content(_real_db_text(tmp_path))
    ws.cal.mkdir()
    ws.db_path.write_bytes(data)

    result = ws.run()
    figures.update(exit=result.returncode, engines_started=len(ws.engines()))

    assert result.returncode != 0
    message = ws.one_line_error(result.stderr)
    pattern = re.escape(f"{ws.db_path}:")
    if line == "any":
        pattern += r"\d+:"
    elif line is not None:
        pattern += f"{line}:"
    assert re.search(pattern, message), message
    assert ws.db_path.read_bytes() == data, "a corrupt database is never rewritten"
    assert not ws.journals() and not (ws.state / "logs").exists(), "nothing started"
    assert not ws.engines()


def _under_a_file(ws: Workspace, key: str) -> Path:
    (ws.root / "afile").write_text("a regular file, not a folder\n")
    ws.configure(paths={key: "afile/sub"})
    return ws.root / "afile" / "sub"


def _read_only(ws: Workspace, key: str) -> Path:
    folder = ws.root / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    ws.configure(paths={key: "ro"})
    return folder


@pytest.mark.parametrize("key", ["report_dir", "calibration_dir", "state_dir"])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_under_a_file, id="under-a-file"),
        pytest.param(
            _read_only,
            id="chmod-500",
            marks=pytest.mark.skipif(
                os.geteuid() == 0, reason="root writes through chmod 0o500; see under-a-file"
            ),
        ),
    ],
)
def test_unwritable_folder_is_refused_before_any_engine_starts(
    ws: Workspace, figures: dict[str, Any], key: str, make: Any
) -> None:
    folder = make(ws, key)
    result = ws.run()
    figures.update(exit=result.returncode, engines_started=len(ws.engines()))

    assert result.returncode == 2, result.stderr
    message = ws.one_line_error(result.stderr)
    assert str(folder) in message and "not writable" in message, message
    assert not ws.journals()
    assert not ws.engines()
    assert not (ws.state / "logs").exists() or key == "state_dir"


ESCAPES = ["../../etc/passwd", "../secret", "sub/../../secret", "{root}/secret"]


@pytest.mark.parametrize("name", ESCAPES)
def test_model_name_escaping_the_model_folder_is_refused(
    ws: Workspace, figures: dict[str, Any], gguf: Path, name: str
) -> None:
    secret = ws.root / "secret.gguf"  # a real model outside the model folder: bait
    secret.write_bytes(gguf.read_bytes())
    name = name.format(root=ws.root)
    ws.setups = ["llamacpp:tiny.gguf", f"llamacpp:{name}"]  # a good model first

    result = ws.run()
    figures.update(exit=result.returncode)

    # The product refuses the whole run up front (exit 2), before the good model's sweep too;
    # a FAILED or MISSING row for the bad one alone would have done as well.
    assert result.returncode == 2, result.stderr
    message = ws.one_line_error(result.stderr)
    assert repr(name) in message and "model folder" in message, message
    assert ":3: " in message, "the setups file's line of the bad ID (line 1 is the setup name)"
    records = ws.journal()
    assert not [r for r in records if r["kind"] in ("model", "point", "bench_cell", "request")], (
        "nothing ran"
    )
    assert not (ws.state / "logs").exists() or not list((ws.state / "logs").rglob("*.log"))
    assert not ws.engines()
    figures.update(journal_rows=len(records))


def test_database_entry_with_negative_cost_does_not_sink_the_report(
    ws: Workspace, figures: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
    noisy = physics_db.PhysicsEntry(
        engine="llamacpp",
        model="llamacpp:older.gguf",
        device="cpu",
        probe="process",
        base_bytes=75_000_000.0,
        cost_per_token_bytes=-2236.0,
        r2=0.41,
        n_points=3,
        points=((512, 74e6), (1024, 72e6), (2048, 71e6)),
        engine_starts=3,
        device_total_bytes=16 * 2**30,  # as the runner writes it (the machine's RAM)
    )
    physics_db.write_entries(ws.db_path, [noisy])
    ws.configure(sweep={"contexts": [512, 1024], "min_points": 2})

    result = ws.run()
    figures.update(exit=result.returncode)

    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    figures.update(ws.invariants())
