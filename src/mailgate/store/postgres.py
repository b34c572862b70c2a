"""The many-node store: the queue (store/queue.py) on PostgreSQL through asyncpg.

The engine part: a connection pool with `synchronous_commit` forced on, one transaction
per write, NOTIFY on commit when workers should wake (LISTEN on one connection), the
claim's FOR UPDATE SKIP LOCKED (store/sql/postgres.sql), the xid8 events cursor, and
group commit: enqueues that arrive together are folded into one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from mailgate.errors import StoreError, StoreUnavailable
from mailgate.models import Event, NewMessage
from mailgate.store import queries, queue
from mailgate.store.base import EngineStore, Work
from mailgate.store.migrate import migrate
from mailgate.store.protocols import Row, Tx
from mailgate.store.rows import INLINE_COLUMNS, MessageRow, event_from_row, message_rows
from mailgate.store.sql import numbered, statements

T = TypeVar("T")
SQL = statements("postgres")
CHANNEL = "mailgate_work"  # as in the `notify` statement
MIGRATION_LOCK = 0x6D61696C  # "mail"
# Connection trouble that means "try again later", not "your request is wrong".
TRANSIENT = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    TimeoutError,
)


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class PgTx:
    """An asyncpg connection as the queue logic's Tx (protocols.py)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.woken = False  # NOTIFY before COMMIT (delivered on commit)

    async def fetch(self, name: str, *args: Any) -> Sequence[Row]:
        rows: Sequence[Row] = await self.conn.fetch(SQL[name], *args)
        return rows

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        row: Row | None = await self.conn.fetchrow(SQL[name], *args)
        return row

    async def execute(self, name: str, *args: Any) -> None:
        await self.conn.execute(SQL[name], *args)

    async def executemany(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.conn.executemany(SQL[name], rows)

    async def query(self, sql: str, *args: Any) -> Sequence[Row]:
        rows: Sequence[Row] = await self.conn.fetch(numbered(sql), *args)
        return rows

    async def script(self, text: str) -> None:
        await self.conn.execute(text)

    async def insert_messages(self, rows: Sequence[MessageRow]) -> None:
        # bodies always stay in `raw` here: the body file columns are SQLite's
        await self.conn.executemany(SQL["insert_message"], [r[:INLINE_COLUMNS] for r in rows])

    async def claim_due(
        self, now: float, limit: int, lease_until: float, owner: str
    ) -> Sequence[Row]:
        return await self.fetch("claim", now, now, limit, lease_until, owner, now)

    def body(self, raw: bytes, body_file: str | None, body_offset: int | None, size: int) -> bytes:
        return bytes(raw)

    def wake_workers(self) -> None:
        self.woken = True


LimitRow = tuple[str, str, int, int, float, int]  # table, name, total, step, last at, held


class PostgresStore(EngineStore):
    """Store on PostgreSQL; see the module docstring."""

    def __init__(self, url: str, *, batch_max: int = 1000, pool_size: int = 8) -> None:
        self.url = url
        self.batch_max = batch_max
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pending: list[tuple[NewMessage, asyncio.Future[str]]] = []
        self._has_pending = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(max(1, pool_size // 2))
        self._listener: asyncpg.Connection | None = None
        self._work = asyncio.Event()
        # metrics (set by the app): a batch insert's seconds (the wait for a pooled
        # connection and the commit included) and its messages; must never raise
        self.on_group: Callable[[float, int], None] | None = None
        self._listener_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        async def init(conn: asyncpg.Connection) -> None:
            await conn.execute("SET synchronous_commit = on")

        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, init=init, timeout=10
            )
        except (*TRANSIENT, asyncpg.PostgresError) as exc:
            raise StoreError(f"store: cannot connect to {_safe_url(self.url)}: {exc}") from None

        async def locked_migrate(tx: Tx) -> None:
            await tx.execute("migration_lock", MIGRATION_LOCK)
            await migrate(tx, "postgres")

        await self._run(locked_migrate)
        self._batcher = asyncio.create_task(self._batch_loop())

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(StoreUnavailable("store: closing"))
        self._pending.clear()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- transactions ---------------------------------------------------------
    async def _run(self, fn: Work[T], tx: bool = True) -> T:
        """fn on a pooled connection, in a transaction unless tx is False; a lost or
        refusing server is StoreUnavailable, other database errors pass as they are."""
        if self._pool is None:
            raise StoreUnavailable("store: not open")
        try:
            async with self._pool.acquire() as conn:
                t = PgTx(conn)
                if not tx:
                    return await fn(t)
                async with conn.transaction():
                    result = await fn(t)
                    if t.woken:
                        await conn.execute(SQL["notify"])
                    return result
        except TRANSIENT as exc:
            raise StoreUnavailable(f"store: {type(exc).__name__}: {exc}") from None

    async def _read(self, fn: Work[T]) -> T:
        return await self._run(fn, tx=False)

    async def _write(self, fn: Work[T]) -> T:
        try:
            return await self._run(fn)
        except asyncpg.IntegrityConstraintViolationError as exc:  # nothing was written
            raise StoreError(f"store: constraint failed: {exc}") from None
        except asyncpg.PostgresError as exc:
            raise StoreError(f"store: {type(exc).__name__}: {exc}") from None

    # -- group commit of enqueues --------------------------------------------
    async def enqueue(self, message: NewMessage) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((message, fut))
        self._has_pending.set()
        return await fut

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        rows = [message_rows(m) for m in messages if m.idempotency is None]
        return await self._write(lambda tx: queue.enqueue_many(tx, messages, rows))

    async def _batch_loop(self) -> None:
        while True:
            await self._has_pending.wait()
            await self._inflight.acquire()
            batch = self._pending[: self.batch_max]
            del self._pending[: self.batch_max]
            if not self._pending:
                self._has_pending.clear()
            if not batch:
                self._inflight.release()
                continue
            task = asyncio.create_task(self._commit_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit_batch(self, batch: list[tuple[NewMessage, asyncio.Future[str]]]) -> None:
        try:
            plain = [message_rows(m) for m, _ in batch if m.idempotency is None]
            try:
                started = time.perf_counter()
                await self._run(lambda tx: queue.insert_rows(tx, plain))
                if self.on_group is not None and plain:
                    self.on_group(time.perf_counter() - started, len(plain))
                done: list[tuple[NewMessage, asyncio.Future[str]]] = [
                    (m, f) for m, f in batch if m.idempotency is None
                ]
                rest = [(m, f) for m, f in batch if m.idempotency is not None]
            except asyncpg.IntegrityConstraintViolationError:
                done, rest = [], batch
            except (StoreUnavailable, asyncpg.PostgresError) as exc:
                err = exc if isinstance(exc, StoreError) else StoreUnavailable(f"store: {exc}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                return
            for m, fut in done:
                if not fut.done():
                    fut.set_result(m.id)
            for m, fut in rest:  # one transaction each, so one failure fails one
                try:
                    rows = message_rows(m)
                    await self._write(lambda tx, m=m, rows=rows: queue.enqueue(tx, m, rows))  # type: ignore[misc]
                    if not fut.done():
                        fut.set_result(m.id)
                except StoreError as exc:
                    if not fut.done():
                        fut.set_exception(exc)
        except BaseException as exc:  # never leave a caller waiting on a lost batch
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreUnavailable(f"store: {type(exc).__name__}"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight.release()

    # -- what only PostgreSQL does this way ------------------------------------
    async def events_since(
        self, cursor: str | None, limit: int, api_key_id: str | None = None
    ) -> tuple[list[Event], str]:
        # The cursor is "xid:id" (see the events_since statement for why).
        xid, _, last = (cursor or "0:0").partition(":")
        after = (xid, int(last or 0))
        rows = await self._read(lambda tx: queries.event_rows(tx, after, limit, api_key_id))
        if not rows:
            return [], cursor or "0:0"
        return [event_from_row(r) for r in rows], f"{rows[-1][-1]}:{rows[-1][0]}"

    # -- limits shared by the nodes (cluster_limits.py) ----------------------------
    async def publish_limits(self, node: str, proc: str, rows: Sequence[LimitRow]) -> None:
        """This process's changed limits: (table, name, total, step, last at, held) each."""
        columns = [list(c) for c in zip(*rows, strict=True)]
        await self._write(lambda tx: tx.execute("publish_limits", node, proc, *columns))

    async def other_nodes_limits(
        self, node: str, since: float
    ) -> tuple[list[tuple[Any, ...]], float]:
        """Rows of every other node changed after `since` (the database's clock), and
        that clock now."""

        async def read(tx: Tx) -> tuple[list[tuple[Any, ...]], float]:
            now = await tx.fetchrow("database_clock")
            rows = await tx.fetch("other_nodes_limits", node, since)
            assert now is not None
            return [tuple(r) for r in rows], float(now[0])

        return await self._read(read)

    async def forget_limits(self, older_than: float) -> None:
        await self._write(lambda tx: tx.execute("forget_limits", older_than))

    async def wait_for_work(self, timeout: float) -> None:
        async with self._listener_lock:  # many workers wait; one LISTEN connection serves all
            if self._listener is None or self._listener.is_closed():
                try:
                    self._listener = await asyncpg.connect(self.url, timeout=5)
                    await self._listener.add_listener(CHANNEL, lambda *_: self._work.set())
                except (*TRANSIENT, asyncpg.PostgresError):
                    self._listener = None  # fall back to polling until it comes back
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()
