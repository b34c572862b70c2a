"""Outcome classification and MX ordering / address safety (pure parts)."""

from __future__ import annotations

import ipaddress
import random

from mailgate.delivery.mx import MxResolver, order_mx
from mailgate.delivery.outcome import Verdict, from_reply, reply_from
from mailgate.models import Reply
from mailgate.reachable import forbidden
from tests.delivery.conftest import Clock


def test_replies_become_verdicts_with_enhanced_codes() -> None:
    assert from_reply(250, "2.0.0 Ok queued", "h").verdict is Verdict.DELIVERED
    assert from_reply(451, "4.3.0 try later", "h").verdict is Verdict.TEMPORARY
    assert from_reply(421, "closing", "h").verdict is Verdict.TEMPORARY
    assert from_reply(552, "5.3.4 too big", "h").verdict is Verdict.PERMANENT
    assert reply_from(550, "5.1.1  No such\n user") == Reply(550, "5.1.1", "No such user")
    assert reply_from(550, "No such user") == Reply(550, None, "No such user")


def test_mx_order_by_preference_random_among_equals() -> None:
    records = [(20, "c"), (10, "a"), (10, "b"), (30, "d")]
    seen = set()
    for seed in range(40):
        ordered = order_mx(records, random.Random(seed))
        assert [p for p, _ in ordered] == [10, 10, 20, 30]
        seen.add(tuple(h for _, h in ordered[:2]))
    assert seen == {("a", "b"), ("b", "a")}


def test_private_addresses_are_forbidden_unless_allowed() -> None:
    ip = ipaddress.ip_address
    for bad in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.1.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ):
        assert forbidden(ip(bad), []), bad
    assert not forbidden(ip("93.184.216.34"), [])
    allowed = [ipaddress.ip_network("127.0.0.0/8")]
    assert not forbidden(ip("127.0.0.1"), allowed)
    assert not forbidden(ip("::ffff:127.0.0.1"), allowed)


def test_only_global_unicast_destinations_pass() -> None:
    """CGNAT (where cloud metadata lives) and IPv6 forms that carry a private IPv4 address
    to its destination are as private as 10/8 (issue 11, finding 7)."""
    ip = ipaddress.ip_address
    for bad in (
        "100.64.0.1",
        "100.100.100.200",  # cloud metadata
        "198.18.0.1",  # benchmarking
        "192.0.2.1",  # documentation
        "240.0.0.1",  # reserved
        "224.0.0.1",
        "2002:7f00::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:6464:64c8::1",  # 6to4 of 100.100.100.200
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
        "64:ff9b:1::a00:1",  # local-use NAT64
        "::7f00:1",  # IPv4-compatible (deprecated)
        "::808:808",
        "ff0e::1",  # global-scope multicast
        "fc00::1",
        "2001:db8::1",
    ):
        assert forbidden(ip(bad), []), bad
    for good in ("8.8.8.8", "2606:4700::1", "2002:808:808::1", "64:ff9b::808:808"):
        assert not forbidden(ip(good), []), good
    assert not forbidden(ip("100.100.100.200"), [ipaddress.ip_network("100.64.0.0/10")])


async def test_the_mx_cache_is_bounded_and_drops_expired_answers_first() -> None:
    """Before: every domain ever looked up stayed in MxResolver._cache for good. Address
    literals are answered without DNS and cached for 300 s like any answer."""
    clock = Clock()
    resolver = MxResolver(nameserver="127.0.0.1:9", clock=clock, cache_limit=100)
    for i in range(50):
        await resolver.targets(f"[192.0.2.{i}]")
    clock.advance(301)  # those 50 have expired
    for i in range(50, 100):
        await resolver.targets(f"[192.0.2.{i}]")
    await resolver.targets("[192.0.2.200]")  # past the limit: the expired ones go
    assert set(resolver._cache) == {f"[192.0.2.{i}]" for i in (*range(50, 100), 200)}
    for i in range(1000):
        await resolver.targets(f"[198.51.100.{i % 256}]" if i < 256 else f"[IPv6:2001:db8::{i:x}]")
        assert len(resolver._cache) <= 100
    assert "[IPv6:2001:db8::3e7]" in resolver._cache  # the newest answers stay
