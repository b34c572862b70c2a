"""The plain SendGrid send read in one pass (sendgrid_plain.py) against the long way
(SgMail, then the refusals and the translation of sendgrid_body.py): for every body the
one-pass reading takes, the long way accepts it too and makes the same fields; the
SDK's plain sends are all taken; no body makes it raise."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.http.vendors.sendgrid_body import (
    Refused,
    address_problems,
    bodies,
    parse,
    request_fields,
    shared_addresses,
    shared_fields,
    unsupported,
)
from mailgate.http.vendors.sendgrid_plain import plain_fields

MAX_RECIPIENTS = 4
ADDRESSES = [
    "a@example.org",
    "B.c+d@sub.example.com",
    "é@exämple.org",
    "bad",
    "",
    "a@b.c, d@e.f",
    '"q x"@example.org',
    "a@example.org\r\nBcc: x@y.z",
    "<a@example.org>",
    "a@[127.0.0.1]",
]
TEXTS = st.sampled_from(["", "Hello", 'Q "x" \\ y', "é ü", "\ud800", "a\r\nb", " "])
JUNK = st.sampled_from([None, 5, True, [], {}, "x", 1.5])


GOOD = ADDRESSES[:3]


def emails() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"email": st.one_of(st.sampled_from(GOOD), st.sampled_from(ADDRESSES))},
        optional={"name": st.one_of(TEXTS, st.none())},
    )


CONTENT = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["text/plain", "text/html"]),
        "value": st.one_of(TEXTS, st.text(max_size=20)),
    }
)
# what Mail(from, to, subject, content) sends, with its variations
PLAIN = st.fixed_dictionaries(
    {
        "from": emails(),
        "personalizations": st.lists(
            st.fixed_dictionaries(
                {"to": st.lists(emails(), max_size=3)},
                optional={
                    "cc": st.lists(emails(), max_size=2),
                    "bcc": st.lists(emails(), max_size=2),
                    "subject": st.one_of(TEXTS, st.none()),
                },
            ),
            min_size=1,
            max_size=1,
        ),
        "content": st.lists(CONTENT, max_size=2),
    },
    optional={"subject": st.one_of(TEXTS, st.none())},
)
# a value put somewhere: the top level, the personalization, its first recipient or the
# first content
WHERE = st.sampled_from(
    [(), ("personalizations", 0), ("personalizations", 0, "to", 0), ("content", 0)]
)
KEYS = st.sampled_from(
    [
        "from",
        "subject",
        "content",
        "personalizations",
        "to",
        "cc",
        "bcc",
        "email",
        "name",
        "type",
        "value",
        "reply_to",
        "categories",
        "mail_settings",
        "template_id",
        "send_at",
        "headers",
        "custom_args",
        "substitutions",
        "batch_id",
        "extra",
    ]
)
VALUES = st.one_of(
    JUNK,
    TEXTS,
    st.sampled_from(
        [
            "text/plain; charset=utf-8",
            "TEXT/HTML",
            "image/png",
            [{"email": "x@example.org"}],
            [{"to": [{"email": "x@example.org"}]}],
            {"email": "r@example.org"},
            {"sandbox_mode": {"enable": True}},
            ["a"],
            1_800_000_000,
        ]
    ),
)
MAILS = st.tuples(PLAIN, st.lists(st.tuples(WHERE, KEYS, VALUES), max_size=2))


def changed(mail: dict[str, Any], changes: list[tuple[tuple[Any, ...], str, Any]]) -> Any:
    """The mail with each (where, key, value) set, where that place exists."""
    for where, key, value in changes:
        place: Any = mail
        for step in where:
            try:
                place = place[step]
            except (LookupError, TypeError):
                place = None
                break
        if isinstance(place, dict):
            place[key] = value
    return mail


def long_way(body: bytes) -> dict[str, Any] | None:
    """The fields sendgrid.py's long reading makes of a one-personalization body, or None
    where it refuses it (or the body is not one personalization)."""
    try:
        mail = parse(body)
    except Refused:
        return None
    if len(mail.personalizations) != 1:
        return None
    p = mail.personalizations[0]
    if len(p.to) + len(p.cc) + len(p.bcc) > MAX_RECIPIENTS:
        return None
    text, wrong = bodies(mail)
    if wrong or unsupported(mail) or address_problems(shared_addresses(mail)):
        return None
    if mail.mail_settings or mail.categories:  # a sandbox send, tags: not plain
        return None
    fields, wrong = request_fields(mail, 0, shared_fields(mail, text))
    return None if wrong else fields


@settings(max_examples=1500)
@given(MAILS)
def test_what_the_one_pass_takes_the_long_way_makes_the_same(
    given_: tuple[dict[str, Any], list[tuple[tuple[Any, ...], str, Any]]],
) -> None:
    body = json.dumps(changed(*given_)).encode()
    plain = plain_fields(body, MAX_RECIPIENTS)
    if plain is not None:
        assert plain == long_way(body)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {
            "from": st.fixed_dictionaries(
                {"email": st.sampled_from(ADDRESSES[:3])}, optional={"name": st.text()}
            ),
            "personalizations": st.lists(
                st.fixed_dictionaries(
                    {"to": st.lists(st.fixed_dictionaries({"email": st.just("t@example.org")}))},
                    optional={"subject": st.text()},
                ),
                min_size=1,
                max_size=1,
            ),
            "content": st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["text/plain", "text/html"]), "value": st.text()}
                ),
                max_size=2,
                unique_by=lambda c: c["type"],
            ),
        },
        optional={"subject": st.text()},
    )
)
def test_the_sdks_plain_sends_take_the_one_pass(mail: dict[str, Any]) -> None:
    """What `Mail(from, to, subject, content)` sends: read in one pass (else the fast path
    is dead code), and as the long way reads it."""
    if len(mail["personalizations"][0]["to"]) > MAX_RECIPIENTS:
        return
    body = json.dumps(mail).encode()
    plain = plain_fields(body, MAX_RECIPIENTS)
    assert plain is not None
    assert plain == long_way(body)


@given(st.binary(max_size=200))
def test_no_body_makes_it_raise(body: bytes) -> None:
    plain_fields(body, MAX_RECIPIENTS)
