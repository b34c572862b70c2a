"""EHLO / HELO: the extensions advertised, and the reset they imply."""

from __future__ import annotations

from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import Dialog


def test_ehlo_advertises_extensions(server: RunningServer) -> None:
    with Dialog(server.smtp_port) as d:
        d.read_reply()
        code, text = d.cmd("EHLO client.test")
        assert code == 250
        lines = [line[4:] for line in text.splitlines()]
        assert lines[0] == "mx.mailgate.test"
        for ext in (
            "SIZE 26214400",
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
        ):
            assert ext in lines, (ext, lines)


def test_helo_needs_a_name(server: RunningServer) -> None:
    with Dialog(server.smtp_port) as d:
        d.read_reply()
        assert d.cmd("HELO")[0] == 501
        assert d.cmd("EHLO")[0] == 501
        assert d.cmd("HELO client.test")[0] == 250


def test_mail_before_helo_is_refused(server: RunningServer) -> None:
    with Dialog(server.smtp_port) as d:
        d.read_reply()
        assert d.cmd("MAIL FROM:<a@example.org>")[0] == 503


def test_ehlo_resets_a_transaction(server: RunningServer) -> None:
    with Dialog(server.smtp_port) as d:
        d.read_reply()
        d.cmd("EHLO a.test")
        assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
        d.cmd("EHLO a.test")
        assert d.cmd("RCPT TO:<b@example.com>")[0] == 503  # the transaction is gone
