"""Time helpers: everything inside Strata is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A naive datetime is taken to be UTC; an aware one is converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_unix(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def from_unix(value: float) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value > 0 else None


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")
