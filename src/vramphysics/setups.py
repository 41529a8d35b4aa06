"""Model IDs and `test_setups.yaml`: which engine runs which model, with which runtime flags.

Grammar (prefixes are case-insensitive)::

    ol_NAME | OL_NAME              Ollama
    vl_NAME | VL_NAME | vllm:NAME  vLLM
    llamacpp:NAME_OR_PATH          llama.cpp (a name under the model folder, or /abs/path.gguf)
    NAME with ':' or '/'           Ollama (e.g. qwen2.5:7b)
    ...#stream #warm #ctx=N #img_lim=N #vid_lim=N   runtime flags, in any order, at most once each

A setup is a list of model IDs, or a mapping with `models:` (that list) and `devices:` (the
device kinds a `--ray` run calibrates it on: each names the Ray resource `gpu:KIND` that the
nodes of that kind advertise at `ray start`; see docs/cluster.md). A local run ignores `devices`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.engines import registry
from vramphysics.errors import SetupError
from vramphysics.yamlio import Located, load_yaml

_INT_FLAGS = {"ctx": 1, "img_lim": 0, "vid_lim": 0}  # flag -> smallest valid value
_BOOL_FLAGS = ("stream", "warm")
_SETUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEVICE_KIND = _SETUP_NAME  # a device kind becomes the Ray resource `gpu:KIND`
_SETUP_KEYS = ("models", "devices")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model ID. `str(spec)` gives back the ID exactly as written."""

    raw: str
    engine: str
    name: str
    prefix: str = ""
    stream: bool = False
    warm: bool = False  # benchmark one prompt repeated, on purpose (the prefix cache may hit)
    ctx: int | None = None
    img_lim: int | None = None
    vid_lim: int | None = None
    flag_order: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.format()

    def format(self) -> str:
        """Rebuild the ID from its parts (flags in the order they were written)."""
        flags = []
        for flag in self.flag_order:
            if flag in _BOOL_FLAGS:
                flags.append(f"#{flag}")
            else:
                flags.append(f"#{flag}={getattr(self, flag)}")
        return f"{self.prefix}{self.name}{''.join(flags)}"

    @property
    def key(self) -> str:
        """The model as the physics database names it: the ID without its runtime flags."""
        return f"{self.prefix}{self.name}"

    @property
    def limit_mm_per_prompt(self) -> dict[str, int]:
        """vLLM's `--limit-mm-per-prompt` from #img_lim / #vid_lim (empty when neither is set)."""
        out = {}
        if self.img_lim is not None:
            out["image"] = self.img_lim
        if self.vid_lim is not None:
            out["video"] = self.vid_lim
        return out


def parse_model_id(text: str) -> ModelSpec:
    """Parse one model ID; a bad one raises SetupError naming it."""
    raw = _checked_text(text)
    base, *flag_parts = raw.split("#")
    engine, prefix, name = _split_prefix(base, raw)
    if not name:
        raise SetupError("no model name after the prefix", model_id=raw)
    if any(c.isspace() for c in name):
        raise SetupError("white space in the model name", model_id=raw)
    values: dict[str, int | bool] = {}
    order: list[str] = []
    for part in flag_parts:
        key, value = _flag(part, raw)
        if key in order:
            raise SetupError(f"flag #{part.partition('=')[0]} given twice", model_id=raw)
        if part.partition("=")[0] != key:
            raise SetupError(f"flag #{part.partition('=')[0]} must be lower case", model_id=raw)
        values[key] = value
        order.append(key)
    return ModelSpec(
        raw=raw,
        engine=engine,
        name=name,
        prefix=prefix,
        stream=bool(values.get("stream", False)),
        warm=bool(values.get("warm", False)),
        ctx=_int_or_none(values.get("ctx")),
        img_lim=_int_or_none(values.get("img_lim")),
        vid_lim=_int_or_none(values.get("vid_lim")),
        flag_order=tuple(order),
    )


def _checked_text(text: object) -> str:
    """The ID as written, refused when it is not a non-empty string without outer spaces."""
    if not isinstance(text, str):
        raise SetupError(
            f"a model ID must be a string, not {type(text).__name__}", model_id=str(text)
        )
    stripped = text.strip()
    if not stripped:
        raise SetupError("empty model ID", model_id=text)
    if stripped != text:
        raise SetupError("leading or trailing spaces", model_id=text)
    return text


def _flag(part: str, raw: str) -> tuple[str, int | bool]:
    """One `#flag` or `#flag=N`: its lower-case name and value."""
    key, eq, value = part.partition("=")
    key_l = key.lower()
    if key_l in _BOOL_FLAGS:
        if eq:
            raise SetupError(f"flag #{key} takes no value", model_id=raw)
        return key_l, True
    if key_l not in _INT_FLAGS:
        valid = ", ".join(f"#{f}" for f in (*_BOOL_FLAGS, *(f"{k}=N" for k in _INT_FLAGS)))
        raise SetupError(f"unknown flag #{part} (valid: {valid})", model_id=raw)
    if not eq or not re.fullmatch(r"[0-9]+", value):
        raise SetupError(f"flag #{key} needs a whole number, got {value!r}", model_id=raw)
    number = int(value)
    if number < _INT_FLAGS[key_l]:
        raise SetupError(f"flag #{key}={value} must be >= {_INT_FLAGS[key_l]}", model_id=raw)
    if str(number) != value:
        raise SetupError(f"flag #{key}={value} has leading zeros", model_id=raw)
    return key_l, number


def _int_or_none(v: int | bool | None) -> int | None:
    return None if v is None else int(v)


def _split_prefix(base: str, raw: str) -> tuple[str, str, str]:
    """(engine, prefix as written, name) by the registered engines' prefixes; a bare name with
    ':' or '/' belongs to the engine that claims bare names (Ollama)."""
    matched = registry.match_prefix(base)
    if matched is not None:
        info, prefix = matched
        return info.name, prefix, base[len(prefix) :]
    bare = registry.bare_name_engine()
    if bare is not None and (":" in base or "/" in base):
        return bare.name, "", base
    prefixes = ", ".join(p for info in registry.engines() for p in info.prefixes)
    with_bare = f" or an {bare.label} name with ':' or '/'" if bare is not None else ""
    raise SetupError(f"cannot tell the engine: use a prefix ({prefixes}){with_bare}", model_id=raw)


def load_setups(path: Path) -> dict[str, list[ModelSpec]]:
    """Read `test_setups.yaml`: a mapping from setup name to a list of model IDs (or to a mapping
    with `models:` and `devices:`)."""
    doc = load_yaml(path, what="test setups")
    setups: dict[str, list[ModelSpec]] = {}
    for name, items in _setup_items(doc, path):
        where: tuple[str | int, ...] = (name, "models") if isinstance(items, dict) else (name,)
        models = items.get("models") if isinstance(items, dict) else items
        if models is None:
            models = []
        if not isinstance(models, list):
            raise SetupError(
                f"setup {name!r} must be a list of model IDs, not {type(models).__name__}",
                path=path,
                line=doc.line_of(*where),
                key=name,
            )
        specs = []
        for i, item in enumerate(models):
            item_line = doc.line_of(*where, i)
            if not isinstance(item, str):
                raise SetupError(
                    f"item {i + 1} of setup {name!r} must be a model ID string, got {item!r}",
                    path=path,
                    line=item_line,
                    key=name,
                )
            try:
                specs.append(parse_model_id(item))
            except SetupError as exc:
                raise SetupError(exc.message, path=path, line=item_line, key=name) from exc
        setups[name] = specs
    return setups


def model_line(doc: Located, setup: str, index: int) -> int | None:
    """The line of a setup's `index`-th model ID, in either form of a setup."""
    if isinstance(doc.data, dict) and isinstance(doc.data.get(setup), dict):
        return doc.line_of(setup, "models", index)
    return doc.line_of(setup, index)


def load_device_kinds(path: Path) -> dict[str, tuple[str, ...]]:
    """The device kinds each setup names (`devices:`); a setup that names none is absent."""
    doc = load_yaml(path, what="test setups")
    kinds: dict[str, tuple[str, ...]] = {}
    for name, items in _setup_items(doc, path):
        if not isinstance(items, dict) or items.get("devices") is None:
            continue
        devices = items["devices"]
        line = doc.line_of(name, "devices")
        if not isinstance(devices, list) or not devices:
            raise SetupError(
                f"setup {name!r}: devices must be a non-empty list of device kinds",
                path=path,
                line=line,
                key=name,
            )
        for i, kind in enumerate(devices):
            if not isinstance(kind, str) or not _DEVICE_KIND.match(kind):
                raise SetupError(
                    f"setup {name!r}: bad device kind {kind!r} (letters, digits, '_', '.', '-')",
                    path=path,
                    line=doc.line_of(name, "devices", i),
                    key=name,
                )
        if len(set(devices)) != len(devices):
            raise SetupError(
                f"setup {name!r}: a device kind is named twice", path=path, line=line, key=name
            )
        kinds[name] = tuple(devices)
    return kinds


def _setup_items(doc: Located, path: Path) -> list[tuple[str, Any]]:
    """The (name, body) pairs of the file, names checked; a mapping body has only known keys."""
    data = doc.data
    if data is None:
        raise SetupError("no setups defined", path=path)
    if not isinstance(data, dict):
        raise SetupError(
            "expected a mapping of setup names to lists of model IDs", path=path, line=doc.line_of()
        )
    out = []
    for name, items in data.items():
        line = doc.line_of(name)
        if not isinstance(name, str) or not _SETUP_NAME.match(name):
            raise SetupError(f"bad setup name {name!r}", path=path, line=line)
        if isinstance(items, dict):
            unknown = [k for k in items if k not in _SETUP_KEYS]
            if unknown:
                raise SetupError(
                    f"setup {name!r}: unknown key {unknown[0]!r} (valid: models, devices)",
                    path=path,
                    line=doc.line_of(name, unknown[0]),
                    key=name,
                )
        out.append((name, items))
    return out


def select_setups(
    setups: dict[str, list[ModelSpec]], names: list[str] | None, *, path: Path
) -> list[tuple[str, ModelSpec]]:
    """The (setup, model) pairs to run: the named setups in order, or all; unknown names fail."""
    chosen = names or list(setups)
    unknown = [n for n in chosen if n not in setups]
    if unknown:
        raise SetupError(
            f"no setup named {', '.join(map(repr, unknown))} (have: {', '.join(setups) or 'none'})",
            path=path,
        )
    return [(n, spec) for n in chosen for spec in setups[n]]
