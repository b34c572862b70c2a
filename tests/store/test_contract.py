"""The store contract: every test runs against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time

import asyncpg
import pytest

from mailgate.errors import DuplicateIdempotencyKey
from mailgate.models import (
    EventKind,
    Idempotency,
    MessageQuery,
    NewMessage,
    RecipientStatus,
    Reply,
    Scope,
    Settlement,
    Source,
)
from mailgate.store import Store

RAW = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def message(*rcpts: str, **kw: object) -> NewMessage:
    return NewMessage(
        raw=kw.pop("raw", RAW),  # type: ignore[arg-type]
        sender="a@example.org",
        recipients=rcpts or ("b@example.com",),
        source=Source.HTTP,
        **kw,  # type: ignore[arg-type]
    )


async def test_enqueue_stores_message_recipients_and_accepted_event(store: Store) -> None:
    m = message("x@one.test", "y@two.test", tags=("t1",), metadata={"k": "v"})
    assert await store.enqueue(m) == m.id
    got = await store.get_message(m.id)
    assert got is not None
    assert (got.sender, got.source, got.tags, got.metadata, got.size) == (
        "a@example.org",
        Source.HTTP,
        ("t1",),
        {"k": "v"},
        len(RAW),
    )
    assert await store.get_raw(m.id) == RAW
    rcpts = await store.recipients(m.id)
    assert [(r.address, r.domain, r.status) for r in rcpts] == [
        ("x@one.test", "one.test", RecipientStatus.QUEUED),
        ("y@two.test", "two.test", RecipientStatus.QUEUED),
    ]
    events = await store.events(m.id)
    assert [e.kind for e in events] == [EventKind.ACCEPTED]
    assert events[0].details["recipients"] == 2


async def test_concurrent_enqueues_all_commit(store: Store) -> None:
    msgs = [message(f"r{i}@d{i % 3}.test") for i in range(300)]
    ids = await asyncio.gather(*(store.enqueue(m) for m in msgs))
    assert ids == [m.id for m in msgs]
    counts = await store.status_counts()
    assert counts[RecipientStatus.QUEUED] == 300


async def test_raw_bytes_are_kept_exactly(store: Store) -> None:
    raw = bytes(range(256)) * 40 + b"\r\n.\r\n\x00"
    m = message(raw=raw)
    await store.enqueue(m)
    assert await store.get_raw(m.id) == raw


async def test_enqueue_many_is_one_transaction(store: Store) -> None:
    first = message("a@x.test", idempotency=Idempotency("k1", "h", "{}", time.time() + 60))
    await store.enqueue(first)
    batch = [
        message("b@x.test"),
        message("c@x.test", idempotency=Idempotency("k1", "h2", "{}", time.time() + 60)),
    ]
    with pytest.raises(DuplicateIdempotencyKey):
        await store.enqueue_many(batch)
    assert await store.get_message(batch[0].id) is None  # nothing half-written
    ok = [message("d@x.test"), message("e@x.test")]
    assert await store.enqueue_many(ok) == [m.id for m in ok]


async def test_idempotency_key_replays_until_expiry(store: Store) -> None:
    now = time.time()
    a = message(api_key_id="K", idempotency=Idempotency("key", "hash-a", '{"id":1}', now + 60))
    await store.enqueue(a)
    b = message(api_key_id="K", idempotency=Idempotency("key", "hash-b", '{"id":2}', now + 60))
    with pytest.raises(DuplicateIdempotencyKey) as info:
        await store.enqueue(b)
    assert info.value.message_id == a.id
    assert await store.idempotent_response("K", "key") == ("hash-a", '{"id":1}')
    other_key = message(api_key_id="L", idempotency=Idempotency("key", "x", "{}", now + 60))
    assert await store.enqueue(other_key) == other_key.id  # keys are per API key
    # an expired entry is taken over by a new request
    c = message(
        api_key_id="K", idempotency=Idempotency("old", "h", "{}", now - 1), created_at=now - 120
    )
    await store.enqueue(c)
    d = message(api_key_id="K", idempotency=Idempotency("old", "h2", "{}", now + 60))
    assert await store.enqueue(d) == d.id


async def test_claim_groups_by_domain_and_leases(store: Store) -> None:
    now = time.time()
    for i in range(5):
        await store.enqueue(message(f"u{i}@alpha.test", f"v{i}@beta.test", created_at=now - 10))
    claim = await store.claim("w1", now, 100, 60)
    assert claim is not None
    assert {r.domain for r in claim.recipients} == {claim.domain}
    assert len(claim.recipients) == 5
    other = await store.claim("w2", now, 100, 60)
    assert other is not None and other.domain != claim.domain
    assert await store.claim("w3", now, 100, 60) is None  # everything is leased


async def test_claim_skips_future_and_scheduled(store: Store) -> None:
    now = time.time()
    await store.enqueue(message("later@x.test", scheduled_at=now + 3600))
    assert await store.claim("w", now, 10, 60) is None
    claim = await store.claim("w", now + 3601, 10, 60)
    assert claim is not None and claim.recipients[0].address == "later@x.test"


async def test_expired_lease_is_claimed_again_and_stale_owner_is_fenced(store: Store) -> None:
    now = time.time()
    m = message("r@x.test", created_at=now - 1)
    await store.enqueue(m)
    first = await store.claim("dead-worker", now, 10, 30)
    assert first is not None
    assert await store.claim("w2", now + 29, 10, 30) is None
    second = await store.claim("w2", now + 31, 10, 30)
    assert second is not None and second.recipients[0].id == first.recipients[0].id
    rid = first.recipients[0].id
    stale = Settlement(rid, RecipientStatus.DELIVERED, Reply(250, "2.0.0", "ok"))
    assert await store.settle("dead-worker", [stale]) == 0  # lease moved on
    assert await store.settle("w2", [stale]) == 1
    kinds = [e.kind for e in await store.events(m.id)]
    assert kinds == [EventKind.ACCEPTED, EventKind.LEASE_EXPIRED, EventKind.DELIVERED]


async def test_settle_records_each_outcome_with_its_event(store: Store) -> None:
    now = time.time()
    m = message("a@x.test", "b@x.test", "c@x.test", "d@x.test", created_at=now - 1)
    await store.enqueue(m)
    claim = await store.claim("w", now, 10, 60)
    assert claim is not None
    a, b, c, d = claim.recipients
    n = await store.settle(
        "w",
        [
            Settlement(a.id, RecipientStatus.DELIVERED, Reply(250, "2.0.0", "ok"), "mx.x.test"),
            Settlement(
                b.id,
                RecipientStatus.DEFERRED,
                Reply(451, "4.3.0", "later"),
                "mx.x.test",
                next_attempt_at=now + 300,
            ),
            Settlement(c.id, RecipientStatus.BOUNCED, Reply(550, "5.1.1", "no such user")),
            Settlement(d.id, RecipientStatus.EXPIRED, Reply(451, "4.4.7", "too old")),
        ],
    )
    assert n == 4
    by_addr = {r.address: r for r in await store.recipients(m.id)}
    assert by_addr["a@x.test"].status is RecipientStatus.DELIVERED
    assert by_addr["a@x.test"].remote_host == "mx.x.test"
    assert by_addr["b@x.test"].status is RecipientStatus.DEFERRED
    assert by_addr["b@x.test"].next_attempt_at == pytest.approx(now + 300)
    assert by_addr["b@x.test"].last_reply == Reply(451, "4.3.0", "later")
    assert by_addr["c@x.test"].status is RecipientStatus.BOUNCED
    assert by_addr["d@x.test"].status is RecipientStatus.EXPIRED
    assert all(r.attempts == 1 for r in by_addr.values())
    kinds = sorted(e.kind for e in await store.events(m.id))
    assert kinds == sorted(
        [
            EventKind.ACCEPTED,
            EventKind.DELIVERED,
            EventKind.DEFERRED,
            EventKind.BOUNCED,
            EventKind.EXPIRED,
        ]
    )
    # deferred comes back when due; final ones never do
    again = await store.claim("w", now + 301, 10, 60)
    assert again is not None and [r.address for r in again.recipients] == ["b@x.test"]


async def test_release_makes_work_due_without_an_attempt(store: Store) -> None:
    now = time.time()
    m = message("a@x.test", created_at=now - 1)
    await store.enqueue(m)
    claim = await store.claim("w", now, 10, 600)
    assert claim is not None
    assert await store.release("w", [r.id for r in claim.recipients], now) == 1
    again = await store.claim("w2", now, 10, 600)
    assert again is not None and again.recipients[0].attempts == 0


async def test_recover_leases_of_a_dead_worker_only(store: Store) -> None:
    now = time.time()
    await store.enqueue(message("a@x.test", created_at=now - 1))
    await store.enqueue(message("b@y.test", created_at=now - 1))
    dead = await store.claim("node:41:aa", now, 10, 600)
    alive = await store.claim("node:4:bb", now, 10, 600)
    assert dead is not None and alive is not None
    assert await store.recover_leases("node:41:", now + 1) == 1
    again = await store.claim("node:5:cc", now + 1, 10, 600)
    assert again is not None and len(again.recipients) == 1
    assert again.domain == dead.domain and again.recipients[0].lease_owner == "node:41:aa"
    kinds = [e.kind for e in await store.events(again.recipients[0].message_id)]
    assert EventKind.LEASE_EXPIRED in kinds
    assert await store.claim("node:6:dd", now + 1, 10, 600) is None  # alive's lease holds


async def test_cancel_and_retry_now(store: Store) -> None:
    now = time.time()
    m = message("a@x.test", "b@x.test", scheduled_at=now + 999)
    await store.enqueue(m)
    assert await store.retry_now(m.id, now) == 2
    claim = await store.claim("w", now, 10, 60)
    assert claim is not None and len(claim.recipients) == 2
    m2 = message("c@y.test", scheduled_at=now + 999)
    await store.enqueue(m2)
    assert await store.cancel(m2.id, now) == 1
    assert (await store.recipients(m2.id))[0].status is RecipientStatus.CANCELLED
    assert await store.cancel(m2.id, now) == 0
    assert [e.kind for e in await store.events(m2.id)][-1] is EventKind.CANCELLED


async def test_list_messages_filters_and_cursor(store: Store) -> None:
    now = time.time()
    ids = []
    for i in range(7):
        m = message(
            f"r{i}@x.test",
            tags=("even",) if i % 2 == 0 else ("odd",),
            api_key_id="K1" if i < 5 else "K2",
            created_at=now + i,
        )
        await store.enqueue(m)
        ids.append(m.id)
    page1 = await store.list_messages(MessageQuery(limit=3))
    assert [m.id for m in page1] == ids[::-1][:3]
    page2 = await store.list_messages(MessageQuery(limit=3, cursor=page1[-1].id))
    assert [m.id for m in page2] == ids[::-1][3:6]
    assert {m.id for m in await store.list_messages(MessageQuery(tag="odd"))} == {
        ids[1],
        ids[3],
        ids[5],
    }
    assert [m.id for m in await store.list_messages(MessageQuery(recipient="r2@x.test"))] == [
        ids[2]
    ]
    assert len(await store.list_messages(MessageQuery(api_key_id="K2"))) == 2
    since = await store.list_messages(MessageQuery(since=now + 5))
    assert [m.id for m in since] == [ids[6], ids[5]]
    until = await store.list_messages(MessageQuery(until=now + 1))
    assert [m.id for m in until] == [ids[0]]
    claim = await store.claim("w", now + 100, 1, 60)
    assert claim is not None
    await store.settle(
        "w", [Settlement(claim.recipients[0].id, RecipientStatus.DELIVERED, Reply(250, None, "ok"))]
    )
    delivered = await store.list_messages(MessageQuery(status=RecipientStatus.DELIVERED))
    assert [m.id for m in delivered] == [claim.recipients[0].message_id]


async def test_api_keys_round_trip_and_revoke(store: Store) -> None:
    from mailgate import keys

    key, secret = await keys.create_key(store, "ci", [Scope.SEND], ["Example.org"])
    got = await keys.authenticate(store, secret)
    assert got is not None and got.id == key.id
    assert got.sender_domains == ("example.org",) and got.scopes == frozenset([Scope.SEND])
    assert await keys.authenticate(store, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert await keys.authenticate(store, "mg_nonsense") is None
    assert [k.id for k in await store.list_keys()] == [key.id]
    assert await store.revoke_key(key.id, time.time())
    assert await keys.authenticate(store, secret) is None
    stored = await store.get_key(key.id)
    assert stored is not None and secret not in stored[1]


async def committed_nodes(store: Store) -> dict[str, float]:
    """The nodes table as another connection sees it: only what was committed."""
    from mailgate.store.postgres import PostgresStore
    from mailgate.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        try:
            return dict(conn.execute("SELECT name, seen_at FROM nodes").fetchall())
        finally:
            conn.close()
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store.url)
    try:
        return {r[0]: r[1] for r in await pg.fetch("SELECT name, seen_at FROM nodes")}
    finally:
        await pg.close()


async def test_ping_commits(store: Store) -> None:
    before = time.time()
    await store.ping()
    first = await committed_nodes(store)
    name = f"{os.uname().nodename}:{os.getpid()}"
    assert list(first) == [name] and first[name] >= before - 1
    await store.ping()  # the same row, rewritten: a ping is a real commit each time
    second = await committed_nodes(store)
    assert list(second) == [name] and second[name] >= first[name]


async def test_wait_for_work_wakes_on_enqueue(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for_work(60))
    # Enqueue until it wakes, instead of sleeping first: a PostgreSQL listener that is
    # still connecting misses the first commit's NOTIFY, and the test must not depend on
    # how long connecting takes. Waking well before its 60 s timeout is the point.
    for _ in range(100):
        await store.enqueue(message())
        done, _ = await asyncio.wait({waiter}, timeout=0.2)
        if done:
            break
    assert waiter.done(), "wait_for_work did not wake on any of 100 enqueues"


async def test_load_returns_messages_with_bytes(store: Store) -> None:
    a, b = message("a@x.test", raw=b"A\r\n"), message("b@x.test", raw=b"B\r\n")
    await store.enqueue(a)
    await store.enqueue(b)
    loaded = await store.load([a.id, b.id, "0" * 26])
    assert {k: v[1] for k, v in loaded.items()} == {a.id: b"A\r\n", b.id: b"B\r\n"}
    assert loaded[a.id][0].sender == "a@example.org"


async def test_bodies_of_every_size_read_back_exactly(store: Store) -> None:
    """SQLite keeps bodies from 512 bytes in segment files; every size reads back."""
    sizes = [0, 1, 511, 512, 513, 4096, 100 * 1024, 1024 * 1024]
    bodies = [bytes((i * 7 + n) % 256 for i in range(n)) for n in sizes]
    together = [message(f"m{n}@x.test", raw=b) for n, b in zip(sizes, bodies, strict=True)]
    alone = [message(f"s{n}@x.test", raw=b) for n, b in zip(sizes, bodies, strict=True)]
    await store.enqueue_many(together)
    await asyncio.gather(*(store.enqueue(m) for m in alone))
    for m in together + alone:
        assert await store.get_raw(m.id) == m.raw
    loaded = await store.load([m.id for m in together + alone])
    assert {k: v[1] for k, v in loaded.items()} == {m.id: m.raw for m in together + alone}


async def test_recipient_glimpses_name_a_few_and_count_every_recipient(store: Store) -> None:
    now = time.time()
    many = message(*(f"r{i:03}@x.test" for i in range(120)), created_at=now - 1)
    one = message("solo@y.test", created_at=now - 1)
    await store.enqueue(many)
    await store.enqueue(one)
    claim = await store.claim("w", now, 5, 60)
    assert claim is not None and claim.recipients[0].message_id == many.id
    await store.settle(
        "w",
        [
            Settlement(r.id, RecipientStatus.DELIVERED, Reply(250, "2.0.0", "ok"))
            for r in claim.recipients[:2]
        ],
    )
    got = await store.recipient_glimpses([many.id, one.id, "01NOSUCHMESSAGE0000000000"], 3)
    assert [r.address for r in got[many.id].first] == ["r000@x.test", "r001@x.test", "r002@x.test"]
    counts = got[many.id].counts
    assert counts[RecipientStatus.DELIVERED] == 2 and got[many.id].total == 120
    assert sum(n for s, n in counts.items() if s is not RecipientStatus.DELIVERED) == 118
    assert [r.address for r in got[one.id].first] == ["solo@y.test"]
    assert got[one.id].counts == {RecipientStatus.QUEUED: 1}
    assert got["01NOSUCHMESSAGE0000000000"].total == 0


async def test_settle_keeps_any_reply_text_host_and_time_exactly(store: Store) -> None:
    """Outcomes go to the store as JSON rows read by the SQL: whatever a remote said (any
    Unicode, quotes, backslashes, JSON-looking text, control characters) and any time
    comes back exactly as given, on both backends."""
    rng = random.Random(20261203)
    alphabet = [
        '"',
        "\\",
        "'",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\t",
        "\x01",
        "\x7f",
        "é",
        "ß",
        "中",
        "😀",
        "\u202e",
        "\ufeff",
        "a",
        "0",
        "null",
        "\\u0041",
        "/*",
        "--",
    ]
    now = time.time()
    m = message(*(f"r{i}@x.test" for i in range(60)), created_at=now - 1)
    await store.enqueue(m)
    claim = await store.claim("w", now, 100, 60)
    assert claim is not None and len(claim.recipients) == 60
    wanted = {}
    settlements = []
    for i, r in enumerate(claim.recipients):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        host = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8))) or None
        code = rng.choice([250, 421, 451, 550, 554, 599])
        enhanced = rng.choice([None, "2.0.0", "4.7.1", "5.1.1"])
        deferred = i % 3 == 0
        status = RecipientStatus.DEFERRED if deferred else RecipientStatus.DELIVERED
        at = now + rng.uniform(0.001, 1e6) if deferred else None
        settlements.append(Settlement(r.id, status, Reply(code, enhanced, text), host, at))
        wanted[r.address] = (status, Reply(code, enhanced, text), host, at, 1)
    assert await store.settle("w", settlements) == 60
    got = {
        r.address: (r.status, r.last_reply, r.remote_host, r.next_attempt_at, r.attempts)
        for r in await store.recipients(m.id)
    }
    assert got == wanted
    events = [e for e in await store.events(m.id) if e.kind is not EventKind.ACCEPTED]
    assert sorted(e.recipient_id for e in events) == sorted(r.id for r in claim.recipients)
    assert {e.details["text"] for e in events} == {s.reply.text for s in settlements if s.reply}
