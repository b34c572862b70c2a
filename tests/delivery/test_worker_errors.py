"""No error stops the queue quietly (issue 11, finding 1): an unexpected exception while
delivering one claim defers that claim and the workers carry on; a delivery loop that
dies makes run() raise, and a server whose delivery died stops (so it is restarted)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from mailgate.app import App
from mailgate.config import Config
from mailgate.delivery.mx import MxResolver, Target
from mailgate.delivery.outcome import Outcome
from mailgate.errors import MailgateError, StoreUnavailable
from mailgate.models import Claim, RecipientStatus
from mailgate.store import Store
from tests.delivery.conftest import World


class ExplodingResolver(MxResolver):
    """The real resolver, except that one domain raises: a bug on one claim's path."""

    calls = 0

    async def targets(self, domain: str) -> list[Target] | Outcome:
        if domain == "boom.test":
            self.calls += 1
            raise RuntimeError("a bug on the way to boom.test")
        return await super().targets(domain)


class BrokenClaims:
    """The real store, except that claim raises: a bug in the loop itself."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim:
        raise RuntimeError("a bug in claim")


async def test_an_unexpected_error_defers_that_claim_and_the_queue_carries_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    boom = await world.queue("a@boom.test")
    world.clock.advance(1)  # boom is claimed first
    good = await world.queue("good@example.test")
    deliverer = world.deliverer(concurrency=1)
    resolver = ExplodingResolver(
        f"127.0.0.1:{world.dns_port}", ["127.0.0.0/8"], world.clock, deliverer.rng
    )
    deliverer.resolver = resolver
    running = asyncio.create_task(deliverer.run())
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while (await world.store.recipients(good))[0].status is not RecipientStatus.DELIVERED:
            assert asyncio.get_running_loop().time() < deadline, "good mail not delivered"
            assert not running.done(), "the delivery loop stopped"
            await asyncio.sleep(0.05)
        for _ in range(20):  # the workers stay idle: nothing is due
            await asyncio.sleep(0.05)
        assert not running.done()
    finally:
        deliverer.stopping.set()
        await asyncio.wait_for(running, 30)
    [r] = await world.store.recipients(boom)
    assert r.status is RecipientStatus.DEFERRED and r.attempts == 1
    assert r.last_reply is not None
    assert (r.last_reply.code, r.last_reply.enhanced) == (451, "4.3.0")
    assert r.next_attempt_at == world.clock.now + 60  # the retry schedule, not at once
    assert resolver.calls == 1, "claimed again at once, failing in a loop"
    assert "a bug on the way to boom.test" in caplog.text  # logged with its traceback


async def test_a_delivery_loop_that_dies_makes_run_raise(world: World) -> None:
    deliverer = world.deliverer(concurrency=4)
    deliverer.store = cast(Store, BrokenClaims(world.store))
    await world.queue("a@example.test")
    before = asyncio.all_tasks()
    with pytest.raises(RuntimeError, match="a bug in claim"):
        await asyncio.wait_for(deliverer.run(), 30)
    assert asyncio.all_tasks() <= before, "workers left running after run() raised"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_server_whose_delivery_dies_stops_with_an_error(tmp_path: Path) -> None:
    """One process doing everything: rather than take mail it will never send, it
    stops and run() raises, so `mailgate serve` exits non-zero and is restarted."""
    config = Config.model_validate(
        {
            "server": {
                "data_dir": str(tmp_path / "data"),
                "hostname": "mx.mailgate.test",
                "ingress_processes": 1,
                "delivery_process": False,
            },
            "smtp": {"port": free_port()},
            "http": {"port": 0},
            "delivery": {"resolver": "127.0.0.1:9"},
        }
    )
    app = App(config)
    running = asyncio.create_task(app.run())
    await asyncio.wait_for(app.ready.wait(), 30)
    assert app.store is not None and app.deliverer is not None
    app.deliverer.store = cast(Store, BrokenClaims(app.store))  # its next claim raises
    with pytest.raises(MailgateError, match="delivery stopped"):
        await asyncio.wait_for(running, 60)
    with pytest.raises(OSError):  # no longer taking mail
        socket.create_connection(("127.0.0.1", config.smtp.port), timeout=5).close()


class FlakySettles:
    """The real store, except that the first `failures` settles cannot commit (a
    restarting writer, a database failover)."""

    def __init__(self, store: Store, failures: int) -> None:
        self._store, self.failures, self.calls = store, failures, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def settle(self, *args: Any, **kw: Any) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("store: cannot commit now")
        return await self._store.settle(*args, **kw)


async def test_a_settle_the_store_cannot_commit_is_tried_again(world: World) -> None:
    """Outcomes already known are kept: the recipient ends delivered, not leased until
    its lease ends and sent again then."""
    mid = await world.queue("good@example.test")
    deliverer = world.deliverer(concurrency=1)
    flaky = FlakySettles(world.store, failures=3)
    deliverer.store = cast(Store, flaky)
    running = asyncio.create_task(deliverer.run())
    try:
        async with asyncio.timeout(30):
            while (await world.store.recipients(mid))[0].status is not RecipientStatus.DELIVERED:
                await asyncio.sleep(0.05)
    finally:
        deliverer.stopping.set()
        await running
    assert flaky.calls == 4
    assert world.script.seen["good@example.test"] == 1, "sent again after its outcome was known"
    [r] = await world.store.recipients(mid)
    assert r.lease_owner is None
