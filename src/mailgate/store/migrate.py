"""Schema migrations, once for both backends: numbered .sql files per backend
(migrations/<backend>/0001_initial.sql …), each applied once and recorded in
schema_migrations. The backend runs this inside one transaction that holds its
migration lock (SQLite: the write turn; PostgreSQL: an advisory lock)."""

from __future__ import annotations

import time
from pathlib import Path

from mailgate.store.protocols import Tx

MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(tx: Tx, backend: str) -> None:
    await tx.execute("create_migrations")
    done = {r[0] for r in await tx.fetch("applied_migrations")}
    for path in sorted((MIGRATIONS / backend).glob("*.sql")):
        version = int(path.name.split("_", 1)[0])
        if version not in done:
            await tx.script(path.read_text())
            await tx.execute("record_migration", version, time.time())
