"""DSNs pass the door's rules like any other mail (issue 12): its hooks see them, and a
suppressed original sender gets its DSN recorded as suppressed, never sent."""

from __future__ import annotations

from mailgate.config import DeliveryConfig
from mailgate.delivery.worker import Deliverer
from mailgate.ingress.accept import Door
from mailgate.models import RecipientStatus, Suppression, SuppressionReason
from tests.delivery.conftest import World


def door_deliverer(world: World, door: Door) -> Deliverer:
    plain = world.deliverer()
    cfg: DeliveryConfig = plain.cfg
    return Deliverer(world.store, cfg, "mg.test", door, clock=world.clock)


async def test_a_dsn_passes_the_door_hooks_and_gets_its_headers(world: World) -> None:
    seen: list[str | None] = []

    def sign(raw: bytes, from_address: str | None) -> bytes:
        seen.append(from_address)
        return b"X-Signed: by-hook\r\n" + raw

    door = Door(world.store, "mg.test", 1000, signers=[sign], clock=world.clock)
    mid = await world.queue("reject-me@example.test", sender="sender@origin.test")
    await world.run_until_idle(door_deliverer(world, door))
    recipients = await world.store.recipients(mid)
    assert [r.status for r in recipients] == [RecipientStatus.BOUNCED]
    assert seen == ["MAILER-DAEMON@mg.test"]
    [dsn] = world.script.received
    assert dsn.recipients == ["sender@origin.test"]
    head = dsn.data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"X-Signed: by-hook\r\nReceived: by mg.test (mailgate) with local")
    assert head.count(b"\r\nMessage-ID:") == 1, "the DSN's own Message-ID is kept, not doubled"


async def test_a_dsn_to_a_suppressed_sender_is_recorded_as_suppressed_never_sent(
    world: World,
) -> None:
    entry = Suppression("sender@origin.test", SuppressionReason.HARD_BOUNCE, world.clock())
    await world.store.put_suppressions([entry])
    door = Door(world.store, "mg.test", 1000, clock=world.clock)
    mid = await world.queue("reject-me@example.test", sender="sender@origin.test")
    await world.run_until_idle(door_deliverer(world, door))
    recipients = await world.store.recipients(mid)
    assert [r.status for r in recipients] == [RecipientStatus.BOUNCED]
    assert world.script.received == [], "no DSN goes to a suppressed address"
    counts = await world.store.status_counts()
    assert counts[RecipientStatus.SUPPRESSED] == 1, "the DSN is kept, its recipient suppressed"
