"""The one exception root. Driver errors are wrapped where they enter."""

from __future__ import annotations


class StrataError(Exception):
    """Base of every error Strata raises on purpose."""

    code = "internal"


class InvalidInput(StrataError):
    """The caller sent something we cannot accept (HTTP 400)."""

    code = "invalid_input"


class NotFound(StrataError):
    code = "not_found"


class Conflict(StrataError):
    """The request is well-formed but the object's state forbids it (HTTP 409)."""

    code = "conflict"


class Unavailable(StrataError):
    """A dependency (the database, a region) cannot be reached right now (HTTP 503)."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


class CircuitOpen(Unavailable):
    """A breaker is open: the call was not attempted."""

    code = "circuit_open"


class Unauthenticated(StrataError):
    """No token, or one that is not valid (HTTP 401, gRPC UNAUTHENTICATED). ``challenge``
    is the ``WWW-Authenticate`` header's value."""

    code = "unauthenticated"

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        if invalid_token:
            self.code = "invalid_token"
        self.challenge = 'Bearer realm="strata"' + (
            ', error="invalid_token"' if invalid_token else "")


class RateLimited(StrataError):
    """Too many failed attempts from the caller's address: refused without a look at
    what it sent (HTTP 429, gRPC RESOURCE_EXHAUSTED) for ``retry_after_s``."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(StrataError):
    """A settings value or topology file is wrong."""

    code = "config_error"
