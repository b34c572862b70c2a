"""data_block: what goes after DATA, against a reference written straight from RFC 5321
(every line end CRLF, a leading dot doubled, the terminating line added)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.delivery.smtp_client import _EMPTY_LINE, data_block, header_end


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


def header_end_reference(raw: bytes) -> int:
    m = _EMPTY_LINE.search(raw)
    return len(raw) if m is None else m.start()


HEAD_PIECES = st.sampled_from([b"a", b"\r\n", b"\r", b"\n", b"\r\n\r\n", b": ", b"\xc3\xa9"])


@settings(max_examples=3000)
@given(st.lists(HEAD_PIECES, max_size=30).map(b"".join))
def test_header_end_matches_the_reference(raw: bytes) -> None:
    """The CRLF CRLF fast path answers as the line-end-agnostic regex does, bare CR and
    LF before the blank line included."""
    assert header_end(raw) == header_end_reference(raw)


def test_header_end_examples() -> None:
    assert header_end(b"A: b\r\nC: d\r\n\r\nbody\r\n\r\n") == 10
    assert header_end(b"A: b\nC: d\r\n\r\nbody") == 9  # a bare LF, then the blank line
    assert header_end(b"A: b\n\nC: d\r\n\r\n") == 4
    assert header_end(b"\r\nA: b") == 0
    assert header_end(b"A: b\r\nC: d") == 10  # no blank line: all of it
