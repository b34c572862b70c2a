"""The many-node store: PostgreSQL through asyncpg.

Enqueues that arrive together are folded into one transaction (group commit, as in
the SQLite store); `synchronous_commit` is forced on for every connection. Workers
claim due recipients with FOR UPDATE SKIP LOCKED and are woken by LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from mailgate.errors import DuplicateIdempotencyKey, StoreError, StoreUnavailable
from mailgate.models import (
    ApiKey,
    Claim,
    Event,
    EventKind,
    Message,
    MessageQuery,
    NewMessage,
    Recipient,
    RecipientStatus,
    Settlement,
    new_id,
)
from mailgate.store import (
    EVENT_COLUMNS,
    EVENT_FOR_STATUS,
    KEY_COLUMNS,
    MESSAGE_COLUMNS,
    RECIPIENT_COLUMNS,
    Dsn,
    dsns_to_queue,
    event_from_row,
    key_from_row,
    key_row,
    lease_expired_details,
    message_from_row,
    message_rows,
    recipient_from_row,
    settle_params,
    settlement_details,
)

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"
ACTIVE_SQL = "('queued', 'deferred')"
CHANNEL = "mailgate_work"
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

INSERT_MESSAGE = (
    "INSERT INTO messages (id, created_at, sender, source, api_key_id, tags, metadata,"
    " idempotency_key, message_id_header, subject, scheduled_at, size, raw)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
)
INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, address, domain, status, next_attempt_at, updated_at)"
    " VALUES ($1,$2,$3,$4,$5,$6)"
)
INSERT_EVENT = (
    "INSERT INTO events (message_id, kind, at, details, api_key_id) VALUES ($1,$2,$3,$4,$5)"
)
# -- name: insert_recipient_event: the owner copied from the message in the same statement
INSERT_RECIPIENT_EVENT = (
    "INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)"
    " SELECT id, $1, $2, $3, $4, api_key_id FROM messages WHERE id = $5"
)
INSERT_TAG = "INSERT INTO message_tags (tag, message_id) VALUES ($1,$2) ON CONFLICT DO NOTHING"
CLAIM_IDEMPOTENCY = (
    "INSERT INTO idempotency (api_key_id, key, request_hash, response, message_id,"
    " created_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7)"
    " ON CONFLICT (api_key_id, key) DO UPDATE SET request_hash = excluded.request_hash,"
    " response = excluded.response, message_id = excluded.message_id,"
    " created_at = excluded.created_at, expires_at = excluded.expires_at"
    " WHERE idempotency.expires_at <= excluded.created_at RETURNING 1"
)
# -- name: claim: the most overdue domain, then its due rows, skipping rows others hold
CLAIM = f"""
WITH d AS (
    SELECT domain FROM recipients
    WHERE status IN {ACTIVE_SQL} AND next_attempt_at <= $1
    ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
), c AS (
    SELECT id, lease_owner AS previous FROM recipients
    WHERE status IN {ACTIVE_SQL} AND next_attempt_at <= $1 AND domain = (SELECT domain FROM d)
    ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE recipients r SET next_attempt_at = $3, lease_owner = $4, updated_at = $1
FROM c WHERE r.id = c.id
RETURNING {", ".join("r." + c.strip() for c in RECIPIENT_COLUMNS.split(","))}, c.previous
"""
# -- name: settle_recipient (fenced by the lease owner) and its event, in one statement
SETTLE = (
    "WITH u AS (UPDATE recipients SET status = $1, attempts = attempts + 1,"
    " next_attempt_at = $2, lease_owner = NULL, last_code = $3, last_enhanced = $4,"
    " last_text = $5, remote_host = $6, updated_at = $7"
    f" WHERE id = $8 AND lease_owner = $9 AND status IN {ACTIVE_SQL} RETURNING message_id)"
    " INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)"
    " SELECT m.id, $8, $10, $7, $11, m.api_key_id FROM u JOIN messages m ON m.id = u.message_id"
    " RETURNING message_id"
)


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class PostgresStore:
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
        await self._migrate()
        self._batcher = asyncio.create_task(self._batch_loop())

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in sorted(MIGRATIONS.glob("*.sql")):
                version = int(path.name.split("_", 1)[0])
                if version not in done:
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES ($1, $2)", version, time.time()
                    )

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

    async def _run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], tx: bool = True) -> T:
        if self._pool is None:
            raise StoreUnavailable("store: not open")
        try:
            async with self._pool.acquire() as conn:
                if not tx:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except DuplicateIdempotencyKey:
            raise
        except TRANSIENT as exc:
            raise StoreUnavailable(f"store: {type(exc).__name__}: {exc}") from None

    # -- group commit of enqueues --------------------------------------------
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
            plain = [m for m, _ in batch if m.idempotency is None]
            try:
                await self._run(lambda c: self._insert_many(c, plain))
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
                    await self._run(lambda c, m=m: self._insert_one(c, m))  # type: ignore[misc]
                    if not fut.done():
                        fut.set_result(m.id)
                except (StoreError, asyncpg.PostgresError) as exc:
                    if not fut.done():
                        fut.set_exception(
                            exc if isinstance(exc, StoreError) else StoreError(f"store: {exc}")
                        )
        except BaseException as exc:  # never leave a caller waiting on a lost batch
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreUnavailable(f"store: {type(exc).__name__}"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight.release()

    async def _insert_many(self, conn: asyncpg.Connection, messages: Sequence[NewMessage]) -> None:
        if not messages:
            return
        msgs, rcpts, events, tags = [], [], [], []
        for m in messages:
            msg, rs, ev, ts = message_rows(m)
            msgs.append(msg)
            rcpts.extend(rs)
            events.append(ev)
            tags.extend(ts)
        await conn.executemany(INSERT_MESSAGE, msgs)
        await conn.executemany(INSERT_RECIPIENT, rcpts)
        await conn.executemany(INSERT_EVENT, events)
        if tags:
            await conn.executemany(INSERT_TAG, tags)
        await conn.execute(f"NOTIFY {CHANNEL}")

    async def _insert_one(self, conn: asyncpg.Connection, m: NewMessage) -> str:
        if m.idempotency is not None:
            i = m.idempotency
            won = await conn.fetchval(
                CLAIM_IDEMPOTENCY,
                m.api_key_id or "",
                i.key,
                i.request_hash,
                i.response,
                m.id,
                m.created_at,
                i.expires_at,
            )
            if won is None:
                first = await conn.fetchval(
                    "SELECT message_id FROM idempotency WHERE api_key_id = $1 AND key = $2",
                    m.api_key_id or "",
                    i.key,
                )
                raise DuplicateIdempotencyKey(first)
        await self._insert_many(conn, [m])
        return m.id

    # -- messages ---------------------------------------------------------------
    async def ping(self) -> None:
        name = f"{os.uname().nodename}:{os.getpid()}"
        await self._run(
            lambda c: c.execute(
                "INSERT INTO nodes (name, seen_at) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                name,
                time.time(),
            )
        )

    async def enqueue(self, message: NewMessage) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((message, fut))
        self._has_pending.set()
        return await fut

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        async def run(c: asyncpg.Connection) -> list[str]:
            for m in messages:
                if m.idempotency is not None:
                    await self._insert_one(c, m)
            await self._insert_many(c, [m for m in messages if m.idempotency is None])
            return [m.id for m in messages]

        try:
            return await self._run(run)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise StoreError(f"store: constraint failed: {exc}") from None

    async def get_message(self, message_id: str) -> Message | None:
        row = await self._run(
            lambda c: c.fetchrow(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id
            ),
            tx=False,
        )
        return message_from_row(row) if row else None

    async def get_raw(self, message_id: str) -> bytes | None:
        raw = await self._run(
            lambda c: c.fetchval("SELECT raw FROM messages WHERE id = $1", message_id), tx=False
        )
        return bytes(raw) if raw is not None else None

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        rows = await self._run(
            lambda c: c.fetch(
                f"SELECT {MESSAGE_COLUMNS}, raw FROM messages WHERE id = ANY($1::text[])",
                list(message_ids),
            ),
            tx=False,
        )
        return {r[0]: (message_from_row(r), bytes(r[-1])) for r in rows}

    async def recipients(self, message_id: str) -> list[Recipient]:
        rows = await self._run(
            lambda c: c.fetch(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = $1 ORDER BY id",
                message_id,
            ),
            tx=False,
        )
        return [recipient_from_row(r) for r in rows]

    async def events(self, message_id: str) -> list[Event]:
        rows = await self._run(
            lambda c: c.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE message_id = $1 ORDER BY id", message_id
            ),
            tx=False,
        )
        return [event_from_row(r) for r in rows]

    async def events_since(
        self, cursor: str | None, limit: int, api_key_id: str | None = None
    ) -> tuple[list[Event], str]:
        # bigserial ids are not commit-ordered: a transaction holding id 10 may commit
        # after one holding 11. So the feed walks (xid, id), the writing transaction's id
        # first, and reads only transactions older than every one still running
        # (pg_snapshot_xmin): below that horizon no event can ever appear again, so a
        # cursor there is exact. A long-open transaction delays the feed, never skips.
        xid, _, last = (cursor or "0:0").partition(":")
        args: list[Any] = [xid, int(last or 0), limit]
        sql = (
            f"SELECT {EVENT_COLUMNS}, xid::text FROM events"
            " WHERE (xid, id) > ($1::text::xid8, $2)"
            " AND xid < pg_snapshot_xmin(pg_current_snapshot())"
        )
        if api_key_id is not None:
            args.append(api_key_id)
            sql += " AND api_key_id = $4"
        sql += " ORDER BY xid, id LIMIT $3"
        rows = await self._run(lambda c: c.fetch(sql, *args), tx=False)
        if not rows:
            return [], cursor or "0:0"
        return [event_from_row(r) for r in rows], f"{rows[-1][-1]}:{rows[-1][0]}"

    async def list_messages(self, query: MessageQuery) -> list[Message]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.api_key_id is not None:
            where.append(f"m.api_key_id = {arg(query.api_key_id)}")
        if query.cursor:
            where.append(f"m.id < {arg(query.cursor)}")
        # ids are ULIDs of created_at, so a time range is an id range on the primary key
        if query.since is not None:
            where.append(f"m.id >= {arg(new_id(query.since, floor=True))}")
        if query.until is not None:
            where.append(f"m.id < {arg(new_id(query.until, floor=True))}")
        if query.tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM message_tags t WHERE t.message_id = m.id"
                f" AND t.tag = {arg(query.tag)})"
            )
        if query.status is not None or query.recipient is not None:
            sub = "SELECT 1 FROM recipients r WHERE r.message_id = m.id"
            if query.status is not None:
                sub += f" AND r.status = {arg(query.status.value)}"
            if query.recipient is not None:
                sub += f" AND r.address = {arg(query.recipient)}"
            where.append(f"EXISTS ({sub})")
        cols = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
        sql = f"SELECT {cols} FROM messages m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY m.id DESC LIMIT {arg(query.limit)}"
        rows = await self._run(lambda c: c.fetch(sql, *args), tx=False)
        return [message_from_row(r) for r in rows]

    async def idempotent_response(self, api_key_id: str | None, key: str) -> tuple[str, str] | None:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT request_hash, response FROM idempotency"
                " WHERE api_key_id = $1 AND key = $2 AND expires_at > $3",
                api_key_id or "",
                key,
                time.time(),
            ),
            tx=False,
        )
        return (row[0], row[1]) if row else None

    # -- queue ------------------------------------------------------------------
    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
        async def run(c: asyncpg.Connection) -> Claim | None:
            rows = await c.fetch(CLAIM, now, limit, now + lease_seconds, owner)
            if not rows:
                return None
            taken = [r for r in rows if r["previous"] is not None]
            if taken:
                await c.executemany(
                    INSERT_RECIPIENT_EVENT,
                    [
                        (
                            r["id"],
                            EventKind.LEASE_EXPIRED.value,
                            now,
                            lease_expired_details(r["previous"]),
                            r["message_id"],
                        )
                        for r in taken
                    ],
                )
            # lease_owner reads as the previous owner, as in SQLite: None unless taken over
            recipients = sorted(
                (
                    dataclasses.replace(
                        recipient_from_row(tuple(r)[:-1]), lease_owner=r["previous"]
                    )
                    for r in rows
                ),
                key=lambda r: (r.message_id, r.id),
            )
            return Claim(recipients[0].domain, owner, now + lease_seconds, tuple(recipients))

        return await self._run(run)

    async def settle(
        self, owner: str, settlements: Sequence[Settlement], dsns: Sequence[Dsn] = ()
    ) -> int:
        now = time.time()

        async def run(c: asyncpg.Connection) -> int:
            settled: set[int] = set()
            for s in settlements:
                message_id = await c.fetchval(
                    SETTLE,
                    *settle_params(s, now, owner),
                    EVENT_FOR_STATUS[s.status].value,
                    settlement_details(s),
                )
                if message_id is not None:
                    settled.add(s.recipient_id)
            # in this transaction: a crash keeps both or neither
            await self._insert_many(c, dsns_to_queue(dsns, settled))
            return len(settled)

        try:
            return await self._run(run)
        except asyncpg.PostgresError as exc:  # e.g. a DSN's row refused: nothing was written
            raise StoreError(f"store: settle failed: {exc}") from None

    async def recover_leases(self, owner_prefix: str, now: float) -> int:
        async def run(c: asyncpg.Connection) -> int:
            rows = await c.fetch(
                "UPDATE recipients SET next_attempt_at = $1"
                f" WHERE lease_owner IS NOT NULL AND status IN {ACTIVE_SQL}"
                " AND left(lease_owner, $2) = $3 RETURNING id",
                now,
                len(owner_prefix),
                owner_prefix,
            )
            if rows:
                await c.execute(f"NOTIFY {CHANNEL}")
            return len(rows)

        return await self._run(run)

    async def release(self, owner: str, recipient_ids: Sequence[int], now: float) -> int:
        async def run(c: asyncpg.Connection) -> int:
            rows = await c.fetch(
                "UPDATE recipients SET next_attempt_at = $1, lease_owner = NULL, updated_at = $1"
                f" WHERE id = ANY($2::bigint[]) AND lease_owner = $3 AND status IN {ACTIVE_SQL}"
                " RETURNING id",
                now,
                list(recipient_ids),
                owner,
            )
            await c.execute(f"NOTIFY {CHANNEL}")
            return len(rows)

        return await self._run(run)

    async def _change_active(self, message_id: str, now: float, kind: EventKind) -> int:
        async def run(c: asyncpg.Connection) -> int:
            if kind is EventKind.CANCELLED:
                rows = await c.fetch(
                    "UPDATE recipients SET status = 'cancelled', next_attempt_at = NULL,"
                    " lease_owner = NULL, updated_at = $1"
                    f" WHERE message_id = $2 AND status IN {ACTIVE_SQL} RETURNING id",
                    now,
                    message_id,
                )
            else:
                rows = await c.fetch(
                    "UPDATE recipients SET next_attempt_at = $1, updated_at = $1"
                    f" WHERE message_id = $2 AND status IN {ACTIVE_SQL}"
                    " AND lease_owner IS NULL RETURNING id",
                    now,
                    message_id,
                )
                await c.execute(f"NOTIFY {CHANNEL}")
            await c.executemany(
                INSERT_RECIPIENT_EVENT, [(r[0], kind.value, now, "{}", message_id) for r in rows]
            )
            return len(rows)

        return await self._run(run)

    async def cancel(self, message_id: str, now: float) -> int:
        return await self._change_active(message_id, now, EventKind.CANCELLED)

    async def retry_now(self, message_id: str, now: float) -> int:
        return await self._change_active(message_id, now, EventKind.RETRY_NOW)

    async def status_counts(self) -> dict[RecipientStatus, int]:
        rows = await self._run(
            lambda c: c.fetch("SELECT status, count(*) FROM recipients GROUP BY status"), tx=False
        )
        counts = dict.fromkeys(RecipientStatus, 0)
        for status, n in rows:
            counts[RecipientStatus(status)] = n
        return counts

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

    # -- API keys -----------------------------------------------------------------
    async def add_key(self, key: ApiKey, secret_hash: str) -> None:
        row = key_row(key, secret_hash)
        await self._run(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, name, secret_hash, scopes, sender_domains,"
                " created_at, revoked_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                *row,
            )
        )

    async def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = await self._run(
            lambda c: c.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id),
            tx=False,
        )
        return key_from_row(row) if row else None

    async def list_keys(self) -> list[ApiKey]:
        rows = await self._run(
            lambda c: c.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at"), tx=False
        )
        return [key_from_row(r)[0] for r in rows]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        n = await self._run(
            lambda c: c.fetchval(
                "WITH u AS (UPDATE api_keys SET revoked_at = $1 WHERE id = $2"
                " AND revoked_at IS NULL RETURNING 1) SELECT count(*) FROM u",
                now,
                key_id,
            )
        )
        return bool(n)
