"""Delivery fixtures: a loopback DNS server, a scripted SMTP sink, a store, a clock."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import DeliveryConfig
from mailgate.delivery.worker import Deliverer
from mailgate.ingress.accept import Door
from mailgate.models import NewMessage, Source
from mailgate.store import Store, open_store
from tests.delivery.peers import Script, SinkController, ZoneResolver, start_dns


class Clock:
    """An injectable clock: time moves only when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    store: Store
    zone: ZoneResolver
    dns_port: int
    sink_port: int
    script: Script
    clock: Clock

    def deliverer(self, **cfg: Any) -> Deliverer:
        settings = {
            "resolver": f"127.0.0.1:{self.dns_port}",
            "port": self.sink_port,
            "allow_private_networks": ["127.0.0.0/8"],
            "retry_first": 60,
            "retry_max": 600,
            "retry_jitter": 0,
            "connect_timeout": 2,
            "command_timeout": 5,
            "data_timeout": 5,
            "tls": "none",
            **cfg,
        }
        door = Door(self.store, "mg.test", 1000, clock=self.clock)
        return Deliverer(
            self.store, DeliveryConfig.model_validate(settings), "mg.test", door, clock=self.clock
        )

    async def queue(
        self,
        *rcpts: str,
        source: Source = Source.SMTP,
        sender: str = "sender@origin.test",
        raw: bytes | None = None,
    ) -> str:
        body = raw or (
            b"From: sender@origin.test\r\nSubject: story\r\nMessage-ID: <s@o.test>\r\n\r\nhello\r\n"
        )
        m = NewMessage(
            raw=body, sender=sender, recipients=rcpts, source=source, created_at=self.clock.now
        )
        return await self.store.enqueue(m)

    async def run_until_idle(self, deliverer: Deliverer, limit: int = 200) -> int:
        steps = 0
        while steps < limit and await deliverer.step():
            steps += 1
        return steps


@pytest.fixture
def dns_zone() -> Iterator[tuple[ZoneResolver, int]]:
    server, zone, port = start_dns()
    yield zone, port
    server.stop()
    server.server.server_close()


@pytest.fixture
def sink() -> Iterator[tuple[Script, int]]:
    script = Script()
    port = free_port()
    controller = SinkController(script, port)
    controller.start()
    script.connections = script.max_open = 0  # start() probes the server once itself
    yield script, port
    controller.stop()


@pytest.fixture
async def world(
    tmp_path: Path, dns_zone: tuple[ZoneResolver, int], sink: tuple[Script, int]
) -> AsyncIterator[World]:
    store = open_store(f"sqlite:///{tmp_path / 'mailgate.db'}")
    await store.open()
    zone, dns_port = dns_zone
    script, sink_port = sink
    zone.add("example.test", "MX", (10, "mx.example.test"))
    zone.add("mx.example.test", "A", "127.0.0.1")
    zone.add("origin.test", "MX", (10, "mx.example.test"))
    yield World(store, zone, dns_port, sink_port, script, Clock())
    await store.close()
