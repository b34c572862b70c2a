"""STARTTLS with a real certificate and Python's smtplib, AUTH after it."""

from __future__ import annotations

import smtplib
import ssl

from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import Dialog, greeted


def test_smtplib_starttls_then_auth_then_send(server: RunningServer) -> None:
    ctx = ssl.create_default_context()
    server.ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=ctx)
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert "PLAIN" in smtp.esmtp_features["auth"]
        smtp.login("printer", server.send_key)
        refused = smtp.sendmail(
            "a@example.org", ["b@example.com", "c@example.net"], b"Subject: tls\r\n\r\nsecret\r\n"
        )
        assert refused == {}
    counts = server.call(lambda s: s.status_counts())
    assert sum(counts.values()) == 2


def test_plaintext_pipelined_after_starttls_is_discarded(server: RunningServer) -> None:
    ctx = ssl.create_default_context()
    server.ca.configure_trust(ctx)
    d = greeted(server.smtp_port)
    # The injected MAIL FROM must never be executed inside the TLS session.
    d.send("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    code, _ = d.read_reply()
    if code == 554:  # refused as improper pipelining: also safe
        d.close()
        return
    assert code == 220
    d.sock = ctx.wrap_socket(d.sock, server_hostname="localhost")
    assert d.cmd("EHLO client.test")[0] == 250
    assert d.cmd("RCPT TO:<b@example.com>")[0] == 503  # no MAIL FROM survived
    d.close()


def test_starttls_resets_the_session(server: RunningServer) -> None:
    ctx = ssl.create_default_context()
    server.ca.configure_trust(ctx)
    d = greeted(server.smtp_port)
    assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert d.cmd("STARTTLS")[0] == 220
    d.sock = ctx.wrap_socket(d.sock, server_hostname="localhost")
    assert d.cmd("MAIL FROM:<a@example.org>")[0] == 503  # EHLO needed again
    assert d.cmd("EHLO client.test")[0] == 250
    assert d.cmd("STARTTLS")[0] == 503
    d.close()


def test_no_tls_configured_answers_454(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    from mailgate.config import Config
    from tests.ingress.conftest import start_server

    cfg = Config.model_validate(
        {
            "server": {"data_dir": str(tmp_path)},
            "smtp": {"port": 0},
            "http": {"port": 0},
            "delivery": {"enabled": False},
        }
    )
    for srv in start_server(cfg, ca):
        with Dialog(srv.smtp_port) as d:
            d.read_reply()
            _, text = d.cmd("EHLO c.test")
            assert "STARTTLS" not in text
            assert d.cmd("STARTTLS")[0] == 454
