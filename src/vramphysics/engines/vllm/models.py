"""Where a vLLM model is: the names a setup may give, and a download into the hub cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx

from vramphysics import hf_cache
from vramphysics.errors import EngineError, SetupError
from vramphysics.redact import redact
from vramphysics.setups import ModelSpec

log = logging.getLogger(__name__)


def validate_model_name(spec: ModelSpec, model_dir: Path | None) -> None:
    """A path (absolute, `./`, `../`, `~`), a plain name for `model_dir`, or `org/name`."""
    name = spec.name
    if Path(name).is_absolute() or name.startswith((".", "~")):
        return
    if "/" not in name:
        if ".." in name or model_dir is None:
            raise SetupError(
                "not a Hugging Face ID (org/name); a local folder needs a path "
                "(./NAME or /abs/NAME) or engines.vllm.model_dir",
                model_id=spec.raw,
            )
        return
    if not hf_cache.is_hf_id(name):
        raise SetupError(
            "not a Hugging Face ID (org/name with letters, digits, '-', '_', '.'); "
            "write a local folder as ./PATH",
            model_id=spec.raw,
        )


def download_snapshot(spec: ModelSpec, found: hf_cache.ModelLookup, hf_home: Path) -> None:
    """Fetch the snapshot into the hub cache with `huggingface_hub` (a tqdm bar shows it)."""
    if found.kind != "hub" or found.hf_id is None:
        raise EngineError("download_failed", found.detail, model_id=spec.raw)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from tqdm.auto import tqdm

    hub = hf_cache.hub_cache(hf_home)
    hub.hub_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", found.hf_id, hub.hub_dir)
    try:
        snapshot_download(
            found.hf_id,
            cache_dir=hub.hub_dir,
            token=os.environ.get("HF_TOKEN") or None,
            tqdm_class=tqdm,
        )
    except (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        httpx.HTTPError,
        OSError,
        ValueError,
    ) as exc:
        raise EngineError(
            "download_failed", redact(f"{type(exc).__name__}: {exc}"), model_id=spec.raw
        ) from exc
