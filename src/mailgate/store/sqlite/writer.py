"""serve's one SQLite writer: a child process that makes every commit for the others.

Why: SQLite lets one connection write at a time. With every process of `serve` writing
for itself, each took the write turn (a flock) in turn, re-read the pages the others
had just changed, and held the turn while its own event loop kept the GIL from its
writer thread: with delivery on, the turn was held about 100% of the time, each
process's commit taking 1.1-1.8 ms where the same group took 0.5-1.0 ms in a quiet
process (docs/benchmarks.md). One writer process folds the writes of all of serve's
processes into one group commit and holds the turn only for SQLite's own work.

The protocol is length-prefixed pickles over a Unix socket beside the database (mode
0600: only serve's processes, running as the same user, may connect). A request is
(id, name, args), name being "enqueue_rows" (a message with no idempotency key, as its
rows in a list of one), "enqueue", "enqueue_many" (the idempotent messages whole, every
plain one as its rows; rows cross as plain tuples, rows.rows_wire) or one of store.base.CHANGES (or
SQLITE_CHANGES); the reply (id, ok, value or exception) is sent once the commit is on
disk. Replies and requests made in one turn of a loop go out in one write.

If the writer dies, its clients fail the writes in flight with StoreUnavailable (SMTP
451, HTTP 503: nothing acknowledged; a write it had committed may then be made again by
the client's retry, as after any crash between commit and answer) and connect again on
their next write, once serve's supervisor has started another writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mailgate.errors import MailgateError, StoreError, StoreUnavailable
from mailgate.store import queue
from mailgate.store.base import CHANGES
from mailgate.store.rows import rows_unwire
from mailgate.store.sqlite.compaction import repoint_bodies
from mailgate.store.sqlite.engine import SqliteEngine, WriteOp

log = logging.getLogger("mailgate.store")
HEADER = struct.Struct("!I")
# The changes only SQLite makes, beside store.base.CHANGES
SQLITE_CHANGES = {"repoint_bodies": repoint_bodies}
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; longer paths go through /proc/self/fd


def socket_path(database: Path) -> Path:
    return database.with_name(database.name + ".writer")


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for bind/connect: the path itself, or when it is too long for a Unix
    socket address, the same file through a descriptor of its directory."""
    if len(os.fsencode(path)) < SOCKET_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class _Peer(asyncio.Protocol):
    """Frames in and out over one connection; what is sent in one turn of the loop goes
    out in one write."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._in += data
        buf, at = self._in, 0
        while len(buf) - at >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, at)
            end = at + HEADER.size + size
            if len(buf) < end:
                break
            self.received(pickle.loads(buf[at + HEADER.size : end]))
            at = end
        del buf[:at]

    def received(self, obj: Any) -> None:
        raise NotImplementedError

    def send(self, obj: Any) -> None:
        self.send_frame(frame(obj))

    def send_frame(self, data: bytes) -> None:
        if not self._out:
            self.loop.call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        """Write what was sent since the last flush (nothing: no write)."""
        if not self._out:
            return
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))


# -- the writer process's end -------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """What goes back for a failed write: mailgate's own errors as they are (they
    pickle), anything else as a StoreError naming it."""
    if isinstance(exc, MailgateError):
        return exc
    return StoreError(f"store writer: {type(exc).__name__}: {exc}")


class _Session(_Peer):
    def __init__(self, server: WriterServer) -> None:
        super().__init__()
        self.server = server
        self.in_flight = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.discard(self)
        self.transport = None

    def received(self, obj: Any) -> None:
        req, name, args = obj
        if self.server.stopping:  # its reply could not be sent: refuse it, do not commit it
            self.send((req, False, StoreUnavailable("store: the writer process is stopping")))
            return
        try:
            fut = self.server.submit(name, args)
        except Exception as exc:
            self.send((req, False, _portable(exc)))
            return
        self.in_flight += 1
        fut.add_done_callback(lambda f: self._done(req, f))

    def _done(self, req: int, fut: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        if fut.cancelled():
            reply: tuple[int, bool, Any] = (req, False, StoreUnavailable("store: write cancelled"))
        elif (exc := fut.exception()) is not None:
            reply = (req, False, _portable(exc))
        else:
            reply = (req, True, fut.result())
        try:
            self.send(reply)
        except Exception as exc:  # a result that does not pickle: a bug, said as one
            self.send((req, False, StoreError(f"store writer: cannot send the result: {exc}")))


class WriterServer:
    """The writer process's component: the socket, and each request into the engine's
    next commit group."""

    def __init__(self, engine: SqliteEngine, path: Path) -> None:
        self.engine, self.path = engine, path
        self.sessions: set[_Session] = set()
        self.stopping = False
        self.closed = False  # past stop's grace: nothing more is committed
        self._batch: list[WriteOp] = []  # requests read since the last commit
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # serving's, set by start

    def submit(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """The request into the next commit group, made on this loop's thread once the
        requests read in this turn of the loop are all in."""
        engine = self.engine
        if name == "enqueue_rows":  # a message with no idempotency key: its rows say all
            [wire] = args[0]
            op = engine.op(None, None, [rows_unwire(wire)])
        elif name == "enqueue":
            message, wire = args
            op = engine.op(None, message, [rows_unwire(wire)])
        elif name == "enqueue_many":
            messages, wires = args
            rows = [rows_unwire(w) for w in wires]
            op = engine.op(lambda tx: queue.enqueue_many(tx, messages, rows), None, rows)
        else:
            change = CHANGES.get(name) or SQLITE_CHANGES.get(name)
            if change is None:
                raise StoreError(f"store writer: no such change {name!r}")
            op = engine.op(lambda tx: change(tx, *args), None, None)
        if not self._batch or len(self._batch) + 1 == self.engine.batch_max:
            asyncio.get_running_loop().call_soon(self._commit)
        self._batch.append(op)
        return op.future

    def _commit_later(self) -> None:
        """From the sync thread, once its sync is done: commit what waited, after the
        synced groups' replies."""
        assert self._loop is not None, "requests come in only once started"
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
            self._loop.call_soon_threadsafe(self._after_replies)

    def _after_replies(self) -> None:
        """The sync queued its groups' answers on this loop before this; resolving them
        has queued each reply's callback by now, so a commit queued here runs after
        them, and its flush sends their replies before it holds the loop for a commit.
        (Queued straight away, the commit ran first and every reply waited for it.)"""
        assert self._loop is not None
        self._loop.call_soon(self._commit)

    def _commit(self) -> None:
        """Commit the requests read so far; while the last group is being synced, wait
        for the sync's end instead (up to batch_max requests), gathering more into one
        commit (engine.defer_while_syncing says why; docs/benchmarks.md what it gained).
        Replies waiting to go out go first: a commit holds this loop for a while."""
        limit = self.engine.batch_max
        if not self._batch or self.closed:
            return
        if len(self._batch) < limit and self.engine.defer_while_syncing(self._commit_later):
            return
        for session in self.sessions:
            session.flush()
        batch, self._batch = self._batch, []
        for at in range(0, len(batch), limit):
            self.engine.commit_here(batch[at : at + limit])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead writer's
        with reachable(self.path) as address:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Session(self), address
            )
            # Connecting takes write permission on the socket; it is born without it for
            # others (umask 022) and is made the owner's alone before anyone is told of it.
            os.chmod(address, 0o600)

    async def stop(self, grace: float) -> None:
        """Serve's other processes have stopped by now (the writer is stopped last);
        answer what is still in flight, then close."""
        if self._server is None:
            return
        self._server.close()
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(s.in_flight for s in self.sessions) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # Writes still waiting for a sync that outlived the grace: their clients are about
        # to hear "went away", so they are refused here and never committed (a commit
        # after that answer would be made twice by the client's retry).
        self.closed = True
        waiting, self._batch = self._batch, []
        for op in waiting:
            if not op.future.done():
                op.future.set_exception(StoreUnavailable("store: the writer process is stopping"))
        await asyncio.sleep(0)  # the last replies' flush
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# -- the other processes' end -------------------------------------------------------------


class WriterClient(_Peer):
    """Sends one process's writes to the writer process and hands back its answers."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._connecting = asyncio.Lock()

    async def call(self, name: str, *args: Any) -> Any:
        if self.transport is None:
            await self._connect()
        req = next(self._ids)
        data = frame((req, name, args))  # a write that cannot be sent fails here, alone
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._pending[req] = fut
        self.send_frame(data)
        return await fut

    async def _connect(self) -> None:
        async with self._connecting:
            if self.transport is not None:
                return
            try:
                with reachable(self.path) as address:
                    await self.loop.create_unix_connection(lambda: self, address)
            except OSError as exc:
                raise StoreUnavailable(
                    f"store: the writer process is not reachable ({exc.strerror or exc})"
                ) from None

    def received(self, obj: Any) -> None:
        req, ok, value = obj
        fut = self._pending.pop(req, None)
        if fut is None or fut.done():  # its caller gave up waiting
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._in.clear()
        self._out.clear()
        pending, self._pending = self._pending, {}
        if pending:
            log.warning(
                "store: the writer process went away with %d writes unanswered", len(pending)
            )
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(
                    StoreUnavailable("store: the writer process went away before answering")
                )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
