"""Remote failure stories with a misbehaving raw SMTP peer: nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgate.models import RecipientStatus
from tests.delivery.conftest import World
from tests.delivery.peers import RawPeer


@pytest.fixture
def raw_peer(request: pytest.FixtureRequest, world: World) -> Iterator[RawPeer]:
    peer = RawPeer(request.param, "127.0.0.3", world.sink_port)
    peer.start()
    world.zone.add("bad.test", "MX", (10, "bad-mx.bad.test"))
    world.zone.add("bad.test", "MX", (20, "mx.example.test"))
    world.zone.add("bad-mx.bad.test", "A", "127.0.0.3")
    world.zone.add("onlybad.test", "MX", (10, "bad-mx.bad.test"))
    yield peer
    peer.stop()


@pytest.mark.parametrize("raw_peer", ["greet421"], indirect=True)
async def test_421_at_greeting_moves_to_the_next_mx(world: World, raw_peer: RawPeer) -> None:
    mid = await world.queue("a@bad.test")
    await world.run_until_idle(world.deliverer())
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DELIVERED and r.remote_host == "mx.example.test"
    assert raw_peer.connections == 1


@pytest.mark.parametrize("raw_peer", ["drop_in_data"], indirect=True)
async def test_disconnect_in_data_defers_and_keeps_the_message(
    world: World, raw_peer: RawPeer
) -> None:
    mid = await world.queue("a@onlybad.test")
    await world.run_until_idle(world.deliverer())
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and r.last_reply is not None
    assert "lost" in r.last_reply.text or "failed" in r.last_reply.text
    assert await world.store.get_raw(mid) is not None


@pytest.mark.parametrize("raw_peer", ["stall_after_dot"], indirect=True)
async def test_stall_after_the_dot_times_out_and_defers(world: World, raw_peer: RawPeer) -> None:
    mid = await world.queue("a@onlybad.test")
    await world.run_until_idle(world.deliverer(data_timeout=1, command_timeout=1))
    [r] = await world.store.recipients(mid)
    # the remote may have the message: a retry may duplicate, but it is never lost
    assert r.status is RecipientStatus.DEFERRED
