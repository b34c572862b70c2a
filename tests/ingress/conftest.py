"""A real mailgate SMTP relay on a loopback port, running in its own thread and loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme

from mailgate import keys
from mailgate.app import App
from mailgate.config import Config
from mailgate.models import Scope
from mailgate.store import Store

T = TypeVar("T")


@dataclass
class RunningServer:
    app: App
    loop: asyncio.AbstractEventLoop
    smtp_port: int
    send_key: str
    restricted_key: str  # send, only for example.org senders
    read_key: str  # read scope only: no sending
    ca: trustme.CA

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    @contextlib.contextmanager
    def failing_enqueue(self, error: Exception) -> Iterator[None]:
        """Make every enqueue raise `error` (a store that cannot commit) for a while."""
        store = self.app.store
        assert store is not None
        original = store.enqueue

        async def failing(message: Any) -> str:
            raise error

        store.enqueue = failing  # type: ignore[method-assign]
        try:
            yield
        finally:
            store.enqueue = original  # type: ignore[method-assign]

    def call(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        assert self.app.store is not None
        return asyncio.run_coroutine_threadsafe(fn(self.app.store), self.loop).result(30)


FIRST_FAILURE_DELAY = 0.02


def make_config(
    tmp: Path,
    ca: trustme.CA,
    http: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    **smtp: Any,
) -> Config:
    http = http or {}
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return Config.model_validate(
        {
            "server": {
                "data_dir": str(tmp / "data"),
                "hostname": "mx.mailgate.test",
                "ingress_processes": 1,  # in-process: no `serve` children
            },
            "smtp": {"port": 0, "tls_cert": str(cert_path), "tls_key": str(key_path), **smtp},
            "http": {"port": 0, **http},
            # failed-login waits kept short: tests check that they grow, not their size
            "auth": {"first_failure_delay": FIRST_FAILURE_DELAY, **(auth or {})},
            "delivery": {"enabled": False},  # ingress tests never send anywhere
        }
    )


def start_server(config: Config, ca: trustme.CA) -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    app_box: dict[str, Any] = {}
    started = threading.Event()

    def runner() -> None:
        asyncio.set_event_loop(loop)
        app = App(config)
        app_box["app"] = app

        async def main() -> None:
            try:
                await app.start()
            except BaseException as exc:
                app_box["error"] = exc
                started.set()
                raise
            started.set()
            await app.stopping.wait()
            await app.stop()

        loop.run_until_complete(main())

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    assert started.wait(30), "server did not start"
    if "error" in app_box:
        raise app_box["error"]
    app: App = app_box["app"]

    async def make_keys() -> tuple[str, str, str]:
        assert app.store is not None
        _, send = await keys.create_key(app.store, "send", [Scope.SEND])
        _, restricted = await keys.create_key(app.store, "org", [Scope.SEND], ["example.org"])
        _, read = await keys.create_key(app.store, "read", [Scope.READ])
        return send, restricted, read

    send, restricted, read = asyncio.run_coroutine_threadsafe(make_keys(), loop).result(30)
    assert app.smtp is not None
    yield RunningServer(app, loop, app.smtp.port, send, restricted, read, ca)
    loop.call_soon_threadsafe(app.stopping.set)
    thread.join(30)
    loop.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningServer]:
    yield from start_server(make_config(tmp_path, ca), ca)
