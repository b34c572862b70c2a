"""Graceful shutdown: SIGTERM stops intake with 421 4.3.2 / 503, lets the transactions
and requests in flight finish, and loses nothing. Postfix's `postfix stop` and Exim do
the same: no new sessions, running ones complete, the queue stays on disk."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import httpx
import pytest
import trustme

from mailgate.models import RecipientStatus
from mailgate.store import open_store
from tests.ingress.conftest import make_config, start_server
from tests.reliability.conftest import RESULTS
from tests.reliability.harness import shutdown_case


def recv_reply(sock: socket.socket) -> bytes:
    """One reply (all its lines), read a byte at a time so that a reply sent just after
    stays for the next call. An HTTP status line counts as one reply."""
    data = b""
    while True:
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
        line = data[data.rfind(b"\n", 0, -1) + 1 :]
        if data.endswith(b"\r\n") and line[3:4] != b"-":
            return data


def test_stop_refuses_new_work_and_finishes_work_in_flight(tmp_path: Path) -> None:
    ca = trustme.CA()
    gen = start_server(make_config(tmp_path, ca), ca)
    server = next(gen)
    smtp = socket.create_connection(("127.0.0.1", server.smtp_port), 5)
    recv_reply(smtp)
    for line in (b"EHLO a.test", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.com>"):
        smtp.sendall(line + b"\r\n")
        assert recv_reply(smtp).startswith(b"250")
    smtp.sendall(b"DATA\r\n")
    assert recv_reply(smtp).startswith(b"354")
    smtp.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
    # an HTTP request in flight: headers and half its body
    body = b'{"from": "a@example.org", "to": ["b@example.com"], "subject": "s", "text": "t"}'
    http = socket.create_connection(("127.0.0.1", server.app.http_port), 5)
    http.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {server.send_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    time.sleep(0.2)
    server.loop.call_soon_threadsafe(server.app.stopping.set)
    time.sleep(0.3)

    with socket.create_connection(("127.0.0.1", server.smtp_port), 5) as late:
        assert recv_reply(late).startswith(b"421 4.3.2")
    r = httpx.get(f"{server.http_url}/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    r = httpx.post(
        f"{server.http_url}/v1/messages",
        json={"from": "a@example.org", "to": ["b@example.com"], "subject": "s", "text": "t"},
        headers={"Authorization": f"Bearer {server.send_key}"},
        timeout=5,
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "5"

    smtp.sendall(b"second half\r\n.\r\n")
    assert recv_reply(smtp).startswith(b"250 2.0.0 Ok: queued as")
    smtp.sendall(b"MAIL FROM:<a@example.org>\r\n")
    assert recv_reply(smtp).startswith(b"421 4.3.2")
    http.sendall(body[10:])
    head = http.recv(4096)
    assert head.startswith(b"HTTP/1.1 202"), head
    smtp.close()
    http.close()

    with contextlib.suppress(StopIteration):
        next(gen)  # the server's stop() returns only once it is done

    async def counts() -> dict[RecipientStatus, int]:
        store = open_store(f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}")
        await store.open()
        try:
            return await store.status_counts()
        finally:
            await store.close()

    assert asyncio.run(counts())[RecipientStatus.QUEUED] == 2, "both messages in flight were kept"


@pytest.mark.slow
def test_sigterm_under_load_loses_nothing_and_sends_nothing_twice(tmp_path: Path) -> None:
    result, tally = shutdown_case(tmp_path, 7)
    RESULTS.append(result)
    assert result.acked > 0
    assert sum(tally.refused.values()) + tally.errors > 0, "nobody was told to come back"
    assert not result.lost, result.lost[:10]
    assert not result.duplicated, "a graceful stop finishes or releases; it never resends"
    assert result.left_queued == 0
    assert result.clean_exit
