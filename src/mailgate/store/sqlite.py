"""The embedded default store: one SQLite file in WAL mode with synchronous=FULL.

All writes go through one writer thread that folds whatever is waiting into a
single transaction (group commit): one fsync acknowledges many messages. A caller's
future resolves only after COMMIT has returned, i.e. after the WAL is on disk.
Reads use their own connection on a second thread; WAL lets them run beside writes.
A lock file keeps a second mailgate server from opening the same database; CLI commands
share it with a running server through SQLite's own locking.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mailgate.errors import DuplicateIdempotencyKey, StoreError, StoreLocked, StoreUnavailable
from mailgate.models import (
    ACTIVE_STATUSES,
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
    Rows,
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
from mailgate.store.body_files import BodyFiles

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations" / "sqlite"
ACTIVE_SQL = "('queued', 'deferred')"
BUSY_TIMEOUT_MS = 5000
GATHER_THRESHOLD = 8  # after a batch at least this big, wait GATHER_DELAY for more writes
GATHER_DELAY = 0.0002
SWITCH_INTERVAL = 0.0005  # seconds; see open()
# Bodies go to body files (see body_files.py) from this size, when a commit group
# carries at least BODY_FILE_GROUP_MIN bytes of them; else they stay in the row.
BODY_FILE_MIN = 512
BODY_FILE_GROUP_MIN = 64 * 1024
PLACED_ROW = 15  # a message row with body_file and body_offset
POLL_INTERVAL = 0.02  # how often a waiting worker looks for other processes' commits
CHECKPOINT_INTERVAL = 0.5  # seconds between background WAL checkpoints
log = logging.getLogger("mailgate.store")

# -- name: insert_message
INSERT_MESSAGE = (
    "INSERT INTO messages (id, created_at, sender, source, api_key_id, tags, metadata,"
    " idempotency_key, message_id_header, subject, scheduled_at, size, raw, body_file,"
    " body_offset) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# -- name: insert_recipient
INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, address, domain, status, next_attempt_at, updated_at)"
    " VALUES (?,?,?,?,?,?)"
)
# -- name: insert_event
INSERT_EVENT = "INSERT INTO events (message_id, kind, at, details, api_key_id) VALUES (?,?,?,?,?)"
# -- name: insert_recipient_event: the owner copied from the message in the same statement
INSERT_RECIPIENT_EVENT = (
    "INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)"
    " SELECT id, ?, ?, ?, ?, api_key_id FROM messages WHERE id = ?"
)
INSERT_TAG = "INSERT OR IGNORE INTO message_tags (tag, message_id) VALUES (?,?)"
# -- name: claim_idempotency: insert, or take over an expired row; 0 changes = in use
CLAIM_IDEMPOTENCY = (
    "INSERT INTO idempotency (api_key_id, key, request_hash, response, message_id,"
    " created_at, expires_at) VALUES (?,?,?,?,?,?,?)"
    " ON CONFLICT (api_key_id, key) DO UPDATE SET request_hash = excluded.request_hash,"
    " response = excluded.response, message_id = excluded.message_id,"
    " created_at = excluded.created_at, expires_at = excluded.expires_at"
    " WHERE idempotency.expires_at <= excluded.created_at"
)
# -- name: next_due_domain
NEXT_DUE_DOMAIN = (
    f"SELECT domain FROM recipients WHERE status IN {ACTIVE_SQL} AND next_attempt_at <= ?"
    " ORDER BY next_attempt_at LIMIT 1"
)
# -- name: due_in_domain
DUE_IN_DOMAIN = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE status IN {ACTIVE_SQL}"
    " AND domain = ? AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
)
# -- name: settle_recipient (fenced by the lease owner)
SETTLE = (
    "UPDATE recipients SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
    " lease_owner = NULL, last_code = ?, last_enhanced = ?, last_text = ?,"
    f" remote_host = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND status IN {ACTIVE_SQL}"
    " RETURNING message_id"
)


def _statements(script: str) -> list[str]:
    """Split a migration into statements the way SQLite itself sees them."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


@dataclass(slots=True)
class _Op:
    """One write waiting for the writer thread."""

    fn: Callable[[sqlite3.Connection], Any] | None  # a general write
    message: NewMessage | None  # or an enqueue, which the writer may batch
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # the enqueue's rows, built by the caller, not the writer; an enqueue_many's fn
    # inserts its own, after _place_early has put their bodies in body files
    rows: list[Rows] | None = None


def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class SqliteStore:
    """Store on one SQLite file; see the module docstring for the commit model."""

    def __init__(
        self,
        path: str,
        *,
        unsafe_no_fsync: bool = False,
        batch_max: int = 1000,
        exclusive: bool = False,
    ) -> None:
        self.path = Path(path)
        self.exclusive = exclusive
        self.unsafe_no_fsync = unsafe_no_fsync
        self.batch_max = batch_max
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        self._cconn: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock_fd: int | None = None
        # Every writing process (the server, its ingress and delivery children, CLI
        # commands) holds `mailgate.db.turn` while it writes; see _take_turn.
        self._turn_fd: int | None = None
        self._queue_fd: int | None = None  # the turnstile in front of the turn
        self._work: asyncio.Event | None = None
        self._bodies = BodyFiles(
            self.path.with_name(self.path.name + ".bodies"), fsync=not unsafe_no_fsync
        )
        self._wake_loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        # The writer thread must get the GIL back promptly after each fsync; with the
        # default 5 ms switch interval it waited out the event loop's whole burst of work,
        # so commits and the loop never overlapped (measured: 14k -> 16-20k enqueues/s).
        sys.setswitchinterval(SWITCH_INTERVAL)
        await asyncio.to_thread(self._open_sync)
        self._work = asyncio.Event()
        self._wake_loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()
        if self.exclusive:  # one checkpointer is enough; the server's children write too
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store: cannot create {self.path.parent}: {exc.strerror}") from None
        if self.exclusive:
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreLocked(
                    f"store: {self.path} is in use by another mailgate server "
                    f"({lock_path} is locked)"
                ) from None
            self._lock_fd = fd
        try:
            self._turn_fd = os.open(
                self.path.with_name(self.path.name + ".turn"), os.O_RDWR | os.O_CREAT, 0o600
            )
            self._queue_fd = os.open(
                self.path.with_name(self.path.name + ".turn-queue"),
                os.O_RDWR | os.O_CREAT,
                0o600,
            )
        except OSError as exc:
            self._release_lock()
            raise StoreError(f"store: cannot open {self.path}.turn: {exc.strerror}") from None
        try:
            self._wconn = self._connect()
            self._check_durability(self._wconn)
            self._migrate(self._wconn)
            # Checkpoints run on their own thread, so the writer never stalls on one.
            self._wconn.execute("PRAGMA wal_autocheckpoint = 0")
            if self.exclusive:
                self._recover_leases(self._wconn)
            self._rconn = self._connect()
            self._cconn = self._connect()
        except sqlite3.OperationalError as exc:
            self._release_lock()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLocked(f"store: {self.path} is locked by another program") from None
            raise StoreError(f"store: cannot open {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._release_lock()
            raise StoreError(f"store: {self.path} is not a mailgate database: {exc}") from None

    @staticmethod
    def _recover_leases(conn: sqlite3.Connection, owner_prefix: str = "", now: float = 0) -> int:
        """Make recipients leased by dead workers due now. The owner stays, so the next
        claim records `lease_expired` (a possible duplicate if the remote had the data).
        Holding the server lock at start, every lease in the file is a dead process's."""
        cur = conn.execute(
            "UPDATE recipients SET next_attempt_at = ?"
            f" WHERE lease_owner IS NOT NULL AND status IN {ACTIVE_SQL}"
            " AND substr(lease_owner, 1, ?) = ?",
            (now or time.time(), len(owner_prefix), owner_prefix),
        )
        return cur.rowcount

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"store: {self.path}: could not switch to WAL (got {mode})")
        conn.execute("PRAGMA synchronous = " + ("OFF" if self.unsafe_no_fsync else "FULL"))
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _check_durability(self, conn: sqlite3.Connection) -> None:
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        if level < 2 and not self.unsafe_no_fsync:  # 2 = FULL, 3 = EXTRA
            raise StoreError("store: SQLite synchronous is below FULL; refusing to start")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        self._take_turn()
        try:
            self._migrate_in_turn(conn)
        finally:
            self._end_turn()

    def _migrate_in_turn(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for path in sorted(MIGRATIONS.glob("*.sql")):
                version = int(path.name.split("_", 1)[0])
                if version in done:
                    continue
                for statement in _statements(path.read_text()):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for fd in (self._turn_fd, self._queue_fd):
            if fd is not None:
                os.close(fd)
        self._turn_fd = self._queue_fd = None

    async def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._ops.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._reader.shutdown(wait=True)
        if self._wconn is not None:
            try:  # leave a small WAL behind on a clean stop
                self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        for conn in (self._wconn, self._rconn, self._cconn):
            if conn is not None:
                conn.close()
        self._bodies.close()
        self._wconn = self._rconn = self._cconn = None
        self._release_lock()

    # -- the checkpoint thread -------------------------------------------------
    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database file in the background (PASSIVE: never
        blocks the writer). A checkpoint changes no committed data; it only bounds the WAL."""
        while not self._closing.wait(CHECKPOINT_INTERVAL):
            conn = self._cconn
            if conn is None:
                return
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # e.g. disk full: retried on the next round
                log.warning("store: checkpoint failed: %s", exc)

    # -- the writer thread ----------------------------------------------------
    def _write_loop(self) -> None:
        last = 0
        while True:
            op = self._ops.get()
            if op is None:
                return
            batch = [op]
            stop = self._drain(batch)
            if not stop and last >= GATHER_THRESHOLD and len(batch) < self.batch_max:
                # Under load, a short wait gathers more writers into this commit: one
                # fsync then covers more messages (the idea of PostgreSQL's commit_delay).
                time.sleep(GATHER_DELAY)
                stop = self._drain(batch)
            last = len(batch)
            self._commit_batch(batch)
            if stop:
                return

    def _drain(self, batch: list[_Op]) -> bool:
        """Move waiting ops into the batch; True when a stop request was found."""
        while len(batch) < self.batch_max:
            try:
                nxt = self._ops.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            batch.append(nxt)
        return False

    def _take_turn(self) -> None:
        """Wait for the write turn. Every process writing the file takes `mailgate.db.turn`
        for the whole transaction: the kernel wakes the next writer the moment the lock
        is free, where SQLite's busy handler would sleep (up to 100 ms a round) and
        could leave a process beside a busy server waiting for ever.

        A waiter holds `mailgate.db.turn-queue` while it waits, so the writer that just
        let go queues behind it instead of taking the turn straight back (flock is not
        fair: one ingress process kept the turn for long runs and the other's sessions
        stalled, halving 2 KB SMTP ingest in half the runs)."""
        if self._turn_fd is not None and self._queue_fd is not None:
            fcntl.flock(self._queue_fd, fcntl.LOCK_EX)
            fcntl.flock(self._turn_fd, fcntl.LOCK_EX)
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def _end_turn(self) -> None:
        if self._turn_fd is not None:
            fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

    def _commit_batch(self, batch: list[_Op]) -> None:
        conn = self._wconn
        assert conn is not None
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            self._place_early(batch)
        except StoreUnavailable as exc:  # disk full: nothing of this batch is acknowledged
            self._hand_back(batch, [(op.future, None, exc) for op in batch])
            return
        self._take_turn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = self._apply(conn, batch)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = StoreUnavailable(f"store: commit failed: {exc}")
            results = [(op.future, None, err) for op in batch]
        except BaseException as exc:  # never leave callers hanging
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            results = [(op.future, None, exc) for op in batch]
        finally:
            self._end_turn()
        self._hand_back(batch, results)

    def _hand_back(
        self, batch: list[_Op], results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        """Resolve each caller's future on its own loop; wake the workers on new mail."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for op, result in zip(batch, results, strict=True):
            by_loop.setdefault(op.loop, []).append(result)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed; nobody waits any more
                pass
        if self._wake_loop is not None and any(op.message is not None for op in batch):
            try:
                self._wake_loop.call_soon_threadsafe(self._set_work)
            except RuntimeError:
                pass

    def _set_work(self) -> None:
        if self._work is not None:
            self._work.set()

    def _apply(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        plain = [
            op
            for op in batch
            if op.message is not None and op.message.idempotency is None and op.rows is not None
        ]
        plain_ok = False
        if len(plain) > 1:
            conn.execute("SAVEPOINT bulk")
            try:
                self._insert_rows(conn, [r for op in plain if op.rows for r in op.rows])
                conn.execute("RELEASE bulk")
                plain_ok = True
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO bulk")
                conn.execute("RELEASE bulk")
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for op in batch:
            if plain_ok and op.message is not None and op.message.idempotency is None:
                results.append((op.future, op.message.id, None))
                continue
            conn.execute("SAVEPOINT one")
            try:
                if op.message is not None:
                    value: Any = self._insert_one(conn, op.message)
                else:
                    assert op.fn is not None
                    value = op.fn(conn)
                conn.execute("RELEASE one")
                results.append((op.future, value, None))
            except (sqlite3.IntegrityError, DuplicateIdempotencyKey, StoreError) as exc:
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
                err: BaseException = exc
                if isinstance(exc, sqlite3.IntegrityError):
                    err = StoreError(f"store: constraint failed: {exc}")
                results.append((op.future, None, err))
        return results

    def _insert_rows(self, conn: sqlite3.Connection, all_rows: Sequence[Rows]) -> None:
        msgs, rcpts, events, tags = [], [], [], []
        for msg, rs, ev, ts in all_rows:
            msgs.append(msg)
            rcpts.extend(rs)
            events.append(ev)
            tags.extend(ts)
        conn.executemany(INSERT_MESSAGE, self._place_bodies(msgs))
        conn.executemany(INSERT_RECIPIENT, rcpts)
        conn.executemany(INSERT_EVENT, events)
        if tags:
            conn.executemany(INSERT_TAG, tags)

    def _place_early(self, batch: list[_Op]) -> None:
        """Write the enqueues' bodies before the write turn is taken, so that this
        process's fdatasync runs while another process commits."""
        lists = [  # an idempotent enqueue is inserted from its message, not these rows
            op.rows
            for op in batch
            if op.rows and (op.message is None or op.message.idempotency is None)
        ]
        if not lists:
            return
        placed = iter(self._place_bodies([r[0] for rows in lists for r in rows]))
        for rows in lists:  # in place: an enqueue_many's fn holds the same list
            rows[:] = [(next(placed), rcpts, event, tags) for _, rcpts, event, tags in rows]

    def _place_bodies(self, msgs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Message rows with their body (last column) inline, or in a body file and
        (b"", segment, offset) in its place; the files are on disk before the commit.
        Rows placed already (by _place_early) pass through."""
        spill = [
            i
            for i, msg in enumerate(msgs)
            if len(msg) < PLACED_ROW and len(msg[-1]) >= BODY_FILE_MIN
        ]
        if sum(len(msgs[i][-1]) for i in spill) < BODY_FILE_GROUP_MIN:
            spill = []  # an fdatasync of its own would cost more than SQLite's copies
        out = [msg if len(msg) == PLACED_ROW else (*msg, None, None) for msg in msgs]
        if spill:
            places = self._bodies.append([msgs[i][-1] for i in spill])
            for i, (name, offset) in zip(spill, places, strict=True):
                out[i] = (*msgs[i][:-1], b"", name, offset)
        return out

    def _body(self, raw: bytes, name: str | None, offset: int | None, size: int) -> bytes:
        if name is None or offset is None:
            return bytes(raw)
        return self._bodies.read(name, offset, size)

    def _insert_one(self, conn: sqlite3.Connection, m: NewMessage) -> str:
        if m.idempotency is not None:
            i = m.idempotency
            cur = conn.execute(
                CLAIM_IDEMPOTENCY,
                (
                    m.api_key_id or "",
                    i.key,
                    i.request_hash,
                    i.response,
                    m.id,
                    m.created_at,
                    i.expires_at,
                ),
            )
            if cur.rowcount == 0:
                row = conn.execute(
                    "SELECT message_id FROM idempotency WHERE api_key_id = ? AND key = ?",
                    (m.api_key_id or "", i.key),
                ).fetchone()
                raise DuplicateIdempotencyKey(row[0])
        self._insert_rows(conn, [message_rows(m)])
        return m.id

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], rows: list[Rows] | None = None
    ) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ops.put(_Op(fn, None, fut, loop, rows))
        return await fut

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        assert conn is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    # -- messages ---------------------------------------------------------------
    async def ping(self) -> None:
        row = (f"{os.uname().nodename}:{os.getpid()}", time.time())
        await self._write(
            lambda c: c.execute(
                "INSERT INTO nodes (name, seen_at) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                row,
            )
        )

    async def enqueue(self, message: NewMessage) -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._ops.put(_Op(None, message, fut, loop, [message_rows(message)]))
        return await fut

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        rows = [message_rows(m) for m in messages if m.idempotency is None]

        def run(conn: sqlite3.Connection) -> list[str]:
            for m in messages:
                if m.idempotency is not None:
                    self._insert_one(conn, m)
            self._insert_rows(conn, rows)
            return [m.id for m in messages]

        return await self._write(run, rows)

    async def get_message(self, message_id: str) -> Message | None:
        def run(c: sqlite3.Connection) -> Message | None:
            row = c.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            return message_from_row(row) if row else None

        return await self._read(run)

    async def get_raw(self, message_id: str) -> bytes | None:
        def run(c: sqlite3.Connection) -> bytes | None:
            row = c.execute(
                "SELECT raw, body_file, body_offset, size FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            return self._body(*row) if row else None

        return await self._read(run)

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        ids = list(message_ids)

        def run(c: sqlite3.Connection) -> dict[str, tuple[Message, bytes]]:
            out: dict[str, tuple[Message, bytes]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = (
                    f"SELECT {MESSAGE_COLUMNS}, raw, body_file, body_offset"
                    f" FROM messages WHERE id IN ({marks})"
                )
                for row in c.execute(sql, chunk):
                    message = message_from_row(row[:-3])
                    raw, name, offset = row[-3:]
                    out[row[0]] = (message, self._body(raw, name, offset, message.size))
            return out

        return await self._read(run)

    async def recipients(self, message_id: str) -> list[Recipient]:
        def run(c: sqlite3.Connection) -> list[Recipient]:
            rows = c.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY id",
                (message_id,),
            )
            return [recipient_from_row(r) for r in rows]

        return await self._read(run)

    async def events(self, message_id: str) -> list[Event]:
        def run(c: sqlite3.Connection) -> list[Event]:
            rows = c.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE message_id = ? ORDER BY id",
                (message_id,),
            )
            return [event_from_row(r) for r in rows]

        return await self._read(run)

    async def events_since(
        self, cursor: str | None, limit: int, api_key_id: str | None = None
    ) -> tuple[list[Event], str]:
        # Ids are commit-ordered here: every writer, in any process, inserts inside
        # BEGIN IMMEDIATE while it holds the write turn, so `id > cursor` skips nothing.
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ?"
        args: list[Any] = [int(cursor or 0)]
        if api_key_id is not None:
            sql += " AND api_key_id = ?"
            args.append(api_key_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)

        def run(c: sqlite3.Connection) -> list[Event]:
            return [event_from_row(r) for r in c.execute(sql, args)]

        events = await self._read(run)
        return events, str(events[-1].id) if events else (cursor or "0")

    async def list_messages(self, query: MessageQuery) -> list[Message]:
        where: list[str] = []
        args: list[Any] = []
        if query.api_key_id is not None:
            where.append("m.api_key_id = ?")
            args.append(query.api_key_id)
        if query.cursor:
            where.append("m.id < ?")
            args.append(query.cursor)
        # ids are ULIDs of created_at, so a time range is an id range on the primary key
        if query.since is not None:
            where.append("m.id >= ?")
            args.append(new_id(query.since, floor=True))
        if query.until is not None:
            where.append("m.id < ?")
            args.append(new_id(query.until, floor=True))
        if query.tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM message_tags t WHERE t.message_id = m.id AND t.tag = ?)"
            )
            args.append(query.tag)
        if query.status is not None or query.recipient is not None:
            sub = "SELECT 1 FROM recipients r WHERE r.message_id = m.id"
            if query.status is not None:
                sub += " AND r.status = ?"
                args.append(query.status.value)
            if query.recipient is not None:
                sub += " AND r.address = ?"
                args.append(query.recipient)
            where.append(f"EXISTS ({sub})")
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.id DESC LIMIT ?"
        args.append(query.limit)
        cols = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
        sql = sql.replace(MESSAGE_COLUMNS, cols, 1)

        def run(c: sqlite3.Connection) -> list[Message]:
            return [message_from_row(r) for r in c.execute(sql, args)]

        return await self._read(run)

    async def idempotent_response(self, api_key_id: str | None, key: str) -> tuple[str, str] | None:
        now = time.time()

        def run(c: sqlite3.Connection) -> tuple[str, str] | None:
            row = c.execute(
                "SELECT request_hash, response FROM idempotency"
                " WHERE api_key_id = ? AND key = ? AND expires_at > ?",
                (api_key_id or "", key, now),
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._read(run)

    # -- queue ------------------------------------------------------------------
    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
        lease_until = now + lease_seconds
        # A read first: idle workers polling an empty queue must not queue up writes.
        if await self._read(lambda c: c.execute(NEXT_DUE_DOMAIN, (now,)).fetchone()) is None:
            return None

        def run(c: sqlite3.Connection) -> Claim | None:
            row = c.execute(NEXT_DUE_DOMAIN, (now,)).fetchone()
            if row is None:
                return None
            domain = row[0]
            rows = [recipient_from_row(r) for r in c.execute(DUE_IN_DOMAIN, (domain, now, limit))]
            c.executemany(
                "UPDATE recipients SET next_attempt_at = ?, lease_owner = ?, updated_at = ?"
                " WHERE id = ?",
                [(lease_until, owner, now, r.id) for r in rows],
            )
            c.executemany(
                INSERT_RECIPIENT_EVENT,
                [
                    (
                        r.id,
                        EventKind.LEASE_EXPIRED.value,
                        now,
                        lease_expired_details(r.lease_owner),
                        r.message_id,
                    )
                    for r in rows
                    if r.lease_owner is not None
                ],
            )
            rows.sort(key=lambda r: (r.message_id, r.id))
            return Claim(domain, owner, lease_until, tuple(rows))

        return await self._write(run)

    async def settle(
        self, owner: str, settlements: Sequence[Settlement], dsns: Sequence[Dsn] = ()
    ) -> int:
        now = time.time()
        queued = False

        def run(c: sqlite3.Connection) -> int:
            nonlocal queued
            settled: set[int] = set()
            for s in settlements:
                row = c.execute(SETTLE, settle_params(s, now, owner)).fetchone()
                if row is None:
                    continue
                settled.add(s.recipient_id)
                c.execute(
                    INSERT_RECIPIENT_EVENT,
                    (
                        s.recipient_id,
                        EVENT_FOR_STATUS[s.status].value,
                        now,
                        settlement_details(s),
                        row[0],
                    ),
                )
            notices = dsns_to_queue(dsns, settled)
            if notices:  # in this transaction: a crash keeps both or neither
                self._insert_rows(c, [message_rows(m) for m in notices])
                queued = True
            return len(settled)

        changed = await self._write(run)
        if queued and self._work is not None:
            self._work.set()
        return changed

    async def release(self, owner: str, recipient_ids: Sequence[int], now: float) -> int:
        def run(c: sqlite3.Connection) -> int:
            cur = c.executemany(
                "UPDATE recipients SET next_attempt_at = ?, lease_owner = NULL, updated_at = ?"
                f" WHERE id = ? AND lease_owner = ? AND status IN {ACTIVE_SQL}",
                [(now, now, rid, owner) for rid in recipient_ids],
            )
            return cur.rowcount

        return await self._write(run)

    async def recover_leases(self, owner_prefix: str, now: float) -> int:
        n = await self._write(lambda c: self._recover_leases(c, owner_prefix, now))
        if n and self._work is not None:
            self._work.set()
        return n

    async def _change_active(
        self, message_id: str, now: float, status: RecipientStatus, kind: EventKind
    ) -> int:
        def run(c: sqlite3.Connection) -> int:
            if status is RecipientStatus.CANCELLED:
                rows = c.execute(
                    "UPDATE recipients SET status = ?, next_attempt_at = NULL, lease_owner = NULL,"
                    f" updated_at = ? WHERE message_id = ? AND status IN {ACTIVE_SQL}"
                    " RETURNING id",
                    (status.value, now, message_id),
                ).fetchall()
            else:
                rows = c.execute(
                    "UPDATE recipients SET next_attempt_at = ?, updated_at = ?"
                    f" WHERE message_id = ? AND status IN {ACTIVE_SQL} AND lease_owner IS NULL"
                    " RETURNING id",
                    (now, now, message_id),
                ).fetchall()
            c.executemany(
                INSERT_RECIPIENT_EVENT, [(r[0], kind.value, now, "{}", message_id) for r in rows]
            )
            return len(rows)

        n = await self._write(run)
        if n and self._work is not None:
            self._work.set()
        return n

    async def cancel(self, message_id: str, now: float) -> int:
        return await self._change_active(
            message_id, now, RecipientStatus.CANCELLED, EventKind.CANCELLED
        )

    async def retry_now(self, message_id: str, now: float) -> int:
        return await self._change_active(
            message_id, now, RecipientStatus.QUEUED, EventKind.RETRY_NOW
        )

    async def status_counts(self) -> dict[RecipientStatus, int]:
        def run(c: sqlite3.Connection) -> dict[RecipientStatus, int]:
            counts = dict.fromkeys(RecipientStatus, 0)
            for status, n in c.execute("SELECT status, count(*) FROM recipients GROUP BY status"):
                counts[RecipientStatus(status)] = n
            return counts

        return await self._read(run)

    async def wait_for_work(self, timeout: float) -> None:
        """Return when this process enqueued something, when another process committed
        (a new `data_version` on this process's read connection), or after `timeout`."""
        assert self._work is not None
        deadline = time.monotonic() + timeout
        seen = await self._data_version()
        while not self._work.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._work.wait(), min(left, POLL_INTERVAL))
            except TimeoutError:
                if await self._data_version() != seen:
                    break
        self._work.clear()

    async def _data_version(self) -> int:
        return int(await self._read(lambda c: c.execute("PRAGMA data_version").fetchone()[0]))

    # -- API keys -----------------------------------------------------------------
    async def add_key(self, key: ApiKey, secret_hash: str) -> None:
        row = key_row(key, secret_hash)
        await self._write(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, name, secret_hash, scopes, sender_domains,"
                " created_at, revoked_at) VALUES (?,?,?,?,?,?,?)",
                row,
            )
        )

    async def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        def run(c: sqlite3.Connection) -> tuple[ApiKey, str] | None:
            row = c.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            return key_from_row(row) if row else None

        return await self._read(run)

    async def list_keys(self) -> list[ApiKey]:
        def run(c: sqlite3.Connection) -> list[ApiKey]:
            rows = c.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at")
            return [key_from_row(r)[0] for r in rows]

        return await self._read(run)

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
            return cur.rowcount > 0

        return await self._write(run)


__all__ = ["ACTIVE_STATUSES", "SqliteStore"]
