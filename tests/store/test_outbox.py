"""The event outbox, on both stores: a bounce and its DSN commit together, events carry
their owner, and the events cursor never skips one."""

from __future__ import annotations

import time

import pytest

from mailgate.errors import StoreError
from mailgate.models import (
    EventKind,
    MessageQuery,
    NewMessage,
    RecipientStatus,
    Reply,
    Settlement,
    Source,
)
from mailgate.store import Dsn, Store
from tests.store.test_contract import message

BOUNCE = Reply(550, "5.1.1", "no such user")


def dsn_for(sender: str, *recipient_ids: int, **kw: object) -> Dsn:
    notice = NewMessage(
        raw=b"Subject: Undelivered Mail\r\n\r\nsorry\r\n",
        sender="",
        recipients=(sender,),
        source=Source.DSN,
        **kw,  # type: ignore[arg-type]
    )
    return Dsn(notice, recipient_ids)


async def dsns_to(store: Store, address: str) -> list[str]:
    found = await store.list_messages(MessageQuery(recipient=address, limit=100))
    return [m.id for m in found if m.source is Source.DSN]


async def test_bounce_and_its_dsn_commit_together(store: Store) -> None:
    now = time.time()
    m = message("gone@x.test", "fine@x.test", created_at=now - 1)
    await store.enqueue(m)
    claim = await store.claim("w", now, 10, 60)
    assert claim is not None
    gone, fine = claim.recipients
    notice = dsn_for(m.sender, gone.id)
    settled = await store.settle(
        "w",
        [
            Settlement(gone.id, RecipientStatus.BOUNCED, BOUNCE),
            Settlement(fine.id, RecipientStatus.DELIVERED, Reply(250, None, "ok")),
        ],
        [notice],
    )
    assert settled == 2
    assert await dsns_to(store, m.sender) == [notice.message.id]
    assert [r.status for r in await store.recipients(notice.message.id)] == [RecipientStatus.QUEUED]
    assert [e.kind for e in await store.events(notice.message.id)] == [EventKind.ACCEPTED]
    later = await store.claim("w2", now + 1, 10, 60)  # the DSN is claimable like any mail
    assert later is not None and later.recipients[0].message_id == notice.message.id


async def test_a_dsn_that_cannot_be_written_leaves_the_bounce_unsettled(store: Store) -> None:
    now = time.time()
    m = message("gone@x.test", created_at=now - 1)
    await store.enqueue(m)
    claim = await store.claim("w", now, 10, 60)
    assert claim is not None
    rid = claim.recipients[0].id
    clash = dsn_for(m.sender, rid, id=m.id)  # its id is taken: the insert fails
    with pytest.raises(StoreError):
        await store.settle("w", [Settlement(rid, RecipientStatus.BOUNCED, BOUNCE)], [clash])
    (r,) = await store.recipients(m.id)
    assert (r.status, r.attempts, r.lease_owner) == (RecipientStatus.QUEUED, 0, "w")
    assert [e.kind for e in await store.events(m.id)] == [EventKind.ACCEPTED]
    # the lease still holds, so the same worker settles it once the DSN is sound
    good = dsn_for(m.sender, rid)
    assert await store.settle("w", [Settlement(rid, RecipientStatus.BOUNCED, BOUNCE)], [good]) == 1
    assert await dsns_to(store, m.sender) == [good.message.id]


async def test_a_fenced_out_bounce_queues_no_dsn(store: Store) -> None:
    now = time.time()
    m = message("gone@x.test", "also@x.test", created_at=now - 1)
    await store.enqueue(m)
    first = await store.claim("dead-worker", now, 10, 30)
    assert first is not None
    a, b = first.recipients
    second = await store.claim("w2", now + 31, 1, 30)  # takes one of the two over
    assert second is not None
    taken = second.recipients[0].id
    kept = b.id if taken == a.id else a.id
    bounces = [Settlement(r.id, RecipientStatus.BOUNCED, BOUNCE) for r in (a, b)]
    # one DSN naming both: a recipient is fenced out, so the DSN is not queued
    both = dsn_for(m.sender, a.id, b.id)
    assert await store.settle("dead-worker", bounces, [both]) == 1
    assert await dsns_to(store, m.sender) == []
    # the new owner settles its recipient and queues the DSN that reports it
    mine = dsn_for(m.sender, taken)
    fenced = dsn_for(m.sender, kept)  # not its lease: fenced, so not queued either
    assert (
        await store.settle(
            "w2",
            [
                Settlement(taken, RecipientStatus.BOUNCED, BOUNCE),
                Settlement(kept, RecipientStatus.BOUNCED, BOUNCE),
            ],
            [mine, fenced],
        )
        == 1
    )
    assert await dsns_to(store, m.sender) == [mine.message.id]


async def test_every_event_carries_the_key_that_owns_its_message(store: Store) -> None:
    now = time.time()
    bounced = message("gone@x.test", "later@x.test", api_key_id="K", created_at=now - 1)
    cancelled = message("c@y.test", api_key_id="K", created_at=now - 1)
    keyless = message("n@z.test", created_at=now - 1)
    await store.enqueue(bounced)
    first = await store.claim("dead-worker", now, 10, 30)
    assert first is not None
    again = await store.claim("w", now + 31, 10, 30)  # lease_expired for both
    assert again is not None
    for m in (cancelled, keyless):
        await store.enqueue(m)
    gone, later = again.recipients
    notice = dsn_for(bounced.sender, gone.id)
    await store.settle(
        "w",
        [
            Settlement(gone.id, RecipientStatus.BOUNCED, BOUNCE),
            Settlement(
                later.id, RecipientStatus.DEFERRED, Reply(451, None, "busy"), None, now + 60
            ),
        ],
        [notice],
    )
    assert await store.retry_now(bounced.id, now + 32) == 1
    assert await store.cancel(cancelled.id, now + 33) == 1
    events = await store.events(bounced.id) + await store.events(cancelled.id)
    kinds = "accepted lease_expired lease_expired bounced deferred retry_now accepted cancelled"
    assert sorted(e.kind for e in events) == sorted(EventKind(k) for k in kinds.split())
    assert {e.api_key_id for e in events} == {"K"}
    assert [e.api_key_id for e in await store.events(keyless.id)] == [None]
    assert [e.api_key_id for e in await store.events(notice.message.id)] == [None]
    # details have their kind's fixed keys
    by_kind = {e.kind: e.details for e in events}
    assert by_kind[EventKind.ACCEPTED] == {
        "recipients": 1,
        "size": len(cancelled.raw),
        "source": "http",
    }
    assert by_kind[EventKind.LEASE_EXPIRED] == {"previous_owner": "dead-worker"}
    assert by_kind[EventKind.BOUNCED] == {
        "attempt": 1,
        "code": 550,
        "enhanced": "5.1.1",
        "text": "no such user",
    }
    assert by_kind[EventKind.DEFERRED] == {
        "attempt": 1,
        "code": 451,
        "enhanced": None,
        "text": "busy",
        "next_attempt_at": pytest.approx(now + 60),
    }
    assert by_kind[EventKind.CANCELLED] == by_kind[EventKind.RETRY_NOW] == {}


async def test_events_since_pages_through_the_outbox_in_order(store: Store) -> None:
    now = time.time()
    mine = [message(f"r{i}@x.test", api_key_id="K", created_at=now - 1) for i in range(3)]
    theirs = message("o@y.test", api_key_id="L", created_at=now - 1)
    for m in (mine[0], theirs, mine[1], mine[2]):
        await store.enqueue(m)
    claim = await store.claim("w", now, 10, 60)
    assert claim is not None
    await store.settle(
        "w",
        [
            Settlement(r.id, RecipientStatus.DELIVERED, Reply(250, None, "ok"))
            for r in claim.recipients
        ],
    )
    everything: list[tuple[str, EventKind]] = []
    cursor = None
    while True:
        page, cursor = await store.events_since(cursor, 2)
        assert len(page) <= 2
        if not page:
            break
        everything += [(e.message_id, e.kind) for e in page]
    accepted = [(m.id, EventKind.ACCEPTED) for m in (mine[0], theirs, mine[1], mine[2])]
    assert everything[:4] == accepted
    assert sorted(everything[4:]) == sorted(
        (r.message_id, EventKind.DELIVERED) for r in claim.recipients
    )
    assert await store.events_since(cursor, 10) == ([], cursor)  # nothing new: same cursor
    await store.cancel(theirs.id, now)
    page, after = await store.events_since(cursor, 10)
    assert [(e.message_id, e.kind) for e in page] == [(theirs.id, EventKind.CANCELLED)]
    assert after != cursor
    keyed, _ = await store.events_since(None, 100, api_key_id="K")
    assert {e.message_id for e in keyed} == {m.id for m in mine}
    assert {e.api_key_id for e in keyed} == {"K"}
