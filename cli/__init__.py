"""Strata: a hierarchical, multi-region task scheduler.

Every part lives under this one import name: ``strata.master``, ``strata.regional``,
``strata.worker`` (the three tiers), ``strata.common`` and ``strata.proto`` (what they
share), ``strata.topologies``, ``strata.local`` (``strata up``: supervisor, embedded
PostgreSQL, process launcher) and ``strata.deploy`` (the compose renderer). This
package itself holds the ``strata`` command (``strata.cli``). ``strata.client`` is the
Python SDK, and ``strata.task`` its decorator of python-kind handlers, imported when
first used: ``import strata`` alone imports nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strata.client.handlers import task as task

__version__ = "0.1.0"

_LAZY = {"task": ("strata.client.handlers", "task")}


def __getattr__(name: str) -> Any:
    """``strata.task``, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'strata' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
