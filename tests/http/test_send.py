"""POST /v1/messages through the real server: every field, checked on the stored bytes."""

from __future__ import annotations

import base64
import email
import email.policy
import os

import httpx
import pytest

from mailgate.models import RecipientStatus
from tests.ingress.conftest import RunningServer


def client(server: RunningServer, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or server.send_key}"}
    return httpx.Client(base_url=server.http_url, headers=headers, timeout=30)


def stored(server: RunningServer, message_id: str) -> email.message.EmailMessage:
    raw = server.call(lambda s: s.get_raw(message_id))
    assert raw is not None
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_every_field(server: RunningServer) -> None:
    png = os.urandom(3000)
    pdf = os.urandom(50_000)
    body = {
        "from": "Zoë Sender <zoe@example.org>",
        "to": ["Alice <alice@example.com>", "bob@example.com"],
        "cc": "carol@example.net",
        "bcc": ["hidden@example.net"],
        "reply_to": "replies@example.org",
        "subject": "Grüße — quarterly report",
        "text": "Hello\nplain text",
        "html": "<p>Hello <img src='cid:logo@x'></p>",
        "attachments": [
            {
                "filename": "report €.pdf",
                "content": base64.b64encode(pdf).decode(),
                "content_type": "application/pdf",
            },
            {
                "filename": "logo.png",
                "content": base64.b64encode(png).decode(),
                "content_type": "image/png",
                "content_id": "logo@x",
                "disposition": "inline",
            },
        ],
        "headers": {"X-Campaign": "q3", "List-Unsubscribe": "<mailto:u@example.org>"},
        "tags": ["reports", "q3"],
        "metadata": {"customer": "42"},
    }
    with client(server) as c:
        r = c.post("/v1/messages", json=body)
    assert r.status_code == 202, r.text
    out = r.json()
    assert [x["address"] for x in out["recipients"]] == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.net",
        "hidden@example.net",
    ]
    assert {x["status"] for x in out["recipients"]} == {"queued"}
    msg = stored(server, out["id"])
    assert msg["From"].addresses[0].display_name == "Zoë Sender"
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@example.com", "bob@example.com"]
    assert msg["Cc"].addresses[0].addr_spec == "carol@example.net"
    assert msg["Bcc"] is None  # never in the headers
    assert msg["Reply-To"].addresses[0].addr_spec == "replies@example.org"
    assert msg["Subject"] == "Grüße — quarterly report"
    assert msg["Message-ID"] == out["message_id"] and msg["Date"] is not None
    assert msg["X-Campaign"] == "q3"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert (
        plain is not None
        and plain.get_content().replace("\r\n", "\n").strip() == "Hello\nplain text"
    )
    assert html is not None and "cid:logo@x" in html.get_content()
    files = {p.get_filename(): p for p in msg.walk() if p.get_filename()}
    assert files["report €.pdf"].get_content() == pdf  # byte-exact round trip
    assert files["logo.png"].get_content() == png
    assert files["logo.png"]["Content-ID"] == "<logo@x>"
    assert files["logo.png"].get_content_disposition() == "inline"
    meta = server.call(lambda s: s.get_message(out["id"]))
    assert (
        meta is not None and meta.tags == ("reports", "q3") and meta.metadata == {"customer": "42"}
    )
    raw = server.call(lambda s: s.get_raw(out["id"]))
    assert raw is not None and max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_threading_headers_from_reply_to_message_id(server: RunningServer) -> None:
    with client(server) as c:
        first = c.post(
            "/v1/messages",
            json={
                "from": "a@example.org",
                "to": "b@example.com",
                "subject": "Plans",
                "text": "one",
            },
        ).json()
        second = c.post(
            "/v1/messages",
            json={
                "from": "a@example.org",
                "to": "b@example.com",
                "text": "two",
                "reply_to_message_id": first["id"],
            },
        ).json()
        third = c.post(
            "/v1/messages",
            json={
                "from": "a@example.org",
                "to": "b@example.com",
                "text": "three",
                "reply_to_message_id": second["id"],
            },
        ).json()
        missing = c.post(
            "/v1/messages",
            json={
                "from": "a@example.org",
                "to": "b@example.com",
                "text": "x",
                "reply_to_message_id": "0" * 26,
            },
        )
    m2, m3 = stored(server, second["id"]), stored(server, third["id"])
    assert m2["Subject"] == "Re: Plans"
    assert m2["In-Reply-To"] == first["message_id"]
    assert m2["References"].split() == [first["message_id"]]
    assert m3["Subject"] == "Re: Plans"  # not "Re: Re: Plans"
    assert m3["In-Reply-To"] == second["message_id"]
    assert m3["References"].split() == [first["message_id"], second["message_id"]]
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "reply_to_message_id"


def test_scheduled_at_waits(server: RunningServer) -> None:
    with client(server) as c:
        r = c.post(
            "/v1/messages",
            json={
                "from": "a@example.org",
                "to": "b@example.com",
                "text": "later",
                "scheduled_at": "2099-01-01T00:00:00Z",
            },
        )
    assert r.status_code == 202
    rcpt = server.call(lambda s: s.recipients(r.json()["id"]))[0]
    assert rcpt.status is RecipientStatus.QUEUED and rcpt.next_attempt_at == 4070908800.0


@pytest.mark.parametrize("auth", ["bearer", "basic"])
def test_key_as_bearer_or_basic_password(server: RunningServer, auth: str) -> None:
    if auth == "bearer":
        headers = {"Authorization": f"Bearer {server.send_key}"}
    else:
        token = base64.b64encode(f"api:{server.send_key}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
    r = httpx.post(
        f"{server.http_url}/v1/messages",
        headers=headers,
        json={"from": "a@example.org", "to": "b@example.com", "text": "hi"},
    )
    assert r.status_code == 202, r.text
