"""A SQLite connection as the queue logic's Tx (protocols.py), and the driver that runs
that logic on the store's own threads.

queue.py and queries.py are `async def` so that PostgreSQL can await asyncpg. Every
method here returns without ever suspending, so a coroutine over a SqliteTx finishes
on its first step: `drive` sends it None once and takes its result from the
StopIteration that ends it. No event loop is involved, so the writer thread (and the
reader thread) run the very same logic synchronously, with no per-call scheduling.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from mailgate.store.protocols import Row
from mailgate.store.rows import MessageRow
from mailgate.store.sql import statements
from mailgate.store.sqlite.bodies import BodyFiles, place

T = TypeVar("T")
SQL = statements("sqlite")


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine over a SqliteTx to its end, here and now (see the module doc)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("store: a SQLite transaction step tried to suspend")


def _params(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A list parameter goes as JSON text (the SQL reads it with json_each)."""
    return tuple(json.dumps(a) if type(a) is list else a for a in args)


# Rows per statement of a bulk insert: a batch of n rows goes as one statement per set
# bit of n, so a commit group of any size costs a few statements and the statement cache
# holds a few shapes per table.
CHUNKS = (64, 32, 16, 8, 4, 2, 1)
_PLAIN_VALUES = re.compile(r"VALUES (\((?:\?, )*\?\))")  # only placeholders in the group


@functools.cache
def multi_row(sql: str, n: int) -> str | None:
    """`INSERT ... VALUES (?, ...)` for n rows in one statement; None for a statement
    of another shape (an INSERT ... SELECT, an UPDATE).

    Why: sqlite3 lets go of the GIL around every step, so executemany hands the GIL to
    the event loop and waits to get it back once per row, inside the write turn; one
    statement for many rows does that once per statement. (Alone it measures the same;
    the commit groups in serve that took twice as long as alone are mostly the turn and
    CPU contention, docs/benchmarks.md.)"""
    found = _PLAIN_VALUES.search(sql)
    if found is None or not sql.lstrip().upper().startswith("INSERT") or "SELECT" in sql.upper():
        return None
    group = found[1]
    return sql[: found.start(1)] + ", ".join([group] * n) + sql[found.end(1) :]


def insert_many(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """executemany for a plain INSERT ... VALUES, a few statements per batch."""
    if len(rows) < 2 or multi_row(sql, 2) is None:
        conn.executemany(sql, rows)
        return
    i = 0
    for size in CHUNKS:
        while len(rows) - i >= size:
            chunk = rows[i : i + size]
            statement = multi_row(sql, size)
            assert statement is not None  # the shape was checked above
            conn.execute(statement, [v for row in chunk for v in row])
            i += size


def split_script(script: str) -> list[str]:
    """A migration's statements, split the way SQLite itself sees them."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection, files: BodyFiles) -> None:
        self.conn = conn
        self.files = files
        self.woken = False  # wake_workers was called: the writer wakes them after COMMIT

    async def fetch(self, name: str, *args: Any) -> Sequence[Row]:
        return self.conn.execute(SQL[name], _params(args)).fetchall()

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        row: Row | None = self.conn.execute(SQL[name], _params(args)).fetchone()
        return row

    async def execute(self, name: str, *args: Any) -> None:
        self.conn.execute(SQL[name], _params(args))

    async def executemany(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        insert_many(self.conn, SQL[name], rows)

    async def query(self, sql: str, *args: Any) -> Sequence[Row]:
        return self.conn.execute(sql, args).fetchall()

    async def script(self, text: str) -> None:
        for statement in split_script(text):
            self.conn.execute(statement)

    async def insert_messages(self, rows: Sequence[MessageRow]) -> None:
        insert_many(self.conn, SQL["insert_message"], place(self.files, rows))

    async def claim_due(
        self, now: float, limit: int, lease_until: float, owner: str
    ) -> Sequence[Row]:
        found = self.conn.execute(SQL["next_due_domain"], (now,)).fetchone()
        if found is None:
            return []
        rows = self.conn.execute(SQL["due_in_domain"], (found[0], now, limit)).fetchall()
        ids = json.dumps([r[0] for r in rows])
        self.conn.execute(SQL["lease"], (lease_until, owner, now, ids))
        return rows  # as read before the lease: lease_owner is the previous owner

    def body(self, raw: bytes, body_file: str | None, body_offset: int | None, size: int) -> bytes:
        if body_file is None or body_offset is None:
            return bytes(raw)
        return self.files.read(body_file, body_offset, size)

    def wake_workers(self) -> None:
        self.woken = True
