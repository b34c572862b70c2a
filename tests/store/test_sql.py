"""The store's named SQL: what the loader reads, and that both backends name alike."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from mailgate.store.sql import numbered, parse, statements
from mailgate.store.sqlite.tx import drive

STORE = Path(__file__).parents[2] / "src" / "mailgate" / "store"


def test_parse_keeps_statements_by_name_and_drops_comment_lines() -> None:
    text = "-- header\n-- name: a\n-- why\nSELECT 1\n  FROM t\n\n-- name: b\nSELECT {key_columns}\n"
    got = parse(text)
    assert got["a"] == "SELECT 1 FROM t"
    assert got["b"].startswith("SELECT id, name, scopes")


def test_numbered_turns_marks_into_postgres_parameters() -> None:
    assert numbered("a = ? AND b IN (?, ?)") == "a = $1 AND b IN ($2, $3)"


def test_every_name_the_shared_code_uses_exists_for_both_backends() -> None:
    used = set()
    for path in (
        STORE / m for m in ("queue.py", "queries.py", "migrate.py", "base.py", "grants.py")
    ):
        used |= set(re.findall(r'tx\.\w+\(\s*"(\w+)"', path.read_text()))
    assert used, "the pattern found no statement names"
    for dialect in ("sqlite", "postgres"):
        assert used <= set(statements(dialect)), dialect


def test_no_postgres_statement_keeps_a_question_mark() -> None:
    assert not [n for n, sql in statements("postgres").items() if "?" in sql]


def test_drive_runs_a_coroutine_that_never_suspends() -> None:
    async def three() -> int:
        return 3

    assert drive(three()) == 3


def test_drive_refuses_a_coroutine_that_suspends() -> None:
    with pytest.raises(RuntimeError, match="suspend"):
        drive(asyncio.sleep(0))


def test_a_name_used_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="named twice"):
        parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


async def test_a_failing_write_fails_alone_in_its_commit_group(tmp_path: Path) -> None:
    """A write that raises (here a bug-like RuntimeError) is rolled back to its own
    savepoint; enqueues committed in the same group are kept and acknowledged."""
    from mailgate.models import NewMessage, Source
    from mailgate.store.sqlite.store import SqliteStore

    store = SqliteStore(str(tmp_path / "m.db"))
    await store.open()
    try:

        async def broken(tx: object) -> None:
            raise RuntimeError("a bug in one op")

        def new() -> NewMessage:
            return NewMessage(b"Subject: x\r\n\r\nx\r\n", "a@x.test", ("b@y.test",), Source.HTTP)

        sent = [new() for _ in range(20)]
        results = await asyncio.gather(
            *(store.enqueue(m) for m in sent[:10]),
            store._write(broken),  # type: ignore[arg-type]
            *(store.enqueue(m) for m in sent[10:]),
            return_exceptions=True,
        )
        assert isinstance(results[10], RuntimeError)
        assert results[:10] + results[11:] == [m.id for m in sent]
        for m in sent:
            assert await store.get_message(m.id) is not None
    finally:
        await store.close()
