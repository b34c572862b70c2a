"""The durable store: one interface (protocols.Store), two engines (SQLite, PostgreSQL).

Every method that changes state returns only after its transaction is committed to
disk. Each state change and the event it writes is written once, in queue.py, against a
transaction of either engine (protocols.Tx); reads are in queries.py; the SQL per
backend is in sql/. See base.py for how an engine plugs in.
"""

from __future__ import annotations

from mailgate.store.protocols import Dsn, Store


def open_store(
    url: str,
    *,
    unsafe_no_fsync: bool = False,
    batch_max: int = 1000,
    pool_size: int = 8,
    exclusive: bool = False,
) -> Store:
    """The store named by `url` (sqlite:///path or postgresql://...), not yet opened.

    exclusive: this process is the server; a second server on the same SQLite file is
    refused. Short-lived commands (keys, queue) share the file through SQLite's locking.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from mailgate.store.postgres import PostgresStore

        return PostgresStore(url, batch_max=batch_max, pool_size=pool_size)
    if url.startswith("sqlite:///"):
        from mailgate.store.sqlite import SqliteStore

        return SqliteStore(
            url[len("sqlite:///") :],
            unsafe_no_fsync=unsafe_no_fsync,
            batch_max=batch_max,
            exclusive=exclusive,
        )
    from mailgate.errors import ConfigError

    raise ConfigError(f"config: store.url: expected sqlite:///path or postgresql://…, got {url!r}")


__all__ = ["Dsn", "Store", "open_store"]
