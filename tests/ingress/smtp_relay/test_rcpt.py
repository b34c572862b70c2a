"""RCPT TO: ordering, relay tricks, the recipient limit, no open relay."""

from __future__ import annotations

import pytest

from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import greeted


def test_rcpt_before_mail_is_refused(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("RCPT TO:<b@example.com>")[0] == 503


@pytest.mark.parametrize(
    "address",
    [
        "user%host@example.com",
        "@relay.test:user@example.com",
        '"user@other.test"@example.com',
        "a@b@example.com",
        "host!user@example.com",
        "user@localhost",
        "",
    ],
)
def test_relay_tricks_never_relay(server: RunningServer, address: str) -> None:
    with greeted(server.smtp_port) as d:
        d.cmd("MAIL FROM:<a@example.org>")
        code, _ = d.cmd(f"RCPT TO:<{address}>")
        assert code in (501, 553), address


def test_recipient_limit_then_message_goes_to_first_n(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, max_recipients=3), ca):
        with greeted(srv.smtp_port) as d:
            d.cmd("MAIL FROM:<a@example.org>")
            codes = [d.cmd(f"RCPT TO:<r{i}@example.com>")[0] for i in range(5)]
            assert codes == [250, 250, 250, 452, 452]
            d.cmd("DATA")
            d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
            code, text = d.read_reply()
            assert code == 250
            qid = text.rsplit(" ", 1)[1]
        rcpts = srv.call(lambda s, q=qid: s.recipients(q))
        assert [r.address for r in rcpts] == ["r0@example.com", "r1@example.com", "r2@example.com"]


def test_untrusted_client_without_auth_cannot_relay(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, trusted_networks=["192.0.2.0/24"]), ca):
        with greeted(srv.smtp_port) as d:
            assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
            code, text = d.cmd("RCPT TO:<b@example.com>")
            assert code == 554 and "5.7.1" in text
        assert srv.call(lambda s: s.status_counts())
        counts = srv.call(lambda s: s.status_counts())
        assert sum(counts.values()) == 0


def test_the_same_recipient_twice_is_stored_once(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        d.cmd("MAIL FROM:<a@example.org>")
        for rcpt in ("b@example.com", "b@EXAMPLE.com", "b@example.com", "B@example.com"):
            assert d.cmd(f"RCPT TO:<{rcpt}>") == (250, "250 2.1.5 Ok")
        d.cmd("DATA")
        d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
        code, text = d.read_reply()
        assert code == 250
    rcpts = server.call(lambda s: s.recipients(text.rsplit(" ", 1)[1]))
    # the domain is compared without case, the local part exactly (RFC 5321 2.4)
    assert sorted(r.address for r in rcpts) == ["B@example.com", "b@example.com"]


def test_duplicates_do_not_use_up_the_recipient_limit(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, max_recipients=2), ca):
        with greeted(srv.smtp_port) as d:
            d.cmd("MAIL FROM:<a@example.org>")
            codes = [d.cmd(f"RCPT TO:<{r}@example.com>")[0] for r in ("x", "x", "y", "z")]
            assert codes == [250, 250, 250, 452]


@pytest.mark.parametrize(
    "address",
    [
        "b@" + "x" * 64 + ".com",  # an ASCII label over 63 octets
        "b@-\u00fc-.com",  # IDNA-invalid: hyphens at the ends
        "b@a\u200bb.com",  # a zero-width space inside a label
        "b@a\u00ad.com",  # a soft hyphen, which IDNA 2003 would silently drop
        "b@" + "\u00fc" * 62 + ".com",  # an IDN label over 63 octets once encoded
        "b@" + ".".join(["a" * 60] * 5),  # a name over 253 octets
        "b@[300.1.1.1]",  # a malformed address literal
        "jo\u200bse@example.com",  # a format character in a UTF-8 local part
    ],
)
def test_addresses_dns_cannot_carry_are_refused_at_rcpt(
    server: RunningServer, address: str
) -> None:
    """Such an address once stopped all delivery from inside the queue (issue 11, 1)."""
    with greeted(server.smtp_port) as d:
        d.cmd("MAIL FROM:<a@example.org> SMTPUTF8")
        code, text = d.cmd(f"RCPT TO:<{address}>")
        assert code == 553 and "5.1.3" in text, (address, text)
