"""MAIL/RCPT parameters: only those of advertised extensions; SMTPUTF8 (RFC 6531); no DSN."""

from __future__ import annotations

import pytest

from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import greeted


@pytest.mark.parametrize(
    ("arg", "reply"),
    [
        ("<a@example.org> SIZE=10 BODY=7BIT AUTH=<>", "250 2.1.0 Ok"),
        ("<a@example.org> smtputf8", "250 2.1.0 Ok"),
        ("<a@example.org> FOO=bar", "555 5.5.4 Unsupported parameter FOO"),
        # DSN is not offered: a client asking for notifications must not be ignored
        ("<a@example.org> RET=HDRS", "555 5.5.4 Unsupported parameter RET"),
        ("<a@example.org> ENVID=x1", "555 5.5.4 Unsupported parameter ENVID"),
        ("<a@example.org> SIZE=10 SIZE=99", "501 5.5.4 Duplicate parameter SIZE"),
        ("<a@example.org> BODY=7BIT body=8BITMIME", "501 5.5.4 Duplicate parameter BODY"),
        ("<a@example.org> SIZE", "501 5.5.4 Bad SIZE parameter"),
        ("<a@example.org> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
        ("<josé@example.org>", "553 5.6.7 Address requires SMTPUTF8"),
        ("<jose@exämple.org>", "553 5.6.7 Address requires SMTPUTF8"),
        ("<josé@exämple.org> SMTPUTF8", "250 2.1.0 Ok"),
    ],
)
def test_mail_parameters(server: RunningServer, arg: str, reply: str) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd(f"MAIL FROM:{arg}")[1] == reply


@pytest.mark.parametrize(
    ("mail", "rcpt", "reply"),
    [
        ("", "<b@example.com> NOTIFY=NEVER", "555 5.5.4 Unsupported parameter NOTIFY"),
        ("", "<b@example.com> ORCPT=rfc822;b@example.com", "555 5.5.4 Unsupported parameter ORCPT"),
        ("", "<b@example.com> X=1 X=2", "501 5.5.4 Duplicate parameter X"),
        ("", "<bé@example.com>", "553 5.6.7 Address requires SMTPUTF8"),
        ("", "<b@exämple.com>", "553 5.6.7 Address requires SMTPUTF8"),
        (" SMTPUTF8", "<bé@exämple.com>", "250 2.1.5 Ok"),
    ],
)
def test_rcpt_parameters(server: RunningServer, mail: str, rcpt: str, reply: str) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd(f"MAIL FROM:<a@example.org>{mail}")[0] == 250
        assert d.cmd(f"RCPT TO:{rcpt}")[1] == reply


def test_smtputf8_message_is_stored_with_its_utf8_envelope(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("MAIL FROM:<josé@example.org> SMTPUTF8 BODY=8BITMIME")[0] == 250
        assert d.cmd("RCPT TO:<müller@exämple.com>")[0] == 250
        assert d.cmd("DATA")[0] == 354
        d.send("Subject: ü\r\n\r\nhi\r\n.\r\n".encode())
        code, text = d.read_reply()
        assert code == 250
        # the next transaction starts without SMTPUTF8 again
        assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert d.cmd("RCPT TO:<müller@exämple.com>")[0] == 553
    rcpts = server.call(lambda s: s.recipients(text.rsplit(" ", 1)[1]))
    assert [r.address for r in rcpts] == ["müller@exämple.com"]
