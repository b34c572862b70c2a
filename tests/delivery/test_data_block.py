"""data_block: what goes after DATA, against a reference written straight from RFC 5321
(every line end CRLF, a leading dot doubled, the terminating line added)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.delivery.smtp_client import data_block


def reference(raw: bytes) -> bytes:
    lines = re.split(rb"\r\n|\r|\n", raw)
    if lines[-1] == b"":
        lines.pop()  # raw ended with a line end: no empty last line
    return (
        b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
        + b".\r\n"
    )


PIECES = st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"\r\n.", b"x y", b"\xc3\xa9"])


@settings(max_examples=3000)
@given(st.lists(PIECES, max_size=30).map(b"".join))
def test_data_block_matches_the_reference(raw: bytes) -> None:
    assert data_block(raw) == reference(raw)


@given(st.lists(st.sampled_from([b"a", b".", b"\r\n", b"\r\n."]), max_size=30).map(b"".join))
def test_crlf_only_mail_takes_the_same_bytes(raw: bytes) -> None:
    """The CRLF-only case (how both doors store mail) on its own, so it is surely drawn."""
    assert data_block(raw) == reference(raw)


def test_examples() -> None:
    assert data_block(b"") == b".\r\n"
    assert data_block(b".hidden\r\nbody\r\n..two\r\n") == b"..hidden\r\nbody\r\n...two\r\n.\r\n"
    assert data_block(b"bare\nlf\rcr") == b"bare\r\nlf\r\ncr\r\n.\r\n"


@given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r\n.", b"x y"]), max_size=30))
def test_known_crlf_only_mail_takes_the_same_bytes_unchecked(pieces: list[bytes]) -> None:
    """What the SMTP relay stores (no bare CR or LF: it refuses those) goes out the same
    whether or not data_block looks for bare line ends."""
    raw = b"".join(pieces)
    assert data_block(raw, crlf_only=True) == reference(raw)
