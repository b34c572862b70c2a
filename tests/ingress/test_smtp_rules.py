"""smtp_rules: pure checks, tested against straightforward references."""

from __future__ import annotations

import re
from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.addresses import address_problem
from mailgate.ingress.smtp_rules import (
    data_problem,
    drop_blank_message_id,
    field_addresses,
    foreign_originator,
    header_facts,
    missing_headers,
    transaction_key,
    unstuff,
)

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


@given(
    st.binary(max_size=300)
    | st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\x00", b"."])).map(b"".join)
)
def test_bare_cr_lf_nul_check_matches_the_regex(data: bytes) -> None:
    refused = data_problem(data, max_line=10_000) is not None
    assert refused == bool(BARE.search(data))


# Pieces of address fields: plain words and addresses, and every character that makes a
# field not plain (quotes, comments, groups, lists, brackets, escapes, dots, folding).
FIELD_PIECES = st.sampled_from(
    [
        "a",
        "Bo",
        "x.y",
        "ex-1",
        "@",
        "<",
        ">",
        " ",
        "\t",
        ".",
        "..",
        ",",
        ";",
        ":",
        '"',
        "(",
        ")",
        "\\",
        "[",
        "]",
        "é",
        "a@b.c",
        "<a@b.c>",
        "o'k",
        "{+}",
        "@[1.2.3.4]",
    ]
)


ATOM = st.text("abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=4)
PLAIN_ADDR = st.builds(
    lambda local, domain: ".".join(local) + "@" + ".".join(domain),
    st.lists(ATOM, min_size=1, max_size=3),
    st.lists(st.text("ab9-", min_size=1, max_size=3), min_size=1, max_size=3),
)
SPACE = st.sampled_from(["", " ", "\t", "  "])
# Fields that are plain, or nearly: a display name, an address, spaces, one piece more.
NEAR_PLAIN = st.builds(
    lambda lead, words, addr, bracket, trail, extra, at: (
        lambda field: field[:at] + extra + field[at:]
    )(lead + (" ".join(words) + " <" + addr + ">" if bracket else addr) + trail),
    SPACE,
    st.lists(ATOM, max_size=3),
    PLAIN_ADDR,
    st.booleans(),
    SPACE,
    st.sampled_from(["", "", ""]) | FIELD_PIECES,
    st.integers(0, 40),
)


@settings(max_examples=3000)
@given(st.lists(FIELD_PIECES, max_size=8).map("".join) | NEAR_PLAIN)
def test_field_addresses_reads_what_getaddresses_reads(value: str) -> None:
    """The fast path for plain fields gives exactly getaddresses' addr-specs."""
    assert field_addresses([value]) == [a for _, a in getaddresses([value]) if a]


@settings(max_examples=3000)
@given(
    st.lists(st.sampled_from([b"a", b"bb", b"xxxxx", b"\r\n", b"\r\n\r\n"]), max_size=40).map(
        b"".join
    ),
    st.integers(1, 12),
)
def test_line_length_check_matches_a_split(data: bytes, max_line: int) -> None:
    """For CRLF-only data, the jumping check finds a long line exactly when a split does."""
    long_line = len(data) > max_line and max(map(len, data.split(b"\r\n"))) > max_line
    assert (data_problem(data, max_line) is not None) == long_line


def test_long_lines() -> None:
    ok = b"a" * 998 + b"\r\n" + b"b" * 998
    assert data_problem(ok) is None
    assert data_problem(ok + b"b") is not None
    assert data_problem(b"x\r\n" + b"c" * 999 + b"\r\n") is not None


def test_unstuff() -> None:
    assert unstuff(b"..a\r\n...b\r\n.c\r\n") == b".a\r\n..b\r\n.c\r\n"


@given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n"])).map(b"".join))
def test_unstuff_matches_one_replace(data: bytes) -> None:
    """The rfind that skips the replace when nothing is stuffed changes nothing."""
    expected = (data[1:] if data.startswith(b"..") else data).replace(b"\r\n..", b"\r\n.")
    assert unstuff(data) == expected


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


def test_blank_message_id_counts_as_absent_and_is_dropped() -> None:
    raw = b"From: a@x.test\r\nMessage-ID:  \r\n\t\r\nSubject: s\r\n\r\nMessage-ID:\r\n"
    facts = header_facts(raw)
    assert facts.message_id is None and facts.blank_message_id
    # the body's look-alike line stays; the header's blank field goes with its fold
    assert drop_blank_message_id(raw, facts) == (
        b"From: a@x.test\r\nSubject: s\r\n\r\nMessage-ID:\r\n"
    )
    head = missing_headers(facts, hostname="h.test", queue_id="Q")
    assert head.startswith(b"Message-ID: <Q@h.test>\r\n")  # every door adds a fresh one


def test_folded_message_id_is_kept() -> None:
    raw = b"Message-ID:\r\n <m@x.test>\r\nMessage-ID:\r\nSubject: s\r\n\r\nb"
    facts = header_facts(raw)
    assert facts.message_id == "<m@x.test>" and facts.blank_message_id
    assert drop_blank_message_id(raw, facts) == (
        b"Message-ID:\r\n <m@x.test>\r\nSubject: s\r\n\r\nb"
    )


def test_every_originator_field_is_checked() -> None:
    facts = header_facts(
        b"From: a@ok.test\r\nSender: b@ok.test\r\nResent-From: x@ok.test, y@bad.test\r\n\r\n"
    )
    assert facts.originators[-1] == ("Resent-From", "y@bad.test")
    assert foreign_originator(facts, lambda d: d == "ok.test") == "Resent-From"
    assert foreign_originator(facts, lambda d: d in ("ok.test", "bad.test")) is None
    assert foreign_originator(header_facts(b"Subject: s\r\n\r\n"), lambda d: False) == "From"


def test_transaction_key_covers_sender_recipients_and_bytes() -> None:
    base = transaction_key("a@x.test", ["b@y.test", "c@y.test"], b"data")
    assert base == transaction_key("a@x.test", ["b@y.test", "c@y.test"], b"data")
    for other in (
        transaction_key("z@x.test", ["b@y.test", "c@y.test"], b"data"),
        transaction_key("a@x.test", ["b@y.test"], b"data"),
        transaction_key("a@x.test", ["b@y.testc@y.test"], b"data"),
        transaction_key("a@x.test", ["b@y.test", "c@y.test"], b"datA"),
    ):
        assert other != base
