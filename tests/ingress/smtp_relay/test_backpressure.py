"""A client that pipelines commands and never reads the replies: the server stops reading
it once its unread replies pass the high-water mark, holds bounded memory for it, drops
it after idle_timeout, and serves everyone else meanwhile (issue 11, finding 8)."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from mailgate.ingress.smtp_relay import READ_LIMIT
from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import greeted

NOOPS = b"NOOP\r\n" * 10_000  # 60 KB of commands, 140 KB of replies


@dataclass(frozen=True)
class Held:
    unsent: int  # replies in the transport's buffer
    gathered: int  # replies not yet handed to the transport
    unread: int  # input read but not yet handled


def _held(srv: RunningServer, peer: tuple[str, int]) -> Held | None:
    """What the running server holds for the connection from `peer`, or None if gone."""
    relay = srv.app.smtp
    assert relay is not None

    async def probe() -> Held | None:
        for s in relay.sessions:
            if s.transport is not None and s.transport.get_extra_info("peername") == peer:
                out = sum(map(len, s.out))
                return Held(s.transport.get_write_buffer_size(), out, len(s.buf))
        return None

    return asyncio.run_coroutine_threadsafe(probe(), srv.loop).result(30)


def _read_until(sock: socket.socket, marker: bytes) -> None:
    got = b""
    while marker not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk


def _flood(sock: socket.socket, most: int) -> int:
    """Send NOOPs until the server stops taking them (or `most` bytes); bytes sent."""
    sent = 0
    sock.settimeout(1.0)
    while sent < most:
        try:
            sent += sock.send(NOOPS)
        except TimeoutError:
            break
    return sent


def test_client_that_never_reads_is_bounded_then_dropped(tmp_path: Path, ca: trustme.CA) -> None:
    for srv in start_server(make_config(tmp_path, ca, idle_timeout=5), ca):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing anyway
        sock.connect(("127.0.0.1", srv.smtp_port))
        _read_until(sock, b"220 ")
        sock.sendall(b"EHLO flood.test\r\n")  # EHLO waits for its reply (RFC 2920)
        _read_until(sock, b"\r\n250 ")
        sent = _flood(sock, 40_000_000)
        held = _held(srv, sock.getsockname())
        assert held is not None
        # Without back-pressure every reply is buffered: 40 MB of NOOPs, 93 MB of replies.
        assert sent < 40_000_000
        assert held.unsent + held.gathered < 1_000_000, held
        assert held.unread <= READ_LIMIT + 300_000, held

        with greeted(srv.smtp_port) as other:  # everyone else is still served
            assert other.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert other.cmd("RCPT TO:<b@example.com>")[0] == 250
            assert other.cmd("DATA")[0] == 354
            other.send("Subject: x\r\n\r\nhi\r\n.\r\n")
            assert other.read_reply()[0] == 250

        deadline = time.monotonic() + 60
        while _held(srv, sock.getsockname()) is not None:  # dropped after idle_timeout
            assert time.monotonic() < deadline, "the blocked writer was never dropped"
            time.sleep(0.2)
        assert srv.app.smtp is not None and srv.app.smtp.connections.held("*") == 0
        sock.settimeout(30)
        try:
            while sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass  # aborted: reset, not a polite close that would wait for us to read
        sock.close()
