"""YAML loading that remembers lines (yamlio.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramphysics.errors import ConfigError
from vramphysics.yamlio import Located, load_yaml

DOC = """\
# line 1: a comment
engines:
  llamacpp:
    port: 8400

    model_dir: models
sweep:
  contexts:
    - 512
    - 1024
  flow: [1, 2, 3]
items:
  - name: a
    value: 1
  - name: b
    value: 2
"""


@pytest.fixture
def doc(tmp_path: Path) -> Located:
    path = tmp_path / "c.yaml"
    path.write_text(DOC, encoding="utf-8")
    return load_yaml(path, what="config")


def test_data_is_the_safe_load(doc: Located) -> None:
    assert doc.data["engines"]["llamacpp"] == {"port": 8400, "model_dir": "models"}
    assert doc.data["sweep"]["contexts"] == [512, 1024]


@pytest.mark.parametrize(
    ("key_path", "line"),
    [
        ((), 2),  # the document starts at its first node, after the comment
        (("engines",), 2),
        (("engines", "llamacpp"), 3),
        (("engines", "llamacpp", "port"), 4),
        (("engines", "llamacpp", "model_dir"), 6),
        (("sweep",), 7),
        (("sweep", "contexts"), 8),
        (("sweep", "contexts", 0), 9),
        (("sweep", "contexts", 1), 10),
        (("sweep", "flow"), 11),
        (("sweep", "flow", 2), 11),
        (("items", 0), 13),
        (("items", 0, "value"), 14),
        (("items", 1), 15),
        (("items", 1, "name"), 15),
        (("items", 1, "value"), 16),
    ],
)
def test_line_of(doc: Located, key_path: tuple[str | int, ...], line: int) -> None:
    assert doc.line_of(*key_path) == line


def test_line_of_unknown_key_falls_back_to_the_deepest_known_parent(doc: Located) -> None:
    assert doc.line_of("engines", "llamacpp", "nope") == 3
    assert doc.line_of("sweep", "contexts", 7) == 8
    assert doc.line_of("nope", "deeper") == 2


def test_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("# nothing\n", encoding="utf-8")
    doc = load_yaml(path, what="config")
    assert doc.data is None
    assert doc.line_of() is None
    assert doc.line_of("x") is None


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("a: 1\nb:\n  c: [1, 2\nd: 4\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path, what="config")
    assert info.value.path == path
    assert info.value.line == 4
    assert str(info.value).startswith(f"{path}:4: invalid YAML: ")
    assert "\n" not in str(info.value)


def test_two_documents_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("a: 1\n---\nb: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_yaml(path, what="config")
    assert info.value.line == 2


def test_unsafe_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("a: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_yaml(path, what="config")
    assert info.value.line == 1


def test_missing_file_says_what(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path / "none.yaml", what="test setups")
    assert "test setups file not found" in str(info.value)


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, what="config")
    assert info.value.path == tmp_path
    assert "cannot read config file" in str(info.value)


def test_line_of_non_string_keys(tmp_path: Path) -> None:
    # the data has 5, True and 1.5 as keys, not "5", "true" and "1.5"
    path = tmp_path / "k.yaml"
    path.write_text('a: 1\n\n5: five\ntrue:\n  - x\n1.5: y\n"7": quoted\n', encoding="utf-8")
    doc = load_yaml(path, what="config")
    assert set(doc.data) == {"a", 5, True, 1.5, "7"}
    assert doc.line_of(5) == 3
    assert doc.line_of(True) == 4
    assert doc.line_of(True, 0) == 5
    assert doc.line_of(1.5) == 6
    assert doc.line_of("7") == 7


def test_a_duplicate_key_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "setups.yaml"
    path.write_text("demo:\n  - llamacpp:a.gguf\nother: []\ndemo:\n  - llamacpp:b.gguf\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path, what="test setups")
    assert err.value.line == 4 and "demo" in str(err.value) and str(path) in str(err.value)


# -- aliases are refused: nested ones expand to billions of values ("billion laughs") -----


def _laughs(levels: int = 8, width: int = 9) -> str:
    """Nine lists of nine, `levels` deep: 9**8 = 43 million strings once expanded."""
    out = ['a: &a ["lol"]']
    prev = "a"
    for i in range(levels):
        name = f"l{i}"
        out.append(f"{name}: &{name} [{', '.join(['*' + prev] * width)}]")
        prev = name
    return "\n".join(out) + "\n"


def test_billion_laughs_setups_file_is_refused_at_its_first_alias(tmp_path: Path) -> None:
    from vramphysics.setups import load_setups

    path = tmp_path / "test_setups.yaml"
    path.write_text("demo:\n  - llamacpp:tiny.gguf\n" + _laughs(), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_setups(path)
    err = info.value
    assert (err.path, err.line) == (path, 4)  # l0's line: the first alias (*a) stands there
    assert str(err).startswith(f"{path}:4: YAML alias *a is not allowed in a test setups file")


def test_billion_laughs_config_is_refused(tmp_path: Path) -> None:
    from vramphysics.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("sweep:\n  contexts: [512, 1024]\n" + _laughs(), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.path, info.value.line) == (path, 4)
    assert "YAML alias *a is not allowed in a config file" in str(info.value)


def test_a_single_alias_is_refused_too(tmp_path: Path) -> None:
    # a harmless-looking alias (or merge key) is refused as well: one rule, easy to explain
    path = tmp_path / "c.yaml"
    path.write_text(
        "base: &base\n  port: 8400\nengines:\n  llamacpp:\n    <<: *base\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_yaml(path, what="config")
    assert info.value.line == 5
    assert "*base" in str(info.value)


def test_an_anchor_without_alias_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("engines: &e\n  llamacpp:\n    port: 8400\n", encoding="utf-8")
    assert load_yaml(path, what="config").data == {"engines": {"llamacpp": {"port": 8400}}}
