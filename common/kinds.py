"""Task kinds: what a task of each kind carries, validated at the edge.

The master validates a payload when the task is created; the worker parses the
same model again when it runs the task, so both sides agree on one definition.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ASCII only, and matched whole (re.fullmatch): the same language as the pattern in the
# JSON schema (ECMA-262, where \w is ASCII and $ is the end of the text).
_NAME = "[A-Za-z_][A-Za-z0-9_]*"
HANDLER_PATTERN = rf"^{_NAME}(\.{_NAME})*:{_NAME}$"
HANDLER_RE = re.compile(HANDLER_PATTERN[1:-1])
URL_PATTERN = "^https?://"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class Payload(BaseModel):
    """What a kind carries. Text that PostgreSQL cannot store is refused at the edge,
    before any model sees it (``strata.common.text``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ShellPayload(Payload):
    command: str = Field(min_length=1, max_length=65536)


class HttpPayload(Payload):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=8192,
                     json_schema_extra={"pattern": URL_PATTERN})
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value


class PythonPayload(Payload):
    handler: str = Field(description='"module:function"',
                         json_schema_extra={"pattern": HANDLER_PATTERN})
    args: list[Any] | dict[str, Any] = Field(default_factory=list)

    @field_validator("handler")
    @classmethod
    def _handler_form(cls, value: str) -> str:
        if not HANDLER_RE.fullmatch(value):
            raise ValueError('handler must look like "package.module:function"')
        return value


class NoopPayload(Payload):
    pass


class SleepPayload(Payload):
    seconds: float = Field(ge=0, le=86400)


PAYLOADS: dict[str, type[Payload]] = {
    "shell": ShellPayload,
    "http": HttpPayload,
    "python": PythonPayload,
    "noop": NoopPayload,
    "sleep": SleepPayload,
}
KINDS = tuple(PAYLOADS)


def parse_payload(kind: str, fields: dict[str, Any]) -> Payload:
    """Validate a kind's fields; raises KeyError for an unknown kind, ValidationError else."""
    return PAYLOADS[kind].model_validate(fields)
