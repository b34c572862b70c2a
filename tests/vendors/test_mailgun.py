"""The official `mailgun` SDK, unmodified, against a running mailgate: `api_url` is the
only change. What it sent is read back at the receiving sink; what mailgate refuses comes
back as Mailgun's {"message": ...} with Mailgun's status (the SDK returns the
requests.Response and never raises on a status: `raise_for_status()` is its error path)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from mailgun.builders import MailgunMessageBuilder
from mailgun.client import AsyncClient, Client

from mailgate import keys
from mailgate.http.vendors.mailgun_fields import delivery_time, split_addresses
from mailgate.http.vendors.mailgun_form import File, parse_form
from mailgate.models import Scope
from tests.vendors.conftest import INBOX, Mail

DOMAIN = "example.org"
FROM = f"Shop <shop@{DOMAIN}>"


@pytest.fixture
def client(mail: Mail) -> Iterator[Client]:
    with Client(auth=("api", mail.server.send_key), api_url=mail.server.http_url) as c:
        yield c


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def ulid_of(mailgun_id: str) -> str:
    """mailgate's message id inside its Message-ID: <ULID@host>."""
    return mailgun_id.strip("<>").split("@")[0]


def stored(mail: Mail, mailgun_id: str) -> dict[str, Any]:
    found = mail.admin("GET", f"/v1/messages/{ulid_of(mailgun_id)}")
    assert found.status_code == 200, found.text
    body: dict[str, Any] = found.json()
    return body


def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found
    return found


def refused(resp: requests.Response, status: int, *words: str) -> str:
    """The SDK's answer is Mailgun's error: the status, JSON {"message"} naming `words`,
    and raise_for_status() raising requests' HTTPError."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json", resp.headers
    message: str = resp.json()["message"]
    assert set(resp.json()) == {"message"}
    for word in words:
        assert word in message, message
    with pytest.raises(requests.HTTPError):
        resp.raise_for_status()
    return message


def test_send_form_urlencoded_arrives_as_sent(mail: Mail, client: Client) -> None:
    resp = client.messages.create(
        domain=DOMAIN,
        data={
            "from": FROM,
            "to": [f"you@{INBOX}", f'"Doe, Jane" <jane@{INBOX}>, two@{INBOX}'],
            "cc": f"copy@{INBOX}",
            "bcc": f"hidden@{INBOX}",
            "subject": "Hello",
            "text": "Hi there",
            "html": "<p>Hi there</p>",
            "o:tag": ["welcome", "onboarding"],
            "v:order-id": "42",
            "h:X-Custom": "1",
            "h:Reply-To": "replies@example.org",
            "o:tracking": "no",  # off: what mailgate does anyway
            "o:dkim": "yes",
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    answer = resp.json()
    assert answer["message"] == "Queued. Thank you."
    assert answer["id"].startswith("<") and answer["id"].endswith(">")

    [got] = mail.received(1, timeout=60)
    assert sorted(got.recipients) == sorted(
        f"{u}@{INBOX}" for u in ("you", "jane", "two", "copy", "hidden")
    )
    message = parsed(got.data)
    assert message["Message-ID"] == answer["id"]
    assert message["From"] == FROM and message["Subject"] == "Hello"
    assert [a.addr_spec for a in message["To"].addresses] == [
        f"you@{INBOX}",
        f"jane@{INBOX}",
        f"two@{INBOX}",
    ]
    assert message["To"].addresses[1].display_name == "Doe, Jane"
    assert message["Cc"] == f"copy@{INBOX}"
    assert message["Bcc"] is None and b"hidden@" not in got.data
    assert message["X-Custom"] == "1" and message["Reply-To"] == "replies@example.org"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == "Hi there"
    assert html.get_content().strip() == "<p>Hi there</p>"

    view = stored(mail, answer["id"])
    assert view["tags"] == ["welcome", "onboarding"]
    assert view["metadata"] == {"order-id": "42"}
    assert view["source"] == "http"


def test_multipart_with_attachments_inline_and_threading(mail: Mail, client: Client) -> None:
    first = client.messages.create(
        domain=DOMAIN,
        data={"from": FROM, "to": f"you@{INBOX}", "subject": "Order", "text": "first"},
    )
    assert first.status_code == 200, first.text
    parent = first.json()["id"]
    resp = client.messages.create(
        domain=DOMAIN,
        data={
            "from": FROM,
            "to": [f"you@{INBOX}"],
            "subject": "Re: Order",
            "text": "see attached",
            "html": '<p>logo: <img src="cid:logo.png"></p>',
            "h:In-Reply-To": parent,
            "h:References": parent,
            "o:tag": "receipt",
        },
        files=[
            ("attachment", ("a.txt", b"hello")),  # no part Content-Type: guessed
            ("attachment", ("data.bin", b"\x00\xff\x10", "application/octet-stream")),
            ("inline", ("logo.png", b"\x89PNG\r\n", "image/png")),
        ],
    )
    assert resp.status_code == 200, resp.text

    received = mail.received(2, timeout=60)
    message = next(parsed(r.data) for r in received if b"see attached" in r.data)
    assert message["Message-ID"] == resp.json()["id"]
    assert message["In-Reply-To"] == parent and message["References"] == parent
    parts = {p.get_filename(): p for p in message.iter_attachments()}
    assert parts["a.txt"].get_content_type() == "text/plain"
    assert parts["a.txt"].get_content().strip() == "hello"
    assert parts["data.bin"].get_content() == b"\x00\xff\x10"
    logo = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert logo["Content-ID"] == "<logo.png>"
    assert logo.get_content_disposition() == "inline"
    assert logo.get_content() == b"\x89PNG\r\n"
    assert stored(mail, resp.json()["id"])["tags"] == ["receipt"]


def test_mime_message_keeps_its_bytes_and_loses_bcc(mail: Mail, client: Client) -> None:
    mime = (
        f"From: {FROM}\r\nTo: you@{INBOX}\r\nBcc: secret@{INBOX}\r\n"
        "Subject: Raw one\r\nMessage-ID: <raw-1@example.org>\r\nX-Raw: kept\r\n"
        "\r\nBody as written.\r\n"
    ).encode()
    resp = client.mimemessage.create(
        domain=DOMAIN,
        data={"to": [f"you@{INBOX}", f"secret@{INBOX}"], "o:tag": "raw", "v:k": "v"},
        files={"message": ("message.mime", mime)},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": "<raw-1@example.org>", "message": "Queued. Thank you."}

    [got] = mail.received(1, timeout=60)
    assert sorted(got.recipients) == [f"secret@{INBOX}", f"you@{INBOX}"]
    assert got.sender == f"shop@{DOMAIN}"
    message = parsed(got.data)
    assert message["Bcc"] is None and message["X-Raw"] == "kept"
    assert message.get_content().strip() == "Body as written."

    def send(mime: bytes | None, **fields: Any) -> requests.Response:
        files = {"message": ("message.mime", mime)} if mime is not None else None
        data = {"to": f"you@{INBOX}", **fields}
        return client.mimemessage.create(domain=DOMAIN, data=data, files=files)

    refused(send(None), 400, "'message' parameter is missing")
    refused(send(b"Subject: x\r\n\r\nhi\r\n"), 400, "'message' parameter", "no From")
    other = b"From: a@elsewhere.example\r\n\r\nhi\r\n"
    refused(send(other), 400, "'message' parameter holds 'a@elsewhere.example'", "not an")
    refused(send(mime, to=None), 400, "'to' parameter is missing")
    refused(send(mime, to="nobody"), 400, "'to' parameter is not a valid address")
    refused(send(mime, subject="s"), 400, "'subject' parameter is not supported")
    refused(send(mime, **{"h:X-A": "1"}), 400, "'h:X-A' parameter is not supported")
    refused(send(mime, **{"o:tracking-opens": "yes"}), 400, "'o:tracking-opens'")
    assert len(mail.script.received) == 1


def test_scheduled_send_then_cancelled_by_its_id(mail: Mail, client: Client) -> None:
    when = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=1)
    resp = client.messages.create(
        domain=DOMAIN,
        data={
            "from": FROM,
            "to": f"later@{INBOX}",
            "subject": "Tomorrow",
            "text": "t",
            "o:deliverytime": format_datetime(when),  # RFC 2822, as Mailgun takes it
        },
    )
    assert resp.status_code == 200, resp.text
    view = stored(mail, resp.json()["id"])
    assert datetime.datetime.fromisoformat(view["scheduled_at"]) == when
    assert view["recipients"][0]["status"] == "queued"

    # Mailgun has no per-message cancel: mailgate's own API takes the id inside the answer
    cancelled = mail.http.post(
        f"/v1/messages/{ulid_of(resp.json()['id'])}/cancel",
        headers={"Authorization": f"Bearer {mail.server.send_key}"},
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["recipients"][0]["status"] == "cancelled"
    assert not mail.script.received


def test_recipient_variables_send_one_message_each(mail: Mail, client: Client) -> None:
    resp = client.messages.create(
        domain=DOMAIN,
        data={
            "from": FROM,
            "to": [f"Ann <ann@{INBOX}>", f"bob@{INBOX}"],
            "subject": "Hi %recipient.name%",
            "text": "Your code is %recipient.code%",
            "v:user": "%recipient.id%",
            "recipient-variables": (
                f'{{"ann@{INBOX}": {{"name": "Ann", "code": 1, "id": "a1"}},'
                f' "bob@{INBOX}": {{"name": "Bob", "code": 2, "id": "b2"}}}}'
            ),
        },
    )
    assert resp.status_code == 200, resp.text
    received = mail.received(2, timeout=60)
    by_to = {r.recipients[0]: parsed(r.data) for r in received}
    assert set(by_to) == {f"ann@{INBOX}", f"bob@{INBOX}"}
    ann, bob = by_to[f"ann@{INBOX}"], by_to[f"bob@{INBOX}"]
    assert ann["Subject"] == "Hi Ann" and ann["To"] == f"Ann <ann@{INBOX}>"
    assert bob["Subject"] == "Hi Bob" and bob["To"] == f"bob@{INBOX}"
    assert "Your code is 2" in bob.get_content()
    assert all(len(r.recipients) == 1 for r in received)
    assert stored(mail, resp.json()["id"])["metadata"] == {"user": "a1"}

    missing = client.messages.create(
        domain=DOMAIN,
        data={
            "from": FROM,
            "to": [f"ann@{INBOX}"],
            "text": "%recipient.nope%",
            "recipient-variables": f'{{"ann@{INBOX}": {{}}}}',
        },
    )
    refused(missing, 400, "'recipient-variables'", "nope")


def test_refusals_are_mailgun_shaped_and_name_the_parameter(mail: Mail, client: Client) -> None:
    def send(**fields: Any) -> requests.Response:
        data = {"from": FROM, "to": f"you@{INBOX}", "subject": "s", "text": "t", **fields}
        return client.messages.create(domain=DOMAIN, data=data)

    refused(send(to="not an address"), 400, "'to' parameter is not a valid address")
    refused(send(**{"from": "shop@elsewhere.example"}), 400, "'from'", DOMAIN)
    refused(send(**{"o:tracking": "yes"}), 400, "'o:tracking'", "does not track")
    refused(send(**{"o:tracking-clicks": "htmlonly"}), 400, "'o:tracking-clicks'")
    refused(send(**{"o:require-tls": "true"}), 400, "'o:require-tls'")
    refused(send(**{"o:dkim": "no"}), 400, "'o:dkim'")
    refused(send(**{"o:tracking": "maybe"}), 400, "'o:tracking' parameter must be yes or no")
    refused(send(**{"o:testmode": "yes"}), 400, "'o:testmode'", "sandbox")
    refused(send(template="welcome"), 400, "'template'", "templates")
    refused(send(**{"amp-html": "<p>"}), 400, "'amp-html'")
    refused(send(**{"o:deliverytime": "tomorrow"}), 400, "'o:deliverytime'", "RFC 2822")
    refused(send(**{"h:Message-Id": "<x@y>"}), 400, "'h:Message-Id'")
    refused(send(**{"h:In-Reply-To": "not-an-id"}), 400, "'h:In-Reply-To'")
    refused(send(**{"o:tag": ["ok", "bad\ntag"]}), 400, "'o:tag'")
    refused(send(**{"v:": "x"}), 400, "'v:'")
    refused(send(**{"o:unknown": "1"}), 400, "'o:unknown' parameter is not supported")
    refused(send(subject="x" * 1000), 400, "'subject' parameter is invalid")
    refused(send(subject=["a", "b"]), 400, "'subject' parameter was given more than once")
    refused(send(**{"recipient-variables": "[1]"}), 400, "'recipient-variables'")
    refused(send(text=None, html=None), 400, "'text' or 'html'")
    refused(send(**{"from": None}), 400, "'from' parameter is missing")
    refused(send(to=None), 400, "'to' parameter is missing")
    refused(
        client.messages.create(domain="not_a_domain", data={"from": FROM}), 404, "Domain not found"
    )

    with Client(auth=("api", "mg_wrong"), api_url=mail.server.http_url) as wrong:
        assert refused(wrong.messages.create(domain=DOMAIN, data={}), 401) == "Forbidden"
    with Client(auth=("key", mail.server.send_key), api_url=mail.server.http_url) as user:
        assert refused(user.messages.create(domain=DOMAIN, data={}), 401) == "Forbidden"
    with Client(auth=("api", mail.server.restricted_key), api_url=mail.server.http_url) as org:
        refused(
            org.messages.create(
                domain="example.com",
                data={"from": "a@example.com", "to": f"you@{INBOX}", "text": "t"},
            ),
            403,
            "'from' parameter is not allowed",
        )
    assert not mail.script.received


@pytest.mark.parametrize("mail", [{"require_verified": True}], indirect=True)
def test_an_unverified_domain_is_not_found_and_a_verified_one_signs(
    mail: Mail, client: Client
) -> None:
    data = {"from": FROM, "to": f"you@{INBOX}", "subject": "s", "text": "t", "o:dkim": "yes"}
    refused(client.messages.create(domain=DOMAIN, data=data), 404, f"Domain not found: {DOMAIN}")
    mail.add_verified(DOMAIN)
    resp = client.messages.create(domain=DOMAIN, data=data)
    assert resp.status_code == 200, resp.text
    [got] = mail.received(1, timeout=60)
    assert got.data.count(b"DKIM-Signature:") == 2


def test_testmode_with_a_sandbox_key_is_simulated(mail: Mail) -> None:
    _, sandbox = mail.server.call(
        lambda s: keys.create_key(s, "sandbox", [Scope.SEND], sandbox=True)
    )
    with Client(auth=("api", sandbox), api_url=mail.server.http_url) as c:
        resp = c.messages.create(
            domain=DOMAIN,
            data={"from": FROM, "to": f"you@{INBOX}", "text": "t", "o:testmode": "yes"},
        )
    assert resp.status_code == 200, resp.text

    def delivered() -> bool:
        view = stored(mail, resp.json()["id"])
        return bool(view["recipients"][0]["status"] == "delivered")

    wait_for(delivered)
    assert not mail.script.received  # simulated, never sent


def test_idempotency_key_survives_a_new_multipart_boundary(mail: Mail, client: Client) -> None:
    def send() -> requests.Response:
        return client.messages.create(
            domain=DOMAIN,
            data={"from": FROM, "to": f"you@{INBOX}", "text": "once"},
            files=[("attachment", ("a.txt", b"hello"))],
            headers={"Idempotency-Key": "order-7"},
        )

    one, two = send(), send()
    assert one.status_code == two.status_code == 200, (one.text, two.text)
    assert one.json() == two.json()
    assert two.headers.get("idempotent-replayed") == "true"
    other = client.messages.create(
        domain=DOMAIN,
        data={"from": FROM, "to": f"you@{INBOX}", "text": "another"},
        headers={"Idempotency-Key": "order-7"},
    )
    refused(other, 409, "Idempotency-Key")
    listed = mail.admin("GET", "/v1/messages")
    assert [m["id"] for m in listed.json()["data"]] == [ulid_of(one.json()["id"])]


def test_the_sdks_message_builder(mail: Mail, client: Client, tmp_path: Path) -> None:
    (tmp_path / "report.csv").write_bytes(b"a,b\n1,2\n")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n")
    data, files = (
        MailgunMessageBuilder(f"shop@{DOMAIN}")
        .add_recipient(f"you@{INBOX}")
        .add_recipient(f"two@{INBOX}")  # the builder joins them: to=you@...,two@...
        .add_recipient(f"hidden@{INBOX}", "bcc")
        .set_subject("Built")
        .set_text("text")
        .set_html('<img src="cid:logo">')
        .add_custom_header("X-Order", "7")
        .add_custom_variable("order", {"id": 7})
        .add_option("tracking", value=False)
        .attach_file(tmp_path / "report.csv")
        .attach_inline(tmp_path / "logo.png", cid="logo")
        .build()
    )
    resp = client.messages.create(domain=DOMAIN, data=data, files=files)
    assert resp.status_code == 200, resp.text

    [got] = mail.received(1, timeout=60)
    assert sorted(got.recipients) == [f"hidden@{INBOX}", f"two@{INBOX}", f"you@{INBOX}"]
    message = parsed(got.data)
    assert message["To"] == f"you@{INBOX}, two@{INBOX}" and message["Bcc"] is None
    assert message["X-Order"] == "7" and message["X-Idempotency-Key"]  # the builder's own
    report = next(message.iter_attachments())
    assert report.get_filename() == "report.csv" and report.get_content() == "a,b\n1,2\n"
    assert stored(mail, resp.json()["id"])["metadata"] == {"order": '{"id":7}'}


async def test_the_async_client_sends_multipart_too(mail: Mail) -> None:
    async with AsyncClient(auth=("api", mail.server.send_key), api_url=mail.server.http_url) as c:
        resp = await c.messages.create(
            domain=DOMAIN,
            data={"from": FROM, "to": [f"you@{INBOX}"], "subject": "Async", "text": "t"},
            files=[("attachment", ("ü.txt", b"hello"))],
        )
    assert resp.status_code == 200, resp.text
    [got] = await asyncio.to_thread(mail.received, 1, 60)
    message = parsed(got.data)
    assert message["Subject"] == "Async"
    assert [p.get_filename() for p in message.iter_attachments()] == ["ü.txt"]


FORM = "application/x-www-form-urlencoded"
BOUNDARY_X = "multipart/form-data; boundary=x"
# (Content-Type, body, status, words the message holds): all answered before any send
HOSTILE: list[tuple[str, bytes, int, tuple[str, ...]]] = [
    ("application/json", b'{"from": "a@example.org"}', 400, ("Content-Type",)),
    ("multipart/form-data", b"--x\r\n", 400, ("boundary",)),
    (BOUNDARY_X, b"--x\r\nbroken", 400, ("multipart",)),
    (
        BOUNDARY_X,
        b'--x\r\nContent-Disposition: form-data; name="from"\r\n\r\na',
        400,
        ("closing boundary",),
    ),
    (BOUNDARY_X, b"--x\r\nContent-Type: text/plain\r\n\r\na\r\n--x--\r\n", 400, ("name",)),
    (
        BOUNDARY_X,
        b'--x\r\nContent-Disposition: form-data; name="message"; filename="m"\r\n\r\n'
        b"x\r\n--x--\r\n",
        400,
        ("'message'",),
    ),
    (FORM, b"from=%FF", 400, ("UTF-8",)),
    (FORM, b"from=\xff", 400, ("UTF-8",)),
    (FORM, b"a=1&" * 1001, 400, ("1000",)),
    (
        FORM,
        b"from=a%40example.org&to=b%40inbox.test&text=t&subject=" + b"a" * 2_000_000,
        400,
        ("'subject' parameter is invalid",),
    ),
    (FORM, b"from=a%40example.org&text=t&to=" + b"a%40b.c," * 100_000, 400, ("'to'",)),
    (FORM, b"from=a%40example.org&to=b%40inbox.test&text=%00", 400, ("'text'",)),
    (FORM, b"", 400, ("'from' parameter is missing",)),
]


def test_hostile_bodies_get_mailgun_errors(mail: Mail) -> None:
    auth = base64.b64encode(f"api:{mail.server.send_key}".encode()).decode()
    for content_type, body, status, words in HOSTILE:
        resp = httpx.post(
            f"{mail.server.http_url}//v3/{DOMAIN}/messages",  # repeated slashes folded
            content=body,
            headers={"Authorization": f"Basic {auth}", "Content-Type": content_type},
            timeout=60,
        )
        case = (content_type, body[:60])
        assert resp.status_code == status, (case, resp.text)
        assert resp.headers["content-type"] == "application/json", case
        assert set(resp.json()) == {"message"}, case
        assert all(w in resp.json()["message"] for w in words), (case, resp.text)
    assert not mail.script.received


# -- the pure parts, without a server


def test_addresses_split_at_commas_outside_quotes_and_brackets() -> None:
    assert split_addresses('a@x, "Doe, Jane" <j@y>,, (c, d) e@z ,') == [
        "a@x",
        '"Doe, Jane" <j@y>',
        "(c, d) e@z",
    ]
    assert split_addresses(r'"a \", b" <q@x>, r@y') == [r'"a \", b" <q@x>', "r@y"]
    assert split_addresses(" ") == []


def test_a_multipart_form_is_the_same_request_whatever_its_boundary() -> None:
    def body() -> tuple[bytes, str]:  # requests draws a new boundary each time
        prepared = requests.Request(
            "POST",
            "http://x/",
            data={"from": "a@x", "to": ["b@y", "c@z"]},
            files=[("attachment", ("a.txt", b"hi"))],
        ).prepare()
        assert isinstance(prepared.body, bytes)
        return prepared.body, prepared.headers["Content-Type"]

    (first, first_type), (second, second_type) = body(), body()
    assert first_type != second_type
    one, two = parse_form(first, first_type), parse_form(second, second_type)
    assert one.fields == [("from", "a@x"), ("to", "b@y"), ("to", "c@z")]
    assert one.files == [File("attachment", "a.txt", None, b"hi")]
    assert one.fingerprint() == two.fingerprint()


def test_delivery_time_reads_rfc_2822() -> None:
    assert delivery_time("Thu, 13 Oct 2030 18:02:00 +0200") == "2030-10-13T18:02:00+02:00"
    assert delivery_time("Thu, 13 Oct 2030 18:02:00 -0000") == "2030-10-13T18:02:00+00:00"


# -- what a hostile review found (issue 18): each refused in Mailgun's shape, nothing stored

FUTURE = "Thu, 13 Oct 2039 18:02:00 +0000"  # scheduled: nothing is delivered meanwhile


def post(
    mail: Mail,
    data: dict[str, Any],
    files: Any = None,
    path: str = "messages",
    domain: str = DOMAIN,
    key: str | None = None,
) -> httpx.Response:
    """POST /v3/{domain}/{path} with Basic api:<key> (the send key by default)."""
    auth = base64.b64encode(f"api:{key or mail.server.send_key}".encode()).decode()
    return mail.http.post(
        f"/v3/{domain}/{path}", data=data, files=files, headers={"Authorization": f"Basic {auth}"}
    )


def mailgun_error(resp: httpx.Response, status: int, *words: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json", resp.headers
    assert set(resp.json()) == {"message"}, resp.text
    message: str = resp.json()["message"]
    assert all(w in message for w in words), message
    return message


def stored_ids(mail: Mail) -> list[str]:
    listed = mail.admin("GET", "/v1/messages", params={"limit": 500})
    assert listed.status_code == 200, listed.text
    return [m["id"] for m in listed.json()["data"]]


def stored_raw(mail: Mail, mailgun_id: str) -> bytes:
    raw = mail.admin("GET", f"/v1/messages/{ulid_of(mailgun_id)}/raw")
    assert raw.status_code == 200, raw.text
    return raw.content


def test_recipient_variables_are_counted_as_they_are_filled_in(mail: Mail) -> None:
    """An 84 KB request asked for 5 messages of 20 MB each: the values filled into the
    placeholders count against http.max_body_bytes as they go in."""
    to = [f"r{i}@{INBOX}" for i in range(5)]
    data = {
        "from": f"shop@{DOMAIN}",
        "to": ",".join(to),
        "text": "%recipient.v%" * 2000,
        "recipient-variables": json.dumps({a: {"v": "A" * 10_000} for a in to}),
        "o:deliverytime": FUTURE,
    }
    mailgun_error(post(mail, data), 400, "'recipient-variables'", "placeholders")
    assert stored_ids(mail) == []
    # the same placeholders with short values are fine
    data["recipient-variables"] = json.dumps({a: {"v": "ab"} for a in to})
    assert post(mail, data).status_code == 200
    assert len(stored_ids(mail)) == 5


def test_a_lone_surrogate_in_json_parameters_is_refused_and_reads_stay_200(mail: Mail) -> None:
    base = {"from": f"shop@{DOMAIN}", "to": f"x@{INBOX}", "text": "t", "o:deliverytime": FUTURE}
    cases = [
        ({"h:X-Mailgun-Variables": '{"a": "\\ud800"}'}, "'h:X-Mailgun-Variables'"),
        ({"h:X-Mailgun-Variables": '{"\\udc00": "a"}'}, "'h:X-Mailgun-Variables'"),
        (  # used in the text: was a text/plain 500 from the composer
            {
                "text": "%recipient.a%",
                "recipient-variables": f'{{"x@{INBOX}": {{"a": "\\ud800"}}}}',
            },
            "'recipient-variables'",
        ),
    ]
    for change, param in cases:
        mailgun_error(post(mail, {**base, **change}), 400, param, "JSON")
    # a form cannot carry one at all: UTF-8 has no bytes for it
    auth = base64.b64encode(f"api:{mail.server.send_key}".encode()).decode()
    raw = mail.http.post(
        f"/v3/{DOMAIN}/messages",
        content=b"from=shop%40example.org&to=x%40inbox.test&text=%ED%A0%80",
        headers={
            "Authorization": f"Basic {auth}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    mailgun_error(raw, 400, "UTF-8")
    assert stored_ids(mail) == []
    for path in ("/v1/messages", "/v1/events"):
        assert mail.admin("GET", path).status_code == 200


def test_a_bug_is_a_json_500_in_mailguns_shape(mail: Mail) -> None:
    data = {"from": f"shop@{DOMAIN}", "to": f"x@{INBOX}", "text": "t"}
    with mail.server.failing_enqueue(RuntimeError("secret internal detail")):
        bug = post(mail, data)
    assert mailgun_error(bug, 500) == "Internal error"
    assert stored_ids(mail) == []


def test_threading_headers_fit_a_998_octet_line(mail: Mail) -> None:
    base = {"from": f"shop@{DOMAIN}", "to": f"x@{INBOX}", "text": "t", "o:deliverytime": FUTURE}
    longest = "<" + "a" * 983 + ">"  # "In-Reply-To: " and it: 998 octets
    for name in ("h:In-Reply-To", "h:References"):
        mailgun_error(post(mail, {**base, name: "<" + "a" * 984 + ">"}), 400, f"'{name}'", "985")
    assert stored_ids(mail) == []
    sent = post(mail, {**base, "h:In-Reply-To": longest, "h:References": longest})
    assert sent.status_code == 200, sent.text
    raw = stored_raw(mail, sent.json()["id"])
    assert f"In-Reply-To: {longest}\r\n".encode() in raw
    assert max(map(len, raw.split(b"\r\n"))) <= 998


def test_nothing_the_caller_set_is_silently_dropped(mail: Mail) -> None:
    base = {"from": f"shop@{DOMAIN}", "to": f"x@{INBOX}", "text": "t", "o:deliverytime": FUTURE}
    mailgun_error(
        post(mail, {**base, "h:In-Reply-To": "<one@x> <two@x>"}), 400, "'h:In-Reply-To'", "one"
    )
    mailgun_error(
        post(mail, {**base, "h:Reply-To": "a@example.org", "h:reply-to": "b@example.org"}),
        400,
        "'h:reply-to'",
        "'h:Reply-To'",
    )
    mailgun_error(
        post(mail, {**base, "h:X-A": "1", "h:x-a": "2"}), 400, "'h:x-a'", "the same header"
    )
    many = ",".join(f"r{i}@example.org" for i in range(51))  # a header, not a mailing list
    mailgun_error(post(mail, {**base, "h:Reply-To": many}), 400, "'h:Reply-To' parameter is", "50")
    mailgun_error(
        post(mail, {**base, "v:k": "from-v", "h:X-Mailgun-Variables": '{"k": "from-json"}'}),
        400,
        "'v:k'",
        "X-Mailgun-Variables",
    )
    assert stored_ids(mail) == []
    # an attachment's Content-Type parameters are kept (its charset says how to read it)
    latin = ("a.txt", "é".encode("latin-1"), "text/plain; charset=iso-8859-1")
    sent = post(mail, base, files={"attachment": latin})
    assert sent.status_code == 200, sent.text
    part = next(parsed(stored_raw(mail, sent.json()["id"])).iter_attachments())
    assert part.get_content_type() == "text/plain"
    assert part.get_param("charset") == "iso-8859-1" and part.get_content() == "é"


def test_every_from_address_of_a_mime_message_is_checked(mail: Mail) -> None:
    def mime(head: bytes) -> Any:
        return {"message": ("m.eml", head + b"To: x@inbox.test\r\nSubject: s\r\n\r\nbody\r\n")}

    data = {"to": f"x@{INBOX}", "o:deliverytime": FUTURE}
    two = mime(b"From: a@example.org, a@evil.example\r\n")
    mailgun_error(post(mail, data, two, "messages.mime"), 400, "'message'", "evil.example")
    for name in (b"From", b"Sender", b"Reply-To"):
        head = b"From: a@example.org\r\n" if name != b"From" else b""
        latin = mime(head + name + b": \xe9t\xe9 <a@example.org>\r\n")
        mailgun_error(post(mail, data, latin, "messages.mime"), 400, "'message'", "not UTF-8")
    assert stored_ids(mail) == []
    one = post(mail, data, mime(b"From: A <a@example.org>\r\n"), "messages.mime")
    assert one.status_code == 200, one.text


def test_an_inline_file_with_any_filename_gets_a_content_id(mail: Mail) -> None:
    data = {
        "from": f"shop@{DOMAIN}",
        "to": f"x@{INBOX}",
        "html": '<img src="cid:my%20logo%C3%A9.png">',
        "o:deliverytime": FUTURE,
    }
    sent = post(mail, data, files={"inline": ("my logoé.png", b"\x89PNG", "image/png")})
    assert sent.status_code == 200, sent.text
    message = parsed(stored_raw(mail, sent.json()["id"]))
    logo = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert logo["Content-ID"] == "<my%20logo%C3%A9.png>"
    assert logo.get_filename() == "my logoé.png"


def test_another_method_is_mailguns_405(mail: Mail) -> None:
    auth = base64.b64encode(f"api:{mail.server.send_key}".encode()).decode()
    for method in ("GET", "PUT", "DELETE"):
        for path in ("messages", "messages.mime"):
            resp = mail.http.request(
                method, f"/v3/{DOMAIN}/{path}", headers={"Authorization": f"Basic {auth}"}
            )
            assert mailgun_error(resp, 405) == "Method not allowed"
            assert resp.headers["allow"] == "POST"


def test_the_url_domain_is_a_domain_and_a_parent_must_be_mailgates(mail: Mail) -> None:
    data = {"from": f"shop@{DOMAIN}", "to": f"x@{INBOX}", "text": "t", "o:deliverytime": FUTURE}
    literal = post(mail, {**data, "from": "a@[127.0.0.1]"}, domain="[127.0.0.1]")
    mailgun_error(literal, 404, "Domain not found")
    # a parent of the URL's domain is a public suffix, or another's domain, unless mailgate
    # sends for it
    mailgun_error(post(mail, {**data, "from": "a@co.uk"}, domain="shop.co.uk"), 400, "'from'")
    mailgun_error(post(mail, data, domain=f"mg.{DOMAIN}"), 400, "'from'", "mailgate domain")
    assert stored_ids(mail) == []
    assert mail.admin("POST", "/v1/domains", json={"name": DOMAIN}).status_code == 201
    assert post(mail, data, domain=f"mg.{DOMAIN}").status_code == 200
    assert (
        post(mail, {**data, "from": f"a@x.mg.{DOMAIN}"}, domain=f"mg.{DOMAIN}").status_code == 200
    )
