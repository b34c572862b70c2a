"""What the HTTP server puts on the wire: a response's head and body leave in one write
(CorkedTransport), and nothing written before a close is lost."""

from __future__ import annotations

import asyncio
import socket

from mailgate.http.server import CorkedTransport
from tests.ingress.conftest import RunningServer


class Counted:
    """A real transport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.writes = transport, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


async def test_writes_of_one_turn_leave_as_one_and_close_sends_what_was_written() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    counted = Counted(transport)  # type: ignore[arg-type]
    corked = CorkedTransport(counted, loop)  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(b"body")
    assert counted.writes == 0  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    assert counted.writes == 1
    corked.write(b"; last")
    corked.close()  # written before the close: still sent
    assert counted.writes == 2
    with peer:  # read to the end of the stream: all that was sent, then the close
        assert await loop.run_in_executor(None, read_all, peer) == (
            b"HTTP/1.1 200 OK\r\n\r\nbody; last"
        )


def test_pipelined_requests_and_a_closing_one_get_whole_answers(server: RunningServer) -> None:
    port = int(server.http_url.rsplit(":", 1)[1])
    requests = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n"  # 1.0: answered, then closed
    )
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(requests)
        got = read_all(sock)
    heads = got.split(b"HTTP/1.1 ")[1:]
    assert [h[:3] for h in heads] == [b"200", b"404", b"200"], got
    for head in heads:  # each body as long as its Content-Length says
        top, _, body = head.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in top.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert len(body) == length, head
