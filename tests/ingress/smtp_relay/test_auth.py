"""AUTH PLAIN / LOGIN with API keys; failures, delays and lockout."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from mailgate.auth_guard import AuthGuard
from tests.ingress.conftest import FIRST_FAILURE_DELAY, RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import Dialog, greeted


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_plain_with_send_key(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'any' + chr(0) + server.send_key)}") == (
            235,
            "235 2.7.0 Authentication successful",
        )
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'any' + chr(0) + server.send_key)}")[0] == 503


def test_auth_plain_with_prompt(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("AUTH PLAIN") == (334, "334 ")
        assert d.cmd(b64("\0u\0" + server.send_key))[0] == 235


def test_auth_login(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")
        assert d.cmd(b64("printer")) == (334, "334 UGFzc3dvcmQ6")
        assert d.cmd(b64(server.send_key))[0] == 235


@pytest.mark.parametrize("secret_of", ["wrong", "unknown", "read_only"])
def test_bad_keys_get_identical_replies(server: RunningServer, secret_of: str) -> None:
    secret = {
        "wrong": server.send_key[:-4] + "AAAA",
        "unknown": "mg_01ARZ3NDEKTSV4RRFFQ69G5FAV_" + "x" * 43,
        "read_only": server.read_key,
    }[secret_of]
    with greeted(server.smtp_port) as d:
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + secret)}") == (
            535,
            "535 5.7.8 Authentication credentials invalid",
        )


def test_bad_base64_and_unknown_mechanism(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("AUTH PLAIN !!!notbase64") == (501, "501 5.5.2 Cannot decode base64 response")
        assert d.cmd("AUTH CRAM-MD5")[0] == 504
        assert d.cmd("AUTH PLAIN") == (334, "334 ")
        assert d.cmd("*")[0] == 501


def test_failures_grow_slower_then_421(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        started = time.monotonic()
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'bad1')}")[0] == 535
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'bad2')}")[0] == 535
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'bad3')}")[0] == 421
        # lower bound only: a loaded machine can make the answers slower, never faster
        assert time.monotonic() - started >= 0.95 * FIRST_FAILURE_DELAY * (1 + 2 + 4)
        assert d.closed()


def test_failures_per_ip_lock_out_new_connections(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, ca, auth={"failures_per_ip": 2}, max_auth_failures=5)
    for srv in start_server(cfg, ca):
        with greeted(srv.smtp_port) as d:
            for _ in range(2):
                assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'bad')}")[0] == 535
        with greeted(srv.smtp_port) as d:
            # even the right key is refused while this address is locked out
            assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + srv.send_key)}")[0] == 421


def remote_address() -> str | None:
    """An address of this machine that is not loopback (the one it would route to the
    internet from), or None. Connecting a UDP socket sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ipaddress.ip_address(ip).is_loopback else ip


def remote_dialog(srv: RunningServer, ip: str | None, monkeypatch: pytest.MonkeyPatch) -> Dialog:
    """A client the relay sees as remote: from a real non-loopback address of this machine
    when there is one, else over loopback with the relay told that loopback is remote."""
    if ip is None:
        assert srv.app.smtp is not None
        monkeypatch.setattr(srv.app.smtp, "is_loopback", lambda _ip: False)
    d = Dialog(srv.smtp_port, host=ip or "127.0.0.1")
    assert d.read_reply()[0] == 220
    return d


def test_auth_not_offered_in_plaintext_to_remote_clients(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    ip = remote_address()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    for srv in start_server(make_config(tmp_path, ca, host=ip or "127.0.0.1"), ca):
        relay = srv.app.smtp
        assert relay is not None
        # what the relay counts as local: loopback, IPv4-mapped loopback too
        assert relay.is_loopback("127.0.0.1") and relay.is_loopback("::ffff:127.0.0.1")
        assert not relay.is_loopback("192.0.2.1")
        plain = f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + srv.send_key)}"
        with remote_dialog(srv, ip, monkeypatch) as d:
            code, ehlo = d.cmd("EHLO client.test")
            assert code == 250 and "STARTTLS" in ehlo
            assert "AUTH" not in ehlo, "AUTH offered to a remote client without TLS"
            # and not taken either, even with the right key
            assert d.cmd(plain) == (530, "530 5.7.0 Must issue a STARTTLS command first")
            assert d.cmd("AUTH LOGIN")[0] == 530
            # after STARTTLS the same client is offered AUTH and may use it
            assert d.cmd("STARTTLS")[0] == 220
            d.sock = ctx.wrap_socket(d.sock, server_hostname="localhost")
            code, ehlo = d.cmd("EHLO client.test")
            assert code == 250 and "AUTH PLAIN LOGIN" in ehlo
            assert d.cmd(plain)[0] == 235


def test_allow_plaintext_auth_offers_auth_to_remote_clients(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    ip = remote_address()
    cfg = make_config(tmp_path, ca, host=ip or "127.0.0.1", allow_plaintext_auth=True)
    for srv in start_server(cfg, ca):
        with remote_dialog(srv, ip, monkeypatch) as d:
            code, ehlo = d.cmd("EHLO client.test")
            assert code == 250 and "AUTH PLAIN LOGIN" in ehlo
            assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + srv.send_key)}")[0] == 235


def test_failures_on_a_key_lock_the_failing_address_not_the_owner(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path, ca, auth={"failures_per_key": 2, "failures_per_ip": 50}, max_auth_failures=5
    )
    for srv in start_server(cfg, ca):
        # The attacker knows the key's visible id (it is in logs) but not its secret.
        wrong = srv.send_key[:-4] + ("AAAA" if not srv.send_key.endswith("AAAA") else "BBBB")
        right = f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + srv.send_key)}"
        with greeted(srv.smtp_port, source="127.0.0.1") as attacker:
            for _ in range(3):
                assert attacker.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + wrong)}")[0] == 535
            # the key is now locked for this address: even the right secret gets the
            # very same reply as a wrong one
            assert attacker.cmd(right) == (535, "535 5.7.8 Authentication credentials invalid")
        with greeted(srv.smtp_port, source="127.0.0.2") as owner:  # a clean address
            assert owner.cmd(right) == (235, "235 2.7.0 Authentication successful")


def test_auth_guard_key_lock_needs_the_address_to_have_failed() -> None:
    now = [1000.0]
    guard = AuthGuard(per_ip=100, per_key=3, window=60, clock=lambda: now[0])
    for ip in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        guard.failed(ip, "KEY")
    assert guard.key_locked("KEY", "192.0.2.1") and guard.key_locked("KEY", "192.0.2.2")
    assert not guard.key_locked("KEY", "198.51.100.7")  # never failed on it
    assert guard.key_locked("KEY")  # the older call, without an address: locked for all
    assert not guard.key_locked("OTHER", "192.0.2.1")
    now[0] += 61  # the window passes
    assert not guard.key_locked("KEY", "192.0.2.1")


def test_auth_guard_delays_double_up_to_sixteen_times_the_first() -> None:
    now = [0.0]
    guard = AuthGuard(per_ip=100, per_key=100, window=60, clock=lambda: now[0], first_delay=0.5)
    delays = [guard.failed("192.0.2.1", None) for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert guard.failed("192.0.2.9", None) == 0.5, "each address counts its own failures"
    now[0] += 61  # the window passes: the address starts again from the first delay
    assert guard.failed("192.0.2.1", None) == 0.5
