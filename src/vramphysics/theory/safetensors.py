"""Weights bytes from safetensors headers (tensors are never loaded)."""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError
from vramphysics.theory.common import _load_json

log = logging.getLogger(__name__)


# Bytes per element of the safetensors dtype codes.
SAFETENSORS_DTYPE_BYTES: Mapping[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}

_SAFETENSORS_MAX_HEADER_BYTES = 100 * 2**20

SAFETENSORS_INDEX = "model.safetensors.index.json"


def _safetensors_header(path: Path) -> Mapping[str, Any]:
    """Loader: the JSON header of one safetensors file (8-byte little-endian length first)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConfigError("not a safetensors file: shorter than 8 bytes", path=path)
            (length,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if length > min(_SAFETENSORS_MAX_HEADER_BYTES, size - 8):
                raise ConfigError(
                    f"not a safetensors file: header length {length} for a {size}-byte file",
                    path=path,
                )
            raw = f.read(length)
    except OSError as exc:
        raise ConfigError(f"cannot read safetensors file: {exc}", path=path) from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not a safetensors file: bad header JSON ({exc})", path=path) from exc
    if not isinstance(header, dict):
        raise ConfigError("not a safetensors file: header is not an object", path=path)
    return header


_FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})


def _tensor_bytes(name: str, info: Any, *, path: Path, float_bytes: float | None = None) -> int:
    """Bytes of one tensor; with `float_bytes`, floating-point tensors count at that size
    (the dtype the engine casts them to), integer and quantized ones as stored."""
    if not isinstance(info, dict) or "dtype" not in info or "shape" not in info:
        raise ConfigError("tensor entry lacks dtype/shape", path=path, key=name)
    n = math.prod(int(s) for s in info["shape"])
    size = SAFETENSORS_DTYPE_BYTES.get(str(info["dtype"]))
    if float_bytes is not None and str(info["dtype"]) in _FLOAT_CODES:
        _tensor_bytes(name, info, path=path)  # the stored span is still checked
        return int(n * float_bytes)
    offsets = info.get("data_offsets")
    span = (
        int(offsets[1]) - int(offsets[0])
        if isinstance(offsets, list) and len(offsets) == 2
        else None
    )
    if size is None:
        if span is None:
            raise ConfigError(f"unknown dtype {info['dtype']!r}", path=path, key=name)
        return span  # sub-byte or new dtype: the stored span is exact
    nbytes = int(n * size)
    if span is not None and span != nbytes:
        raise ConfigError(
            f"shape x dtype gives {nbytes} bytes but data_offsets span {span}", path=path, key=name
        )
    return nbytes


def _safetensors_files(folder: Path) -> tuple[list[Path], Any]:
    """The safetensors files of a folder (the index's shards when it has one) and the index."""
    index_path = folder / SAFETENSORS_INDEX
    if not index_path.is_file():
        return sorted(folder.glob("*.safetensors")), None
    index = _load_json(index_path, what="safetensors index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ConfigError("no weight_map", path=index_path, key="weight_map")
    files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"shard {f.name} is listed but missing", path=index_path)
    return files, index


def tensor_bytes_by_name(folder: Path) -> dict[str, int]:
    """Bytes of every tensor of the folder's safetensors files, by name, as stored (headers
    only; tensors are never loaded). Empty when the folder has none."""
    files, _ = _safetensors_files(Path(folder))
    sizes: dict[str, int] = {}
    for f in files:
        header = _safetensors_header(f)
        for name, info in header.items():
            if name != "__metadata__":
                sizes[name] = _tensor_bytes(name, info, path=f)
    return sizes


def _weights_from_safetensors(
    folder: Path, float_bytes: float | None = None
) -> tuple[int | None, list[str]]:
    notes: list[str] = []
    index_path = folder / SAFETENSORS_INDEX
    files, index = _safetensors_files(folder)
    if not files:
        return None, notes
    total = 0
    for f in files:
        header = _safetensors_header(f)
        total += sum(
            _tensor_bytes(name, info, path=f, float_bytes=float_bytes)
            for name, info in header.items()
            if name != "__metadata__"
        )
    declared = index.get("metadata", {}).get("total_size") if isinstance(index, dict) else None
    if float_bytes is not None:
        notes.append(f"floating-point weights counted at {float_bytes:g} bytes per value")
    elif isinstance(declared, (int, float)) and int(declared) != total:
        notes.append(
            f"{SAFETENSORS_INDEX} declares total_size {int(declared)} but the headers sum to "
            f"{total}; using the headers"
        )
        log.warning("%s: total_size %s != %s from headers", index_path, declared, total)
    notes.append(f"weights: {total} bytes from {len(files)} safetensors file(s)")
    return total, notes


def weights_bytes_from_safetensors(folder: Path) -> int | None:
    """Sum of prod(shape) x dtype size over every tensor of the folder's safetensors files.

    Reads only the headers (tensors are never loaded). Uses the shards that
    `model.safetensors.index.json` names when present, else every `*.safetensors`; None when
    the folder has none.
    """
    return _weights_from_safetensors(Path(folder))[0]
