"""A lean HTTP/1.1 client for webhook POSTs, on asyncio streams.

httpx spent ~1.2 ms of CPU a request here (830 requests/s on one connection, fewer with
more): below the 5,000 webhooks/s mailgate must send. A webhook needs little of HTTP:
one POST with a Content-Length body, the status of the answer, keep-alive. This client
writes each request in one write, reads the status line and headers (at most
MAX_HEAD bytes), reads a body of at most MAX_BODY bytes (Content-Length or chunked) and
keeps the connection only when the answer was read whole; any other answer closes it.
It connects to the address given (checked by urls.py: no second DNS lookup) and uses the
URL's host for TLS SNI, certificate checks and the Host header. Redirects are answers
like any other (not followed)."""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse

from mailgate.events.urls import Destination

MAX_HEAD = 16 * 1024  # status line and headers
MAX_BODY = 64 * 1024  # an answer's body is read (to keep the connection) up to this
IDLE_PER_TARGET = 64  # idle connections kept per (address, port, host)
IDLE_TOTAL = 512  # idle connections kept in all: many endpoints cannot pile up sockets
IDLE_SECONDS = 30.0  # an idle connection older than this is closed, not reused (receivers
# close theirs after a while; a reused dead one costs a failed write and a retry)

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ProtocolError(Exception):
    """The answer was not HTTP/1.x as a webhook receiver must send it."""


class HttpClient:
    def __init__(self, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.tls = tls or ssl.create_default_context()
        # per target, oldest first: (connection, when it went idle)
        self._idle: dict[tuple[str, int, str], list[tuple[Conn, float]]] = {}
        self._idle_count = 0

    async def post(
        self, dest: Destination, address: str, body: bytes, headers: dict[str, str]
    ) -> int:
        """POST body; the answer's status. Raises OSError, TimeoutError, ProtocolError."""
        key = (address, dest.port, dest.host)
        parts = urllib.parse.urlsplit(dest.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {dest.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [f"Content-Length: {len(body)}", "", ""]
        request = "\r\n".join(lines).encode("latin-1") + body
        async with asyncio.timeout(self.timeout):
            conn = self._take(key)
            if conn is not None:
                try:
                    status, keep = await self._exchange(conn, request)
                except (OSError, asyncio.IncompleteReadError, ProtocolError):
                    conn[1].close()  # a kept connection the receiver had closed: once more,
                    status, keep, conn = await self._fresh(dest, address, request)  # new
                except BaseException:
                    conn[1].close()
                    raise
            else:
                status, keep, conn = await self._fresh(dest, address, request)
        if keep:
            self._keep(key, conn)
        else:
            conn[1].close()
        return status

    def _take(self, key: tuple[str, int, str]) -> Conn | None:
        """The newest idle connection to the target; the stale ones closed."""
        idle = self._idle.get(key)
        if not idle:
            return None
        stale = time.monotonic() - IDLE_SECONDS
        while idle and idle[0][1] < stale:
            idle.pop(0)[0][1].close()
            self._idle_count -= 1
        conn = idle.pop()[0] if idle else None
        if conn is not None:
            self._idle_count -= 1
        if not idle:
            del self._idle[key]
        return conn

    def _keep(self, key: tuple[str, int, str], conn: Conn) -> None:
        if len(self._idle.get(key, ())) >= IDLE_PER_TARGET:
            self._drop_oldest(key)
        if self._idle_count >= IDLE_TOTAL:  # the oldest of all goes, whoever's it is
            self._drop_oldest(min(self._idle, key=lambda k: self._idle[k][0][1]))
        self._idle.setdefault(key, []).append((conn, time.monotonic()))
        self._idle_count += 1

    def _drop_oldest(self, key: tuple[str, int, str]) -> None:
        idle = self._idle[key]
        idle.pop(0)[0][1].close()
        self._idle_count -= 1
        if not idle:
            del self._idle[key]

    async def _fresh(
        self, dest: Destination, address: str, request: bytes
    ) -> tuple[int, bool, Conn]:
        """The request on a new connection (closed again if anything goes wrong)."""
        conn = await self._open(dest, address)
        try:
            status, keep = await self._exchange(conn, request)
        except BaseException:
            conn[1].close()
            raise
        return status, keep, conn

    async def _open(self, dest: Destination, address: str) -> Conn:
        if dest.scheme == "https":
            return await asyncio.open_connection(
                address, dest.port, ssl=self.tls, server_hostname=dest.host, limit=MAX_HEAD
            )
        return await asyncio.open_connection(address, dest.port, limit=MAX_HEAD)

    async def _exchange(self, conn: Conn, request: bytes) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as e:
            raise ProtocolError(f"headers over {MAX_HEAD} bytes") from e
        status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not _digits(code):
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        found = {}
        for f in fields:
            name, _, value = f.partition(":")
            found[name.strip().lower()] = value.strip().lower()
        keep = version == "HTTP/1.1" and found.get("connection") != "close"
        if found.get("transfer-encoding", "").endswith("chunked"):
            keep = keep and await self._chunked(reader)
        elif "content-length" in found:
            length = found["content-length"]
            if not _digits(length) or int(length) > MAX_BODY:
                keep = False  # not read: the connection goes
            else:
                await reader.readexactly(int(length))
        else:
            keep = False  # a body that ends when the connection does
        return int(code), keep

    async def _chunked(self, reader: asyncio.StreamReader) -> bool:
        """Read a chunked body of at most MAX_BODY bytes; False when it is larger."""
        total = 0
        while True:
            size_line = await _line(reader)
            size_text = size_line.split(b";", 1)[0].strip()
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF") or len(size_text) > 8:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            total += size
            if total > MAX_BODY:
                return False
            if size == 0:
                await _trailers(reader)
                return True
            await reader.readexactly(size + 2)

    async def close(self) -> None:
        for conns in self._idle.values():
            for (_, writer), _ in conns:
                writer.close()
        self._idle.clear()
        self._idle_count = 0


async def _trailers(reader: asyncio.StreamReader) -> None:
    while (await _line(reader)) != b"\r\n":
        pass


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as e:
        raise ProtocolError(f"a line over {MAX_HEAD} bytes") from e


def _digits(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()
