"""Safe YAML loading that remembers where each key and item stood, for errors that name a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vramphysics.errors import ConfigError


class Located:
    """A loaded YAML document plus a map from key paths to 1-based line numbers."""

    def __init__(self, path: Path, data: Any, lines: dict[tuple[str | int, ...], int]) -> None:
        self.path = path
        self.data = data
        self._lines = lines

    def line_of(self, *key_path: str | int) -> int | None:
        """The line of the deepest known node on `key_path` (its own line when known)."""
        for n in range(len(key_path), -1, -1):
            line = self._lines.get(tuple(key_path[:n]))
            if line is not None:
                return line
        return None


def _key(node: yaml.ScalarNode) -> Any:
    """A mapping key as the safe loader builds it (`5`, `True`, 'demo'), so data keys find it."""
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError:
        return node.value


def yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[str, int | None]:
    """One line saying what is wrong, and the 1-based line where (marked errors and reader
    errors, e.g. a NUL byte, both give a position)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return str(getattr(exc, "problem", None) or exc).splitlines()[0], mark.line + 1
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return f"special character {exc.character!r} is not allowed", line
    return str(exc).splitlines()[0], None


class _AliasRefused(Exception):
    def __init__(self, anchor: str, line: int) -> None:
        self.anchor, self.line = anchor, line


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader without aliases (`*name`): a few lines of nested aliases expand to
    billions of nodes ("billion laughs"), and no setting of ours needs one."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(str(event.anchor), event.start_mark.line + 1)
        return super().compose_node(parent, index)


class _Duplicate(Exception):
    def __init__(self, key: Any, line: int) -> None:
        self.key, self.line = key, line


def _index(
    node: yaml.Node, prefix: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
) -> None:
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = _key(key_node) if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                raise _Duplicate(key, key_node.start_mark.line + 1)
            seen.add(key)
            path = prefix + (key,)
            out[path] = key_node.start_mark.line + 1
            _index(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, prefix + (i,), out)


def load_yaml(path: Path, *, what: str) -> Located:
    """Load `path` with the safe loader; broken YAML is a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} file not found", path=path) from exc
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} file is not UTF-8 text (byte {exc.start})", path=path, line=bad_line
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file: {exc.strerror}", path=path) from exc
    try:
        node = yaml.compose(text, Loader=_NoAliasLoader)
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        problem, line = yaml_problem(exc, text)
        raise ConfigError(f"invalid YAML: {problem}", path=path, line=line) from exc
    except _AliasRefused as alias:
        raise ConfigError(
            f"YAML alias *{alias.anchor} is not allowed in a {what} file (aliases can expand "
            "to billions of values); write the value out instead",
            path=path,
            line=alias.line,
        ) from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        try:
            _index(node, (), lines)
        except _Duplicate as dup:
            raise ConfigError(
                f"key {dup.key!r} appears twice (the second would silently replace the first)",
                path=path,
                line=dup.line,
            ) from None
    return Located(path, data, lines)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value that occurs twice in full: our loaders refuse aliases (`load_yaml`)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(doc: Any) -> str:
    """YAML text without anchors or aliases, keys in the order given, that `load_yaml` reads."""
    return yaml.dump(
        doc, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None, width=100
    )
