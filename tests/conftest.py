"""Shared fixtures: real stores (a SQLite file, a PostgreSQL schema on 127.0.0.1), and the
`slow` marker put on the long tests by where they live (`scripts/test -m "not slow"`)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from mailgate.store import Store, open_store
from mailgate.store.sqlite.store import SqliteStore
from mailgate.store.sqlite.writer import WriterServer, socket_path

# Tests marked `slow` (node id prefixes, from the repository root): each takes more than
# about 2 s alone on an idle machine (`pytest --durations`), or starts `mailgate serve`
# or Postfix as processes. The default run still runs them; `-m "not slow"` leaves them out.
SLOW = (
    "tests/reliability/",  # serve, sinks and store children as processes, under load
    "tests/scenarios/test_postfix_receivers.py",  # real Postfix
    "tests/scenarios/test_generated_addresses.py",  # generated addresses through both doors
    "tests/scenarios/test_delivery_failures.py::test_stall_after_the_dot",  # a real timeout
    "tests/http/test_schemathesis.py",  # generated calls to every route
    "tests/ingress/smtp_relay/test_backpressure.py::test_client_that_never_reads",
    "tests/ingress/smtp_relay/test_auth.py::test_failures_on_a_key_lock",  # real delays
    "tests/test_cli.py::test_sqlite_locked_by_another_program",  # `mailgate` processes
    "tests/test_cli.py::test_init_keys_and_queue",
    "tests/test_cli.py::test_second_server_on_one_database",
    "tests/test_cli.py::test_serve_answers_then_stops_cleanly",
    "tests/test_compose.py::test_compose_round_trips_through_the_email_package",  # generated
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


PG_BASE = os.environ.get("MAILGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_reachable() -> str | None:
    try:
        conn = await asyncpg.connect(PG_BASE, timeout=3)
    except Exception as exc:  # any failure means "not here"
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    problem = await _pg_reachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_BASE} is required in CI: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE}: {problem}")
    schema = "mg_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(PG_BASE)
    await conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'mailgate.db'}"


@pytest.fixture(params=["sqlite", "sqlite-writer", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """sqlite-writer: every write goes through serve's writer process protocol (a
    WriterServer on a second store of the same file, over its Unix socket)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            url = await stack.enter_async_context(pg_schema())
        else:
            url = f"sqlite:///{tmp_path / 'mailgate.db'}"
        s = open_store(url)
        await s.open()
        stack.push_async_callback(s.close)
        if request.param == "sqlite-writer":
            assert isinstance(s, SqliteStore)
            writes = open_store(url)
            await writes.open()
            stack.push_async_callback(writes.close)
            assert isinstance(writes, SqliteStore)
            server = WriterServer(writes.engine, socket_path(writes.path))
            await server.start()
            stack.push_async_callback(server.stop, 5.0)
            s.use_writer(socket_path(s.path))
        yield s
