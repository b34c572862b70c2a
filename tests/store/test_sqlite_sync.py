"""SQLite's writer commits with synchronous=NORMAL and the sync thread makes each commit
durable (fdatasync of the WAL) before anyone hears of it: a write is answered only after
that sync, and a failed sync refuses the write and every later one."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate.errors import StoreUnavailable
from mailgate.models import NewMessage, Source
from mailgate.store import open_store
from mailgate.store.sqlite import engine as engine_module
from mailgate.store.sqlite.store import SqliteStore

RAW = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def message() -> NewMessage:
    return NewMessage(
        raw=RAW, sender="a@example.org", recipients=("b@example.com",), source=Source.HTTP
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = open_store(f"sqlite:///{tmp_path / 'mailgate.db'}")
    assert isinstance(s, SqliteStore)
    await s.open()
    yield s
    await s.close()


async def test_only_the_writer_leaves_the_sync_to_mailgate(store: SqliteStore) -> None:
    assert await store.engine.write(lambda tx: tx.query("PRAGMA synchronous")) == [(1,)]
    assert await store.engine.read(lambda tx: tx.query("PRAGMA synchronous")) == [(2,)]


async def test_a_write_is_answered_only_after_its_wal_is_synced(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    release = threading.Event()
    real = os.fdatasync

    def held(fd: int) -> None:  # the disk is slow: this sync waits until released
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        release.wait(10)
        real(fd)

    monkeypatch.setattr(engine_module.os, "fdatasync", held)
    m = message()
    pending = asyncio.ensure_future(store.enqueue(m))
    deadline = asyncio.get_running_loop().time() + 30  # a bound, not a timing
    while asyncio.get_running_loop().time() < deadline:  # committed (another connection
        if await store.get_message(m.id) is not None and synced:  # sees it) ...
            break
        await asyncio.sleep(0.01)
    assert await store.get_message(m.id) is not None
    await asyncio.sleep(0.2)
    assert not pending.done()  # ... but not acknowledged before the sync returned
    assert synced[0] == str(store.path) + "-wal"
    release.set()
    assert await asyncio.wait_for(pending, 10) == m.id


async def test_a_failed_sync_refuses_the_write_and_every_later_one(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(engine_module.os, "fdatasync", failing)
    with pytest.raises(StoreUnavailable, match="failed a sync"):
        await store.enqueue(message())
    monkeypatch.undo()  # the disk answers again; what it lost is not known: still refused
    with pytest.raises(StoreUnavailable, match="failed a sync"):
        await store.enqueue(message())
