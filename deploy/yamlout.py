"""A small, deterministic YAML writer for the subset a compose file needs: mappings with
string keys, lists, strings, ints and bools, in block style.

Strings are written plain only when no YAML reader could take them for anything else
(``8080:8080`` is a base-60 number to YAML 1.1, ``on`` a boolean); every other string is
double-quoted with JSON escapes, which YAML reads the same way. A multi-line string that
is a mapping's value becomes a literal block when it reads back unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

Node = Mapping[str, "Node"] | Sequence["Node"] | str | int | bool

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_RESERVED = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}
)
_FLOW_WIDTH = 80
INDENT = 2


def scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
        return value
    return json.dumps(value)


def _literal(value: str, pad: str) -> list[str] | None:
    """A ``|`` block for text that ends in exactly one newline and reads back unchanged."""
    if not value.endswith("\n") or value.endswith("\n\n") or value[0] in " \t\n":
        return None
    lines = value[:-1].split("\n")
    if any(line != line.rstrip() or "\t" in line or not line.isprintable() for line in lines):
        return None
    return [pad + line if line else "" for line in lines]


def _entry(key: str, value: Node, pad: str, depth: int) -> list[str]:
    """``key: value`` for a mapping entry (``key`` already written as YAML)."""
    if isinstance(value, str) and "\n" in value:
        block = _literal(value, pad + " " * INDENT)
        if block is not None:
            return [f"{pad}{key}: |", *block]
    if isinstance(value, str | int | bool):
        return [f"{pad}{key}: {scalar(value)}"]
    if not isinstance(value, Mapping | Sequence):
        raise TypeError(f"unsupported value: {value!r}")
    if not value:
        return [f"{pad}{key}: {'{}' if isinstance(value, Mapping) else '[]'}"]
    if not isinstance(value, Mapping):
        items = [scalar(v) for v in value if isinstance(v, str | int | bool)]
        flow = f"{pad}{key}: [{', '.join(items)}]"
        if len(items) == len(value) and len(flow) <= _FLOW_WIDTH:
            return [flow]
    return [f"{pad}{key}:", *_block(value, depth + 1)]


def _block(node: Mapping[str, Node] | Sequence[Node], depth: int) -> list[str]:
    pad = " " * (INDENT * depth)
    lines: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, not {key!r}")
            lines += _entry(scalar(key), value, pad, depth)
        return lines
    for item in node:
        if isinstance(item, str | int | bool):
            lines.append(f"{pad}- {scalar(item)}")
        elif isinstance(item, Mapping) and item:
            inner = _block(item, depth + 1)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
        else:
            raise TypeError(f"unsupported list item: {item!r}")
    return lines


def dump(document: Mapping[str, Node], *, header: Sequence[str] = ()) -> str:
    """The document as YAML text ending in a newline, ``header`` lines as comments."""
    lines = [f"# {line}".rstrip() for line in header]
    for i, key in enumerate(document):
        if i or lines:
            lines.append("")  # a blank line between top-level sections
        lines += _block({key: document[key]}, 0)
    return "\n".join(lines) + "\n"
