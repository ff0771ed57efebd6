"""``@strata.task``: a function marked as a python-kind handler, and the task bodies that
call one.

A worker runs a python task by importing ``handler`` ("package.module:function") by
name, so a handler is a function at the top level of a module that the workers can
import and allow (``STRATA_PYTHON_MODULES``). The decorator returns the function itself,
callable as ever (an async one stays a coroutine function, as the worker needs), with the
task options it was given as the defaults of the tasks that call it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from strata.common.errors import StrataError
from strata.common.kinds import HANDLER_RE
from strata.common.models import TaskOptions, error_text

F = TypeVar("F", bound=Callable[..., Any])

# Where the decorator keeps a handler's defaults, on the function itself.
MARK = "__strata_task__"
_ARGS = "args"


class HandlerError(StrataError, TypeError):
    """A function that cannot be a handler: a worker could not import it by its name
    (nested, a lambda, a method, defined in a script), or it is not marked with
    ``@strata.task``, or its defaults are not valid task options."""

    code = "invalid_handler"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDefaults:
    """The options ``@strata.task(...)`` gave: each one not None goes into the body of
    every task made of the handler, unless that task gives its own."""

    max_attempts: int | None = None
    timeout_s: float | None = None
    priority: int | None = None
    region: str | None = None
    concurrency_key: str | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@overload
def task(fn: F, /) -> F: ...


@overload
def task(*, max_attempts: int | None = None, timeout_s: float | None = None,
         priority: int | None = None, region: str | None = None,
         concurrency_key: str | None = None) -> Callable[[F], F]: ...


def task(fn: F | None = None, /, *, max_attempts: int | None = None,
         timeout_s: float | None = None, priority: int | None = None,
         region: str | None = None, concurrency_key: str | None = None,
         ) -> F | Callable[[F], F]:
    """Mark ``fn`` as a python-kind handler: ``@strata.task``, or with the defaults of
    the tasks that call it, ``@strata.task(max_attempts=3, timeout_s=60, priority=5)``.
    ``client.submit(fn, **kwargs)`` then makes a task that runs ``fn(**kwargs)`` on a
    worker. A function nested in another, a lambda or a method is refused here
    (:class:`HandlerError`): no worker could import it by its name."""
    defaults = TaskDefaults(max_attempts=max_attempts, timeout_s=timeout_s,
                            priority=priority, region=region,
                            concurrency_key=concurrency_key)
    _check_defaults(defaults)

    def mark(function: F) -> F:
        _check_top_level(function)
        setattr(function, MARK, defaults)
        return function

    return mark if fn is None else mark(fn)


def defaults_of(fn: Callable[..., Any]) -> TaskDefaults | None:
    """The defaults of a function marked with ``@strata.task``; None for any other."""
    found = getattr(fn, MARK, None)
    return found if isinstance(found, TaskDefaults) else None


def handler_name(fn: Callable[..., Any]) -> str:
    """``"package.module:function"``: how a worker finds ``fn``. Raises
    :class:`HandlerError` for a function no worker could find by its name."""
    if defaults_of(fn) is None:
        raise HandlerError(f"{_describe(fn)} is not marked as a handler: decorate it with "
                           "@strata.task")
    _check_top_level(fn)
    module = _module_of(fn)
    name = f"{module}:{fn.__qualname__}"
    if not HANDLER_RE.fullmatch(name):
        raise HandlerError(f"{_describe(fn)}: {name!r} cannot be a handler's name (ASCII "
                           "letters, digits and _ only, as \"package.module:function\")")
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, fn.__qualname__, None) is not fn:
        raise HandlerError(f"{_describe(fn)}: {module}.{fn.__qualname__} is not this "
                           "function (it was replaced or deleted): a worker would run "
                           "whatever has that name")
    return name


def python_task(handler: Callable[..., Any], /, *args: Any, **kwargs: Any
                ) -> dict[str, Any]:
    """The ``POST /v1/tasks`` body of a task that calls ``handler(*args)`` or
    ``handler(**kwargs)`` on a worker, with the handler's defaults: a dict, to add
    options to (``key``, ``depends_on``, ``run_at``, ...) or to hand to
    ``submit_many`` or ``create_schedule(task=...)``. The arguments must be JSON.
    A handler that takes ``parent_outputs`` gets its parents' outputs in it; pass no
    argument of that name."""
    if args and kwargs:
        raise HandlerError(f"{_describe(handler)}: positional or keyword arguments, not "
                           "both (a task's args are a JSON list or a JSON object)")
    name = handler_name(handler)
    defaults = defaults_of(handler)
    assert defaults is not None  # handler_name refuses an unmarked function
    return {"kind": "python", "handler": name, _ARGS: list(args) if args else dict(kwargs),
            **defaults.given()}


def parent_results(parent_outputs: Mapping[str, str | None]) -> dict[str, Any]:
    """What each parent returned, by parent id, from the ``parent_outputs`` a handler is
    given: a python parent's output is its return value as JSON. A parent without output
    is None; one whose output is not JSON (a shell parent's text, a JSON value cut to
    its 64 KiB tail) raises ValueError."""
    results: dict[str, Any] = {}
    for parent, output in parent_outputs.items():
        if output is None:
            results[parent] = None
            continue
        try:
            results[parent] = json.loads(output)
        except ValueError:
            raise ValueError(f"the output of parent {parent} is not JSON: "
                             f"{output[:100]!r}") from None
    return results


def task_body(kind_or_handler: str | Callable[..., Any], /, *args: Any,
              options: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """What ``submit`` sends: a kind's fields (``"shell", command="echo hi"``), or a call
    of a handler (its arguments, as in :func:`python_task`); ``options`` (``priority``,
    ``region``, ``run_at``, ``depends_on``, ...) go on top of either."""
    if isinstance(kind_or_handler, str):
        if args:
            raise HandlerError(f"kind {kind_or_handler!r}: its fields go by name "
                               "(submit(\"shell\", command=...)); positional arguments are "
                               "a handler's")
        body = {"kind": kind_or_handler, **fields}
    elif callable(kind_or_handler):
        body = python_task(kind_or_handler, *args, **fields)
    else:
        raise HandlerError(f"not a kind's name nor a handler: {kind_or_handler!r}")
    body.update(options or {})
    return body


def _check_defaults(defaults: TaskDefaults) -> None:
    """The defaults as the API would take them, told at once instead of at each submit."""
    try:
        TaskOptions.model_validate(defaults.given())
    except ValidationError as exc:
        raise HandlerError(f"@strata.task: {error_text(exc)}") from None


def _check_top_level(fn: Callable[..., Any]) -> None:
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or not hasattr(fn, "__module__"):
        raise HandlerError(f"{fn!r} is not a function: a handler is a function at the top "
                           "level of a module")
    if "<locals>" in qualname:
        raise HandlerError(f"{_describe(fn)} is defined inside another function: a worker "
                           "imports a handler by its name, so it must be at the top level of "
                           "a module")
    if qualname == "<lambda>" or "." in qualname:
        raise HandlerError(f"{_describe(fn)} is not at the top level of its module: a "
                           "handler is a plain function a worker can import by its name")


def _module_of(fn: Callable[..., Any]) -> str:
    """The module a worker imports: a function of a script run as ``python -m pkg.mod``
    is ``pkg.mod``'s (importing it by that name does not run the script's main)."""
    module = str(fn.__module__)
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name != "__main__" and not name.endswith(".__main__"):
        return name
    raise HandlerError(f"{_describe(fn)} is defined in the script being run (__main__): a "
                       "worker cannot import it by name. Put it in a module the workers "
                       "allow (STRATA_PYTHON_MODULES) and import it from there, or run "
                       "the script as `python -m package.module`")


def _describe(fn: object) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"handler {name}" if isinstance(name, str) else repr(fn)
