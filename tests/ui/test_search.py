"""The dashboard's message search (Store.search_messages) on every backend: each filter,
cursor paging, and a page that runs out of budget saying how far it looked."""

from __future__ import annotations

import time

from mailgate.models import MessageQuery, NewMessage, RecipientStatus, Source
from mailgate.store import Store

RAW = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
T0 = time.time() - 3600


def message(n: int, *rcpts: str, **kw: object) -> NewMessage:
    return NewMessage(
        raw=RAW,
        sender=str(kw.pop("sender", "app@example.org")),
        recipients=rcpts or (f"user{n}@example.com",),
        source=Source.HTTP,
        created_at=T0 + n,  # ids in the order of n
        **kw,  # type: ignore[arg-type]
    )


async def ids(store: Store, budget: int = 10_000, **filters: object) -> list[str]:
    page = await store.search_messages(MessageQuery(**filters), budget)  # type: ignore[arg-type]
    return [m.id for m in page.messages]


async def test_each_filter_finds_its_messages_newest_first(store: Store) -> None:
    ms = [
        message(0, "alice@example.com", subject="Invoice 1", tags=("billing",)),
        message(1, "bob@example.com", subject="Welcome Bob", sender="hello@example.org"),
        message(2, "alice@example.com", "bob@example.com", subject="INVOICE 2"),
        message(3, "carol@example.com", subject="100% off_today", tags=("billing", "promo")),
    ]
    for m in ms:
        await store.enqueue(m)
    await store.cancel(ms[1].id, time.time())
    m0, m1, m2, m3 = (m.id for m in ms)
    assert await ids(store) == [m3, m2, m1, m0]
    assert await ids(store, recipient="alice@example.com") == [m2, m0]
    assert await ids(store, recipient="nobody@example.com") == []
    assert await ids(store, sender="hello@example.org") == [m1]
    assert await ids(store, subject="invoice") == [m2, m0]  # any case
    assert await ids(store, subject="100% off_") == [m3]  # % and _ are literal
    assert await ids(store, subject="1%") == []
    assert await ids(store, tag="billing") == [m3, m0]
    assert await ids(store, tag="billing", recipient="carol@example.com") == [m3]
    assert await ids(store, status=RecipientStatus.CANCELLED) == [m1]
    assert await ids(store, status=RecipientStatus.QUEUED, recipient="bob@example.com") == [m2]
    assert await ids(store, since=T0 + 1, until=T0 + 3) == [m2, m1]
    assert await ids(store, recipient="alice@example.com", since=T0 + 1) == [m2]


async def test_pages_follow_the_cursor_to_the_end(store: Store) -> None:
    ms = [message(n, "same@example.com") for n in range(7)]
    for m in ms:
        await store.enqueue(m)
    newest_first = [m.id for m in reversed(ms)]
    for filters in ({}, {"recipient": "same@example.com"}, {"sender": "app@example.org"}):
        seen: list[str] = []
        cursor = None
        while True:
            query = MessageQuery(limit=3, cursor=cursor, **filters)  # type: ignore[arg-type]
            page = await store.search_messages(query, 10_000)
            seen += [m.id for m in page.messages]
            if page.next_cursor is None:
                break
            assert page.searched_to is None
            cursor = page.next_cursor
        assert seen == newest_first, filters


async def test_a_rare_match_past_the_budget_is_reached_page_by_page(store: Store) -> None:
    rare = message(0, "x@example.com", subject="the needle")
    await store.enqueue(rare)
    for n in range(1, 400):
        await store.enqueue(message(n, "y@example.com", subject="hay"))
    page = await store.search_messages(MessageQuery(subject="needle"), 150)
    assert page.messages == []
    assert page.searched_to is not None and page.next_cursor == page.searched_to
    found: list[str] = []
    pages = 1
    while page.next_cursor is not None and not found:
        page = await store.search_messages(
            MessageQuery(subject="needle", cursor=page.next_cursor), 150
        )
        found = [m.id for m in page.messages]
        pages += 1
    assert found == [rare.id]
    assert 2 <= pages <= 4  # about 150 candidates a page, 400 messages


async def test_the_queue_by_route_and_one_routes_waiting_recipients(store: Store) -> None:
    a, b = message(0, "p@slow.test", "q@slow.test"), message(1, "r@slow.test", "s@fast.test")
    for m in (a, b):
        await store.enqueue(m)
    waiting = await store.waiting_at("slow.test", 10)
    assert sorted(r.address for r in waiting) == ["p@slow.test", "q@slow.test", "r@slow.test"]
    assert await store.waiting_routes(10) == [("slow.test", 3), ("fast.test", 1)]
    await store.cancel(a.id, time.time())
    assert await store.waiting_routes(1) == [("fast.test", 1)]  # then "slow.test", 1
    assert [r.address for r in await store.waiting_at("slow.test", 10)] == ["r@slow.test"]
    assert [r.address for r in await store.waiting_at("fast.test", 10)] == ["s@fast.test"]
    assert await store.waiting_at("nowhere.test", 10) == []


async def test_the_overviews_counts_by_event_ids(store: Store) -> None:
    before = T0 - 1  # the accepted events are at the messages' times
    for n in range(3):
        await store.enqueue(message(n, f"o{n}@slow.test"))
    after = time.time() + 1
    start, end, future = await store.event_ids_at([before, after, after + 3600])
    assert end == future and end > start  # nothing after now: the same bound
    [counts, none] = await store.event_counts([(start, end), (end, future)])
    assert counts == {"accepted": 3} and none == {}
    assert (await store.event_ids_at([0.0]))[0] <= start
    assert await store.waiting_count() == 3
    assert await store.latest_deferrals(["slow.test", "nowhere.test"]) == {}  # none deferred
