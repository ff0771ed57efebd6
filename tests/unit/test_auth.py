"""API tokens without a master: hashing and reading them from settings and files, the
checks of a call (missing, wrong, good; constant-time over every hash), the listening
addresses that need one, and the per-address limit of failed attempts and of their log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from strata.cli import _build
from strata.common import tokens
from strata.common.errors import ConfigError, RateLimited, Unauthenticated
from strata.common.settings import MasterSettings
from strata.flags import settings_from
from strata.master import auth
from strata.master.auth import FailureLimiter, Guard

HEX = "ab" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("STRATA_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- tokens and their hashes -------------------------------------------------------------

def test_a_new_token_is_random_and_url_safe() -> None:
    made = {tokens.new_token() for _ in range(100)}
    assert len(made) == 100
    for token in made:
        assert token.startswith("st_") and len(token) == 3 + 43
        assert set(token[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-_")


def test_a_token_is_kept_as_its_sha256_and_a_hash_as_it_is() -> None:
    assert tokens.hash_token("s3cret") == "sha256:" + hashlib.sha256(b"s3cret").hexdigest()
    assert tokens.as_hash("s3cret") == tokens.hash_token("s3cret")
    assert tokens.as_hash(f"  sha256:{HEX.upper()} ") == f"sha256:{HEX}"
    for bad in ("sha256:abc", f"sha256:{'zz' * 32}", f"SHA256:{HEX}0", "", "   "):
        with pytest.raises(ValueError):
            tokens.as_hash(bad)


def test_entries_split_on_commas_and_lines_without_blanks_or_comments() -> None:
    assert tokens.split_entries(" a, b ,,c\n# not one\nd\n") == ["a", "b", "c", "d"]


def test_a_tokens_file_is_a_token_or_hash_a_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# made by ops\nplain-one\n\nsha256:{HEX}\n")
    assert tokens.read_file(path) == [tokens.hash_token("plain-one"), f"sha256:{HEX}"]
    path.write_text("ok\nsha256:nothex\n")
    with pytest.raises(ConfigError, match="line 2"):
        tokens.read_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        tokens.read_file(tmp_path / "missing")


# ---- settings and flags --------------------------------------------------------------------

def test_strata_api_tokens_is_comma_separated_and_hashed_as_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATA_API_TOKENS", f"first-secret, sha256:{HEX}")
    settings = MasterSettings()
    assert settings.api_tokens == [tokens.hash_token("first-secret"), f"sha256:{HEX}"]
    # Never kept in plaintext: not in the settings, their dump or their repr.
    assert "first-secret" not in repr(settings)
    assert "first-secret" not in settings.model_dump_json()
    monkeypatch.setenv("STRATA_API_TOKENS", '["a", "b"]')  # as a topology passes a list
    assert MasterSettings().api_tokens == [tokens.hash_token("a"), tokens.hash_token("b")]
    monkeypatch.setenv("STRATA_API_TOKENS", "")
    assert MasterSettings().api_tokens == []


def test_a_hash_that_is_not_one_is_refused_naming_only_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATA_API_TOKENS", "the-real-secret,sha256:abc")
    with pytest.raises(ValidationError) as caught:
        MasterSettings()
    assert "sha256:abc" in str(caught.value)
    assert "the-real-secret" not in str(caught.value)


def test_the_flags_of_tokens_and_the_switch(tmp_path: Path) -> None:
    parser, subs = _build()
    args = parser.parse_args(["master", "--api-token", "one", "--api-token", f"sha256:{HEX}",
                              "--api-tokens-file", str(tmp_path / "f"), "--insecure-no-auth",
                              "--auth-failure-burst", "3", "--auth-failure-rate", "0.5"])
    settings = settings_from(subs["master"], args, MasterSettings)
    assert settings.api_tokens == [tokens.hash_token("one"), f"sha256:{HEX}"]
    assert settings.api_tokens_file == tmp_path / "f"
    assert settings.insecure_no_auth is True
    assert (settings.auth_failure_burst, settings.auth_failure_rate) == (3, 0.5)
    plain = settings_from(subs["master"], parser.parse_args(["master"]), MasterSettings)
    assert (plain.api_tokens, plain.api_tokens_file, plain.insecure_no_auth) == ([], None, False)


def test_the_switch_takes_no_value_and_the_environment_still_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser, subs = _build()
    with pytest.raises(SystemExit):
        parser.parse_args(["master", "--insecure-no-auth=yes"])
    monkeypatch.setenv("STRATA_INSECURE_NO_AUTH", "true")
    assert settings_from(subs["master"], parser.parse_args(["master"]),
                         MasterSettings).insecure_no_auth is True


def test_a_bad_hash_flag_is_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    parser, subs = _build()
    args = parser.parse_args(["master", "--api-token", "sha256:12"])
    with pytest.raises(SystemExit) as caught:
        settings_from(subs["master"], args, MasterSettings)
    assert caught.value.code == 2
    assert "--api-token 'sha256:12'" in capsys.readouterr().err


# ---- addresses ---------------------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
    ("192.168.1.1", False), ("example.com", False), ("::ffff:10.0.0.1", False),
])
def test_which_listening_addresses_are_loopback(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback


def test_exposed_names_each_address_beyond_loopback() -> None:
    assert auth.exposed(MasterSettings()) == []
    assert auth.exposed(MasterSettings(http_host="0.0.0.0")) == ["http_host 0.0.0.0"]
    assert auth.exposed(MasterSettings(grpc_host="")) == ["grpc_host (every interface)"]


@pytest.mark.parametrize("address, key", [
    ("127.0.0.2", "127.0.0.2"), ("::ffff:10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"), ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
    (None, "unknown"), ("", "unknown"), ("/run/strata.sock", "/run/strata.sock"),
])
def test_failures_are_counted_per_ipv4_address_or_ipv6_64(address: str | None, key: str
                                                          ) -> None:
    assert auth.peer_key(address) == key


@pytest.mark.parametrize("peer, address", [
    ("ipv4:127.0.0.2:53211", "127.0.0.2"), ("ipv6:[::1]:4000", "::1"),
    ("ipv6:%5B::1%5D:4000", "::1"), ("unix:/tmp/s", "unix:/tmp/s"), (None, None),
])
def test_a_grpc_peer_is_its_host(peer: str | None, address: str | None) -> None:
    assert auth.grpc_peer_address(peer) == address


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer   abc  ", "abc"), ("BEARER abc", "abc"),
    ("Bearer", ""), ("Basic dXNlcjpwYXNz", None), (None, None), ("", None),
])
def test_the_bearer_token_of_a_header(header: str | None, token: str | None) -> None:
    assert auth.bearer(header) == token


# ---- the check of a call -------------------------------------------------------------------

def test_no_token_anywhere_on_loopback_is_open() -> None:
    guard = Guard()
    assert not guard.required
    assert guard.check("127.0.0.1", None, via="rest") is None
    assert guard.check("127.0.0.1", "Bearer whatever", via="rest") is None


def test_a_master_beyond_loopback_fails_closed_without_tokens() -> None:
    guard = Guard(fail_closed=True)
    assert guard.required
    with pytest.raises(Unauthenticated):
        guard.check("10.0.0.1", "Bearer anything", via="rest")


def test_missing_wrong_and_good_tokens() -> None:
    good, other = "st_good", "st_other"
    guard = Guard([tokens.hash_token(good)], [tokens.hash_token(other)])
    assert guard.required and guard.counts == (1, 1)
    with pytest.raises(Unauthenticated) as missing:
        guard.check("127.0.0.1", None, via="rest")
    assert (missing.value.code, missing.value.challenge) == (
        "unauthenticated", 'Bearer realm="strata"')
    with pytest.raises(Unauthenticated) as missing:
        guard.check("127.0.0.1", "Basic abc", via="rest")
    with pytest.raises(Unauthenticated) as wrong:
        guard.check("127.0.0.1", "Bearer st_bad", via="rest")
    assert (wrong.value.code, wrong.value.challenge) == (
        "invalid_token", 'Bearer realm="strata", error="invalid_token"')
    with pytest.raises(Unauthenticated):
        guard.check("127.0.0.1", "Bearer ", via="rest")
    for token in (good, other):
        digest = guard.check("127.0.0.1", f"Bearer {token}", via="rest")
        assert digest == hashlib.sha256(token.encode()).digest()


def test_every_known_hash_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """No early exit: the first hash matching costs as many comparisons as none."""
    hashes = [tokens.hash_token(f"st_{n}") for n in range(5)]
    guard = Guard(hashes)
    compared: list[bytes] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented in ("st_0", "st_4", "st_nope"):
        compared.clear()
        with contextlib.suppress(Unauthenticated):
            guard.check("127.0.0.1", f"Bearer {presented}", via="rest")
        assert len(compared) == 5, presented


def test_a_missing_token_is_not_a_failed_attempt() -> None:
    guard = Guard([tokens.hash_token("st_good")], limiter=FailureLimiter(burst=2))
    for _ in range(20):
        with pytest.raises(Unauthenticated):
            guard.check("127.0.0.1", None, via="rest")
    assert len(guard.limiter) == 0


def test_past_its_burst_an_address_is_refused_before_its_token_is_looked_at() -> None:
    clock = Clock()
    guard = Guard([tokens.hash_token("st_good")],
                  limiter=FailureLimiter(burst=10, rate=1.0, clock=clock))
    for _ in range(10):
        with pytest.raises(Unauthenticated):
            guard.check("10.0.0.9", "Bearer st_bad", via="rest")
    for header in ("Bearer st_bad", None, "Bearer st_good"):  # not even a good one
        with pytest.raises(RateLimited) as caught:
            guard.check("10.0.0.9", header, via="rest")
        assert caught.value.retry_after_s == pytest.approx(1.0)
    # Others are not held back.
    assert guard.check("10.0.0.10", "Bearer st_good", via="rest") is not None
    clock.now += 0.5
    with pytest.raises(RateLimited) as caught:
        guard.check("10.0.0.9", "Bearer st_good", via="rest")
    assert caught.value.retry_after_s == pytest.approx(0.5)
    # About one a second from then on.
    clock.now += 0.5
    with pytest.raises(Unauthenticated):
        guard.check("10.0.0.9", "Bearer st_bad", via="rest")
    with pytest.raises(RateLimited):
        guard.check("10.0.0.9", "Bearer st_bad", via="rest")
    clock.now += 1.0
    assert guard.check("10.0.0.9", "Bearer st_good", via="rest") is not None


def test_the_table_of_addresses_is_bounded_and_forgets_the_quiet_ones() -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=3, rate=1.0, max_peers=100, clock=clock)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}", via="rest")
        assert len(limiter) <= 100
    assert limiter.refusal("10.0.0.0") is None  # the oldest went first
    # Back to full buckets, each address's counts logged in turn (the log's own pace):
    # nothing left worth keeping.
    clock.now += auth.LOG_EVERY_S
    for _ in range(200):
        limiter.flush()
        clock.now += 1.0
    assert len(limiter) == 0


def test_failures_are_logged_a_line_per_address_now_and_then_with_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=10, rate=1.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="strata.master.auth")
    for _ in range(1000):
        if limiter.refusal("10.0.0.9") is None:
            limiter.failed("10.0.0.9", via="grpc")
        clock.now += 0.001
    lines = [(r.action, r.getMessage()) for r in caplog.records]  # type: ignore[attr-defined]
    assert [a for a, _ in lines] == ["auth_failed", "auth_rate_limited"], lines
    assert caplog.records[0].peer == "10.0.0.9"  # type: ignore[attr-defined]
    assert caplog.records[0].via == "grpc"  # type: ignore[attr-defined]
    clock.now += auth.LOG_EVERY_S
    limiter.flush()
    *_, summary = caplog.records
    assert len(caplog.records) == 3
    assert summary.action == "auth_failed"  # type: ignore[attr-defined]
    assert "from 10.0.0.9" in summary.getMessage()
    # Every attempt counted once, in one of three lines.
    assert sum(r.failures + r.refused for r in caplog.records) == 1000  # type: ignore[attr-defined]
    assert sum(r.failures for r in caplog.records) == 10  # the burst; then 429s


def test_many_addresses_cannot_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=10, rate=1.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="strata.master.auth")
    for n in range(500):
        limiter.failed(f"10.1.{n // 256}.{n % 256}", via="rest")
    assert len(caplog.records) == auth.LOG_BURST
    clock.now += auth.LOG_EVERY_S
    caplog.clear()
    limiter.flush()  # the rest wait their turn: the log's own rate
    assert len(caplog.records) <= auth.LOG_BURST


async def test_until_refused_returns_once_the_token_goes() -> None:
    guard = Guard(stored=[tokens.hash_token("st_a"), tokens.hash_token("st_b")])
    digest = guard.check("127.0.0.1", "Bearer st_a", via="rest")
    assert digest is not None
    waiting = asyncio.ensure_future(guard.until_refused(digest))
    assert guard._set_stored([tokens.hash_token("st_a")]) is True  # another one went
    await asyncio.sleep(0)
    assert not waiting.done()
    assert guard._set_stored([tokens.hash_token("st_a")]) is False
    guard._set_stored([tokens.hash_token("st_b")])
    await asyncio.wait_for(waiting, 5)


async def test_a_call_without_a_token_is_refused_once_one_exists() -> None:
    guard = Guard()
    assert guard.check("127.0.0.1", None, via="rest") is None
    waiting = asyncio.ensure_future(guard.until_refused(None))
    await asyncio.sleep(0)
    assert not waiting.done()
    guard._set_stored([tokens.hash_token("st_a")])
    await asyncio.wait_for(waiting, 5)


def test_the_token_commands_refuse_a_name_they_cannot_store() -> None:
    for name in ("ci-bot", "a", "team.x:1_2", "A" * 64):
        assert auth.check_name(name) == name
    for bad in ("", "-x", "a b", "é", "A" * 65, "a/b"):
        with pytest.raises(Exception, match="not a token name"):
            auth.check_name(bad)


def test_every_token_subcommand_is_parsed() -> None:
    parser, subs = _build()
    assert {"token create", "token list", "token revoke"} <= set(subs)
    args = parser.parse_args(["token", "create", "ci", "--database-url", "postgresql://x/y"])
    assert (args.token_command, args.name, args.database_url) == ("create", "ci",
                                                                  "postgresql://x/y")
    assert isinstance(subs["token list"], argparse.ArgumentParser)


def test_guessing_at_the_allowed_pace_is_one_episode_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=10, rate=1.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="strata.master.auth")
    for _ in range(120):  # two minutes of two requests a second
        for _ in range(2):
            if limiter.refusal("10.0.0.9") is None:
                limiter.failed("10.0.0.9", via="rest")
            clock.now += 0.5
        limiter.flush()
    actions = [r.action for r in caplog.records]  # type: ignore[attr-defined]
    assert actions.count("auth_rate_limited") == 1, actions
    assert len(actions) <= 1 + 1 + 120 // auth.LOG_EVERY_S + 1, actions
    assert sum(r.failures + r.refused for r in caplog.records) >= 230  # type: ignore[attr-defined]
