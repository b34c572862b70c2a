"""PostgreSQL connections killed under load (pg_terminate_backend): enqueues fail with
StoreUnavailable (answered 451 / 503 by the doors) or succeed, the pool reconnects, and
every acknowledged message is there afterwards."""

from __future__ import annotations

import asyncio

import asyncpg

from mailgate.errors import StoreUnavailable
from mailgate.models import NewMessage, Source
from mailgate.store import open_store
from tests.conftest import PG_BASE, pg_schema


async def test_killed_connections_lose_nothing_acknowledged() -> None:
    async with pg_schema() as url:
        schema = url.rsplit("search_path=", 1)[1]
        victim = f"victim_{schema}"  # only the store's connections are killed
        store = open_store(f"{url}&application_name={victim}", pool_size=4)
        await store.open()
        acked: list[str] = []
        failed = kills = hits = 0
        stop = asyncio.Event()

        async def producer() -> None:
            nonlocal failed
            while not stop.is_set():
                m = NewMessage(
                    raw=b"Subject: x\r\n\r\nx\r\n",
                    sender="a@example.org",
                    recipients=("b@example.com",),
                    source=Source.HTTP,
                )
                try:
                    acked.append(await store.enqueue(m))
                except StoreUnavailable:
                    failed += 1
                    await asyncio.sleep(0.01)

        admin = await asyncpg.connect(PG_BASE)
        tasks = [asyncio.create_task(producer()) for _ in range(20)]
        try:
            storms = 0
            # five storms that hit (one can find the pool between connections on a
            # loaded machine), in at most twenty tries
            while hits < 5 and storms < 20:
                storms += 1
                await asyncio.sleep(0.3)
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = $1",
                    victim,
                )
                kills += killed
                hits += killed > 0
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        before = len(acked)
        assert before > 0, "nothing was acknowledged between the kills"  # a count, not a rate
        # the store still works after the storms
        m = NewMessage(raw=b"x\r\n", sender="", recipients=("c@example.com",), source=Source.HTTP)
        assert await store.enqueue(m) == m.id
        found = {r["id"] for r in await admin.fetch(f"SELECT id FROM {schema}.messages")}
        missing = [i for i in acked if i not in found]
        assert missing == [], f"{len(missing)} acknowledged messages lost"
        await admin.close()
        await store.close()
        assert hits >= 5 and kills >= 5  # the storms really hit the store's connections
