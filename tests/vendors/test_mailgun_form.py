"""The urlencoded form reader against the stdlib's parse_qsl, which it replaces for
speed: the same pairs for every body parse_qsl reads, refused where parse_qsl refuses."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.http.vendors.mailgun_form import MAX_PARTS, FormError, parse_urlencoded

# the characters that matter: separators, escapes (whole, cut short, not hex), UTF-8,
# and backslashes (the reader rewrites %XX as \\xXX for a C decoder)
SEPARATORS = ["&", "=", "+", ";", " ", "a", "x4", "é"]
ESCAPES = ["%", "%2", "%20", "%zz", "%C3%A9", "%C3", "%A9", "%FF", "%0A", "%25", "%2541"]
BACKSLASHES = ["\\", "\\x", "\\x41", "\\n", "%5C", "%5Cx41", "%x41", "%%41"]
PIECES = st.sampled_from([*SEPARATORS, *ESCAPES, *BACKSLASHES])


def stdlib(body: bytes) -> list[tuple[str, str]] | None:
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARTS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None


def ours(body: bytes) -> list[tuple[str, str]] | None:
    try:
        return parse_urlencoded(body).fields
    except FormError:
        return None


@settings(max_examples=500)
@given(st.lists(PIECES, max_size=30).map("".join).map(str.encode))
def test_reads_what_parse_qsl_reads(body: bytes) -> None:
    assert ours(body) == stdlib(body)


@given(st.binary(max_size=60))
def test_any_bytes_read_or_refused_as_parse_qsl(body: bytes) -> None:
    assert ours(body) == stdlib(body)


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=8))
def test_a_form_encoded_reads_back(pairs: list[tuple[str, str]]) -> None:
    body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs).encode()
    assert ours(body) == stdlib(body)


def test_too_many_parameters_refused() -> None:
    with pytest.raises(FormError, match="More than"):
        parse_urlencoded(b"&".join([b"a=1"] * (MAX_PARTS + 1)))
    assert len(parse_urlencoded(b"&".join([b"a=1"] * MAX_PARTS)).fields) == MAX_PARTS
