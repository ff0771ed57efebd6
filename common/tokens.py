"""API tokens as the master keeps them: ``sha256:<64 hex digits>``, never the token.

A token is ``st_`` and 43 URL-safe characters (32 random bytes). A setting or a line of
a tokens file is either such a hash already, or a token, which is hashed as it is read.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

from strata.common.errors import ConfigError

PREFIX = "st_"
HASH_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of the token's UTF-8 bytes."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def as_hash(entry: str) -> str:
    """A setting's entry as a hash: one given as ``sha256:<hex>`` as it is (lower case),
    any other the hash of it. A ``sha256:`` entry that is not 64 hex digits is refused
    rather than taken for a token."""
    entry = entry.strip()
    if not entry:
        raise ValueError("an empty API token")
    if entry[:len(HASH_PREFIX)].lower() == HASH_PREFIX:
        digest = entry[len(HASH_PREFIX):].lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise ValueError("an API token hash must be sha256: and 64 hex digits")
        return HASH_PREFIX + digest
    return hash_token(entry)


def split_entries(value: str) -> list[str]:
    """``a,b`` (or one per line): the entries, blanks and ``#`` comments left out."""
    out = []
    for line in value.splitlines():
        if line.strip().startswith("#"):
            continue
        out += [part.strip() for part in line.split(",") if part.strip()]
    return out


def read_file(path: Path) -> list[str]:
    """The hashes of a tokens file: a token or a hash a line (blank lines and ``#``
    comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"api_tokens_file {path}: cannot read it: {why}") from None
    hashes = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        try:
            hashes.append(as_hash(line))
        except ValueError as exc:
            raise ConfigError(f"api_tokens_file {path}, line {number}: {exc}") from None
    return hashes


def digests(hashes: Iterable[str]) -> tuple[bytes, ...]:
    """The raw 32 bytes of each ``sha256:<hex>`` hash, each once."""
    return tuple(sorted({bytes.fromhex(h.removeprefix(HASH_PREFIX)) for h in hashes}))
