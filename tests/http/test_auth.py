"""The pure parts of http/auth.py: where the key is read from, and the rate per key."""

from __future__ import annotations

import base64

import pytest

from mailgate.http.auth import RateLimit, secret_from


@pytest.mark.parametrize(
    ("header", "secret"),
    [
        ("Bearer mg_abc", "mg_abc"),
        ("bearer   mg_abc  ", "mg_abc"),
        ("Bearer ", None),
        ("Basic " + base64.b64encode(b"anyone:mg_abc").decode(), "mg_abc"),
        ("Basic " + base64.b64encode(b"no-password").decode(), None),
        ("Basic not*base64", None),
        ("Token mg_abc", None),
        ("", None),
    ],
)
def test_the_secret_is_the_bearer_token_or_the_basic_password(
    header: str, secret: str | None
) -> None:
    assert secret_from(header) == secret


def test_a_burst_then_one_request_per_token_refilled() -> None:
    limit = RateLimit(rate=2, burst=3)
    assert [limit.wait("k", 100.0) for _ in range(4)] == [0, 0, 0, 1]
    assert limit.wait("other", 100.0) == 0  # per key
    assert limit.wait("k", 100.4) == 1  # 0.8 of a token back: not yet
    assert [limit.wait("k", 100.5), limit.wait("k", 100.5)] == [0, 1]
    assert limit.wait("k", 200.0) == 0  # refilled, never past the burst
    assert [limit.wait("k", 200.0) for _ in range(3)] == [0, 0, 1]


def test_a_rate_of_zero_never_limits() -> None:
    limit = RateLimit(rate=0, burst=1)
    assert {limit.wait("k", 1.0) for _ in range(100)} == {0}


def test_the_wait_is_in_whole_seconds_rounded_up() -> None:
    limit = RateLimit(rate=0.25, burst=1)
    assert limit.wait("k", 0.0) == 0
    assert limit.wait("k", 0.0) == 4  # a token every 4 s
    assert limit.wait("k", 3.5) == 1
