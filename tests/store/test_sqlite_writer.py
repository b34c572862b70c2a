"""The writer process's protocol in one process: a client store, a WriterServer over its
Unix socket, and what a client sees when the writer is gone and when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mailgate.errors import DuplicateIdempotencyKey, StoreError, StoreUnavailable
from mailgate.models import Idempotency, NewMessage, Source
from mailgate.store import open_store
from mailgate.store.sqlite import bodies
from mailgate.store.sqlite.store import SqliteStore
from mailgate.store.sqlite.writer import WriterServer, socket_path

RAW = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def message(**kw: object) -> NewMessage:
    return NewMessage(
        raw=RAW, sender="a@example.org", recipients=("b@example.com",), source=Source.HTTP, **kw
    )  # type: ignore[arg-type]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    """(client, the writer's store); the deep directory makes the socket path longer than
    a Unix socket address may be, so it is reached through /proc/self/fd."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    url = f"sqlite:///{deep / 'mailgate.db'}"
    client, writes = open_store(url), open_store(url)
    assert isinstance(client, SqliteStore) and isinstance(writes, SqliteStore)
    await client.open()
    await writes.open()
    client.use_writer(socket_path(client.path))
    yield client, writes
    await client.close()
    await writes.close()


@contextlib.asynccontextmanager
async def serving(writes: SqliteStore) -> AsyncIterator[WriterServer]:
    """A WriterServer for the writer's store, stopped on the way out."""
    server = WriterServer(writes.engine, socket_path(writes.path))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)


async def test_writes_go_through_the_writer_and_come_back(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    client, writes = pair
    assert len(str(socket_path(client.path))) > 108
    server = WriterServer(writes.engine, socket_path(writes.path))
    await server.start()
    try:
        m = message(idempotency=Idempotency("k", "h", "{}", 2e9))
        assert await client.enqueue(m) == m.id
        with pytest.raises(DuplicateIdempotencyKey) as dup:
            await client.enqueue(message(idempotency=Idempotency("k", "h", "{}", 2e9)))
        assert dup.value.message_id == m.id  # the exception crossed with its field
        assert client.writer is not None
        with pytest.raises(StoreError, match="no such change"):
            await client.writer.call("drop_everything")
        assert (await client.get_message(m.id)) is not None  # read on the client's own
        with pytest.raises(AttributeError):  # cannot be pickled: fails alone, here
            await client.writer.call("ping", lambda: None)
        assert not client.writer._pending
        await client.enqueue(message())  # the connection is still good
    finally:
        await server.stop(1.0)


async def test_no_writer_is_unavailable_and_a_new_one_is_used(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    client, writes = pair
    with pytest.raises(StoreUnavailable, match="not reachable"):
        await client.enqueue(message())
    server = WriterServer(writes.engine, socket_path(writes.path))
    await server.start()
    await client.enqueue(message())
    await server.stop(1.0)  # the writer goes away: the next write is refused, not lost
    with pytest.raises(StoreUnavailable):
        await client.enqueue(message())
    server = WriterServer(writes.engine, socket_path(writes.path))
    await server.start()
    try:
        m = message()
        assert await client.enqueue(m) == m.id  # connected again
    finally:
        await server.stop(1.0)
    assert socket_path(writes.path).exists() is False


async def test_a_large_body_is_placed_by_the_client_and_its_old_segment_let_go(
    pair: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of 64 KB and more is written to the sending process's own body file and
    crosses the socket as a name and an offset; a segment it moved on from stays locked
    until the rows naming it are committed, then is let go."""
    client, writes = pair
    monkeypatch.setattr(bodies, "SEGMENT_MAX", 1)  # every placement opens a new segment
    async with serving(writes):
        sent = []
        for i in range(3):
            raw = RAW + bytes([65 + i]) * (100 * 1024) + b"\r\n"
            m = NewMessage(
                raw=raw, sender="a@example.org", recipients=("b@example.com",), source=Source.HTTP
            )
            assert await client.enqueue(m) == m.id
            sent.append((m.id, raw))
        for message_id, raw in sent:
            assert await client.get_raw(message_id) == raw
            assert await writes.get_raw(message_id) == raw
        # the bodies are in the client's segments (the writer wrote none of its own)
        assert client.engine.files._name is not None and writes.engine.files._name is None
        deadline = asyncio.get_running_loop().time() + 30  # a bound, not a timing
        while client.engine.files._retired and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the release runs on the client's writer thread
        assert client.engine.files._retired == []


async def test_a_batch_goes_as_rows_and_its_keyed_messages_whole(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    client, writes = pair
    async with serving(writes):
        batch = [message(), message(idempotency=Idempotency("b", "h", "{}", 2e9)), message()]
        assert await client.enqueue_many(batch) == [m.id for m in batch]
        for m in batch:
            assert await writes.get_raw(m.id) == RAW
        again = [message(), message(idempotency=Idempotency("b", "h", "{}", 2e9))]
        with pytest.raises(DuplicateIdempotencyKey) as dup:
            await client.enqueue_many(again)
        assert dup.value.message_id == batch[1].id
        assert await writes.get_message(again[0].id) is None  # the batch is one transaction


async def test_a_batch_of_many_small_bodies_is_placed_by_the_client(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    """A batch whose bodies come to 64 KB or more goes to the client's body file, each
    body at its own offset; a keyed message in it is still placed by the writer, in
    its transaction."""
    client, writes = pair
    async with serving(writes):
        raws = [RAW + bytes([65 + i % 26]) * 2000 + b"\r\n" for i in range(60)]
        batch = [
            NewMessage(
                raw=raw, sender="a@example.org", recipients=("b@example.com",), source=Source.HTTP
            )
            for raw in raws
        ]
        batch.append(message(idempotency=Idempotency("k", "h", "{}", 2e9)))
        assert await client.enqueue_many(batch) == [m.id for m in batch]
        for m in batch:
            assert await writes.get_raw(m.id) == m.raw
        assert client.engine.files._name is not None  # the 60 bodies: the client's file
        assert writes.engine.files._name is None  # the keyed one stayed inline (small)


async def test_writes_read_during_a_sync_wait_for_it_and_commit_as_one_group(
    pair: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group committed while the last one is being synced waits for that sync and the
    next anyway; the writer commits what it reads meanwhile as one group once the sync is
    done (fewer, larger commits: less WAL per message), and answers each only after its
    own sync."""
    client, writes = pair
    groups, syncs = held_syncs(writes, monkeypatch)
    async with serving(writes) as server:
        try:
            first = asyncio.ensure_future(client.enqueue(message()))
            await until(lambda: syncs.count("begun") == 1)  # its sync is held
            assert groups == [1]
            rest = [asyncio.ensure_future(client.enqueue(message())) for _ in range(30)]
            await until(lambda: len(server._batch) == 30)  # all read by the writer
            await asyncio.sleep(0.05)  # a loop turn or fifty: still none committed
            assert groups == [1] and not first.done() and not any(f.done() for f in rest)
        finally:
            syncs.append("release")
        ids = await asyncio.gather(first, *rest)
    assert groups == [1, 30]
    assert syncs.count("begun") == 2  # the 30 were answered after a sync of their own
    for message_id in ids:
        assert await client.get_message(message_id) is not None


async def test_a_synced_groups_replies_go_out_before_the_next_commit(
    pair: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a sync is done, its groups' replies are written before the writer holds its
    loop for the next commit (queued first, that commit made every reply wait for it)."""
    client, writes = pair
    _, syncs = held_syncs(writes, monkeypatch)
    order: list[str] = []
    commit = writes.engine._commit_batch
    monkeypatch.setattr(
        writes.engine,
        "_commit_batch",
        lambda batch: (order.append(f"commit {len(batch)}"), commit(batch)),
    )
    async with serving(writes) as server:
        try:
            first = asyncio.ensure_future(client.enqueue(message()))
            await until(lambda: syncs.count("begun") == 1)
            [session] = server.sessions
            assert session.transport is not None
            write = session.transport.write
            monkeypatch.setattr(
                session.transport, "write", lambda data: (order.append("reply"), write(data))
            )
            rest = [asyncio.ensure_future(client.enqueue(message())) for _ in range(10)]
            await until(lambda: len(server._batch) == 10)
        finally:
            syncs.append("release")
        await asyncio.gather(first, *rest)
    assert order[:3] == ["commit 1", "reply", "commit 10"], order


async def test_writes_still_waiting_for_a_sync_when_the_writer_stops_are_refused(
    pair: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that outlives stop's grace: the writes waiting for it are answered
    StoreUnavailable and never committed (a commit after that answer would be made again
    by the client's retry)."""
    client, writes = pair
    groups, syncs = held_syncs(writes, monkeypatch)
    server = WriterServer(writes.engine, socket_path(writes.path))
    await server.start()
    try:
        first = asyncio.ensure_future(client.enqueue(message()))
        await until(lambda: syncs.count("begun") == 1)
        waiting = [message() for _ in range(5)]
        sent = [asyncio.ensure_future(client.enqueue(m)) for m in waiting]
        await until(lambda: len(server._batch) == 5)
        await server.stop(0.1)
        for refused in await asyncio.gather(*sent, return_exceptions=True):
            assert isinstance(refused, StoreUnavailable)
        with pytest.raises(StoreUnavailable):  # in flight when the socket closed
            await first
    finally:
        syncs.append("release")
    await until(lambda: not writes.engine._syncing)
    await asyncio.sleep(0.05)  # time for a commit the stop should have prevented
    assert groups == [1]
    for m in waiting:
        assert await writes.get_message(m.id) is None


def held_syncs(writes: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[str]]:
    """The sizes of the writer's commit groups, and its fdatasyncs: each appends "begun"
    and waits until the test appends "release" (then every later one runs at once)."""
    groups: list[int] = []
    commit = writes.engine._commit_batch
    monkeypatch.setattr(
        writes.engine, "_commit_batch", lambda batch: (groups.append(len(batch)), commit(batch))
    )
    syncs: list[str] = []
    fdatasync = os.fdatasync

    def held(fd: int) -> None:
        syncs.append("begun")
        deadline = time.monotonic() + 10
        while "release" not in syncs and time.monotonic() < deadline:
            time.sleep(0.001)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", held)
    return groups, syncs


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.001)
