"""YAML loading that remembers where every key and value came from.

PyYAML's composer gives every node a start mark; we convert the node graph to plain Python values and keep
a map from the value's path (`("rules", 3, "match", "action")`) to its position, so that a validation
problem found later (by pydantic or by the compiler) can be reported as `file:line:column`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keyturn.policy.errors import PolicyError, Problem

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|", ">"


@dataclass
class Document:
    """One loaded YAML file: its data and the positions of its values and mapping keys."""

    file: str
    data: Any
    text: str
    values: dict[PathKey, Position] = field(default_factory=dict)
    keys: dict[PathKey, Position] = field(default_factory=dict)

    def where(self, path: PathKey, *, key: bool = False) -> Position:
        """The position of the value at `path` (or of its key), falling back to the nearest parent."""
        table = self.keys if key else self.values
        probe = path
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Position(1, 1))

    def problem(self, path: PathKey, message: str, *, key: bool = False) -> Problem:
        pos = self.where(path, key=key)
        return Problem(self.file, pos.line, pos.column, message)


def read_text(path: Path) -> tuple[str, bytes]:
    """The file's text and bytes; an unreadable file is a `PolicyError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(
            [Problem(str(path), 1, 1, f"cannot read the file: {exc.strerror or exc}")]
        ) from None
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(str(path), 1, 1, f"the file is not UTF-8: {exc.reason}")]) from None


def load_yaml(file: str, text: str) -> Document:
    """Parse one YAML document. Syntax errors and duplicate keys are `PolicyError`s with positions."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        doc = Document(file, None, text)
        if node is not None:
            doc.values[()] = _pos(node)
            doc.data = _convert(loader, node, (), doc)
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise PolicyError([Problem(file, line, column, f"YAML syntax error: {message}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(file, 1, 1, f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()


# libyaml's parser when PyYAML was built with it (about 10x faster on large policies); same marks.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _pos(node: yaml.Node) -> Position:
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    return Position(node.start_mark.line + 1, node.start_mark.column + 1, style)


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, doc: Document) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<:` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                # YAML 1.1 turns `on:`/`yes:` into booleans; a policy key is always a string
                raise _marked(key_node, f"a mapping key must be a string, got {key!r} (quote it)")
            if key in out:
                first = doc.keys[(*path, key)]
                raise _marked(key_node, f"duplicate key {key!r} (first given at line {first.line})")
            child = (*path, key)
            doc.keys[child] = _pos(key_node)
            doc.values[child] = _pos(value_node)
            out[key] = _convert(loader, value_node, child, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            doc.values[child] = _pos(item)
            items.append(_convert(loader, item, child, doc))
        return items
    return loader.construct_object(node, deep=True)


def _marked(node: yaml.Node, problem: str) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)


def scalar_offset(doc: Document, path: PathKey, line: int, column: int) -> Position:
    """Map a 1-based (line, column) inside a string scalar's value to a position in the file.

    Exact for plain and quoted single-line scalars and for literal blocks (`|`); approximate for folded
    or multi-line flow scalars, where YAML has rewritten the text.
    """
    start = doc.where(path)
    if start.style in ("|", ">"):
        # the block's content starts on the next line, indented like its first line
        lines = doc.text.splitlines()
        indent = 0
        if start.line < len(lines):
            first = lines[start.line]
            indent = len(first) - len(first.lstrip(" "))
        return Position(start.line + line, indent + column)
    quote = 1 if start.style in ("'", '"') else 0
    if line == 1:
        return Position(start.line, start.column + quote + column - 1)
    return Position(start.line + line - 1, column)
