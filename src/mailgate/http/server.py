"""The HTTP listener: uvicorn serving create_api's app on a socket of our own (so that
several of serve's processes can share the port, SO_REUSEPORT), started and drained
as one of the app's components."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mailgate.config import HttpConfig
from mailgate.errors import ConfigError
from mailgate.http.app import Api, create_api

BACKLOG = 2048


class CorkedTransport:
    """A transport whose writes of one loop turn leave as one send. uvicorn writes a
    response's head and its body separately: two syscalls, and two segments for the
    client to read, where one does. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:  # what was written before close() still goes out
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a CorkedTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = CorkedTransport(transport, self.loop)
        super().connection_made(corked)  # type: ignore[arg-type]


class HttpServer:
    def __init__(
        self,
        api: Api,
        cfg: HttpConfig,
        *,
        reuse_port: bool = False,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """tls: the (certificate, key) files to serve HTTPS with (http.tls)."""
        self.api, self.cfg, self.reuse_port = api, cfg, reuse_port
        cert, key = tls or (None, None)
        config = uvicorn.Config(
            create_api(api),
            host=cfg.host,
            port=cfg.port,
            lifespan="off",
            http=CorkedHttp,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=10,
            ssl_certfile=cert,
            ssl_keyfile=key,
            # the peer is who the socket says: X-Forwarded-For/-Proto would let a client
            # behind a local proxy claim another address or that it came over HTTPS
            proxy_headers=False,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"config: http.tls: cannot load smtp.tls_cert / tls_key: {exc}"
            ) from None
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self._ticks: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.cfg
        try:
            sock = socket.create_server(
                (cfg.host, cfg.port),
                family=socket.AF_INET6 if ":" in cfg.host else socket.AF_INET,
                backlog=BACKLOG,
                reuse_port=self.reuse_port,
            )
            await self.server.startup(sockets=[sock])
        except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot serve
            raise ConfigError(
                f"config: http.port: cannot listen on {cfg.host}:{cfg.port}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        self._ticks = asyncio.create_task(self.server.main_loop())

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """New requests get 503 (the lifecycle is draining); those in flight finish for
        up to `grace` seconds."""
        self.api.lifecycle.drain()
        if not getattr(self.server, "servers", None):  # it never started (a port taken)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(not t.done() for t in self.server.server_state.tasks):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        self.server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        await self.server.shutdown()
