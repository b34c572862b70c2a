"""Connection limits, timeouts and internal errors."""

from __future__ import annotations

import time

from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import Dialog, greeted


def test_connections_per_ip_and_in_total(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, max_connections_per_ip=3), ca):
        held = [Dialog(srv.smtp_port) for _ in range(3)]
        for d in held:
            assert d.read_reply()[0] == 220
        with Dialog(srv.smtp_port) as extra:
            assert extra.read_reply() == (421, "421 4.3.2 Too many connections from your address")
            assert extra.closed()
        held.pop().close()
        time.sleep(0.2)
        with Dialog(srv.smtp_port) as again:
            assert again.read_reply()[0] == 220
        for d in held:
            d.close()


def test_total_connection_cap(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, max_connections=2), ca):
        held = [Dialog(srv.smtp_port) for _ in range(2)]
        for d in held:
            d.read_reply()
        with Dialog(srv.smtp_port) as extra:
            assert extra.read_reply()[0] == 421
        for d in held:
            d.close()


def test_idle_timeout_closes_with_421(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, idle_timeout=0.5), ca):
        with Dialog(srv.smtp_port) as d:
            d.read_reply()
            time.sleep(0.8)
            assert d.read_reply() == (421, "421 Timeout exceeded, closing")


def test_idle_timeout_counts_only_silence(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    """A session busier than idle_timeout in total, never silent that long, stays; the
    watchdog armed at its first wait re-arms instead of firing on it."""
    for srv in start_server(make_config(tmp_path, ca, idle_timeout=2.0), ca):
        with greeted(srv.smtp_port, "HELO busy.test") as d:
            for _ in range(25):  # 5 s of commands, 0.2 s apart: never 2 s of silence
                assert d.cmd("NOOP")[0] == 250
                time.sleep(0.2)
            # then silence: the reply comes when the idle limit ends the session
            assert d.read_reply() == (421, "421 Timeout exceeded, closing")


def test_slow_client_hits_the_session_limit(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, session_timeout=1.0, idle_timeout=5), ca):
        with greeted(srv.smtp_port, "HELO slow.test") as d:
            d.cmd("MAIL FROM:<a@example.org>")
            d.cmd("RCPT TO:<b@example.com>")
            d.cmd("DATA")
            for _ in range(4):  # a byte every 0.3 s never finishes inside one second
                d.send(b"x")
                time.sleep(0.3)
            code, _ = d.read_reply()
            assert code == 421
        assert sum(srv.call(lambda s: s.status_counts()).values()) == 0


def test_the_session_limit_holds_inside_auth_and_data(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    """A client that always has its next command buffered never makes the main loop wait:
    the AUTH answer's wait and DATA's must keep to the session's deadline themselves
    (a cancelled AUTH and a new one, sent together, kept a session open for good)."""
    for srv in start_server(make_config(tmp_path, ca, session_timeout=1.5, idle_timeout=5), ca):
        with greeted(srv.smtp_port) as d:
            assert d.cmd("AUTH LOGIN")[0] == 334
            code = 0
            for _ in range(40):  # 12 s of this: the limit is 1.5 s
                d.send("*\r\nAUTH LOGIN\r\n")
                code = d.read_reply()[0]  # 501 for the "*", then 334, or 421 at the limit
                if code == 501:
                    code = d.read_reply()[0]
                if code == 421:
                    break
                time.sleep(0.3)
            assert code == 421, "the session outlived session_timeout"


def test_unexpected_error_is_generic_451(server: RunningServer) -> None:
    with (
        server.failing_enqueue(RuntimeError("secret internal detail /var/lib/x")),
        greeted(server.smtp_port) as d,
    ):
        d.cmd("MAIL FROM:<a@example.org>")
        d.cmd("RCPT TO:<b@example.com>")
        d.cmd("DATA")
        d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
        code, text = d.read_reply()
        assert code == 451 and "secret" not in text and "/var" not in text
        assert d.cmd("NOOP")[0] == 250
