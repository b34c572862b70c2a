"""The SQLite engine: one file in WAL mode with synchronous=FULL, written by one writer
thread per process.

The writer folds whatever is waiting into a single transaction (group commit): one
fsync acknowledges many messages. A caller's future resolves only after COMMIT has
returned, i.e. after the WAL is on disk. Reads use their own connection on a second
thread; WAL lets them run beside writes. Checkpoints run on a third, so the writer never
stalls on one. Every process writing the file takes the write turn (a flock) for the
whole transaction. A lock file keeps a second mailgate server from opening the same
database; CLI commands share it with a running server through SQLite's own locking.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mailgate.errors import StoreError, StoreLocked, StoreUnavailable
from mailgate.models import NewMessage
from mailgate.store import queue as state
from mailgate.store.base import Work
from mailgate.store.migrate import migrate
from mailgate.store.rows import NewRows
from mailgate.store.sqlite.bodies import BodyFiles, place
from mailgate.store.sqlite.tx import SqliteTx, drive

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
GATHER_THRESHOLD = 8  # after a batch at least this big, wait GATHER_DELAY for more writes
GATHER_DELAY = 0.0002
CHECKPOINT_INTERVAL = 0.5  # seconds between background WAL checkpoints
# Past this, a checkpoint also restarts the WAL (RESTART: it waits for the readers of
# older snapshots and holds writers back meanwhile). Under steady load readers are never
# all gone at once, so PASSIVE alone let the WAL grow without end (400 MB in 12 s).
# Small, so the WAL is soon written over in pages already cached: growing it, ext4
# allocates and zeroes each new page (2 KB ingest while delivering: 8 MB against 64 MB,
# 6-8% more msg/s and 7% less CPU per message).
WAL_RESTART_BYTES = 8 << 20
RESTART_WAIT_MS = 5  # how long a RESTART may wait for readers (and hold writers back)
log = logging.getLogger("mailgate.store")
Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


@dataclass(slots=True)
class WriteOp:
    """One write waiting for the writer thread."""

    fn: Work[Any] | None  # a general write
    message: NewMessage | None  # or an enqueue, which the writer may batch (or with
    # neither, an enqueue of `rows` alone: a message with no idempotency key)
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # the enqueue's rows, built by the caller, not the writer; an enqueue_many's fn
    # inserts its own, after _place_early has put their bodies in body files
    rows: list[NewRows] | None = None
    place_only: bool = False  # only put the rows' bodies in body files (see place)
    release: bool = False  # and then let go of the segments moved on from (see place)


def _plain(op: WriteOp) -> bool:
    """An enqueue with no idempotency key: its rows go into the group's bulk insert."""
    return op.fn is None and (op.message is None or op.message.idempotency is None)


def _resolve(results: list[Result]) -> None:
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class SqliteEngine:
    def __init__(
        self, path: Path, *, unsafe_no_fsync: bool, batch_max: int, exclusive: bool
    ) -> None:
        self.path = path
        self.exclusive = exclusive
        self.page_size = 4096  # read from the file on open
        self.unsafe_no_fsync = unsafe_no_fsync
        self.batch_max = batch_max
        self.files = BodyFiles(path.with_name(path.name + ".bodies"), fsync=not unsafe_no_fsync)
        self.work: asyncio.Event | None = None  # set when new work may be due
        self._ops: queue.SimpleQueue[WriteOp | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        self._rtx: SqliteTx | None = None
        self._ntx: SqliteTx | None = None  # read_now's, on the event loop's thread
        self._cconn: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock_fd: int | None = None
        # Every writing process (the server, its ingress and delivery children, CLI
        # commands) holds `mailgate.db.turn` while it writes; see _take_turn.
        self._turn_fd: int | None = None
        self._queue_fd: int | None = None  # the turnstile in front of the turn
        self._wake_loop: asyncio.AbstractEventLoop | None = None
        # groups committed but not yet synced (see _sync_loop), and the WAL file's fd
        self._unsynced: queue.SimpleQueue[tuple[list[WriteOp], list[Result], bool] | None] = (
            queue.SimpleQueue()
        )
        self._syncer: threading.Thread | None = None
        # whether the sync thread is syncing, and who to call when it is done (see
        # defer_while_syncing); the lock makes "busy, so call me after" atomic
        self._sync_state = threading.Lock()
        self._syncing = False
        self._after_sync: Callable[[], None] | None = None
        self._wal_fd: int | None = None
        self._sync_error: StoreUnavailable | None = None
        # metrics (set by the app): a commit group's seconds in the turn and its writes;
        # a sync's seconds. Called on the store's own threads, so they must never raise.
        self.on_group: Callable[[float, int], None] | None = None
        self.on_sync: Callable[[float], None] | None = None

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)
        self.work = asyncio.Event()
        self._wake_loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()
        if not self.unsafe_no_fsync:
            self._syncer = threading.Thread(target=self._sync_loop, name="sqlite-sync", daemon=True)
            self._syncer.start()
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
            self._lock_server()
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
            self._wconn = self._connect(writer=True)
            self._check_durability(self._wconn, 1)
            self._migrate(SqliteTx(self._wconn, self.files))
            # Checkpoints run on their own thread, so the writer never stalls on one.
            self._wconn.execute("PRAGMA wal_autocheckpoint = 0")
            if self.exclusive:
                # Holding the server lock at start, every lease in the file is a dead
                # process's: due now (one autocommitted statement).
                drive(state.recover_leases(SqliteTx(self._wconn, self.files), "", time.time()))
            self._rtx = SqliteTx(self._connect(), self.files)
            self._ntx = SqliteTx(self._connect(), self.files)
            self._ntx.conn.execute("PRAGMA busy_timeout = 0")  # never wait on the loop
            self._cconn = self._connect()
            # A RESTART holds writers back while it waits for readers: not for long.
            self._cconn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            self.page_size = int(self._cconn.execute("PRAGMA page_size").fetchone()[0])
            wal = Path(str(self.path) + "-wal")  # the migration's and the recovery's writes
            if not self.unsafe_no_fsync and wal.exists() and self._sync_wal() is not None:
                raise StoreError(f"store: cannot sync {wal}")
        except StoreError:  # a schema newer than this code
            self._release_lock()
            raise
        except sqlite3.OperationalError as exc:
            self._release_lock()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLocked(f"store: {self.path} is locked by another program") from None
            raise StoreError(f"store: cannot open {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._release_lock()
            raise StoreError(f"store: {self.path} is not a mailgate database: {exc}") from None

    def _lock_server(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"store: {self.path} is in use by another mailgate server ({lock_path} is locked)"
            ) from None
        self._lock_fd = fd

    def _connect(self, writer: bool = False) -> sqlite3.Connection:
        """A connection; the writer's commits are synced by the sync thread, not by
        SQLite (NORMAL), every other connection's by SQLite itself (FULL)."""
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"store: {self.path}: could not switch to WAL (got {mode})")
        level = "OFF" if self.unsafe_no_fsync else "NORMAL" if writer else "FULL"
        conn.execute("PRAGMA synchronous = " + level)
        conn.execute("PRAGMA foreign_keys = ON")
        # Statement journals (the savepoints of a commit group) in memory: on disk, each
        # commit group created, wrote and unlinked a file inside the write turn (strace:
        # 107 pwrites and 5 file calls per commit, against 42 and none in memory).
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _check_durability(self, conn: sqlite3.Connection, least: int = 2) -> None:
        """least 2 = FULL; 1 = NORMAL, for the writer, whose WAL the sync thread syncs."""
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        if level < least and not self.unsafe_no_fsync:
            raise StoreError("store: SQLite synchronous is below FULL; refusing to start")

    def _migrate(self, tx: SqliteTx) -> None:
        self._take_turn()
        try:
            tx.conn.execute("BEGIN IMMEDIATE")
            try:
                drive(migrate(tx, "sqlite"))
                tx.conn.execute("COMMIT")
            except BaseException:
                tx.conn.execute("ROLLBACK")
                raise
        finally:
            self._end_turn()

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
        if self._syncer is not None:  # after the writer: its last groups are answered
            self._unsynced.put(None)
            await asyncio.to_thread(self._syncer.join)
            self._syncer = None
        self._reader.shutdown(wait=True)
        if self._wconn is not None:
            try:  # leave a small WAL behind on a clean stop
                self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        for tx in (self._rtx, self._ntx):
            if tx is not None:
                tx.conn.close()
        for conn in (self._wconn, self._cconn):
            if conn is not None:
                conn.close()
        self.files.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._wconn = self._cconn = None
        self._rtx = self._ntx = None
        self._release_lock()

    # -- the checkpoint thread -------------------------------------------------
    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database file in the background (PASSIVE: never
        blocks the writer; RESTART once the WAL is long, so that it starts over). A
        checkpoint changes no committed data; it only bounds the WAL."""
        while not self._closing.wait(CHECKPOINT_INTERVAL):
            conn = self._cconn
            if conn is None:
                return
            try:
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames * self.page_size > WAL_RESTART_BYTES:
                    # just copied back: the RESTART has little left to copy while it
                    # holds writers back; busy (a reader stayed): tried next round
                    conn.execute("PRAGMA wal_checkpoint(RESTART)")
            except sqlite3.Error as exc:  # e.g. disk full: retried on the next round
                log.warning("store: checkpoint failed: %s", exc)

    # -- what callers use -------------------------------------------------------
    async def read(self, fn: Work[T]) -> T:
        tx = self._rtx
        assert tx is not None, "store is not open"
        # fn(tx) is made on the reader thread: a read cancelled before it runs must not
        # leave a coroutine behind that was never started
        return await asyncio.get_running_loop().run_in_executor(self._reader, lambda: drive(fn(tx)))

    async def read_now(self, fn: Work[T]) -> T:
        """fn on the calling thread, for a point read (a few primary-key probes, ~10 µs)
        that costs less than the hop to the reader thread: the door's suppression lookup
        runs once per message."""
        tx = self._ntx
        assert tx is not None, "store is not open"
        return drive(fn(tx))

    async def write(self, fn: Work[T], rows: list[NewRows] | None = None) -> T:
        """fn in the next commit group; rows: an enqueue_many's, placed early."""
        result: T = await self.submit(fn, None, rows)
        return result

    async def enqueue(self, message: NewMessage, rows: NewRows) -> str:
        result: str = await self.submit(None, message, [rows])
        return result

    def op(
        self, fn: Work[Any] | None, message: NewMessage | None, rows: list[NewRows] | None
    ) -> WriteOp:
        """A write (fn) or an enqueue (message), its future on the running loop."""
        loop = asyncio.get_running_loop()
        return WriteOp(fn, message, loop.create_future(), loop, rows)

    def commit_here(self, batch: list[WriteOp]) -> None:
        """Commit a batch on the calling thread, the loop's: the writer process has
        nothing else to run, and a second thread there would hand the GIL back and forth
        (a wait for the GIL, or for a core, while holding the write turn) several times a
        commit. Each op's future resolves once the commit is on disk. Only where nothing
        is written through `write`/`submit` (serve's writer process): both use the one
        writing connection."""
        self._commit_batch(batch)

    async def place(self, rows: list[NewRows]) -> list[NewRows]:
        """The rows with their bodies written to this process's body files, on disk, by
        the writer thread with whatever else is being placed (one fdatasync).
        For a process that commits through serve's writer process: a large body then
        crosses its socket as a file name and an offset, not as bytes.

        A segment this process moved on from stays locked (compaction leaves it alone)
        until release_placed: the caller calls it once every row it placed has been
        committed or refused, since a row naming that segment may still commit."""
        loop = asyncio.get_running_loop()
        op = WriteOp(None, None, loop.create_future(), loop, rows, place_only=True)
        self._ops.put(op)
        placed: list[NewRows] = await op.future
        return placed

    def release_placed(self) -> None:
        """Every row placed so far is committed or refused: the segments moved on from
        may go. Queued behind those placements, ahead of any later one, whose bodies go
        to the segment still being appended to."""
        loop = asyncio.get_running_loop()
        self._ops.put(WriteOp(None, None, loop.create_future(), loop, None, True, True))

    def submit(
        self, fn: Work[Any] | None, message: NewMessage | None, rows: list[NewRows] | None
    ) -> asyncio.Future[Any]:
        """A write (fn) or an enqueue (message) for the next commit group; its future
        resolves on this loop after COMMIT. (The writer process answers many callers
        through their futures' callbacks, without a task each.)"""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.put(WriteOp(fn, message, fut, loop, rows))
        return fut

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

    def _drain(self, batch: list[WriteOp]) -> bool:
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

    def _commit_batch(self, batch: list[WriteOp]) -> None:
        conn = self._wconn
        assert conn is not None
        try:
            self._place_early(batch)
        except StoreUnavailable as exc:  # disk full: nothing of this batch is acknowledged
            self._hand_back(batch, [(op.future, None, exc) for op in batch], False)
            return
        if any(op.place_only for op in batch):  # placed (and synced) by now: answered
            placed = [op for op in batch if op.place_only]
            if any(op.release for op in placed):
                self.files.release_retired()
            self._hand_back(placed, [(op.future, op.rows, None) for op in placed], False)
            batch = [op for op in batch if not op.place_only]
            if not batch:
                return
        tx = SqliteTx(conn, self.files)
        self._take_turn()
        started = time.perf_counter()
        took: float | None = None  # the commit's time in the turn, once it succeeded
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = self._apply(tx, batch)
            conn.execute("COMMIT")
            took = time.perf_counter() - started
        except BaseException as exc:  # never leave callers hanging
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = (
                StoreUnavailable(f"store: commit failed: {exc}")
                if isinstance(exc, sqlite3.Error)
                else exc
            )
            results = [(op.future, None, err) for op in batch]
            tx.woken = False
        finally:
            self._end_turn()
            self.files.release_retired()  # rows naming them are committed or never will be
        if self.unsafe_no_fsync:
            self._hand_back(batch, results, tx.woken)
        else:  # answered once the WAL is on disk, by the sync thread
            self._unsynced.put((batch, results, tx.woken))
        if took is not None and self.on_group is not None:  # after: nobody waits on it
            self.on_group(took, len(batch))

    # -- the sync thread ----------------------------------------------------------
    def defer_while_syncing(self, then: Callable[[], None]) -> bool:
        """True when a sync is running: `then` is called (on the sync thread) once it is
        done. A group committed during a sync waits for it and the next one anyway, so
        the caller may gather more writes into one commit meanwhile: every commit
        rewrites the last page of each table and index it touches, and small groups made
        the WAL 22 KB per 2 KB message."""
        with self._sync_state:
            if self._syncing:
                self._after_sync = then
            return self._syncing

    def _sync_loop(self) -> None:
        """Make committed groups durable, then answer them. The writer's connection runs
        with synchronous=NORMAL, so COMMIT does not wait for the disk inside the write
        turn; this thread syncs the WAL file after it (one fdatasync covers every group
        committed before it started) and only then resolves the groups' futures: a
        caller still hears of its write only once it is on disk, as with FULL, but the
        turn is not held through the sync and the writer starts the next group meanwhile."""
        while True:
            item = self._unsynced.get()
            if item is None:
                return
            with self._sync_state:
                self._syncing = True
            groups, stop = [item], False
            while True:
                try:
                    nxt = self._unsynced.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                groups.append(nxt)
            started = time.perf_counter()
            error = self._sync_wal()
            took = time.perf_counter() - started
            for batch, results, woken in groups:
                if error is not None:  # committed, but not known to be on disk: refused
                    results = [(fut, None, error) for fut, _, _ in results]
                self._hand_back(batch, results, woken and error is None)
            # after the answers; no error: a sync ran (after a failure none does)
            if error is None and self.on_sync is not None:
                self.on_sync(took)
            with self._sync_state:
                self._syncing = False
                then, self._after_sync = self._after_sync, None
            if then is not None:
                try:
                    then()
                except Exception:  # the sync thread must outlive a caller's bug
                    log.exception("store: a write waiting for the sync could not be resumed")
            if stop:
                return

    def _sync_wal(self) -> StoreUnavailable | None:
        """fdatasync the WAL file; an error for every write from the first failure on (a
        failed sync can lose pages that a later one would not report)."""
        if self._sync_error is not None:
            return self._sync_error
        wal = str(self.path) + "-wal"
        try:
            if self._wal_fd is not None and os.fstat(self._wal_fd).st_ino != os.stat(wal).st_ino:
                os.close(self._wal_fd)  # the WAL was made anew (never while we are open)
                self._wal_fd = None
            if self._wal_fd is None:
                self._wal_fd = os.open(wal, os.O_RDONLY)
            os.fdatasync(self._wal_fd)
        except OSError as exc:
            log.critical("store: syncing %s failed (%s); no write is acknowledged now", wal, exc)
            self._sync_error = StoreUnavailable(f"store: the disk failed a sync: {exc}")
            return self._sync_error
        return None

    def _hand_back(self, batch: list[WriteOp], results: list[Result], woken: bool) -> None:
        """Resolve each caller's future on its own loop; wake the workers on new work."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
        for op, result in zip(batch, results, strict=True):
            by_loop.setdefault(op.loop, []).append(result)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed; nobody waits any more
                pass
        if woken and self._wake_loop is not None and self.work is not None:
            try:
                self._wake_loop.call_soon_threadsafe(self.work.set)
            except RuntimeError:
                pass

    def _apply(self, tx: SqliteTx, batch: list[WriteOp]) -> list[Result]:
        """The batch inside one transaction: plain enqueues in one bulk insert, then each
        other op under its own savepoint, so one op's failure fails only that op."""
        conn = tx.conn
        plain = [op for op in batch if _plain(op)]
        plain_ok = False
        if len(plain) > 1:
            conn.execute("SAVEPOINT bulk")
            try:
                drive(state.insert_rows(tx, [r for op in plain if op.rows for r in op.rows]))
                conn.execute("RELEASE bulk")
                plain_ok = True
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO bulk")
                conn.execute("RELEASE bulk")
        results: list[Result] = []
        for op in batch:
            if plain_ok and _plain(op):
                assert op.rows is not None
                results.append((op.future, op.rows[0].message.id, None))
                continue
            conn.execute("SAVEPOINT one")
            try:
                if op.fn is None:  # an enqueue
                    assert op.rows is not None
                    if op.message is None:  # its rows alone (no idempotency key)
                        drive(state.insert_rows(tx, op.rows))
                        value: Any = op.rows[0].message.id
                    else:
                        value = drive(state.enqueue(tx, op.message, op.rows[0]))
                else:
                    value = drive(op.fn(tx))
                conn.execute("RELEASE one")
                results.append((op.future, value, None))
            except sqlite3.OperationalError:
                raise  # the connection's trouble (disk full, I/O): the whole group fails
            except Exception as exc:  # this op's own failure (a constraint, a duplicate
                # idempotency key, or a bug in it): the others in the group still commit
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
                err: BaseException = exc
                if isinstance(exc, sqlite3.IntegrityError):
                    err = StoreError(f"store: constraint failed: {exc}")
                results.append((op.future, None, err))
        return results

    def _place_early(self, batch: list[WriteOp]) -> None:
        """Write the enqueues' bodies before the write turn is taken, so that this
        process's fdatasync runs while another process commits. An idempotent enqueue's
        body is placed in its transaction: a duplicate must not write one."""
        lists = [
            op.rows
            for op in batch
            if op.rows and (op.message is None or op.message.idempotency is None)
        ]
        if not lists:
            return
        msgs = [r.message for rows in lists for r in rows]
        done = place(self.files, msgs)
        if done is msgs:  # all stay inline (the common case): nothing to rewrite
            return
        placed = iter(done)
        for rows in lists:  # in place: an enqueue_many's fn holds the same list
            rows[:] = [NewRows._make((next(placed), *r[1:])) for r in rows]
