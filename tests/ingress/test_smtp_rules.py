"""smtp_rules: pure checks, tested against straightforward references."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mailgate.addresses import address_problem
from mailgate.ingress.smtp_rules import data_problem, header_facts, unstuff

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


@given(
    st.binary(max_size=300)
    | st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\x00", b"."])).map(b"".join)
)
def test_bare_cr_lf_nul_check_matches_the_regex(data: bytes) -> None:
    refused = data_problem(data, max_line=10_000) is not None
    assert refused == bool(BARE.search(data))


def test_long_lines() -> None:
    ok = b"a" * 998 + b"\r\n" + b"b" * 998
    assert data_problem(ok) is None
    assert data_problem(ok + b"b") is not None
    assert data_problem(b"x\r\n" + b"c" * 999 + b"\r\n") is not None


def test_unstuff() -> None:
    assert unstuff(b"..a\r\n...b\r\n.c\r\n") == b".a\r\n..b\r\n.c\r\n"


def test_header_facts_folded_and_display_names() -> None:
    facts = header_facts(
        b'From: "x@good.test" <real@evil.test>\r\nSubject: a\r\n b\r\nMessage-ID: <m@x>\r\n\r\nbody'
    )
    assert facts.from_addresses == ("real@evil.test",)
    assert facts.subject == "a b" and facts.message_id == "<m@x>" and not facts.has_date


def test_addresses() -> None:
    assert address_problem("a.b+c@example.com") is None
    assert address_problem('"quoted space"@example.com') is None
    assert address_problem("ü@exämple.de") is None
    for bad in (
        "a@b",
        "a@@b.com",
        "@x:a@b.com",
        "a%b@c.com",
        "a!b@c.com",
        '"a@b"@c.com',
        "a b@c.com",
        "x" * 65 + "@c.com",
    ):
        assert address_problem(bad) is not None, bad
