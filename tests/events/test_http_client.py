"""The webhook HTTP client against hostile receivers on loopback: huge headers, not HTTP,
bodies without end, chunked answers, connections closed between requests. Each ends in
a status or an error, within the timeout, and never keeps a connection it did not read
whole."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mailgate.events import urls
from mailgate.events.http_client import MAX_BODY, HttpClient, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(answer: bytes, close: bool = False) -> tuple[asyncio.Server, list[int]]:
    """A receiver that reads each request and writes `answer`; counts connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


async def post_twice(
    answer: bytes, close: bool = False, timeout: float = 2.0
) -> tuple[list[object], int]:
    server, connections = await serve(answer, close)
    port = server.sockets[0].getsockname()[1]
    dest = urls.parse_url(f"http://127.0.0.1:{port}/in?x=1", allow_http=True)
    assert not isinstance(dest, str)
    client = HttpClient(timeout)
    results: list[object] = []
    for _ in range(2):
        try:
            results.append(await client.post(dest, "127.0.0.1", b"{}", {"A": "b"}))
        except (ProtocolError, TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            results.append(type(e).__name__)
    await client.close()
    await asyncio.sleep(0.05)  # the handlers see the connections close and end
    server.close()
    await server.wait_closed()
    return results, len(connections)


async def test_a_plain_answer_keeps_the_connection() -> None:
    assert await post_twice(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n") == (
        [204, 204],
        1,
    )


async def test_a_chunked_answer_is_read_and_the_connection_kept() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert await post_twice(chunked) == ([200, 200], 1)


async def test_a_body_too_large_or_without_length_drops_the_connection() -> None:
    big = f"HTTP/1.1 200 OK\r\ncontent-length: {MAX_BODY + 1}\r\n\r\n".encode()
    assert await post_twice(big) == ([200, 200], 2)
    endless = b"HTTP/1.1 500 Oops\r\n\r\nand on and on"
    assert await post_twice(endless) == ([500, 500], 2)


async def test_connection_close_and_a_closed_kept_connection_are_handled() -> None:
    assert await post_twice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", close=True) == (
        [200, 200],
        2,
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-5\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"1" * 20_000 + b"\r\n",
        "HTTP/1.1 \u00b200 OK\r\ncontent-length: 0\r\n\r\n".encode("latin-1"),
    ],
)
async def test_what_is_not_http_is_an_error(answer: bytes) -> None:
    results, _ = await post_twice(answer)
    assert results == ["ProtocolError", "ProtocolError"]


async def test_a_receiver_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dest = urls.parse_url(f"http://127.0.0.1:{port}/", allow_http=True)
    assert not isinstance(dest, str)
    client = HttpClient(0.3)
    with pytest.raises(TimeoutError):
        await client.post(dest, "127.0.0.1", b"{}", {})
    await asyncio.sleep(0.05)
    server.close()
    await server.wait_closed()


async def test_idle_connections_are_capped_by_age_and_in_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailgate.events import http_client

    server, connections = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    port = server.sockets[0].getsockname()[1]
    client = HttpClient(2.0)
    ok = b"{}"

    def dest(host: str) -> urls.Destination:
        parsed = urls.parse_url(f"http://{host}:{port}/in", allow_http=True)
        assert not isinstance(parsed, str)
        return parsed

    one = dest("a.example.test")
    assert await client.post(one, "127.0.0.1", ok, {}) == 200
    assert await client.post(one, "127.0.0.1", ok, {}) == 200
    assert len(connections) == 1, "a fresh idle connection is reused"
    monkeypatch.setattr(http_client, "IDLE_SECONDS", 0.0)
    assert await client.post(one, "127.0.0.1", ok, {}) == 200
    assert len(connections) == 2, "a connection idle too long is closed, not reused"
    monkeypatch.setattr(http_client, "IDLE_SECONDS", 30.0)
    monkeypatch.setattr(http_client, "IDLE_TOTAL", 3)
    for i in range(6):  # six targets (Host names), one connection each
        assert await client.post(dest(f"h{i}.example.test"), "127.0.0.1", ok, {}) == 200
    assert client._idle_count == 3 and len(client._idle) == 3, "the oldest were closed"
    assert set(k[2] for k in client._idle) == {
        "h3.example.test",
        "h4.example.test",
        "h5.example.test",
    }
    await client.close()
    server.close()
    await server.wait_closed()
