"""insert_many: a batch as a few multi-row INSERTs stores exactly what executemany would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailgate.store import open_store
from mailgate.store.sqlite.store import SqliteStore
from mailgate.store.sqlite.tx import insert_many, multi_row

SQL = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 63, 64, 65, 127, 128, 200])
def test_same_rows_in_the_same_order_as_executemany(n: int) -> None:
    rows = [(i, f"v{i}" if i % 5 else None) for i in range(n)] + [(0, "duplicate")]
    tables = []
    for insert in (lambda c: c.executemany(SQL, rows), lambda c: insert_many(c, SQL, rows)):
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (a INTEGER UNIQUE, b TEXT)")
        insert(conn)
        tables.append(conn.execute("SELECT rowid, a, b FROM t ORDER BY rowid").fetchall())
    assert tables[0] == tables[1]
    assert len(tables[1]) == max(n, 1)


def test_only_plain_value_inserts_are_rewritten() -> None:
    assert multi_row("INSERT INTO t (a) VALUES (?)", 3) == "INSERT INTO t (a) VALUES (?), (?), (?)"
    assert multi_row("INSERT INTO t (a) SELECT id FROM m WHERE id = ?", 2) is None
    assert multi_row("UPDATE t SET a = ? WHERE b = ?", 2) is None
    # a group with anything but placeholders is left alone (a function call holds ")")
    assert multi_row("INSERT INTO t (a, b) VALUES (?, json(?))", 2) is None


async def test_statement_journals_stay_in_memory(tmp_path: Path) -> None:
    """A commit group's savepoints journal in memory, not in a file made and unlinked
    inside the write turn on every commit."""
    store = open_store(f"sqlite:///{tmp_path / 'mailgate.db'}")
    await store.open()
    try:
        assert isinstance(store, SqliteStore)
        level = await store.engine.write(lambda tx: tx.query("PRAGMA temp_store"))
        assert level[0][0] == 2  # MEMORY
    finally:
        await store.close()
