"""Whatever a recipient domain or its DNS holds, the real Deliverer against the loopback
DNS server turns it into that domain's outcome, with bounded DNS work (issue 11)."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.delivery.mx import MX_ADDRESS_LIMIT, MX_HOST_LIMIT, MxResolver
from mailgate.models import Recipient, RecipientStatus, Source
from tests.delivery.conftest import World


async def only(world: World, message_id: str) -> Recipient:
    [r] = await world.store.recipients(message_id)
    return r


async def deliver_one(world: World, address: str, **cfg: object) -> Recipient:
    mid = await world.queue(address, source=Source.HTTP)  # no DSN: the sink sees only it
    await asyncio.wait_for(world.run_until_idle(world.deliverer(**cfg)), 60)
    return await only(world, mid)


@pytest.mark.parametrize(
    ("host", "rdtype", "address"),
    [
        ("cgnat", "A", "100.64.0.1"),
        ("metadata", "A", "100.100.100.200"),
        ("sixtofour", "AAAA", "2002:7f00::1"),  # 6to4 of 127.0.0.1
        ("nat64", "AAAA", "64:ff9b::7f00:1"),  # NAT64 of 127.0.0.1
        ("teredo", "AAAA", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
    ],
)
async def test_mail_servers_on_non_global_addresses_are_refused(
    world: World, host: str, rdtype: str, address: str
) -> None:
    """127.0.0.0/8 is allowed in this world, yet IPv6 forms that lead to it are not, nor
    CGNAT: none is connected to, each bounces as a private destination."""
    world.zone.add(f"{host}.test", "MX", (10, f"mx.{host}.test"))
    world.zone.add(f"mx.{host}.test", rdtype, address)
    r = await deliver_one(world, f"a@{host}.test")
    assert r.status is RecipientStatus.BOUNCED
    assert r.last_reply is not None and r.last_reply.enhanced == "5.4.4", r.last_reply
    assert "private" in r.last_reply.text
    assert world.script.connections == 0


async def test_300_mx_records_cost_a_bounded_number_of_queries(world: World) -> None:
    for i in range(300):
        world.zone.add("many.test", "MX", (i, f"mx{i}.many.test"))
        world.zone.add(f"mx{i}.many.test", "A", "127.0.0.1")
    world.zone.queries.clear()
    r = await deliver_one(world, "a@many.test")
    assert r.status is RecipientStatus.DELIVERED
    asked = [q for q in world.zone.queries if q[0].endswith("many.test")]
    assert len(asked) <= 1 + 2 * MX_HOST_LIMIT, len(asked)  # was 601
    resolver = MxResolver(f"127.0.0.1:{world.dns_port}", ["127.0.0.0/8"], world.clock)
    targets = await resolver.targets("many.test")
    assert isinstance(targets, list) and 0 < len(targets) <= MX_ADDRESS_LIMIT
    assert [t.preference for t in targets] == sorted(t.preference for t in targets)


async def test_many_mx_names_that_never_answer_defer_within_the_budget(world: World) -> None:
    """20 MX names whose lookups time out held a worker 20 x 2 x the timeout; now at
    most MX_HOST_LIMIT of them are asked, side by side, within two timeouts."""
    for i in range(20):
        world.zone.add("slow.test", "MX", (10, f"mx{i}.slow.test"))
        world.zone.drop.add(f"mx{i}.slow.test")
    mid = await world.queue("a@slow.test")
    deliverer = world.deliverer()
    deliverer.resolver = MxResolver(
        f"127.0.0.1:{world.dns_port}", ["127.0.0.0/8"], world.clock, timeout=1.0
    )
    await asyncio.wait_for(world.run_until_idle(deliverer), 60)
    r = await only(world, mid)
    assert r.status is RecipientStatus.DEFERRED
    assert r.last_reply is not None and r.last_reply.enhanced == "4.4.3", r.last_reply
    asked = {q[0] for q in world.zone.queries if q[0].startswith("mx")}
    assert asked and len(asked) <= MX_HOST_LIMIT, asked


async def test_an_mx_name_that_is_not_a_host_name_is_skipped(world: World) -> None:
    world.zone.add("hostile.test", "MX", (10, "bad name.evil.test"))
    world.zone.add("hostile.test", "MX", (20, "mx.example.test"))
    r = await deliver_one(world, "a@hostile.test")
    assert r.status is RecipientStatus.DELIVERED and r.remote_host == "mx.example.test"
    assert not [q for q in world.zone.queries if "evil" in q[0]]


async def test_an_idn_domain_is_looked_up_by_its_a_labels(world: World) -> None:
    world.zone.add("xn--bcher-kva.test", "MX", (10, "mx.example.test"))
    r = await deliver_one(world, "a@bücher.test")
    assert r.status is RecipientStatus.DELIVERED
    assert ("xn--bcher-kva.test", "MX") in world.zone.queries


async def test_an_address_literal_is_delivered_to_that_address(world: World) -> None:
    r = await deliver_one(world, "a@[127.0.0.1]")
    assert r.status is RecipientStatus.DELIVERED
    assert world.script.received[0].recipients == ["a@[127.0.0.1]"]
    assert not world.zone.queries  # no DNS for a literal


@pytest.mark.parametrize(
    ("address", "enhanced"),
    [
        ("a@[10.0.0.1]", "5.4.4"),
        ("a@[100.100.100.200]", "5.4.4"),
        ("a@[IPv6:::1]", "5.4.4"),
        ("a@[IPv6:2002:7f00::1]", "5.4.4"),
        ("a@[300.1.1.1]", "5.1.2"),
        ("a@[IPv6:1.2.3.4]", "5.1.2"),
        ("a@[1.2.3.4", "5.1.2"),
    ],
)
async def test_an_address_literal_that_is_private_or_malformed_bounces(
    world: World, address: str, enhanced: str
) -> None:
    r = await deliver_one(world, address)
    assert r.status is RecipientStatus.BOUNCED
    assert r.last_reply is not None and r.last_reply.enhanced == enhanced, r.last_reply
    assert world.script.connections == 0
