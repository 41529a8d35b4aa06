"""The model-ID grammar and `test_setups.yaml` (setups.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramphysics.errors import ConfigError, SetupError
from vramphysics.setups import (
    ModelSpec,
    load_device_kinds,
    load_setups,
    parse_model_id,
    select_setups,
)

# -- the grammar: engine, prefix and name ---------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "engine", "prefix", "name"),
    [
        ("ol_llama3.1:8b", "ollama", "ol_", "llama3.1:8b"),
        ("OL_llama3.1:8b", "ollama", "OL_", "llama3.1:8b"),
        ("Ol_gemma3", "ollama", "Ol_", "gemma3"),
        ("vl_Qwen/Qwen2.5-7B-Instruct", "vllm", "vl_", "Qwen/Qwen2.5-7B-Instruct"),
        ("VL_Qwen/Qwen2.5-7B-Instruct", "vllm", "VL_", "Qwen/Qwen2.5-7B-Instruct"),
        ("vllm:facebook/opt-125m", "vllm", "vllm:", "facebook/opt-125m"),
        ("VLLM:facebook/opt-125m", "vllm", "VLLM:", "facebook/opt-125m"),
        ("llamacpp:tiny-llama.gguf", "llamacpp", "llamacpp:", "tiny-llama.gguf"),
        (
            "llamacpp:/models/q4/llama-7b.Q4_K_M.gguf",
            "llamacpp",
            "llamacpp:",
            "/models/q4/llama-7b.Q4_K_M.gguf",
        ),
        ("LlamaCpp:tiny", "llamacpp", "LlamaCpp:", "tiny"),
        # bare names: ':' or '/' says Ollama
        ("qwen2.5:7b", "ollama", "", "qwen2.5:7b"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF", "ollama", "", "hf.co/bartowski/Llama-3.2-1B-GGUF"),
        ("library/gemma3", "ollama", "", "library/gemma3"),
    ],
)
def test_engine_prefix_and_name(model_id: str, engine: str, prefix: str, name: str) -> None:
    spec = parse_model_id(model_id)
    assert (spec.engine, spec.prefix, spec.name) == (engine, prefix, name)
    assert spec.raw == model_id
    assert (spec.stream, spec.ctx, spec.img_lim, spec.vid_lim) == (False, None, None, None)
    assert spec.flag_order == ()


def test_vllm_colon_prefix_wins_over_the_ollama_colon_rule() -> None:
    # 'vllm:x' has a ':' but the prefix decides first
    assert parse_model_id("vllm:x").engine == "vllm"
    # 'ol_' inside a name is not a prefix
    assert parse_model_id("org/ol_model").engine == "ollama"
    assert parse_model_id("org/ol_model").prefix == ""


@pytest.mark.parametrize("model_id", ["qwen", "llama3", "tiny-llama.gguf", "model_without_sep"])
def test_bare_id_without_separator_names_the_id(model_id: str) -> None:
    with pytest.raises(SetupError) as info:
        parse_model_id(model_id)
    assert info.value.model_id == model_id
    assert repr(model_id) in str(info.value)
    assert "cannot tell the engine" in str(info.value)


@pytest.mark.parametrize("model_id", ["ol_", "VL_", "vllm:", "llamacpp:", "llamacpp:#stream"])
def test_prefix_without_name(model_id: str) -> None:
    with pytest.raises(SetupError, match="no model name"):
        parse_model_id(model_id)


@pytest.mark.parametrize("model_id", ["", "   ", " ol_a:1", "ol_a:1 ", "ol_a b:1"])
def test_blank_and_white_space(model_id: str) -> None:
    with pytest.raises(SetupError) as info:
        parse_model_id(model_id)
    assert info.value.model_id == model_id


def test_non_string_id() -> None:
    with pytest.raises(SetupError, match="must be a string"):
        parse_model_id(42)  # type: ignore[arg-type]


# -- flags -----------------------------------------------------------------------------------


def test_all_flags() -> None:
    spec = parse_model_id("vl_Qwen/Qwen2-VL-7B-Instruct#stream#ctx=8192#img_lim=2#vid_lim=0")
    assert spec.engine == "vllm"
    assert spec.name == "Qwen/Qwen2-VL-7B-Instruct"
    assert spec.stream is True
    assert spec.ctx == 8192
    assert spec.img_lim == 2
    assert spec.vid_lim == 0
    assert spec.flag_order == ("stream", "ctx", "img_lim", "vid_lim")


def test_flags_in_any_order_give_the_same_values() -> None:
    a = parse_model_id("ol_qwen2.5:7b#ctx=4096#stream")
    b = parse_model_id("ol_qwen2.5:7b#stream#ctx=4096")
    assert (a.stream, a.ctx) == (b.stream, b.ctx) == (True, 4096)
    assert a.flag_order == ("ctx", "stream")
    assert b.flag_order == ("stream", "ctx")


def test_smallest_valid_values() -> None:
    assert parse_model_id("ol_a:1#ctx=1").ctx == 1
    assert parse_model_id("vl_a/b#img_lim=0").img_lim == 0
    assert parse_model_id("vl_a/b#vid_lim=0").vid_lim == 0


@pytest.mark.parametrize(
    ("model_id", "needle"),
    [
        ("ol_a:1#ctx=abc", "whole number"),
        ("ol_a:1#ctx=", "whole number"),
        ("ol_a:1#ctx", "whole number"),
        ("ol_a:1#ctx=-5", "whole number"),
        ("ol_a:1#ctx=1.5", "whole number"),
        ("ol_a:1#ctx= 512", "whole number"),
        ("ol_a:1#ctx=0", ">= 1"),
        ("ol_a:1#ctx=0512", "leading zeros"),
        ("vl_a/b#img_lim=-1", "whole number"),
        ("vl_a/b#img_lim=01", "leading zeros"),
        ("vl_a/b#vid_lim=x", "whole number"),
        ("ol_a:1#stream=1", "takes no value"),
        ("ol_a:1#stream#stream", "given twice"),
        ("ol_a:1#ctx=512#ctx=1024", "given twice"),
        ("ol_a:1#ctx=512#stream#ctx=512", "given twice"),
        ("ol_a:1#foo", "unknown flag #foo"),
        ("ol_a:1#ctx=512#temperature=0.1", "unknown flag #temperature=0.1"),
        ("ol_a:1#", "unknown flag #"),
        ("ol_a:1##stream", "unknown flag #"),
        ("ol_a:1#STREAM", "lower case"),
        ("ol_a:1#Ctx=512", "lower case"),
    ],
)
def test_bad_flags_name_the_id(model_id: str, needle: str) -> None:
    with pytest.raises(SetupError) as info:
        parse_model_id(model_id)
    message = str(info.value)
    assert info.value.model_id == model_id
    assert message.startswith(f"model ID {model_id!r}: ")
    assert needle in message


def test_unknown_flag_lists_the_valid_ones() -> None:
    with pytest.raises(SetupError) as info:
        parse_model_id("ol_a:1#fast")
    assert "#stream" in str(info.value)
    assert "#ctx=N" in str(info.value)
    assert "#img_lim=N" in str(info.value)
    assert "#vid_lim=N" in str(info.value)


# -- round trip ------------------------------------------------------------------------------

ROUND_TRIP_IDS = [
    "ol_llama3.1:8b",
    "OL_llama3.1:8b",
    "oL_x:1",
    "qwen2.5:7b",
    "qwen2.5:7b#stream",
    "hf.co/org/model-GGUF:Q4_K_M#ctx=2048",
    "vl_Qwen/Qwen2.5-7B-Instruct",
    "VL_Qwen/Qwen2.5-7B-Instruct#ctx=32768",
    "vllm:facebook/opt-125m#stream#ctx=512",
    "Vllm:facebook/opt-125m#ctx=512#stream",
    "vl_Qwen/Qwen2-VL-7B-Instruct#img_lim=4#vid_lim=1",
    "vl_Qwen/Qwen2-VL-7B-Instruct#vid_lim=1#img_lim=4#stream#ctx=1",
    "vl_llava-hf/llava-1.5-7b-hf#img_lim=0",
    "llamacpp:tiny-llama.gguf",
    "LLAMACPP:tiny-llama.gguf#ctx=8192",
    "llamacpp:/abs/path/with.dots/model.Q8_0.gguf#stream",
    "llamacpp:relative/dir/m.gguf#ctx=100000#stream",
    "llamacpp:C:/models/win.gguf",
]


@pytest.mark.parametrize("model_id", ROUND_TRIP_IDS)
def test_round_trip(model_id: str) -> None:
    spec = parse_model_id(model_id)
    assert str(spec) == model_id
    assert spec.format() == model_id
    # and parsing the printed form gives the same record
    assert parse_model_id(str(spec)) == spec


def test_model_spec_is_frozen() -> None:
    spec = parse_model_id("ol_a:1")
    with pytest.raises(AttributeError):
        spec.ctx = 5  # type: ignore[misc]


# -- limit_mm_per_prompt ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("vl_a/b", {}),
        ("vl_a/b#ctx=4096#stream", {}),
        ("vl_a/b#img_lim=3", {"image": 3}),
        ("vl_a/b#vid_lim=2", {"video": 2}),
        ("vl_a/b#vid_lim=0#img_lim=5", {"image": 5, "video": 0}),
    ],
)
def test_limit_mm_per_prompt(model_id: str, expected: dict[str, int]) -> None:
    assert parse_model_id(model_id).limit_mm_per_prompt == expected


# -- load_setups -----------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "test_setups.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_setups_reads_every_setup_in_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# comment\n"
        "demo:\n"
        "  - llamacpp:tiny-llama.gguf\n"
        "  - ol_qwen2.5:7b#ctx=4096#stream\n"
        "vision: [vl_Qwen/Qwen2-VL-7B-Instruct#img_lim=2]\n"
        "empty:\n",
    )
    setups = load_setups(path)
    assert list(setups) == ["demo", "vision", "empty"]
    assert [str(s) for s in setups["demo"]] == [
        "llamacpp:tiny-llama.gguf",
        "ol_qwen2.5:7b#ctx=4096#stream",
    ]
    assert setups["demo"][1].ctx == 4096
    assert setups["vision"][0].limit_mm_per_prompt == {"image": 2}
    assert setups["empty"] == []


def test_load_setups_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo:\n  - ol_a:1\n  bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_setups(path)
    assert info.value.path == path
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: invalid YAML")


def test_load_setups_tab_indent_is_broken_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo:\n\t- ol_a:1\n")
    with pytest.raises(ConfigError) as info:
        load_setups(path)
    assert info.value.line == 2
    assert "invalid YAML" in str(info.value)


def test_setup_that_is_not_a_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo:\n  - ol_a:1\nother: ol_b:2\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    err = info.value
    assert (err.path, err.line, err.key) == (path, 3, "other")
    assert str(err).startswith(f"{path}:3: other: ")
    assert "'other' must be a list" in str(err)


def test_setup_mapping_with_an_unknown_key(tmp_path: Path) -> None:
    # a mapping holds `models:` and `devices:`; a typo names its line
    path = _write(tmp_path, "demo:\n  model: ol_a:1\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.line == 2
    assert "unknown key 'model' (valid: models, devices)" in str(info.value)


def test_non_string_item_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo:\n  - ol_a:1\n\n  - 42\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.line == 4
    assert "item 2 of setup 'demo'" in str(info.value)
    assert "42" in str(info.value)


def test_nested_list_item_is_not_an_id(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo:\n  - [ol_a:1]\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.line == 2


@pytest.mark.parametrize(
    ("bad_id", "needle"),
    [
        ("qwen", "cannot tell the engine"),
        ("ol_a:1#ctx=abc", "whole number"),
        ("ol_a:1#ctx=0", ">= 1"),
        ("ol_a:1#turbo", "unknown flag"),
        ("ol_a:1#stream#stream", "given twice"),
    ],
)
def test_bad_id_in_a_file_names_file_line_and_id(tmp_path: Path, bad_id: str, needle: str) -> None:
    path = _write(tmp_path, f"# header\ndemo:\n  - ol_good:1\n  - {bad_id}\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    message = str(info.value)
    assert info.value.path == path
    assert info.value.line == 4
    assert message.startswith(f"{path}:4: demo: model ID {bad_id!r}: ")
    assert needle in message


def test_bad_id_in_a_flow_list_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a: [ol_x:1]\nb: [ol_y:1, nope]\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.line == 2
    assert "'nope'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no setups defined"),
        ("# only a comment\n", "no setups defined"),
        ("- ol_a:1\n", "expected a mapping"),
        ("just a string\n", "expected a mapping"),
        ("bad name: [ol_a:1]\n", "bad setup name"),
        ("1: [ol_a:1]\n", "bad setup name"),
        ("-x: [ol_a:1]\n", "bad setup name"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.path == path
    assert needle in str(info.value)


def test_bad_setup_name_that_is_not_a_string_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo: [ol_a:1]\n\n2024: [ol_b:1]\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.line == 3
    assert str(info.value) == f"{path}:3: bad setup name 2024"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_setups(path)
    assert info.value.path == path
    assert "not found" in str(info.value)


# -- select_setups ---------------------------------------------------------------------------


def _setups() -> dict[str, list[ModelSpec]]:
    return {
        "a": [parse_model_id("ol_x:1"), parse_model_id("ol_y:1")],
        "b": [parse_model_id("llamacpp:z.gguf")],
    }


def test_select_all_in_file_order() -> None:
    chosen = select_setups(_setups(), None, path=Path("s.yaml"))
    assert [(n, s.raw) for n, s in chosen] == [
        ("a", "ol_x:1"),
        ("a", "ol_y:1"),
        ("b", "llamacpp:z.gguf"),
    ]


def test_select_named_in_the_given_order() -> None:
    chosen = select_setups(_setups(), ["b", "a"], path=Path("s.yaml"))
    assert [n for n, _ in chosen] == ["b", "a", "a"]


def test_select_unknown_name() -> None:
    with pytest.raises(SetupError) as info:
        select_setups(_setups(), ["a", "nope", "zzz"], path=Path("s.yaml"))
    message = str(info.value)
    assert message.startswith("s.yaml: ")
    assert "'nope'" in message and "'zzz'" in message
    assert "have: a, b" in message


# -- device kinds (`devices:`, for `--ray`) ---------------------------------------------------


def test_setup_mapping_names_models_and_device_kinds(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "demo:\n  devices: [kind-a, kind-b]\n  models:\n    - ol_a:1\n    - ol_b:2\nplain:\n  - ol_c:3\n",
    )
    setups = load_setups(path)
    assert [s.raw for s in setups["demo"]] == ["ol_a:1", "ol_b:2"]
    assert [s.raw for s in setups["plain"]] == ["ol_c:3"]
    assert load_device_kinds(path) == {"demo": ("kind-a", "kind-b")}


def test_bad_model_in_a_mapping_setup_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "demo:\n  devices: [kind-a]\n  models:\n    - ol_a:1\n    - 42\n")
    with pytest.raises(SetupError) as info:
        load_setups(path)
    assert info.value.line == 5
    assert "item 2 of setup 'demo'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("demo:\n  devices: kind-a\n  models: [ol_a:1]\n", 2, "non-empty list of device kinds"),
        ("demo:\n  devices: []\n  models: [ol_a:1]\n", 2, "non-empty list of device kinds"),
        ("demo:\n  devices:\n    - ok\n    - 'bad kind'\n", 4, "bad device kind 'bad kind'"),
        ("demo:\n  devices: [a, a]\n", 2, "a device kind is named twice"),
    ],
)
def test_bad_device_kinds_name_their_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SetupError) as info:
        load_device_kinds(path)
    assert info.value.line == line
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_model_line_in_either_form(tmp_path: Path) -> None:
    from vramphysics.setups import model_line
    from vramphysics.yamlio import load_yaml

    path = _write(
        tmp_path, "a:\n  - ol_a:1\n  - ol_b:1\nb:\n  devices: [k]\n  models:\n    - ol_c:1\n"
    )
    doc = load_yaml(path, what="test setups")
    assert model_line(doc, "a", 1) == 3
    assert model_line(doc, "b", 0) == 7
