"""Is a Hugging Face model on disk? A complete snapshot in the hub cache, or a local folder.

Look-ups over the file system only: nothing is downloaded here (the vLLM engine's `download`
fetches a snapshot, and only when the user asked with --force-download).

Where the hub cache is (the first that is set wins)::

    HF_HUB_CACHE               the hub folder itself (as huggingface_hub reads it)
    HF_HOME/hub                the Hugging Face home folder
    <configured hf_cache>/hub  config.yaml's engines.vllm.hf_cache (default ~/.cache/huggingface)

The environment wins over the configuration because a vLLM server we launch inherits our
environment, and huggingface_hub inside it looks where these variables point: the availability
check must look in the same place. When neither variable is set, the engine passes
`HF_HOME=<hf_cache>` to the server (and mounts that folder into a container), so the configured
folder is then the one both sides use.

A model in the cache is present when the snapshot of its `refs/main` revision (else the newest
snapshot) holds `config.json` and every weight file: each shard `model.safetensors.index.json`
(or `pytorch_model.bin.index.json`) names, or at least one `*.safetensors` / `*.bin` file when
there is no index. A download in progress or interrupted (`blobs/*.incomplete`, a link into
`blobs/` whose target is missing) is not present.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HF_HOME = Path("~/.cache/huggingface")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin"})
# `org/name` as the hub allows it: letters, digits, `-`, `_`, `.`; no `--` or `..`.
_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_HF_ID = re.compile(rf"^{_HF_PART}/{_HF_PART}$")


@dataclass(frozen=True)
class HubCache:
    """Where the hub cache is, and which setting said so."""

    hub_dir: Path  # holds the models--org--name folders
    home_dir: Path | None  # the HF home (hub_dir's parent) when the home decided it
    source: str  # "HF_HUB_CACHE" | "HF_HOME" | "config"


@dataclass(frozen=True)
class ModelLookup:
    """Where a model was looked for, and whether it is complete there."""

    present: bool
    detail: str
    folder: Path | None  # the snapshot or local folder (also when incomplete, to say where)
    kind: str  # "hub" | "local" | "invalid"
    hf_id: str | None = None  # the hub ID, for a hub model


def is_hf_id(name: str) -> bool:
    """`org/name` as the hub spells IDs (no `--` or `..`, which the cache layout reserves)."""
    return bool(_HF_ID.match(name)) and "--" not in name and ".." not in name


def hub_cache(
    configured_home: Path | None = None, env: Mapping[str, str] | None = None
) -> HubCache:
    """The hub cache folder, by the precedence in the module docstring."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return HubCache(Path(env["HF_HUB_CACHE"]).expanduser(), None, "HF_HUB_CACHE")
    if env.get("HF_HOME"):
        home = Path(env["HF_HOME"]).expanduser()
        return HubCache(home / "hub", home, "HF_HOME")
    home = (configured_home or DEFAULT_HF_HOME).expanduser()
    return HubCache(home / "hub", home, "config")


def repo_folder(hub_dir: Path, hf_id: str) -> Path:
    """`<hub>/models--org--name`: huggingface_hub's folder for a model repository."""
    return hub_dir / ("models--" + hf_id.replace("/", "--"))


def locate(
    name: str,
    *,
    hub_dir: Path,
    model_dir: Path | None = None,
) -> ModelLookup:
    """Find model `name`: a folder path, a folder under `model_dir`, or an `org/name` in the cache.

    An existing local folder wins over a hub ID of the same spelling (as in transformers).
    """
    candidate = Path(name).expanduser()
    looks_like_path = candidate.is_absolute() or name.startswith((".", "~"))
    if looks_like_path or candidate.is_dir():
        return check_folder(candidate, kind="local")
    if model_dir is not None and ".." not in candidate.parts:
        under = model_dir / name
        if under.is_dir():
            return check_folder(under, kind="local")
    if not is_hf_id(name):
        where = f" or a folder under {model_dir}" if model_dir is not None else ""
        return ModelLookup(
            False,
            f"{name!r} is not a Hugging Face ID (org/name), a model folder{where}",
            None,
            "invalid",
        )
    return check_hub(hub_dir, name)


def check_hub(hub_dir: Path, hf_id: str) -> ModelLookup:
    """Is `hf_id` complete in the hub cache `hub_dir`?"""
    repo = repo_folder(hub_dir, hf_id)
    if not repo.is_dir():
        return ModelLookup(
            False, f"{hf_id} is not in the Hugging Face cache {hub_dir}", None, "hub", hf_id
        )
    partial = sorted((repo / "blobs").glob("*.incomplete")) if (repo / "blobs").is_dir() else []
    if partial:
        return ModelLookup(
            False,
            f"{hf_id}: download not finished ({len(partial)} incomplete file(s) in {repo / 'blobs'})",
            None,
            "hub",
            hf_id,
        )
    snapshot = _snapshot(repo)
    if snapshot is None:
        return ModelLookup(False, f"{hf_id}: no snapshot in {repo}", None, "hub", hf_id)
    found = check_folder(snapshot, kind="hub")
    return ModelLookup(found.present, f"{hf_id}: {found.detail}", found.folder, "hub", hf_id)


def _snapshot(repo: Path) -> Path | None:
    """The snapshot `refs/main` names, else the newest one; None when there is none."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
        if revision and (snapshots / revision).is_dir():
            return snapshots / revision
    folders = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


def check_folder(folder: Path, *, kind: str = "local") -> ModelLookup:
    """A model folder is complete with `config.json` and all its weight files."""
    if not folder.is_dir():
        return ModelLookup(False, f"no model folder at {folder}", folder, kind)
    if not (folder / "config.json").is_file():
        return ModelLookup(False, f"no config.json in {folder}", folder, kind)
    missing = missing_weights(folder)
    if missing is None:
        return ModelLookup(
            False, f"no weight files (*.safetensors, *.bin) in {folder}", folder, kind
        )
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        return ModelLookup(False, f"incomplete: {shown} missing in {folder}", folder, kind)
    return ModelLookup(True, f"found {folder}", folder, kind)


def missing_weights(folder: Path) -> list[str] | None:
    """The weight files an index names that are missing (`[]`: complete); None: no weights.

    `Path.is_file` follows the cache's links into `blobs/`, so a link to a blob that is not
    there (yet) counts as missing.
    """
    for index_name in WEIGHT_INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            except (OSError, ValueError, AttributeError):
                return [index_name + " (unreadable)"]
            shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
            if not shards:
                return [index_name + " (empty weight_map)"]
            return [s for s in shards if not (folder / s).is_file()]
    weights = [
        p
        for pattern in ("*.safetensors", "*.bin")
        for p in folder.glob(pattern)
        if p.name not in _NOT_WEIGHTS
    ]
    if not weights:
        return None
    return sorted(p.name for p in weights if not p.is_file())


def has_chat_template(folder: Path) -> bool:
    """Does the model folder ship a chat template (transformers' files, old and new)?"""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("chat_template"))
