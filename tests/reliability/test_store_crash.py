"""Crash safety of the store: SIGKILL at random moments loses nothing acknowledged and
leaves nothing half-written. The same promise Postfix makes by fsyncing its queue file
before it answers 250 (RFC 5321 section 6.1)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgate.models import NewMessage, RecipientStatus, Source
from mailgate.store import open_store
from tests.conftest import pg_schema
from tests.reliability.store_child import body_for, recipients_for

ROOT = Path(__file__).resolve().parents[2]
KILLS_SQLITE = 20
KILLS_POSTGRES = 5


def run_and_kill(url: str, seed: int) -> list[str]:
    """Start a producer child, SIGKILL it at a random moment, return the acked ids."""
    rng = random.Random(seed)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.store_child", "enqueue", url, "20"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready", proc.stderr.read() if proc.stderr else ""
    time.sleep(rng.uniform(0.05, 0.6))
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    lines = out.decode().split("\n")
    return [line for line in lines[:-1] if line]  # the last piece may be cut mid-write


async def verify(url: str, acked: list[str]) -> int:
    store = open_store(url)
    await store.open()  # reopening also replays the WAL
    try:
        for message_id in acked:
            raw = await store.get_raw(message_id)
            assert raw == body_for(message_id), f"acknowledged {message_id} lost or damaged"
            rcpts = await store.recipients(message_id)
            assert tuple(r.address for r in rcpts) == recipients_for(message_id)
        counts = await store.status_counts()
        return counts[RecipientStatus.QUEUED]
    finally:
        await store.close()


def orphans_sqlite(path: Path) -> tuple[int, int]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        no_rcpt = conn.execute(
            "SELECT count(*) FROM messages m WHERE NOT EXISTS"
            " (SELECT 1 FROM recipients r WHERE r.message_id = m.id)"
        ).fetchone()[0]
        no_msg = conn.execute(
            "SELECT count(*) FROM recipients r WHERE NOT EXISTS"
            " (SELECT 1 FROM messages m WHERE m.id = r.message_id)"
        ).fetchone()[0]
        return no_rcpt, no_msg
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_during_sqlite_enqueues_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    all_acked: list[str] = []
    for run in range(KILLS_SQLITE):
        acked = run_and_kill(url, seed=run)
        all_acked += acked
        asyncio.run(verify(url, acked))
        assert orphans_sqlite(path) == (0, 0)
    assert len(all_acked) > KILLS_SQLITE * 10  # the child really was working
    assert asyncio.run(verify(url, all_acked)) >= len(all_acked)


@pytest.mark.slow
async def test_sigkill_during_postgres_enqueues_loses_nothing() -> None:
    async with pg_schema() as url:
        store = open_store(url)
        await store.open()  # migrate before the children race to
        await store.close()
        all_acked: list[str] = []
        for run in range(KILLS_POSTGRES):
            acked = await asyncio.to_thread(run_and_kill, url, run)
            all_acked += acked
            await verify(url, acked)
        assert len(all_acked) > KILLS_POSTGRES * 10
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            orphans = await conn.fetchval(
                "SELECT count(*) FROM messages m WHERE NOT EXISTS"
                " (SELECT 1 FROM recipients r WHERE r.message_id = m.id)"
            )
            assert orphans == 0
        finally:
            await conn.close()


def test_killed_workers_claim_returns_after_its_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lease.db'}"

    async def seed() -> str:
        store = open_store(url)
        await store.open()
        m = NewMessage(
            raw=b"Subject: x\r\n\r\nx\r\n",
            sender="s@example.org",
            recipients=("a@lease.test", "b@lease.test"),
            source=Source.HTTP,
            created_at=time.time() - 1,
        )
        await store.enqueue(m)
        await store.close()
        return m.id

    message_id = asyncio.run(seed())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.store_child", "claim", url, "1.0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    claimed = [int(x) for x in proc.stdout.readline().split()]
    assert len(claimed) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()

    async def reclaim() -> None:
        store = open_store(url)
        await store.open()
        try:
            assert await store.claim("w2", time.time(), 100, 60) is None  # lease still held
            await asyncio.sleep(1.1)
            claim = await store.claim("w2", time.time(), 100, 60)
            assert claim is not None
            assert sorted(r.id for r in claim.recipients) == sorted(claimed)
            assert len(await store.recipients(message_id)) == 2  # never deleted
        finally:
            await store.close()

    asyncio.run(reclaim())
