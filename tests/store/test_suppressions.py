"""The suppression list in the store, on every backend: add (the newest reason wins),
look up, page, remove; a bounce's entry keeps its first reason; and the statement that
records a suppressed recipient's event finds it by its message, not by its address."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.errors import StoreError
from mailgate.models import (
    NewMessage,
    RecipientStatus,
    Settlement,
    Source,
    Suppression,
    SuppressionReason,
)
from mailgate.store import Store, open_store, queries
from mailgate.store.migrate import versions
from mailgate.store.sql import statements
from tests.conftest import pg_schema

NOW = 1_700_000_000.0


async def test_put_look_up_page_and_remove(store: Store) -> None:
    entries = [Suppression(f"u{i}@x.test", SuppressionReason.MANUAL, NOW) for i in range(5)]
    entries.append(Suppression("u1@x.test", SuppressionReason.UNSUBSCRIBE, NOW, "brand.test"))
    await store.put_suppressions(entries)
    await store.put_suppressions([Suppression("U0@X.test", SuppressionReason.COMPLAINT, NOW)])
    found = await store.suppressed_among(["u0@x.test", "u1@x.test", "nobody@x.test"])
    assert found.keys() == {"u0@x.test", "u1@x.test"}
    assert found["u0@x.test"] == [("", "complaint")]  # replaced; stored in lower case
    assert sorted(found["u1@x.test"]) == [("", "manual"), ("brand.test", "unsubscribe")]
    first = await store.list_suppressions("", "", None, 3)
    assert [(e.address, e.scope) for e in first] == [
        ("u0@x.test", ""),
        ("u1@x.test", ""),
        ("u1@x.test", "brand.test"),
    ]
    rest = await store.list_suppressions("", "", (first[-1].address, first[-1].scope), 10)
    assert [e.address for e in rest] == ["u2@x.test", "u3@x.test", "u4@x.test"]
    manual = await store.list_suppressions("manual", "u1", None, 10)
    assert [(e.address, e.reason) for e in manual] == [("u1@x.test", "manual")]
    assert await store.delete_suppression("u1@x.test", "brand.test") == 1
    assert await store.delete_suppression("u1@x.test", None) == 1
    assert await store.delete_suppression("u1@x.test", None) == 0
    assert await store.count_suppressions() == 4


async def test_a_hard_bounce_lists_the_address_once_keeping_the_first_reason(store: Store) -> None:
    await store.put_suppressions([Suppression("b@x.test", SuppressionReason.UNSUBSCRIBE, NOW)])
    message = NewMessage(b"x", "s@y.test", ("B@x.test", "c@x.test"), Source.HTTP, created_at=NOW)
    mid = await store.enqueue(message)
    claim = await store.claim("w", NOW + 10**6, 10, 60)
    assert claim is not None
    bounced = [
        Settlement(r.id, RecipientStatus.BOUNCED, None, suppress=SuppressionReason.HARD_BOUNCE)
        for r in claim.recipients
    ]
    assert await store.settle("w", bounced) == 2
    found = await store.suppressed_among(["b@x.test", "c@x.test"])
    assert found == {"b@x.test": [("", "unsubscribe")], "c@x.test": [("", "hard_bounce")]}
    [entry] = await store.list_suppressions("hard_bounce", "", None, 10)
    assert entry.message_id == mid


def test_the_suppressed_event_is_found_by_message_not_by_address(tmp_path: Path) -> None:
    """One address can have a million recipient rows; a message has a few. The planner,
    without statistics, took the address index: each batch of suppressed recipients
    scanned every earlier row of that address (13x slower, and timeouts under load)."""
    conn = sqlite3.connect(tmp_path / "plan.db")
    for _, paths in sorted(versions("sqlite").items()):
        for path in paths:
            conn.executescript(path.read_text())
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + statements("sqlite")["insert_suppressed_event"],
        (NOW, "{}", "m", "a@x.test"),
    ).fetchall()
    text = " ".join(str(row[-1]) for row in plan)
    assert "recipients_message" in text and "recipients_address" not in text, text


async def test_a_database_with_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """An older mailgate would ignore what it does not know (a sandbox key's flag: it
    would send that key's mail for real); it must refuse to run instead."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = open_store(url)
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "m.db")
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    conn.close()
    newer = open_store(url)
    with pytest.raises(StoreError, match="schema version 9999, newer than this mailgate"):
        await newer.open()


async def test_a_prefix_lists_exactly_the_addresses_that_start_with_it(store: Store) -> None:
    """The prefix bounds the index scan from both sides; each answer is the plain filter."""
    letters = ["a", "b", "z", "~", "\u00e9", "\ud7ff", "\uffff", "\U0010ffff"]
    addresses = sorted({f"{x}{y}@x.test" for x in letters for y in letters} | {"@x.test"})
    await store.put_suppressions([Suppression(a, SuppressionReason.MANUAL, NOW) for a in addresses])
    for prefix in ["", *letters, *(x + y for x in letters[:4] for y in letters)]:
        listed = await store.list_suppressions("", prefix, None, 1000)
        want = [a for a in addresses if a.startswith(prefix)]
        assert [e.address for e in listed] == want, prefix


@settings(max_examples=300)
@given(st.text(max_size=6), st.text(max_size=6))
def test_the_next_prefix_is_above_every_string_that_starts_with_the_prefix(
    prefix: str, rest: str
) -> None:
    upper = queries.next_prefix(prefix)
    text = prefix + rest
    assert prefix <= text
    if upper:
        assert text < upper and prefix < upper
        assert not 0xD800 <= ord(upper[-1]) <= 0xDFFF, "a surrogate cannot be stored"
    else:  # only a prefix of U+10FFFF alone has no string above it
        assert set(prefix) <= {"\U0010ffff"}


async def test_a_prefix_lists_exactly_under_a_linguistic_collation() -> None:
    """A PostgreSQL database whose default collation is ICU en-US (where '{', the bound
    above 'z', sorts before the letters): a prefix still lists every address with it."""
    async with pg_schema() as url:  # skips (or fails in CI) without PostgreSQL
        base = url.partition("?")[0]
        name = "mg_icu_" + uuid.uuid4().hex[:10]
        admin = await asyncpg.connect(base)
        await admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8'"
            " LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )
        try:
            store = open_store(f"{base.rpartition('/')[0]}/{name}")
            await store.open()
            try:
                addresses = ["y.b@x.test", "za@x.test", "zz-top@x.test", "z{@x.test"]
                entries = [Suppression(a, SuppressionReason.MANUAL, NOW) for a in addresses]
                await store.put_suppressions(entries)
                listed = await store.list_suppressions("", "z", None, 100)
                assert [e.address for e in listed] == ["za@x.test", "zz-top@x.test", "z{@x.test"]
                listed = await store.list_suppressions("", "zz-", None, 100)
                assert [e.address for e in listed] == ["zz-top@x.test"]
            finally:
                await store.close()
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            await admin.close()
