"""Story: a queue from before the doors refused bad domains holds recipients no DNS name
can be made of. They are queued before good mail; the running workers bounce them and
deliver the good mail behind them, and keep running (issue 11, finding 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mailgate.models import RecipientStatus, Source
from tests.delivery.conftest import World

POISON = {
    "label-over-63": "x@" + "a" * 64 + ".test",
    "hyphens-at-the-ends": "x@-ü-.com",
    "zero-width-space": "x@a\u200bb.test",  # dnspython would quietly look up ab.test
    "name-over-255": "x@" + "b." * 130 + "test",
    "empty-label": "x@a..test",
    "space-in-label": "x@a b.test",
}


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_poison_recipients_bounce_and_the_mail_behind_them_is_delivered(
    world: World,
) -> None:
    poison = [await world.queue(address) for address in POISON.values()]
    world.clock.advance(1)  # the poison is the most overdue: claimed first
    good = await world.queue("good@example.test")
    deliverer = world.deliverer(concurrency=1)
    running = asyncio.create_task(deliverer.run())

    async def settled() -> bool:
        statuses = [r.status for mid in [*poison, good] for r in await world.store.recipients(mid)]
        return RecipientStatus.QUEUED not in statuses

    try:
        await eventually(settled)
        assert not running.done(), "the delivery loop stopped"
    finally:
        deliverer.stopping.set()
        await asyncio.wait_for(running, 30)
    [delivered] = await world.store.recipients(good)
    assert delivered.status is RecipientStatus.DELIVERED
    for mid in poison:
        [r] = await world.store.recipients(mid)
        assert r.status is RecipientStatus.BOUNCED, r
        assert r.last_reply is not None
        assert (r.last_reply.code, r.last_reply.enhanced) == (553, "5.1.2"), r.last_reply
        assert "Bad destination domain" in r.last_reply.text


@pytest.mark.parametrize("address", POISON.values(), ids=POISON.keys())
async def test_a_poison_recipient_bounces_with_the_reason_and_no_dns_query(
    world: World, address: str
) -> None:
    mid = await world.queue(address)
    await asyncio.wait_for(world.run_until_idle(world.deliverer()), 60)
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.BOUNCED
    assert r.last_reply is not None and r.last_reply.text.isascii()
    asked = {name for name, _ in world.zone.queries}
    assert asked <= {"origin.test", "mx.example.test"}, asked  # only the DSN's lookups
    [dsn] = [m for m in world.script.received if m.sender == "<>"]
    assert b"5.1.2" in dsn.data


async def test_a_poison_recipient_beside_a_good_one_in_the_same_message(world: World) -> None:
    mid = await world.queue("good@example.test", POISON["label-over-63"], source=Source.HTTP)
    await asyncio.wait_for(world.run_until_idle(world.deliverer()), 60)
    statuses = {r.address: r.status for r in await world.store.recipients(mid)}
    assert statuses == {
        "good@example.test": RecipientStatus.DELIVERED,
        POISON["label-over-63"]: RecipientStatus.BOUNCED,
    }
