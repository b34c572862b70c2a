"""Durable enqueues per second of 2 KB messages: group commit vs one commit per message.

Prints, for SQLite and PostgreSQL, enqueues/s at 1, 10 and 100 concurrent producers,
a bare sqlite3 ceiling (the same rows inserted in batches of 100 by a plain loop), and
a backlog run: the enqueue rate and claim latency with 1,000,000 recipients queued.
The first line gives the machine's cores and a 10M-iteration Python loop time.

    python bench/store.py [--pg postgresql://postgres@127.0.0.1:5432/test] [--no-backlog]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import uvloop
from machine import header

from mailgate.models import NewMessage, Source, new_id
from mailgate.process import tune_interpreter
from mailgate.store import Store, open_store

BODY = (
    b"Subject: bench\r\nFrom: a@example.org\r\nTo: b@example.com\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 25
)[:2048]


RANDOM_RECIPIENTS = False  # --random-recipients: a new address at one of 50 domains each


def msg(rcpts: tuple[str, ...] | None = None) -> NewMessage:
    """A 2 KB message to b@example.com, the same rows the bare sqlite3 ceiling writes; with
    --random-recipients to a fresh address each (index inserts land mid-tree, as in real
    traffic, not at the end)."""
    if rcpts is None:
        if RANDOM_RECIPIENTS:
            n = random.getrandbits(32)
            rcpts = (f"user{n}@domain{n % 50}.test",)
        else:
            rcpts = ("b@example.com",)
    return NewMessage(raw=BODY, sender="a@example.org", recipients=rcpts, source=Source.HTTP)


async def rate(store: Store, producers: int, total: int) -> float:
    per = total // producers

    async def producer() -> None:
        for _ in range(per):
            await store.enqueue(msg())

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    return per * producers / (time.perf_counter() - started)


async def steady_rate(store: Store, producers: int, total: int, runs: int = 3) -> float:
    """The median of several runs: single one-second runs here spread by +-30%."""
    return statistics.median([await rate(store, producers, total) for _ in range(runs)])


def sqlite_ceiling(path: Path, total: int, batch: int, synchronous: str = "FULL") -> float:
    """A bare sqlite3 loop writing the same three rows per message."""

    async def schema() -> None:
        s = open_store(f"sqlite:///{path}")
        await s.open()
        await s.close()

    asyncio.run(schema())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    now = time.time()
    started = time.perf_counter()
    for _ in range(total // batch):
        conn.execute("BEGIN")
        for _ in range(batch):
            mid = new_id()
            conn.execute(
                "INSERT INTO messages (id, created_at, sender, source, tags, metadata, size, raw)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (mid, now, "a@example.org", "http", "[]", "{}", len(BODY), BODY),
            )
            conn.execute(
                "INSERT INTO recipients (message_id, address, domain, status, next_attempt_at,"
                " updated_at) VALUES (?,?,?,?,?,?)",
                (mid, "b@example.com", "example.com", "queued", now, now),
            )
            conn.execute(
                "INSERT INTO events (message_id, kind, at, details) VALUES (?,?,?,?)",
                (mid, "accepted", now, json.dumps({"recipients": 1})),
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return total / elapsed


async def measure(url_for: callable, label: str, total: int) -> dict[str, float]:  # type: ignore[valid-type]
    results = {}
    for mode, batch_max in (("group", 1000), ("single", 1)):
        for producers in (1, 10, 100):
            url = await url_for()
            store = open_store(url, batch_max=batch_max)
            await store.open()
            n = total if (mode == "group" and producers > 1) else total // 4
            r = await steady_rate(store, producers, n)
            await store.close()
            results[f"{mode}/{producers}"] = r
            print(
                f"  {label:10} {mode:7} commit, {producers:3} producers: {r:9,.0f} enqueues/s",
                flush=True,
            )
    return results


async def settle_wal(path: Path) -> None:
    """Wait until the WAL written by the bulk fill is checkpointed: measure steady state."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for _ in range(300):
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy == 0 and log == done:
                return
            await asyncio.sleep(0.1)
    finally:
        conn.close()


async def backlog(url: str, recipients: int, empty_rate: float) -> None:
    store = open_store(url)
    await store.open()
    started = time.perf_counter()
    rcpts = tuple(f"r{i}@backlog{i % 50}.test" for i in range(10))
    # fill: 10 recipients per message, through the store's own batched path
    batch: list[NewMessage] = []
    for _ in range(recipients // 10):
        batch.append(msg(rcpts))
        if len(batch) == 1000:
            await store.enqueue_many(batch)
            batch = []
    if batch:
        await store.enqueue_many(batch)
    fill = time.perf_counter() - started
    counts = await store.status_counts()
    print(f"  backlog filled: {sum(counts.values()):,} recipients queued in {fill:.0f} s")
    await settle_wal(Path(url[len("sqlite:///") :]))
    r = await steady_rate(store, 100, 20_000)
    print(
        f"  enqueue with backlog, 100 producers: {r:,.0f}/s "
        f"= {r / empty_rate:.2f}x the empty-queue rate (target >= 0.8x)"
    )
    lat = []
    for _ in range(50):
        t = time.perf_counter()
        claim = await store.claim(f"w{_}", time.time(), 100, 300)
        lat.append(time.perf_counter() - t)
        assert claim is not None and len(claim.recipients) > 0
    median_ms, max_ms = statistics.median(lat) * 1000, max(lat) * 1000
    print(
        f"  claim of 100 due recipients with backlog: median {median_ms:.2f} ms,"
        f" max {max_ms:.2f} ms"
    )
    await store.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS of this process: {rss:,.0f} MiB")


async def main() -> None:
    tune_interpreter()  # as serve does: the SQLite writer thread gets the GIL back promptly
    p = argparse.ArgumentParser()
    p.add_argument(
        "--pg",
        default=os.environ.get("MAILGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--total", type=int, default=20_000)
    p.add_argument("--no-backlog", action="store_true")
    p.add_argument("--random-recipients", action="store_true")
    p.add_argument("--backlog-recipients", type=int, default=1_000_000)
    args = p.parse_args()
    global RANDOM_RECIPIENTS
    RANDOM_RECIPIENTS = args.random_recipients
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    counter = iter(range(1000))

    async def sqlite_url() -> str:
        return f"sqlite:///{tmp / f'store{next(counter)}.db'}"

    header(None)  # cores and the Python loop time: this bench has no SMTP ceiling
    print("2 KB messages, one recipient each")
    ceiling = await asyncio.to_thread(sqlite_ceiling, tmp / "ceiling.db", args.total, 100)
    single_ceiling = await asyncio.to_thread(sqlite_ceiling, tmp / "ceiling1.db", 2000, 1)
    print(f"  bare sqlite3 loop, batches of 100:        {ceiling:9,.0f} messages/s (ceiling)")
    print(f"  bare sqlite3 loop, one commit per message: {single_ceiling:9,.0f} messages/s")
    sq = await measure(sqlite_url, "sqlite", args.total)
    g100 = sq["group/100"]
    print(
        f"  sqlite group commit at 100 producers = {g100 / ceiling:.2f} of the ceiling "
        f"(target >= 0.5) and {g100 / sq['single/100']:.1f}x one commit per message"
    )

    import asyncpg

    try:
        base = await asyncpg.connect(args.pg, timeout=3)
    except Exception as exc:
        print(f"  postgresql: not reachable ({exc}); skipped")
        base = None
    if base is not None:
        schemas: list[str] = []

        async def pg_url() -> str:
            name = f"bench_{len(schemas)}_{os.getpid()}"
            await base.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")
            schemas.append(name)
            return f"{args.pg}?search_path={name}"

        pg = await measure(pg_url, "postgresql", args.total)
        print(
            f"  postgresql group commit at 100 producers: {pg['group/100'] / pg['single/100']:.1f}x"
            " one commit per message"
        )
        for name in schemas:
            await base.execute(f"DROP SCHEMA {name} CASCADE")
        await base.close()
    if not args.no_backlog:
        print(f"backlog of {args.backlog_recipients:,} queued recipients (sqlite):")
        await backlog(await sqlite_url(), args.backlog_recipients, g100)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    uvloop.run(main())
