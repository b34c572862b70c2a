"""Destination faults: a receiver down then up, a 421 storm, a DNS outage. Each time the
mail waits (deferred, retries spread by jitter so they do not all return at once) and
is all delivered after recovery. Postfix and KumoMTA behave the same way: a 4xx or an
unreachable host defers, with randomized backoff, for up to the queue lifetime."""

from __future__ import annotations

import statistics

from mailgate.models import Recipient, RecipientStatus
from tests.delivery.conftest import World, free_port
from tests.delivery.peers import Script, SinkController

MESSAGES = 40


async def queue_many(world: World, domain: str) -> list[str]:
    return [await world.queue(f"user{i}@{domain}") for i in range(MESSAGES)]


async def all_recipients(world: World, ids: list[str]) -> list[Recipient]:
    return [r for mid in ids for r in await world.store.recipients(mid)]


def assert_spread(rs: list[Recipient], delay: float) -> None:
    """Jittered retries: not one instant, but spread across the jitter window."""
    times = [r.next_attempt_at for r in rs if r.next_attempt_at is not None]
    assert len(times) == len(rs) and len(set(times)) == len(rs)
    assert max(times) - min(times) > 0.2 * delay, "retries bunched up: a stampede"
    assert statistics.pstdev(times) > 0.05 * delay


async def test_receiver_down_then_up_delivers_everything(world: World) -> None:
    port = free_port()  # nothing listens here yet
    deliverer = world.deliverer(port=port, retry_jitter=0.2)
    ids = await queue_many(world, "example.test")
    await world.run_until_idle(deliverer)
    down = await all_recipients(world, ids)
    assert {r.status for r in down} == {RecipientStatus.DEFERRED}
    assert_spread(down, 60)

    script = Script()
    controller = SinkController(script, port)
    controller.start()
    try:
        world.clock.advance(60 * 1.2 + 1)
        await world.run_until_idle(deliverer)
        up = await all_recipients(world, ids)
        assert {r.status for r in up} == {RecipientStatus.DELIVERED}
        assert len(script.received) == MESSAGES
    finally:
        controller.stop()


async def test_421_storm_defers_then_everything_arrives_once(world: World) -> None:
    world.script.busy_data = MESSAGES // 2
    deliverer = world.deliverer(retry_jitter=0.2)
    ids = await queue_many(world, "example.test")
    await world.run_until_idle(deliverer)
    first = await all_recipients(world, ids)
    deferred = [r for r in first if r.status is RecipientStatus.DEFERRED]
    assert deferred and all(r.last_reply and r.last_reply.code == 421 for r in deferred)
    world.clock.advance(60 * 1.2 + 1)
    await world.run_until_idle(deliverer)
    assert {r.status for r in await all_recipients(world, ids)} == {RecipientStatus.DELIVERED}
    addresses = [a for got in world.script.received for a in got.recipients]
    assert sorted(addresses) == sorted(f"user{i}@example.test" for i in range(MESSAGES))


async def test_dns_outage_defers_then_delivers(world: World) -> None:
    world.zone.servfail.add("example.test")
    deliverer = world.deliverer(retry_jitter=0.2)
    ids = await queue_many(world, "example.test")
    await world.run_until_idle(deliverer)
    out = await all_recipients(world, ids)
    assert {r.status for r in out} == {RecipientStatus.DEFERRED}
    assert world.script.received == [], "nothing may be sent without an answer from DNS"
    assert_spread(out, 60)
    world.zone.servfail.discard("example.test")
    world.clock.advance(60 * 1.2 + 1)
    await world.run_until_idle(deliverer)
    assert {r.status for r in await all_recipients(world, ids)} == {RecipientStatus.DELIVERED}
