"""Limits hold for the server, not for each of its processes (issue 17): with two
ingress processes on the shared ports (SO_REUSEPORT spreads new connections over both),
an API key's rate, an address's failed logins and its open SMTP connections are each
counted once, so a client gets no more than the configured limit."""

from __future__ import annotations

import base64
import smtplib
import socket
from pathlib import Path

import httpx

from tests.reliability.harness import Server, child_pids, free_port

SEND = {"from": "a@example.org", "to": ["b@example.com"], "subject": "s", "text": "t"}


def limited_server(tmp: Path) -> Server:
    server = Server(tmp, free_port())
    text = server.config.read_text()
    text = text.replace("max_connections_per_ip = 1000", "max_connections_per_ip = 3")
    text = text.replace(
        "rate_limit_per_second = 0", "rate_limit_per_second = 0.2\nrate_limit_burst = 8"
    )
    text += "[auth]\nfailures_per_ip = 4\nfirst_failure_delay = 0.01\n"
    server.config.write_text(text)
    return server


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
