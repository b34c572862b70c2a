"""MAIL FROM: syntax, SIZE, BODY, nesting, sender domains of a restricted key."""

from __future__ import annotations

import base64

import pytest

from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import Dialog, greeted


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        ("FROM:<a@example.org>", 250),
        ("FROM:<>", 250),
        ("FROM:<a@example.org> SIZE=1000 BODY=8BITMIME", 250),
        ("FROM:<a@example.org> SMTPUTF8", 250),
        ("FROM:<ü@exämple.org> SMTPUTF8", 250),
        ("FROM:a@example.org", 501),
        ("FROM:<a@example.org", 501),
        ("FROM:<not an address>", 501),
        ("FROM:<a@example.org> SIZE=abc", 501),
        ("FROM:<a@example.org> SIZE=999999999999", 552),
        ("FROM:<a@example.org> BODY=BINARYMIME", 501),
        ("TO:<a@example.org>", 501),
    ],
)
def test_mail_from_syntax(server: RunningServer, arg: str, code: int) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd(f"MAIL {arg}")[0] == code


def test_nested_mail_is_refused(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
        code, text = d.cmd("MAIL FROM:<a@example.org>")
        assert (code, text) == (503, "503 5.5.1 Nested MAIL command")


def _auth(d: Dialog, secret: str) -> None:
    token = base64.b64encode(f"\0user\0{secret}".encode()).decode()
    assert d.cmd(f"AUTH PLAIN {token}")[0] == 235


def test_restricted_key_limits_mail_from(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        _auth(d, server.restricted_key)
        code, text = d.cmd("MAIL FROM:<ceo@example.com>")
        assert (code, text) == (553, "553 5.7.1 Sender address not allowed for this key")
        assert d.cmd("MAIL FROM:<Someone@EXAMPLE.org>")[0] == 250


def test_restricted_key_checks_the_from_header_addr_spec(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        _auth(d, server.restricted_key)
        d.cmd("MAIL FROM:<bob@example.org>")
        d.cmd("RCPT TO:<alice@example.com>")
        assert d.cmd("DATA")[0] == 354
        # the display name says example.org, the addr-spec does not
        d.send('From: "bob@example.org" <ceo@evil.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n')
        assert d.read_reply() == (553, "553 5.7.1 From: address not allowed for this key")
        d.cmd("MAIL FROM:<bob@example.org>")
        d.cmd("RCPT TO:<alice@example.com>")
        d.cmd("DATA")
        d.send('From: "ceo@evil.test" <bob@example.org>\r\nSubject: x\r\n\r\nhi\r\n.\r\n')
        assert d.read_reply()[0] == 250


@pytest.mark.parametrize("field", ["Sender", "Resent-From", "Resent-Sender", "From"])
def test_restricted_key_checks_every_originator_field(server: RunningServer, field: str) -> None:
    head = {"From": "bob@example.org", field: "Boss <ceo@evil.test>"}
    message = "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "Subject: x\r\n\r\nhi\r\n.\r\n"
    with greeted(server.smtp_port) as d:
        _auth(d, server.restricted_key)
        d.cmd("MAIL FROM:<bob@example.org>")
        d.cmd("RCPT TO:<alice@example.com>")
        assert d.cmd("DATA")[0] == 354
        d.send(message)
        assert d.read_reply() == (553, f"553 5.7.1 {field}: address not allowed for this key")
        d.cmd("MAIL FROM:<bob@example.org>")
        d.cmd("RCPT TO:<alice@example.com>")
        d.cmd("DATA")
        d.send(message.replace("evil.test", "EXAMPLE.org"))
        assert d.read_reply()[0] == 250
    assert sum(server.call(lambda s: s.status_counts()).values()) == 1


def test_restricted_key_needs_a_from_header(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        _auth(d, server.restricted_key)
        d.cmd("MAIL FROM:<bob@example.org>")
        d.cmd("RCPT TO:<alice@example.com>")
        d.cmd("DATA")
        d.send("Sender: bob@example.org\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        assert d.read_reply() == (553, "553 5.7.1 From: address not allowed for this key")
