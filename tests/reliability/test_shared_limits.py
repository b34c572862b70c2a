"""Limits hold for the server, not for each of its processes (issue 17): with two
ingress processes on the shared ports (SO_REUSEPORT spreads new connections over both),
an API key's rate, an address's failed logins and its open SMTP connections are each
counted once, so a client gets no more than the configured limit. And on PostgreSQL,
two nodes count them once too (cluster_limits.py), within the second or two it takes
one node to hear of the other's use."""

from __future__ import annotations

import base64
import smtplib
import socket
import time
from pathlib import Path

import httpx

from tests.reliability.harness import Server, child_pids, free_port

SEND = {"from": "a@example.org", "to": ["b@example.com"], "subject": "s", "text": "t"}


SYNC = 3.5  # seconds for one node to hear of another's use (a round each side, and margin)


def limited_server(tmp: Path, store_url: str = "") -> Server:
    server = Server(tmp, free_port(), store_url=store_url)
    text = server.config.read_text()
    text = text.replace("max_connections_per_ip = 1000", "max_connections_per_ip = 3")
    text = text.replace(
        "rate_limit_per_second = 0", "rate_limit_per_second = 0.2\nrate_limit_burst = 8"
    )
    text += "[auth]\nfailures_per_ip = 4\nfirst_failure_delay = 0.01\n"
    server.config.write_text(text)
    return server


def sends(server: Server, key: str, n: int) -> list[int]:
    """n sends, each on a new connection (so both ingress processes see some)."""
    codes = []
    for _ in range(n):
        r = httpx.post(
            f"http://127.0.0.1:{server.http_port}/v1/messages",
            json=SEND,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        codes.append(r.status_code)
    return codes


def bad_logins(server: Server, n: int) -> int:
    """n SMTP AUTH attempts with a wrong key, each on a new connection: how many got as
    far as being told the key was wrong (535) rather than being locked out."""
    failed = 0
    for _ in range(n):
        try:
            with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
                s.ehlo("probe.test")
                code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0u\0wrong").decode())
                failed += code == 535
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError):
            pass
    return failed


def greeted(server: Server, n: int) -> tuple[int, list[socket.socket]]:
    held, hello = [], 0
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
        held.append(sock)
        hello += sock.recv(512).startswith(b"220")
    return hello, held


def test_two_nodes_on_postgresql_count_the_limits_once(pg_url: str, tmp_path: Path) -> None:
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    a = limited_server(tmp_path / "a", pg_url)
    b = limited_server(tmp_path / "b", pg_url)
    key = a.make_key()
    held: list[socket.socket] = []
    try:
        a.start()
        b.start()
        # the burst of 8 spent on node a: node b, once it has heard, has none to give
        assert sends(a, key, 8).count(202) == 8
        time.sleep(SYNC)
        codes = sends(b, key, 6)
        assert codes.count(202) <= 1, f"node b gave its own burst too: {codes}"

        # 3 connections held open on node a: node b greets none from the same address
        hello, held = greeted(a, 3)
        assert hello == 3
        time.sleep(SYNC)
        hello_b, more = greeted(b, 2)
        held += more
        assert hello_b == 0, f"node b greeted {hello_b} past the cap of 3"
        for sock in held:
            sock.close()
        held = []
        time.sleep(SYNC)  # closed on a: b hears of it and lets the address in again
        hello_b, held = greeted(b, 1)
        assert hello_b == 1
        for sock in held:
            sock.close()
        held = []

        # 4 failed logins on node a lock the address out of node b too
        assert bad_logins(a, 4) == 4
        time.sleep(SYNC)
        assert bad_logins(b, 3) == 0, "node b let a locked-out address try again"
    finally:
        for sock in held:
            sock.close()
        a.terminate()
        b.terminate()


def test_rate_logins_and_connections_are_counted_once_for_both_processes(tmp_path: Path) -> None:
    server = limited_server(tmp_path)
    key = server.make_key()
    server.start()
    try:
        assert server.proc is not None
        assert len(child_pids(server.proc.pid, "ingress")) == 1, "two ingress processes"

        # 30 requests, each on a new connection: per process, each would allow 8
        codes = []
        for _ in range(30):
            r = httpx.post(
                f"http://127.0.0.1:{server.http_port}/v1/messages",
                json=SEND,
                headers={"Authorization": f"Bearer {key}"},
            )
            codes.append(r.status_code)
        assert set(codes) == {202, 429}, codes
        assert codes.count(202) <= 10, f"the burst of 8 held for the server: {codes}"

        # open SMTP connections from one address: at most 3 greeted in all
        held, greeted = [], 0
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
            held.append(sock)
            greeted += sock.recv(512).startswith(b"220")
        assert greeted == 3, greeted
        for sock in held:
            sock.close()

        # failed logins over new connections: refused after 4 in all
        failed = 0
        for _ in range(10):
            try:
                with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
                    s.ehlo("probe.test")
                    code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0u\0wrong").decode())
                    failed += code == 535
            except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError):
                pass
        assert 1 <= failed <= 4, f"{failed} attempts were let through"
    finally:
        server.terminate()
