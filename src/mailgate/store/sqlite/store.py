"""The embedded default store: the queue (store/queue.py) on the SQLite engine."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from mailgate.errors import StoreUnavailable
from mailgate.models import Claim, Event, Message, NewMessage
from mailgate.store import queries, queue
from mailgate.store.base import EngineStore, Work
from mailgate.store.protocols import Compaction
from mailgate.store.rows import NewRows, event_from_row, message_rows, rows_wire
from mailgate.store.sqlite import compaction
from mailgate.store.sqlite.bodies import BODY_FILE_GROUP_MIN
from mailgate.store.sqlite.compaction import Live, Move
from mailgate.store.sqlite.engine import SqliteEngine
from mailgate.store.sqlite.writer import WriterClient

T = TypeVar("T")
LOAD_NOW_MAX = 32  # messages a claim's load reads on the calling thread (the loop waits)
POLL_INTERVAL = 0.02  # how often a waiting worker looks for other processes' commits
# Writes after which this process's own workers look for work at once (the others see
# the commit through data_version, within POLL_INTERVAL).
WAKES = frozenset(
    {"enqueue", "enqueue_rows", "enqueue_many", "release", "recover_leases", "retry_now"}
)


class SqliteStore(EngineStore):
    """Store on one SQLite file; see sqlite/engine.py for the commit model."""

    point_reads_cheap = True  # read_now: on the caller's thread, no round trip

    def __init__(
        self,
        path: str,
        *,
        unsafe_no_fsync: bool = False,
        batch_max: int = 1000,
        exclusive: bool = False,
    ) -> None:
        self.path = Path(path)
        self.engine = SqliteEngine(
            self.path, unsafe_no_fsync=unsafe_no_fsync, batch_max=batch_max, exclusive=exclusive
        )
        self.writer: WriterClient | None = None  # serve's writer process, when it has one
        self._placing = 0  # enqueues whose body this process placed, not yet answered

    async def open(self) -> None:
        await self.engine.open()

    def use_writer(self, path: Path) -> None:
        """From now on, commit through serve's writer process (sqlite/writer.py); reads
        stay on this process's own connection."""
        self.writer = WriterClient(path)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        await self.engine.close()

    async def _read(self, fn: Work[T]) -> T:
        return await self.engine.read(fn)

    async def _read_now(self, fn: Work[T]) -> T:
        try:
            return await self.engine.read_now(fn)
        except sqlite3.OperationalError:  # busy (it never waits on this thread): over there
            pass
        except sqlite3.Error as exc:  # the door answers "try again", never a crash
            raise StoreUnavailable(f"store: {exc}") from exc
        try:
            return await self._read(fn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store: {exc}") from exc

    async def _write(self, fn: Work[T]) -> T:
        return await self.engine.write(fn)

    async def _change(self, name: str, *args: Any) -> Any:
        if self.writer is None:
            return await super()._change(name, *args)
        return await self._remote(name, *args)

    async def _remote(self, name: str, *args: Any) -> Any:
        assert self.writer is not None
        result = await self.writer.call(name, *args)
        if name in WAKES and self.engine.work is not None:
            self.engine.work.set()
        return result

    async def enqueue(self, message: NewMessage) -> str:
        rows = message_rows(message)  # built here, on the caller's side, either way
        if self.writer is not None:
            if message.idempotency is not None:
                # the bytes travel once, in the rows; the writer needs the message's id,
                # owner and idempotency record only (and places its body: a duplicate
                # must not write one)
                bare = dataclasses.replace(message, raw=b"")
                message_id: str = await self._remote("enqueue", bare, rows_wire(rows))
                return message_id
            message_id = await self._placed_remote("enqueue_rows", [rows])
            return message_id
        return await self.engine.enqueue(message, rows)

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        rows = [message_rows(m) for m in messages if m.idempotency is None]
        if self.writer is not None:
            # the writer needs only the idempotent messages whole (each is checked
            # against its key); the others are their rows (a dataclass pickles slowly)
            keyed = [m for m in messages if m.idempotency is not None]
            ids: list[str] = [m.id for m in messages]
            await self._placed_remote("enqueue_many", rows, keyed)
            return ids
        return await self.engine.write(lambda tx: queue.enqueue_many(tx, messages, rows), rows)

    async def _placed_remote(self, name: str, rows: list[NewRows], *before: Any) -> Any:
        """An enqueue through the writer process, its rows last. Large bodies (a group
        of BODY_FILE_GROUP_MIN bytes or more) go to this process's own body file first,
        and cross the socket as a name and an offset, not as bytes."""
        if sum(len(r.message.raw) for r in rows) < BODY_FILE_GROUP_MIN:
            return await self._remote(name, *before, [rows_wire(r) for r in rows])
        self._placing += 1
        try:
            rows = await self.engine.place(rows)
            return await self._remote(name, *before, [rows_wire(r) for r in rows])
        finally:
            self._placing -= 1
            if not self._placing:
                self.engine.release_placed()

    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
        # A read first: idle workers polling an empty queue must not queue up writes.
        if await self._read_now(lambda tx: tx.fetchrow("next_due_domain", now)) is None:
            return None
        return await super().claim(owner, now, limit, lease_seconds)

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        """A claim's messages. A few are read on the calling thread: handing the read to
        the reader thread and back cost the delivery process 14% of its CPU (2 KB mail,
        end to end), more than the read; a large claim still goes to that thread."""
        if len(message_ids) > LOAD_NOW_MAX:
            return await super().load(message_ids)
        return await self._read_now(lambda tx: queries.load(tx, message_ids))

    async def events_since(
        self, cursor: str | None, limit: int, api_key_id: str | None = None
    ) -> tuple[list[Event], str]:
        after = (int(cursor or 0),)
        rows = await self._read(lambda tx: queries.event_rows(tx, after, limit, api_key_id))
        events = [event_from_row(r) for r in rows]
        return events, str(events[-1].id) if events else (cursor or "0")

    async def wait_for_work(self, timeout: float) -> None:
        """Return when this process enqueued something, when another process committed
        (a new `data_version` on this process's read connection), or after `timeout`."""
        work = self.engine.work
        assert work is not None
        deadline = time.monotonic() + timeout
        seen = await self._data_version()
        while not work.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(work.wait(), min(left, POLL_INTERVAL))
            except TimeoutError:
                if await self._data_version() != seen:
                    break
        work.clear()

    async def _data_version(self) -> int:
        row = await self._read(lambda tx: tx.fetchrow("data_version"))
        assert row is not None
        return int(row[0])

    async def compact_bodies(self, live_ratio: float, batch: int) -> Compaction:
        """See sqlite/compaction.py; the repoint commits through this process's write
        path (serve's writer process, when it has one)."""

        async def live(name: str) -> Live:
            rows = await self._read(lambda tx: tx.fetch("segment_bodies", name))
            return [(r[0], r[1], r[2]) for r in rows]

        async def repoint(moves: list[Move]) -> None:
            if self.writer is not None:
                await self._remote("repoint_bodies", moves)
            else:
                await self._write(lambda tx: compaction.repoint_bodies(tx, moves))

        async def in_use(name: str) -> bool:
            return await self._read(lambda tx: tx.fetchrow("segment_in_use", name)) is not None

        return await compaction.compact(self.engine.files, live_ratio, batch, live, repoint, in_use)
