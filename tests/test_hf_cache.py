"""Hugging Face availability: complete snapshots only, where huggingface_hub itself would look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramphysics.hf_cache import (
    check_folder,
    has_chat_template,
    hub_cache,
    is_hf_id,
    locate,
    repo_folder,
)

REV = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(
    hub: Path,
    hf_id: str,
    files: dict[str, bytes],
    *,
    ref: bool = True,
    blobs: bool = True,
) -> Path:
    """A cache entry laid out as huggingface_hub writes it: blobs, links in snapshots/, refs."""
    repo = repo_folder(hub, hf_id)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{i}"
        if blobs:
            blob.write_bytes(data)
        (snap / name).symlink_to(Path("..", "..", "blobs", blob.name))
    if ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REV)
    return snap


def _index(*shards: str) -> bytes:
    return json.dumps({"weight_map": {f"w{i}": s for i, s in enumerate(shards)}}).encode()


CONFIG = b'{"model_type": "llama"}'


def test_complete_snapshot_is_present(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "org/model", {"config.json": CONFIG, "model.safetensors": b"x"})
    found = locate("org/model", hub_dir=hub)
    assert found.present and found.kind == "hub" and found.hf_id == "org/model"
    assert found.folder == snap


def test_sharded_snapshot_needs_every_shard_of_its_index(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    files = {
        "config.json": CONFIG,
        "model.safetensors.index.json": _index(
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
        ),
        "model-00001-of-00002.safetensors": b"x",
    }
    _snapshot(hub, "org/sharded", files)
    found = locate("org/sharded", hub_dir=hub)
    assert not found.present
    assert "model-00002-of-00002.safetensors missing" in found.detail

    files["model-00002-of-00002.safetensors"] = b"y"
    _snapshot(hub, "org/sharded-full", files)
    assert locate("org/sharded-full", hub_dir=hub).present


def test_partial_download_is_not_present(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    _snapshot(hub, "org/partial", {"config.json": CONFIG, "model.safetensors": b"x"})
    (repo_folder(hub, "org/partial") / "blobs" / "abc.incomplete").write_bytes(b"half")
    found = locate("org/partial", hub_dir=hub)
    assert not found.present and "incomplete" in found.detail


def test_link_to_a_missing_blob_is_not_present(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    _snapshot(hub, "org/noblobs", {"config.json": CONFIG, "model.safetensors": b"x"}, blobs=False)
    assert not locate("org/noblobs", hub_dir=hub).present


def test_snapshot_without_weights_or_config_is_not_present(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    _snapshot(hub, "org/configonly", {"config.json": CONFIG, "tokenizer.json": b"{}"})
    found = locate("org/configonly", hub_dir=hub)
    assert not found.present and "no weight files" in found.detail
    _snapshot(hub, "org/noconfig", {"model.safetensors": b"x"})
    assert "no config.json" in locate("org/noconfig", hub_dir=hub).detail


def test_pytorch_bin_weights_count_but_training_args_do_not(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    _snapshot(hub, "org/bin", {"config.json": CONFIG, "pytorch_model.bin": b"x"})
    assert locate("org/bin", hub_dir=hub).present
    _snapshot(hub, "org/args", {"config.json": CONFIG, "training_args.bin": b"x"})
    assert not locate("org/args", hub_dir=hub).present


def test_snapshot_without_refs_uses_the_newest(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    _snapshot(hub, "org/norefs", {"config.json": CONFIG, "model.safetensors": b"x"}, ref=False)
    assert locate("org/norefs", hub_dir=hub).present


def test_absent_model_says_where_it_looked(tmp_path: Path) -> None:
    found = locate("org/absent", hub_dir=tmp_path / "hub")
    assert not found.present and str(tmp_path / "hub") in found.detail


def test_precedence_hf_hub_cache_then_hf_home_then_config(tmp_path: Path) -> None:
    configured = tmp_path / "cfg-home"
    env = {"HF_HUB_CACHE": str(tmp_path / "hubcache"), "HF_HOME": str(tmp_path / "home")}
    first = hub_cache(configured, env)
    assert (first.hub_dir, first.source) == (tmp_path / "hubcache", "HF_HUB_CACHE")
    second = hub_cache(configured, {"HF_HOME": str(tmp_path / "home")})
    assert (second.hub_dir, second.home_dir, second.source) == (
        tmp_path / "home" / "hub",
        tmp_path / "home",
        "HF_HOME",
    )
    third = hub_cache(configured, {})
    assert (third.hub_dir, third.source) == (configured / "hub", "config")
    assert hub_cache(configured, {"HF_HUB_CACHE": ""}).source == "config"


def test_precedence_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    hub = hub_cache(tmp_path / "ignored").hub_dir
    _snapshot(hub, "org/model", {"config.json": CONFIG, "model.safetensors": b"x"})
    assert locate("org/model", hub_dir=hub_cache(tmp_path / "ignored").hub_dir).present
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert not locate("org/model", hub_dir=hub_cache(tmp_path / "ignored").hub_dir).present


def test_local_folder_by_path_or_under_the_model_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "model.safetensors").write_bytes(b"x")
    hub = tmp_path / "hub"
    by_path = locate(str(folder), hub_dir=hub)
    assert by_path.present and by_path.kind == "local" and by_path.folder == folder
    under = locate("tiny", hub_dir=hub, model_dir=tmp_path / "models")
    assert under.present and under.folder == tmp_path / "models" / "tiny"
    monkeypatch.chdir(tmp_path)
    assert locate("./models/tiny", hub_dir=hub).present
    assert locate("models/tiny", hub_dir=hub).present  # an existing folder wins over an ID
    assert not locate(str(tmp_path / "nothing"), hub_dir=hub).present
    (folder / "model.safetensors").unlink()
    assert "no weight files" in check_folder(folder).detail


def test_bad_ids_are_not_present(tmp_path: Path) -> None:
    for bad in ("just-a-name", "org/name/extra", "org//name", "-org/name", "org/na me", "org/a--b"):
        assert not is_hf_id(bad), bad
        found = locate(bad, hub_dir=tmp_path / "hub", model_dir=tmp_path / "models")
        assert not found.present and found.kind == "invalid", bad
        assert "not a Hugging Face ID" in found.detail
    for good in ("Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B", "a/b", "org/model.v1_2"):
        assert is_hf_id(good), good
    assert not locate("../escape", hub_dir=tmp_path / "hub", model_dir=tmp_path / "models").present


def test_chat_template_in_any_of_transformers_files(tmp_path: Path) -> None:
    assert not has_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ x }}"}')
    assert has_chat_template(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "chat_template.jinja").write_text("{{ x }}")
    assert has_chat_template(other)
