"""Hostile text through every door (issue 18): mailgate's own POST /v1/messages and each
vendor's send route refuse a lone surrogate (U+D800-U+DFFF, which no UTF-8 can carry) in
any text field with a 4xx in the route's own JSON shape, and store nothing, so the reads
(GET /v1/messages, /v1/events) stay 200; and random text of random sizes, surrogates and
control characters among it, is never answered with a 5xx or anything but JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate import keys
from mailgate.http.models import SendRequest
from mailgate.models import Scope
from tests.vendors.conftest import INBOX, Mail

LONE = "\ud800"
LATER_ISO = "2039-01-01T00:00:00Z"
LATER_UNIX = int(time.time()) + 30 * 86400
LATER_RFC2822 = "Thu, 13 Oct 2039 18:02:00 +0000"
ATTACHMENT = {"filename": "a.txt", "content": "aGk=", "content_type": "text/plain"}

# one valid request a route, scheduled (nothing is delivered), every text field set
NATIVE: dict[str, Any] = {
    "from": "Shop <shop@example.org>",
    "to": [f"Ann <a@{INBOX}>"],
    "cc": [f"c@{INBOX}"],
    "bcc": [f"b@{INBOX}"],
    "reply_to": ["r@example.org"],
    "subject": "s",
    "text": "t",
    "html": "<p>h</p>",
    "headers": {"X-A": "v"},
    "tags": ["tag"],
    "metadata": {"k": "v"},
    "attachments": [{**ATTACHMENT, "content_id": "cid1"}],
    "scheduled_at": LATER_ISO,
}
RESEND: dict[str, Any] = {
    **{k: v for k, v in NATIVE.items() if k not in ("metadata", "attachments")},
    "tags": [{"name": "n", "value": "v"}],
    "attachments": [{**ATTACHMENT, "content_id": "cid1"}],
}
POSTMARK: dict[str, Any] = {
    "From": "Shop <shop@example.org>",
    "To": f"Ann <a@{INBOX}>",
    "Cc": f"c@{INBOX}",
    "Bcc": f"b@{INBOX}",
    "ReplyTo": "r@example.org",
    "Subject": "s",
    "Tag": "tag",
    "HtmlBody": "<p>h</p>",
    "TextBody": "t",
    "Metadata": {"k": "v"},
    "Headers": [{"Name": "X-A", "Value": "v"}],
    "Attachments": [
        {"Name": "a.txt", "Content": "aGk=", "ContentType": "text/plain", "ContentID": "cid1"}
    ],
    "MessageStream": "outbound",
}
SENDGRID: dict[str, Any] = {
    "personalizations": [
        {
            "to": [{"email": f"a@{INBOX}", "name": "Ann"}],
            "cc": [{"email": f"c@{INBOX}"}],
            "bcc": [{"email": f"b@{INBOX}"}],
            "subject": "own",
            "headers": {"X-P": "v"},
            "custom_args": {"pk": "v"},
        }
    ],
    "from": {"email": "shop@example.org", "name": "Shop"},
    "reply_to": {"email": "r@example.org", "name": "R"},
    "subject": "s",
    "content": [{"type": "text/plain", "value": "t"}, {"type": "text/html", "value": "<p/>"}],
    "attachments": [
        {"content": "aGk=", "filename": "a.txt", "type": "text/plain", "content_id": "cid1"}
    ],
    "headers": {"X-A": "v"},
    "categories": ["cat"],
    "custom_args": {"k": "v"},
    "send_at": LATER_UNIX,
}
MAILGUN: dict[str, str] = {
    "from": "Shop <shop@example.org>",
    "to": f"Ann <a@{INBOX}>",
    "cc": f"c@{INBOX}",
    "bcc": f"b@{INBOX}",
    "subject": "s",
    "text": "t",
    "html": "<p>h</p>",
    "h:X-A": "v",
    "h:Reply-To": "r@example.org",
    "h:X-Mailgun-Variables": '{"j": "v"}',
    "v:k": "v",
    "o:tag": "tag",
    "o:deliverytime": LATER_RFC2822,
}


@pytest.fixture
def key(mail: Mail) -> str:
    """A sandbox key with the send and read scopes: whatever is accepted is simulated,
    never delivered."""
    scopes = [Scope.SEND, Scope.READ]
    return mail.server.call(lambda s: keys.create_key(s, "fuzz", scopes, (), True))[1]


def spoiled(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(where, a copy of `value` with a lone surrogate in that one string or object key),
    for every string and every key of a nested object in it."""
    if isinstance(value, str):
        yield ".".join(map(str, path)), value[:1] + LONE + value[1:]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for where, bad in spoiled(item, (*path, i)):
                yield where, [*value[:i], bad, *value[i + 1 :]]
    elif isinstance(value, dict):
        for name, item in value.items():
            for where, bad in spoiled(item, (*path, name)):
                yield where, {**value, name: bad}
            if path:  # a key the caller chose (headers, metadata), not a field name
                renamed = {(k[:1] + LONE + k[1:] if k == name else k): v for k, v in value.items()}
                yield ".".join(map(str, (*path, f"<{name}>"))), renamed


def json_post(mail: Mail, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    """`body` as ASCII JSON: a lone surrogate goes as its escape, "\\ud800"."""
    content = json.dumps(body).encode()
    return mail.http.post(
        path, content=content, headers={**headers, "Content-Type": "application/json"}
    )


def form_post(mail: Mail, path: str, fields: dict[str, str], key: str) -> httpx.Response:
    """`fields` urlencoded; a lone surrogate as the bytes UTF-8 would give it if it could
    (%ED%A0%80): what a careless client sends."""
    content = urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()
    basic = httpx.BasicAuth("api", key)
    return mail.http.post(
        path,
        content=content,
        auth=basic,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def answered_json(answer: httpx.Response, where: Any) -> Any:
    assert answer.headers["content-type"].startswith("application/json"), where
    return answer.json()


def test_the_request_model_refuses_a_lone_surrogate_in_every_text_field() -> None:
    """What a vendor surface builds from a form or its own JSON (strings Python holds, not
    JSON escapes): SendRequest refuses each, naming the field."""
    assert SendRequest.model_validate(NATIVE).text == "t"
    found = list(spoiled(NATIVE))
    assert len(found) > 20
    for where, bad in found:
        with pytest.raises(pydantic.ValidationError) as refused:
            SendRequest.model_validate(bad)
        first = refused.value.errors(include_url=False)[0]
        assert first["loc"][0] == where.split(".")[0], (where, first)
        # the error can be written back as UTF-8 (the field it names holds no surrogate)
        json.dumps([first["loc"], first["msg"]], ensure_ascii=False).encode()


def test_every_door_refuses_a_lone_surrogate_and_the_reads_stay_200(mail: Mail, key: str) -> None:
    bearer = {"Authorization": f"Bearer {key}"}
    postmark = {"X-Postmark-Server-Token": key}
    json_doors: list[tuple[str, Any, dict[str, str], str]] = [
        ("/v1/messages", NATIVE, bearer, "error"),
        ("/emails", RESEND, bearer, "name"),
        ("/email", POSTMARK, postmark, "ErrorCode"),
        ("/v3/mail/send", SENDGRID, bearer, "errors"),
    ]
    tried = 0
    for path, base, headers, shape in json_doors:
        for where, bad in spoiled(base):
            answer = json_post(mail, path, bad, headers)
            assert 400 <= answer.status_code < 500, (path, where, answer.text)
            assert shape in answered_json(answer, (path, where)), (path, where, answer.text)
            tried += 1
    batch = json_post(mail, "/emails/batch", [RESEND, next(spoiled(RESEND))[1]], bearer)
    assert batch.status_code == 400 and "name" in answered_json(batch, "batch")
    mailgun = "/v3/example.org/messages"
    for name, value in MAILGUN.items():
        spoilt = {**MAILGUN, name: value[:1] + LONE + value[1:]}
        answer = form_post(mail, mailgun, spoilt, key)
        assert answer.status_code == 400, (name, answer.text)
        assert set(answered_json(answer, name)) == {"message"}
        tried += 1
    for name in ("h:X-Mailgun-Variables", "recipient-variables"):  # JSON in a form field
        for text in ('{"a": "\\ud800"}', '{"\\udfff": {"a": "b"}}'):
            answer = form_post(mail, mailgun, {**MAILGUN, name: text}, key)
            assert answer.status_code == 400 and name in answer.json()["message"], answer.text
    assert tried > 80
    assert mail.admin("GET", "/v1/messages").json()["data"] == []  # none was taken

    # each base request is valid: the surrogate was the only thing wrong
    for path, base, headers, _ in json_doors:
        assert json_post(mail, path, base, headers).status_code in (200, 202), path
    assert form_post(mail, mailgun, MAILGUN, key).status_code == 200
    assert len(mail.admin("GET", "/v1/messages").json()["data"]) == 5
    for path in ("/v1/messages", "/v1/events"):
        assert mail.admin("GET", path).status_code == 200, path
        assert httpx.get(f"{mail.server.http_url}{path}", headers=bearer).status_code == 200


# -- generated requests: never a 5xx, always JSON ---------------------------------------

HOSTILE_CHARS = st.sampled_from(
    [LONE, "\udfff", "\udc80", "\x00", "\r", "\n", "\x85", "\u2028", "\x7f", "\t", "%", "é"]
)
# put inside a value: a lone surrogate (most often: the class issue 18 found), another
# hostile character, or a JSON escape (for Mailgun's JSON parameters)
SPIKES = st.one_of(
    st.sampled_from([LONE, "\udfff"]),
    HOSTILE_CHARS,
    st.sampled_from(["\\ud800", "\\u0000", '"', "%recipient.x%"]),
)
TEXT = st.one_of(
    st.text(st.one_of(st.characters(), HOSTILE_CHARS), max_size=40),
    st.builds(lambda c, n: c * n, HOSTILE_CHARS | st.just("a"), st.integers(0, 70_000)),
)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def around(value: Any) -> st.SearchStrategy[Any]:
    """`value` kept in shape, its strings (object keys too) as they are, with a hostile
    character inside, with random text around or random: most of a request stays valid,
    so the generated part is reached."""
    if isinstance(value, str):
        spiked = st.builds(
            lambda i, c: value[:i] + c + value[i:], st.integers(0, len(value)), SPIKES
        )
        edged = st.builds(lambda a, b: a + value + b, TEXT, TEXT)
        return st.one_of(spiked, st.just(value), edged, TEXT)
    if isinstance(value, list):
        return st.tuples(*map(around, value)).map(list)
    if isinstance(value, dict):
        pairs = [st.tuples(around(k), around(v)) for k, v in value.items()]
        return st.tuples(*pairs).map(dict)
    return st.just(value)


def changed(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with one or two of its top-level fields regenerated around their values."""
    fields = st.lists(st.sampled_from(sorted(base)), min_size=1, max_size=2, unique=True)
    return fields.flatmap(
        lambda names: st.fixed_dictionaries({n: around(base[n]) for n in names}).map(
            lambda new: {**base, **new}
        )
    )


def test_generated_vendor_requests_are_never_a_5xx(mail: Mail, key: str) -> None:
    """Under 20 s: 40 requests a route, each with one or two fields regenerated."""
    bearer = {"Authorization": f"Bearer {key}"}
    postmark = {"X-Postmark-Server-Token": key}

    def judged(answer: httpx.Response, case: Any) -> None:
        assert answer.status_code < 500, (str(case)[:500], answer.status_code, answer.text[:300])
        if answer.status_code == 202 and not answer.content:  # SendGrid's answer: no body
            return
        answered_json(answer, str(case)[:500])

    @FUZZ
    @given(body=changed(RESEND))
    def resend(body: dict[str, Any]) -> None:
        judged(json_post(mail, "/emails", body, bearer), body)

    @FUZZ
    @given(body=changed(POSTMARK))
    def postmark_(body: dict[str, Any]) -> None:
        judged(json_post(mail, "/email", body, postmark), body)

    @FUZZ
    @given(body=changed(SENDGRID))
    def sendgrid(body: dict[str, Any]) -> None:
        judged(json_post(mail, "/v3/mail/send", body, bearer), body)

    @FUZZ
    @given(body=changed(MAILGUN), extra=st.dictionaries(TEXT, TEXT, max_size=2))
    def mailgun(body: dict[str, str], extra: dict[str, str]) -> None:
        judged(form_post(mail, "/v3/example.org/messages", {**body, **extra}, key), body)

    for run in (resend, postmark_, sendgrid, mailgun):
        run()
    for path in ("/v1/messages", "/v1/events"):
        assert mail.admin("GET", path).status_code == 200, path
