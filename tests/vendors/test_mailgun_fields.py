"""Mailgun's plain message (from, to, cc, bcc, subject, text, html and nothing else) is
read without the h:, o: and v: steps: the same request, or the same refusal, as
the whole reading makes of it (forced here by an option that changes nothing)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.http.vendors.mailgun_fields import Outgoing, Refused, read_message
from mailgate.http.vendors.mailgun_form import Form

KEYS = ["from", "to", "cc", "bcc", "subject", "text", "html"]
VALUES = st.sampled_from(
    [
        "",
        "a@example.org",
        "A <a@example.org>",
        "a@example.org, b@example.org",
        '"Doe, Jane" <j@example.org>',
        "bad",
        " , ",
        "Hello",
        "é",
    ]
)
FORMS = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=8)
NO_EFFECT = ("o:testmode", "no")  # takes the whole reading, changes no field


def read(fields: list[tuple[str, str]]) -> list[Outgoing] | str:
    try:
        return read_message(Form(fields, []), False, 10, 1_000_000)
    except Refused as refused:
        return refused.message


@settings(max_examples=1000)
@given(FORMS)
def test_the_plain_reading_is_the_whole_one(fields: list[tuple[str, str]]) -> None:
    assert read(fields) == read([*fields, NO_EFFECT])


def test_a_plain_message_takes_the_short_reading() -> None:
    """An option set goes the whole way (else the test above compares a path with itself)."""
    fields = [("from", "a@example.org"), ("to", "b@example.org"), ("text", "x")]
    assert read(fields) == [
        Outgoing({"from": "a@example.org", "to": ["b@example.org"], "text": "x"})
    ]
    assert read([*fields, ("o:tag", "t")]) == [
        Outgoing({"from": "a@example.org", "to": ["b@example.org"], "text": "x", "tags": ["t"]})
    ]
