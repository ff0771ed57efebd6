"""The one rule for text that reaches PostgreSQL: no NUL character, and nothing that is
not Unicode (a lone surrogate such as ``\\ud800`` cannot be encoded as UTF-8). Input
that breaks it is refused where it enters (``refuse_unstorable``); what a task printed
is repaired instead (``storable``), since a result must never be lost over a byte."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from strata.common.errors import InvalidInput

# Deeper JSON than this is refused: nothing Strata takes nests anywhere near it, and
# every later walk over the value (validation, encoding) stays far from Python's
# recursion limit.
MAX_DEPTH = 32


def _problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (a lone surrogate is not)"
    return None


def refuse_unstorable(value: Any, where: str) -> None:
    """Raise InvalidInput if any string in ``value`` (mapping keys included, at any
    depth) breaks the rule, or if it nests deeper than MAX_DEPTH. Walks without
    recursion, so no input can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = _problem(item)
            if problem is not None:
                raise InvalidInput(f"{path}: {problem}")
        elif isinstance(item, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                raise InvalidInput(f"{path}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, Mapping):
                for key, child in item.items():
                    key_text = str(key)
                    problem = _problem(key_text)
                    if problem is not None:
                        raise InvalidInput(f"{path}: a key: {problem}")
                    stack.append((child, f"{path}.{key_text}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def storable(text: str) -> str:
    """``text`` with whatever breaks the rule replaced by U+FFFD."""
    if _problem(text) is None:
        return text
    repaired = text.encode("utf-8", errors="replace").decode("utf-8")
    return repaired.replace("\x00", "\ufffd")
