"""Delivery stories against real peers on loopback: a DNS server and an SMTP sink."""

from __future__ import annotations

import asyncio
import email
import email.policy

from mailgate.models import EventKind, RecipientStatus, Source
from tests.delivery.conftest import World
from tests.delivery.peers import parse_status


async def statuses(world: World, message_id: str) -> dict[str, RecipientStatus]:
    return {r.address: r.status for r in await world.store.recipients(message_id)}


async def test_delivered_first_time_with_events(world: World) -> None:
    mid = await world.queue("alice@example.test", "bob@example.test")
    assert await world.run_until_idle(world.deliverer()) == 1
    assert await statuses(world, mid) == {
        "alice@example.test": RecipientStatus.DELIVERED,
        "bob@example.test": RecipientStatus.DELIVERED,
    }
    assert len(world.script.received) == 1  # one transaction carried both recipients
    got = world.script.received[0]
    assert got.recipients == ["alice@example.test", "bob@example.test"]
    assert got.data.endswith(b"\r\n\r\nhello\r\n")
    events = await world.store.events(mid)
    delivered = [e for e in events if e.kind is EventKind.DELIVERED]
    assert len(delivered) == 2
    assert delivered[0].details["code"] == 250 and delivered[0].details["remote_host"] == (
        "mx.example.test"
    )


async def test_tempfail_then_delivered(world: World) -> None:
    mid = await world.queue("tempfail-once@example.test")
    d = world.deliverer()
    await world.run_until_idle(d)
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and r.attempts == 1
    assert r.last_reply is not None and r.last_reply.code == 450
    assert r.next_attempt_at == world.clock.now + 60  # retry_first, no jitter
    assert await world.run_until_idle(d) == 0  # not due yet
    world.clock.advance(61)
    await world.run_until_idle(d)
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DELIVERED and r.attempts == 2
    kinds = [e.kind for e in await world.store.events(mid)]
    assert kinds == [EventKind.ACCEPTED, EventKind.DEFERRED, EventKind.DELIVERED]


async def test_permanent_bounce_sends_a_parsable_dsn(world: World) -> None:
    mid = await world.queue("reject-me@example.test", sender="sender@origin.test")
    d = world.deliverer()
    await world.run_until_idle(d)
    assert await statuses(world, mid) == {"reject-me@example.test": RecipientStatus.BOUNCED}
    # the DSN is queued to the original sender with the null sender, then delivered
    assert len(world.script.received) == 1
    dsn = world.script.received[0]
    assert dsn.sender == "<>" and dsn.recipients == ["sender@origin.test"]  # aiosmtpd spells <>
    msg = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    status_part = next(p for p in parts if p.get_content_type() == "message/delivery-status")
    text = status_part.as_string()
    fields = parse_status(text)
    assert fields["Final-Recipient"] == "rfc822; reject-me@example.test"
    assert fields["Action"] == "failed" and fields["Status"] == "5.1.1"
    assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user here"
    assert fields["Remote-MTA"] == "dns; mx.example.test"
    headers = next(p for p in parts if p.get_content_type() == "text/rfc822-headers")
    assert "Subject: story" in headers.as_string()


async def test_bounce_is_never_bounced_and_api_mail_gets_no_dsn(world: World) -> None:
    await world.queue("reject-1@example.test", sender="", source=Source.SMTP)
    await world.queue("reject-2@example.test", sender="app@origin.test", source=Source.HTTP)
    await world.queue("reject-3@example.test", sender="x@origin.test", source=Source.DSN)
    await world.run_until_idle(world.deliverer())
    assert world.script.received == []  # no DSN for any of them
    counts = await world.store.status_counts()
    assert counts[RecipientStatus.BOUNCED] == 3 and counts[RecipientStatus.QUEUED] == 0


async def test_expired_after_a_short_lifetime(world: World) -> None:
    mid = await world.queue("tempfail@example.test")
    d = world.deliverer(lifetime=100)
    await world.run_until_idle(d)
    assert await statuses(world, mid) == {"tempfail@example.test": RecipientStatus.DEFERRED}
    world.clock.advance(61)
    await world.run_until_idle(d)
    assert await statuses(world, mid) == {"tempfail@example.test": RecipientStatus.EXPIRED}
    dsn = world.script.received[-1]
    assert dsn.sender == "<>" and b"Status: 4.4.7" in dsn.data


async def test_first_mx_down_second_used(world: World) -> None:
    world.zone.add("two.test", "MX", (10, "down.two.test"))
    world.zone.add("two.test", "MX", (20, "up.two.test"))
    world.zone.add("down.two.test", "A", "127.0.0.2")  # nothing listens there
    world.zone.add("up.two.test", "A", "127.0.0.1")
    mid = await world.queue("a@two.test")
    await world.run_until_idle(world.deliverer())
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DELIVERED and r.remote_host == "up.two.test"


async def test_mixed_250_450_550_recipients(world: World) -> None:
    mid = await world.queue("ok@example.test", "tempfail@example.test", "reject@example.test")
    await world.run_until_idle(world.deliverer())
    assert await statuses(world, mid) == {
        "ok@example.test": RecipientStatus.DELIVERED,
        "tempfail@example.test": RecipientStatus.DEFERRED,
        "reject@example.test": RecipientStatus.BOUNCED,
    }
    world.clock.advance(61)
    before = len(world.script.received)
    await world.run_until_idle(world.deliverer())
    # the delivered recipient is never sent again
    again = [r for x in world.script.received[before:] for r in x.recipients]
    assert "ok@example.test" not in again


async def test_100_messages_to_one_domain_over_capped_connections(world: World) -> None:
    for i in range(100):
        await world.queue(f"user{i}@example.test")
    d = world.deliverer(concurrency=8, max_connections_per_domain=2, claim_batch=10)
    task = asyncio.create_task(d.run())
    for _ in range(200):
        counts = await world.store.status_counts()
        if counts[RecipientStatus.DELIVERED] == 100:
            break
        await asyncio.sleep(0.05)
    d.stopping.set()
    await asyncio.wait_for(task, 10)
    assert (await world.store.status_counts())[RecipientStatus.DELIVERED] == 100
    assert len(world.script.received) == 100
    assert world.script.max_open <= 2
    # one connection per claim of up to 10, reused for every message in it
    assert world.script.connections < 20


async def test_mx_on_loopback_refused_unless_allowed(world: World) -> None:
    mid = await world.queue("a@example.test")
    await world.run_until_idle(world.deliverer(allow_private_networks=[]))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.BOUNCED and r.last_reply is not None
    assert r.last_reply.enhanced == "5.4.4"
    assert world.script.connections == 0


async def test_null_mx_and_nxdomain_bounce_servfail_defers(world: World) -> None:
    world.zone.add("nullmx.test", "MX", (0, "."))
    world.zone.servfail.add("broken.test")
    mid = await world.queue("a@nullmx.test", "b@nowhere.test", "c@broken.test")
    await world.run_until_idle(world.deliverer())
    by = {r.address: r for r in await world.store.recipients(mid)}
    assert by["a@nullmx.test"].status is RecipientStatus.BOUNCED
    assert by["a@nullmx.test"].last_reply.enhanced == "5.1.10"  # type: ignore[union-attr]
    assert by["b@nowhere.test"].status is RecipientStatus.BOUNCED
    assert by["c@broken.test"].status is RecipientStatus.DEFERRED
    assert world.script.connections <= 1  # only the DSN went out


async def test_implicit_mx_uses_the_domains_address(world: World) -> None:
    world.zone.add("nomx.test", "A", "127.0.0.1")
    mid = await world.queue("a@nomx.test")
    await world.run_until_idle(world.deliverer())
    assert await statuses(world, mid) == {"a@nomx.test": RecipientStatus.DELIVERED}


async def test_452_sends_the_rest_in_another_transaction(world: World) -> None:
    world.script.rcpt_limit = 2
    mid = await world.queue(*(f"u{i}@example.test" for i in range(5)))
    await world.run_until_idle(world.deliverer())
    assert set((await statuses(world, mid)).values()) == {RecipientStatus.DELIVERED}
    assert [len(x.recipients) for x in world.script.received] == [2, 2, 1]


async def test_data_rejection_bounces_all_accepted(world: World) -> None:
    mid = await world.queue("datafail@example.test", "ok2@example.test")
    await world.run_until_idle(world.deliverer())
    assert set((await statuses(world, mid)).values()) == {RecipientStatus.BOUNCED}


async def test_mail_loop_bounces(world: World) -> None:
    raw = b"Received: from x\r\n" * 60 + b"Subject: loop\r\n\r\nx\r\n"
    mid = await world.queue("a@example.test", raw=raw, sender="")
    await world.run_until_idle(world.deliverer())
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.BOUNCED and r.last_reply.enhanced == "5.4.6"  # type: ignore[union-attr]


async def test_received_lines_quoted_in_the_body_are_no_loop(world: World) -> None:
    """Only the header's Received fields count as hops: a body quoting many (a forwarded
    bounce, a mail log) is delivered."""
    quoted = b"Received: from x\r\n" * 60
    raw = b"Received: from y\r\nSubject: log\r\n\r\n" + quoted + b"\r\n" + quoted
    mid = await world.queue("a@example.test", raw=raw, sender="")
    await world.run_until_idle(world.deliverer())
    assert await statuses(world, mid) == {"a@example.test": RecipientStatus.DELIVERED}


async def test_required_tls_when_not_offered_defers(world: World) -> None:
    mid = await world.queue("a@example.test")
    await world.run_until_idle(world.deliverer(tls="required"))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and r.last_reply is not None
    assert r.last_reply.enhanced == "4.7.5" and world.script.received == []


async def test_smarthost_takes_all_mail_without_dns(world: World) -> None:
    mid = await world.queue("anyone@unresolvable.invalid")
    d = world.deliverer(
        smarthost=f"127.0.0.1:{world.sink_port}", smarthost_tls="none", resolver="127.0.0.1:9"
    )  # a dead resolver: never asked
    await world.run_until_idle(d)
    assert await statuses(world, mid) == {"anyone@unresolvable.invalid": RecipientStatus.DELIVERED}


async def test_smarthost_auth_only_over_tls(world: World) -> None:
    mid = await world.queue("anyone@example.test")
    d = world.deliverer(
        smarthost=f"127.0.0.1:{world.sink_port}",
        smarthost_tls="none",
        smarthost_username="u",
        smarthost_password="p",
    )
    await world.run_until_idle(d)
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and r.last_reply is not None
    assert "without TLS" in r.last_reply.text and world.script.received == []


async def test_domain_rate_spaces_messages(world: World) -> None:
    import time

    world.clock.now = time.time()  # the pacer sleeps in real time
    for i in range(5):
        await world.queue(f"r{i}@example.test")
    started = time.monotonic()
    d = world.deliverer(domain_rate=10)  # 10 per second: 5 messages take >= 0.4 s
    await world.run_until_idle(d)
    assert time.monotonic() - started >= 0.35
    assert (await world.store.status_counts())[RecipientStatus.DELIVERED] == 5


async def test_host_connection_cap(world: World) -> None:
    for i in range(40):
        await world.queue(f"h{i}@example.test")
    d = world.deliverer(
        concurrency=8, max_connections_per_domain=8, max_connections_per_host=1, claim_batch=5
    )
    task = asyncio.create_task(d.run())
    for _ in range(200):
        if (await world.store.status_counts())[RecipientStatus.DELIVERED] == 40:
            break
        await asyncio.sleep(0.05)
    d.stopping.set()
    await asyncio.wait_for(task, 10)
    assert world.script.max_open == 1


async def test_552_mailbox_full_bounces_and_451_at_data_defers(world: World) -> None:
    full = await world.queue("full@example.test", source=Source.HTTP)
    later = await world.queue("datatemp@example.test", source=Source.HTTP)
    await world.run_until_idle(world.deliverer())
    [r] = await world.store.recipients(full)
    assert r.status is RecipientStatus.BOUNCED and r.last_reply is not None
    assert (r.last_reply.code, r.last_reply.enhanced) == (552, "5.2.2")
    [r] = await world.store.recipients(later)
    assert r.status is RecipientStatus.DEFERRED and r.last_reply is not None
    assert (r.last_reply.code, r.last_reply.enhanced) == (451, "4.3.0")
    assert world.script.received == []
