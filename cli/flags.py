"""Every setting of a process is also a flag of its subcommand, made from the settings
class itself: ``region_dead_after`` is ``--region-dead-after``, with the field's
description as its help. Only the flags given override STRATA_* variables and .env."""

from __future__ import annotations

import argparse
import typing
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

S = typing.TypeVar("S", bound=BaseSettings)


def _is_list(field: FieldInfo) -> bool:
    return typing.get_origin(field.annotation) is list


def _is_switch(field: FieldInfo) -> bool:
    """A bool setting is a flag without a value: ``--insecure-no-auth`` sets it."""
    return field.annotation is bool


def flag_name(name: str, field: FieldInfo) -> str:
    """``python_modules`` is given once per module: ``--python-module``."""
    if _is_list(field) and name.endswith("s"):
        name = name[:-1]
    return "--" + name.replace("_", "-")


def _default_text(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, timedelta):
        return f"{default.total_seconds():g}"
    if default in (None, []):
        return "none"
    return str(default)


def _metavar(name: str, field: FieldInfo) -> str:
    """``SECONDS`` for a duration, else the flag's own name: ``--http-port HTTP_PORT``."""
    if field.annotation is timedelta:
        return "SECONDS"
    return flag_name(name, field).removeprefix("--").replace("-", "_").upper()


def _help(name: str, field: FieldInfo) -> str:
    text = field.description or name
    if "(default:" not in text:  # a description may say the default better
        text += f" (default: {_default_text(field)})"
    return text + ("; repeatable" if _is_list(field) else "")


def add_settings_flags(parser: argparse.ArgumentParser, settings: type[BaseSettings]) -> None:
    group = parser.add_argument_group(
        "settings", "each is also a STRATA_* variable or a line in .env; durations in seconds")
    for name, field in settings.model_fields.items():
        if _is_switch(field):
            # Not given: None, so that STRATA_* and .env still count.
            group.add_argument(flag_name(name, field), dest=name, action="store_const",
                               const=True, default=None, help=_help(name, field))
            continue
        group.add_argument(flag_name(name, field), dest=name, metavar=_metavar(name, field),
                           action="append" if _is_list(field) else "store",
                           help=_help(name, field))


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  settings: type[S]) -> S:
    """The settings, the flags given overriding the rest; a bad value is the
    subcommand's usage and the problem, exit 2."""
    given: dict[str, Any] = {
        name: getattr(args, name) for name in settings.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        return settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{flag_name(str(err['loc'][0]), settings.model_fields[str(err['loc'][0])])}"
            f" {err['input']!r}: {err['msg']}"
            if err["loc"] and str(err["loc"][0]) in settings.model_fields
            else err["msg"]
            for err in exc.errors(include_url=False)
        )
        parser.error(problems)
