"""Compaction of SQLite's body segments through the real store: live bodies read back
byte for byte afterwards, dead segments go, disk use shrinks; a segment still appended
to is never touched; a backup's shared lock makes a round wait; and a compaction stopped
between any two of its steps never leaves a row without its body."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from mailgate.config import RetentionConfig
from mailgate.models import NewMessage, Source
from mailgate.retention import DAY, Retention
from mailgate.store.protocols import BodyMoved
from mailgate.store.sqlite import SqliteStore, compaction
from mailgate.store.sqlite.compaction import LOCK_NAME, Move

PER_SEGMENT = 8


def message(i: int) -> NewMessage:
    body = os.urandom(5000 + i)  # every body its own bytes and length
    raw = b"From: a@example.org\r\nTo: b@x.test\r\nSubject: %d\r\n\r\n" % i + body.hex().encode()
    return NewMessage(raw=raw, sender="a@example.org", recipients=("b@x.test",), source=Source.HTTP)


def segments(store: SqliteStore) -> dict[str, int]:
    d = store.engine.files.directory
    return {p.name: p.stat().st_size for p in d.glob("*.seg")}


def settle(store: SqliteStore) -> None:
    """Every segment last written SETTLE seconds ago and more: sparse ones may be rewritten."""
    for path in store.engine.files.directory.glob("*.seg"):
        then = time.time() - compaction.SETTLE - 1
        os.utime(path, (then, then))


async def fill(path: Path, rounds: int) -> tuple[SqliteStore, list[list[NewMessage]]]:
    """`rounds` segments of PER_SEGMENT bodies, each written by a store opened anew (a
    restarted process writes a new segment); the last store stays open, its segment
    still this process's to append to."""
    groups = []
    store = SqliteStore(str(path))
    for n in range(rounds):
        await store.open()
        group = [message(n * 100 + i) for i in range(PER_SEGMENT)]
        await store.enqueue_many(group)  # one group commit: bodies in one segment
        groups.append(group)
        if n < rounds - 1:
            await store.close()
            store = SqliteStore(str(path))
    return store, groups


async def finish(store: SqliteStore, messages: list[NewMessage]) -> None:
    for m in messages:
        await store.cancel(m.id, time.time())


async def readable(store: SqliteStore, messages: list[NewMessage]) -> None:
    for m in messages:
        assert await store.get_raw(m.id) == m.raw


def purge(store: SqliteStore) -> Retention:
    config = RetentionConfig(body_days=30, message_days=0, batch_size=3)
    return Retention(store, config, clock=lambda: time.time() + 31 * DAY, pause=0)


async def test_dead_segments_go_sparse_ones_are_rewritten_live_bodies_stay(tmp_path: Path) -> None:
    store, (dead, sparse, dense, current) = await fill(tmp_path / "mailgate.db", 4)
    try:
        assert len(segments(store)) == 4
        before = sum(segments(store).values())
        await finish(store, dead + sparse[:6] + dense[:2] + current)
        young = await purge(store).run_once()
        assert young.bodies == len(dead) + 6 + 2 + len(current)
        # the dead one goes at once; sparse (2 of 8 live) was written just now: it may yet
        # lose the rest (a retention of minutes), so it is not copied yet
        assert (young.compaction.deleted, young.compaction.rewritten) == (1, 0)
        settle(store)
        done = await purge(store).run_once()
        c = done.compaction
        assert (c.deleted, c.rewritten) == (1, 1)  # sparse, settled: copied, then deleted
        names = segments(store)
        assert len(names) == 3  # dense (6 of 8 live), current (still appended to), the copy
        assert sum(names.values()) < before * 0.6  # two of four gone, a quarter copied
        assert c.freed_bytes > 0 and c.moved_bytes == sum(len(m.raw) for m in sparse[6:])
        await readable(store, sparse[6:] + dense[2:])
        for m in dead + sparse[:6] + current:
            assert await store.get_raw(m.id) is None
        # nothing more to do; the current segment waits until this process moves on
        again = await purge(store).run_once()
        assert (again.compaction.deleted, again.compaction.rewritten) == (0, 0)
    finally:
        await store.close()
    store = SqliteStore(str(tmp_path / "mailgate.db"))
    await store.open()
    try:  # restarted: the old current segment is no process's now, and has no live body
        done = await purge(store).run_once()
        assert done.compaction.deleted == 1
        await readable(store, sparse[6:] + dense[2:])
    finally:
        await store.close()


async def test_a_dead_segment_is_given_back_out_of_the_readers_way(tmp_path: Path) -> None:
    """Renamed aside before it is cut down and unlinked: a read of a body it held finds
    it gone (BodyMoved, as after a delete), never a cut file; a crash's leftover from
    mid-removal goes at the next compaction."""
    store, (dead, current) = await fill(tmp_path / "mailgate.db", 2)
    try:
        await finish(store, dead)
        directory = store.engine.files.directory
        leftover = directory / f".{'0' * 26}.seg{compaction.DEAD}"
        leftover.write_bytes(b"x" * 100)
        name, current_segment = sorted(segments(store))  # ULIDs: the dead one is older
        size = (directory / name).stat().st_size
        done = await purge(store).run_once()
        assert done.compaction.deleted == 1 and done.compaction.freed_bytes == size
        assert list(segments(store)) == [current_segment]
        assert not leftover.exists() and not list(directory.glob(f".*{compaction.DEAD}"))
        with pytest.raises(BodyMoved):
            store.engine.files.read(name, 0, 10)
        await readable(store, current)
    finally:
        await store.close()


async def test_a_backup_holding_the_lock_makes_compaction_wait(tmp_path: Path) -> None:
    store, (dead, current) = await fill(tmp_path / "mailgate.db", 2)
    try:
        await finish(store, dead)
        lock = store.engine.files.directory / LOCK_NAME
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH)  # what `mailgate backup` holds while it copies
        try:
            done = await purge(store).run_once()
            assert done.compaction.busy and len(segments(store)) == 2
        finally:
            os.close(fd)
        assert (await purge(store).run_once()).compaction.deleted == 1
        await readable(store, current)
    finally:
        await store.close()


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["before_repoint", "mid_repoint", "before_delete"])
async def test_a_compaction_stopped_between_steps_loses_no_body(tmp_path: Path, step: str) -> None:
    """The round is stopped where a crash could stop it: after the copy is on disk and
    before any row moves; after the first repoint transaction of several; after every
    row moved and before the old segment is deleted. Every live body still reads back,
    and the next round finishes the work."""
    store, (sparse, _current) = await fill(tmp_path / "mailgate.db", 2)
    try:
        await finish(store, sparse[:6])
        config = RetentionConfig(body_days=30, message_days=0, compact_below=0)
        await Retention(store, config, clock=lambda: time.time() + 31 * DAY).run_once()
        settle(store)
        live = sparse[6:]
        calls = 0

        async def live_of(name: str) -> compaction.Live:
            rows = await store._read(lambda tx: tx.fetch("segment_bodies", name))
            return [(r[0], r[1], r[2]) for r in rows]

        async def repoint(moves: list[Move]) -> None:
            nonlocal calls
            calls += 1
            if step == "before_repoint" or (step == "mid_repoint" and calls > 1):
                raise Crash
            await store._write(lambda tx: compaction.repoint_bodies(tx, moves))

        async def in_use(name: str) -> bool:
            if step == "before_delete":
                raise Crash
            return await store._read(lambda tx: tx.fetchrow("segment_in_use", name)) is not None

        with pytest.raises(Crash):
            await compaction.compact(store.engine.files, 0.5, 1, live_of, repoint, in_use)
        await readable(store, live)
        assert len(segments(store)) == 3  # old, copy, current: nothing deleted yet
        settle(store)
        done = await store.compact_bodies(0.5, 1)
        await readable(store, live)
        assert len(segments(store)) == 2  # current and one segment holding the live bodies
        assert done.deleted >= 1
    finally:
        await store.close()
