"""Control characters in a local part are refused at every door (issue 11 review).

They once passed address_problem: the SMTP door answered 250 and /v1/messages/raw took
such a `from`, then delivery refused them (553), and the DSN to such a sender could not
go either, so nobody was ever told. /v1/messages refused the same input with 422."""

from __future__ import annotations

import base64
import smtplib

import httpx
import pytest

from tests.ingress.conftest import RunningServer

RAW = base64.b64encode(b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n").decode()


def smtp_session(server: RunningServer) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)
    s.ehlo("client.test")
    token = base64.b64encode(b"\0k\0" + server.send_key.encode()).decode()
    assert s.docmd("AUTH PLAIN", token)[0] == 235
    return s


@pytest.mark.parametrize("local", ["a\x01b", "a\x7f", "\x08x"])
def test_smtp_mail_from_with_a_control_character_is_refused(
    server: RunningServer, local: str
) -> None:
    with smtp_session(server) as s:
        code, _ = s.docmd(f"MAIL FROM:<{local}@example.org>")
    assert code in (501, 553), code


@pytest.mark.parametrize("local", ["b\x01", "b\x7f"])
def test_smtp_rcpt_with_a_control_character_is_refused(server: RunningServer, local: str) -> None:
    with smtp_session(server) as s:
        assert s.docmd("MAIL FROM:<a@example.org>")[0] == 250
        code, _ = s.docmd(f"RCPT TO:<{local}@example.com>")
    assert code == 553, code


def test_raw_envelope_sender_with_a_control_character_is_422(server: RunningServer) -> None:
    r = httpx.post(
        f"{server.http_url}/v1/messages/raw",
        json={"from": "a\x01@example.org", "to": "b@example.com", "raw": RAW},
        headers={"Authorization": f"Bearer {server.send_key}"},
        timeout=30,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "from"
