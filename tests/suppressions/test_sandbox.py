"""Sandbox keys and capture mode through the real server: every simulator address over
HTTP and over SMTP, with the statuses, events, DSNs and webhooks each produces, and a
receiving server and DNS that fail the test if anything tries to reach them."""

from __future__ import annotations

import base64
import smtplib
import ssl
import time
from typing import Any

import pytest
from standardwebhooks import Webhook

from mailgate.simulator import SIMULATOR_DOMAIN
from tests.domains.conftest import INBOX, Mail
from tests.events.receiver import Receiver
from tests.suppressions.conftest import HOOKS, call, hook, make_key

SIM = SIMULATOR_DOMAIN
EXPECTED = {  # simulator address -> final status
    f"delivered@{SIM}": "delivered",
    f"bounced@{SIM}": "bounced",
    f"deferred@{SIM}": "delivered",
    f"expired@{SIM}": "expired",
    f"suppressed@{SIM}": "suppressed",
    f"complained@{SIM}": "delivered",
    f"anyone@{INBOX}": "delivered",  # captured
}
EVERY_TYPE = [
    "message.accepted",
    "message.delivered",
    "message.deferred",
    "message.bounced",
    "message.expired",
    "message.suppressed",
    "message.complained",
]


def tripwires(mail: Mail) -> int:
    """Point the simulator's domain at the sink too, so that a lookup or a connection
    shows; the sink's connections so far (its controller's own start-up check)."""
    mail.zone.add(SIM, "MX", (10, f"mx.{INBOX}"))
    return mail.script.connections


def assert_nothing_left(mail: Mail, before: int) -> None:
    assert mail.script.connections == before, "a sandbox or captured message reached a peer"
    asked = {name for name, _ in mail.zone.queries}
    assert not asked & {SIM, INBOX, f"mx.{INBOX}"}, mail.zone.queries


def final(mail: Mail, key: str, message_id: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = call(mail, key, "GET", f"/v1/messages/{message_id}").json()
        rcpts = {r["address"]: r for r in got["recipients"]}
        if all(r["status"] not in ("queued", "deferred") for r in rcpts.values()):
            return rcpts
        assert time.monotonic() < deadline, rcpts
        time.sleep(0.05)


@pytest.mark.parametrize("mail", [{"webhooks": HOOKS}], indirect=True)
def test_every_simulator_address_over_http(mail: Mail, got: Receiver) -> None:
    before = tripwires(mail)
    key = make_key(mail, "dev", sandbox=True)
    secret = hook(mail, key, got, EVERY_TYPE)
    sent = call(
        mail,
        key,
        "POST",
        "/v1/messages",
        json={"from": "app@example.org", "to": list(EXPECTED), "subject": "s", "text": "t"},
    )
    assert sent.status_code == 202, sent.text
    answered = {r["address"]: r["status"] for r in sent.json()["recipients"]}
    assert answered[f"suppressed@{SIM}"] == "suppressed"
    assert {s for a, s in answered.items() if a != f"suppressed@{SIM}"} == {"queued"}
    rcpts = final(mail, key, sent.json()["id"])
    assert {a: r["status"] for a, r in rcpts.items()} == EXPECTED
    assert rcpts[f"bounced@{SIM}"]["last_reply"].startswith("550 5.1.1 Simulated")
    assert rcpts[f"deferred@{SIM}"]["attempts"] == 2
    assert rcpts[f"anyone@{INBOX}"]["last_reply"].startswith("250 2.0.0 Captured")

    kinds = [
        e["kind"]
        for e in call(mail, key, "GET", f"/v1/messages/{sent.json()['id']}").json()["events"]
    ]
    for kind in ("accepted", "suppressed", "bounced", "deferred", "expired", "complained"):
        assert kind in kinds, kinds
    assert kinds.count("delivered") == 4

    # accepted, 4 delivered, deferred, bounced, expired, suppressed, complained
    posts = got.wait(10)
    bodies = [Webhook(secret).verify(p.body, p.headers) for p in posts]
    types = sorted(b["type"] for b in bodies)
    assert types == sorted(
        [
            "message.accepted",
            *["message.delivered"] * 4,
            "message.deferred",
            "message.bounced",
            "message.expired",
            "message.suppressed",
            "message.complained",
        ]
    ), types
    complained = next(b for b in bodies if b["type"] == "message.complained")
    assert complained["data"]["recipient"] == f"complained@{SIM}"
    assert_nothing_left(mail, before)
    # simulated bounces and complaints never touch the real suppression list
    assert mail.server.call(lambda s: s.count_suppressions()) == 0


@pytest.mark.parametrize("mail", [{"webhooks": HOOKS}], indirect=True)
def test_every_simulator_address_over_smtp_with_dsns_kept_in_the_sandbox(
    mail: Mail, got: Receiver
) -> None:
    before = tripwires(mail)
    key = make_key(mail, "printer", sandbox=True)
    secret = hook(mail, key, got, EVERY_TYPE)
    ctx = ssl.create_default_context()
    mail.server.ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", mail.server.smtp_port, timeout=30) as s:
        s.starttls(context=ctx)
        s.login("printer", key)
        refused = s.sendmail(
            "printer@example.org",
            list(EXPECTED),
            b"From: printer@example.org\r\nSubject: scan\r\n\r\nscanned\r\n",
        )
        assert refused == {}
    admin = mail.admin_key
    deadline = time.monotonic() + 30
    while True:
        listed = call(mail, admin, "GET", "/v1/messages").json()["data"]
        dsns = [m for m in listed if m["source"] == "dsn"]
        done = [m for m in listed if m["source"] == "smtp"]
        if dsns and all(
            r["status"] not in ("queued", "deferred") for m in listed for r in m["recipients"]
        ):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    [original] = done
    assert {r["address"]: r["status"] for r in original["recipients"]} == EXPECTED
    timeline = call(mail, key, "GET", f"/v1/messages/{original['id']}").json()["events"]
    kinds = [e["kind"] for e in timeline]
    for kind in ("accepted", "suppressed", "bounced", "deferred", "expired", "complained"):
        assert kind in kinds, kinds
    # the key's own message's events reach its endpoint, signed (the DSN has no owner)
    bodies = [Webhook(secret).verify(p.body, p.headers) for p in got.wait(10)]
    assert {b["type"] for b in bodies} == set(EVERY_TYPE)
    assert {b["data"]["message_id"] for b in bodies} == {original["id"]}
    # one DSN reports the bounce and the expiry, to the sender, captured: never sent
    [dsn] = dsns
    assert [(r["address"], r["status"]) for r in dsn["recipients"]] == [
        ("printer@example.org", "delivered")
    ]
    assert dsn["recipients"][0]["last_reply"].startswith("250 2.0.0 Captured")
    raw = call(mail, admin, "GET", f"/v1/messages/{dsn['id']}/raw").content
    assert b"multipart/report" in raw and f"bounced@{SIM}".encode() in raw
    assert_nothing_left(mail, before)


@pytest.mark.parametrize("mail", [{"delivery": {"mode": "capture"}}], indirect=True)
def test_capture_mode_keeps_all_mail_readable_and_sends_none(mail: Mail) -> None:
    before = tripwires(mail)
    key = make_key(mail, "app")  # a normal key: capture mode holds everyone's mail
    pdf = b"%PDF-1.4 not really\x00\xff"
    sent = call(
        mail,
        key,
        "POST",
        "/v1/messages",
        json={
            "from": "Shop <shop@example.org>",
            "to": [f"buyer@{INBOX}", f"reject-me@{INBOX}"],
            "subject": "Your receipt",
            "text": "Thanks for your order.",
            "html": "<p>Thanks <img src=x onerror=alert(1)></p><script>alert(2)</script>",
            "attachments": [
                {
                    "filename": "receipt.pdf",
                    "content": base64.b64encode(pdf).decode(),
                    "content_type": "application/pdf",
                }
            ],
        },
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    rcpts = final(mail, key, message_id)
    assert {a: r["status"] for a, r in rcpts.items()} == {
        f"buyer@{INBOX}": "delivered",
        f"reject-me@{INBOX}": "delivered",  # a real send would bounce: nothing is sent
    }
    assert_nothing_left(mail, before)

    raw = call(mail, key, "GET", f"/v1/messages/{message_id}/raw")
    assert raw.status_code == 200 and b"Subject: Your receipt" in raw.content
    parsed = call(mail, key, "GET", f"/v1/messages/{message_id}/parsed")
    assert parsed.status_code == 200, parsed.text
    view = parsed.json()
    assert view["subject"] == "Your receipt" and view["from"] == "Shop <shop@example.org>"
    assert view["text"].strip() == "Thanks for your order."
    assert "<script>alert(2)</script>" in view["html"]  # as data in JSON, never rendered
    assert [(a["filename"], a["content_type"], a["size"]) for a in view["attachments"]] == [
        ("receipt.pdf", "application/pdf", len(pdf))
    ]
    got = call(mail, key, "GET", f"/v1/messages/{message_id}/attachments/0")
    assert got.status_code == 200 and got.content == pdf
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"receipt.pdf\"; filename*=UTF-8''receipt.pdf"
    )
    assert got.headers["x-content-type-options"] == "nosniff"
    missing = call(mail, key, "GET", f"/v1/messages/{message_id}/attachments/1")
    assert missing.status_code == 404
    other = make_key(mail, "other")
    assert call(mail, other, "GET", f"/v1/messages/{message_id}/parsed").status_code == 404

    # a hostile file name (RFC 2231 encoded CR LF) cannot add a header to the download
    hostile = (
        b"From: shop@example.org\r\nTo: buyer@inbox.test\r\nSubject: x\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--B\r\nContent-Type: text/html\r\nContent-Disposition: attachment;"
        b" filename*=utf-8''evil%0D%0ASet-Cookie%3A%20a%3Db%22.html\r\n\r\n"
        b"<script>alert(1)</script>\r\n--B--\r\n"
    )
    raw_sent = call(
        mail,
        key,
        "POST",
        "/v1/messages/raw",
        json={
            "raw": base64.b64encode(hostile).decode(),
            "from": "shop@example.org",
            "to": [f"buyer@{INBOX}"],
        },
    )
    assert raw_sent.status_code == 202, raw_sent.text
    evil = call(mail, key, "GET", f"/v1/messages/{raw_sent.json()['id']}/attachments/0")
    assert evil.status_code == 200 and evil.content.startswith(b"<script>")
    assert "set-cookie" not in evil.headers
    assert evil.headers["content-type"] == "application/octet-stream"
    disposition = evil.headers["content-disposition"]
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.startswith('attachment; filename="evilSet-Cookie: a=b_.html"')
