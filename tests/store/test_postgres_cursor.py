"""PostgreSQL's events cursor never skips an event that commits after a later id.

bigserial ids are handed out at insert, not at commit: transaction A may take id 10 and
commit after B took 11 and committed. A reader at "id > 11" would never see 10. The
store's cursor walks (xid, id) below the oldest running transaction instead; these tests
hold a transaction open on a second connection to make the late commit happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from mailgate.models import Event
from mailgate.store import open_store
from mailgate.store.postgres import PostgresStore

INSERT = "INSERT INTO events (message_id, kind, at, details) VALUES ($1, 'accepted', 0, '{}')"
WAIT = 60.0  # other sessions' transactions on this server may hold the horizon a while


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    await store.open()
    yield store
    await store.close()


async def until(read: Callable[[], Awaitable[list[Event]]], want: int) -> list[Event]:
    """Read until `want` events came (a condition, not a sleep of a guessed length)."""
    got: list[Event] = []
    deadline = time.monotonic() + WAIT
    while len(got) < want and time.monotonic() < deadline:
        got += await read()
        if len(got) < want:
            await asyncio.sleep(0.02)
    return got


class Reader:
    def __init__(self, store: PostgresStore) -> None:
        self.store, self.cursor = store, None

    async def read(self) -> list[Event]:
        events, self.cursor = await self.store.events_since(self.cursor, 100)  # type: ignore[assignment]
        return events


async def test_a_late_commit_with_the_smaller_id_is_not_skipped(pg: PostgresStore) -> None:
    a = await asyncpg.connect(pg.url)
    b = await asyncpg.connect(pg.url)
    reader = Reader(pg)
    try:
        ta = a.transaction()
        await ta.start()
        await a.execute(INSERT, "A")  # the smaller id; A stays open
        async with b.transaction():
            await b.execute(INSERT, "B")
        # B committed, but A, older, still runs: B is past the horizon, and so is A
        for _ in range(5):
            assert await reader.read() == []
        await ta.commit()
        got = await until(reader.read, 2)
        assert [e.message_id for e in got] == ["A", "B"]
        assert await reader.read() == []
    finally:
        await a.close()
        await b.close()


async def test_a_reader_past_a_later_id_still_gets_the_late_commit(pg: PostgresStore) -> None:
    """B's transaction is older (smaller xid) but writes the larger id and commits first;
    the reader consumes B; A, with the smaller id, commits later and is still read."""
    a = await asyncpg.connect(pg.url)
    b = await asyncpg.connect(pg.url)
    reader = Reader(pg)
    try:
        tb = b.transaction()
        await tb.start()
        await b.fetchval("SELECT pg_current_xact_id()")  # B's xid is taken first
        ta = a.transaction()
        await ta.start()
        a_id = await a.fetchval(INSERT + " RETURNING id", "A")
        b_id = await b.fetchval(INSERT + " RETURNING id", "B")
        assert a_id < b_id
        await tb.commit()
        got = await until(reader.read, 1)
        assert [e.message_id for e in got] == ["B"]  # the reader is now past id b_id
        assert await reader.read() == []  # A runs: not yet
        await ta.commit()
        got = await until(reader.read, 1)
        assert [(e.message_id, e.id) for e in got] == [("A", a_id)]
        # an "id > last seen" reader would have skipped it
        assert a_id < b_id
    finally:
        await a.close()
        await b.close()
