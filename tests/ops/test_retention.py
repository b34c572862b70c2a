"""Retention's purge on every backend, through the real store and the Retention
component with an injected clock: bodies, then rows and events, go after their cutoffs;
active messages (a deferred recipient, a queued one) are never touched."""

from __future__ import annotations

import time

from mailgate.config import RetentionConfig
from mailgate.models import (
    Idempotency,
    MessageQuery,
    NewMessage,
    RecipientStatus,
    Reply,
    Settlement,
    Source,
)
from mailgate.retention import BATCH_BUDGET, DAY, Batches, Retention
from mailgate.store import Store

RAW = b"From: a@example.org\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody\r\n"
BIG = b"From: a@example.org\r\nTo: b@x.test\r\nSubject: big\r\n\r\n" + b"y" * 100_000


def message(*rcpts: str, raw: bytes = RAW, **kw: object) -> NewMessage:
    return NewMessage(
        raw=raw,
        sender="a@example.org",
        recipients=rcpts or ("b@x.test",),
        source=Source.HTTP,
        **kw,  # type: ignore[arg-type]
    )


def purger(store: Store, at: float) -> Retention:
    config = RetentionConfig(body_days=30, message_days=90, interval=60, batch_size=2)
    return Retention(store, config, clock=lambda: at, pause=0)


async def test_bodies_then_rows_go_after_their_cutoffs_active_mail_stays(store: Store) -> None:
    t0 = time.time()
    done = message("d@x.test", "b@x.test", tags=("news", "weekly"))  # delivered + bounced
    big = message(raw=BIG)  # SQLite keeps it in a body segment
    deferred = message("late@x.test")  # one recipient still deferred: never purged
    cancelled = message("c@x.test", "c2@x.test")
    keyed = message(idempotency=Idempotency("k1", "hash", "{}", t0 + 60), api_key_id="key")
    for m in (done, big, deferred, cancelled, keyed):
        await store.enqueue(m)
    claim = await store.claim("w1", time.time() + 1, 100, 600)
    assert claim is not None
    by_address = {r.address: r for r in claim.recipients}
    ok, gone = Reply(250, "2.0.0", "ok"), Reply(550, "5.1.1", "no such user")
    outcomes = [
        Settlement(by_address["d@x.test"].id, RecipientStatus.DELIVERED, ok),
        Settlement(by_address["late@x.test"].id, RecipientStatus.DEFERRED, None, None, t0 + 3600),
    ]
    outcomes += [
        Settlement(r.id, RecipientStatus.BOUNCED, gone)
        for r in claim.recipients
        if r.message_id in (done.id, big.id, keyed.id) and r.address == "b@x.test"
    ]
    await store.settle("w1", outcomes)
    await store.release("w1", [r.id for r in claim.recipients if r.message_id == cancelled.id], t0)
    assert await store.cancel(cancelled.id, t0) == 2
    queued = message("q@x.test")  # last: it owns the newest event and recipient
    await store.enqueue(queued)
    finished = (done, big, cancelled, keyed)

    # a day on: nothing is old enough
    first = await purger(store, t0 + DAY).run_once()
    assert (first.bodies, first.messages) == (0, 0)
    assert first.idempotency == 1  # expired after a minute
    assert await store.get_raw(big.id) == BIG

    # past the body cutoff: the finished messages' bodies go, their rows and events stay
    second = await purger(store, t0 + 31 * DAY).run_once()
    assert second.bodies == len(finished)
    for m in finished:
        assert await store.get_raw(m.id) is None
        assert await store.get_message(m.id) is not None
        assert len(await store.events(m.id)) >= 2
    got = await store.recipients(done.id)
    assert {r.status for r in got} == {RecipientStatus.DELIVERED, RecipientStatus.BOUNCED}
    for m in (deferred, queued):
        assert await store.get_raw(m.id) == RAW

    # past the rows' cutoff: the finished messages are gone, with everything of theirs
    third = await purger(store, t0 + 91 * DAY).run_once()
    assert third.messages == len(finished)
    for m in finished:
        assert await store.get_message(m.id) is None
        assert await store.recipients(m.id) == []
        assert await store.events(m.id) == []
    for m in (deferred, queued):  # active: untouched, however old
        assert await store.get_raw(m.id) == RAW
        assert await store.get_message(m.id) is not None
    [late] = await store.recipients(deferred.id)
    assert late.status is RecipientStatus.DEFERRED
    # the tag index went with them (a listing by tag finds nothing)
    assert await store.list_messages(MessageQuery(tag="news")) == []
    # and a later round has nothing left to do
    assert not await purger(store, t0 + 92 * DAY).run_once()


async def test_the_message_with_the_newest_event_is_kept_until_a_newer_one_comes(
    store: Store,
) -> None:
    """SQLite would hand the newest event's id out again were it deleted (an events
    cursor past it would then skip new events): its message waits for the next."""
    t0 = time.time()
    first = message()
    await store.enqueue(first)
    await store.cancel(first.id, t0)
    purge = purger(store, t0 + 91 * DAY)
    assert (await purge.run_once()).messages == 0
    assert await store.get_message(first.id) is not None
    later = message()
    await store.enqueue(later)
    assert (await purge.run_once()).messages == 1
    assert await store.get_message(first.id) is None
    events, _ = await store.events_since(None, 100)
    assert [e.message_id for e in events] == [later.id]


async def test_zero_keeps_for_ever(store: Store) -> None:
    t0 = time.time()
    m = message()
    await store.enqueue(m)
    await store.cancel(m.id, t0)
    await store.enqueue(message())  # owns the newest event
    config = RetentionConfig(body_days=0, message_days=0, webhook_days=0)
    assert not await Retention(store, config, clock=lambda: t0 + 1000 * DAY).run_once()
    assert await store.get_raw(m.id) == RAW


async def test_a_dry_run_counts_what_the_round_then_purges(store: Store) -> None:
    """`mailgate purge --dry-run`: the same counts, nothing changed; a body past its cutoff
    is counted only when its message stays (rows go before bodies)."""
    t0 = time.time()
    finished = [message(created_at=t0 - (100 + i) * DAY) for i in range(3)]
    aging = message(created_at=t0 - 40 * DAY)
    live = message(created_at=t0 - 200 * DAY)
    keyed = message(idempotency=Idempotency("k1", "hash", "{}", t0 - 1), api_key_id="key")
    for m in (*finished, aging, live, keyed):
        await store.enqueue(m)
    for m in (*finished, aging):
        await store.cancel(m.id, m.created_at)  # finished when it was created
    await store.enqueue(message())  # owns the newest event
    config = RetentionConfig(body_days=30, message_days=90, batch_size=2)

    found = await Retention(store, config, clock=lambda: t0).dry_run()
    assert (found.messages, found.bodies, found.idempotency) == (3, 1, 1)
    assert await store.get_message(finished[0].id) is not None

    done = await Retention(store, config, clock=lambda: t0, pause=0).run_once()
    assert (done.messages, done.bodies, done.idempotency) == (3, 1, 1)
    assert await store.get_raw(live.id) == RAW


def test_a_backlog_grows_the_batch_while_each_stays_short() -> None:
    """Doubling under half the budget, halving over it, between batch_size and 8x."""
    size, sizes = Batches(500), []
    for seconds in (0.01, 0.01, 0.01, 0.01, 0.05, 0.03, 0.05, 0.05, 0.05):
        size.took(seconds)
        sizes.append(size.size)
    assert BATCH_BUDGET == 0.04
    assert sizes == [1000, 2000, 4000, 4000, 2000, 2000, 1000, 500, 500]
