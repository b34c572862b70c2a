"""Schema migrations, once for both backends: numbered .sql files per backend
(migrations/<backend>/0001_initial.sql …), each version applied once and recorded in
schema_migrations; a version's statements that both backends write alike are in
migrations/common/ under the same number and run after the backend's own. The backend
runs this inside one transaction that holds its migration lock (SQLite: the write turn;
PostgreSQL: an advisory lock)."""

from __future__ import annotations

import time
from pathlib import Path

from mailgate.store.protocols import Tx

MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(tx: Tx, backend: str) -> None:
    await tx.execute("create_migrations")
    done = {r[0] for r in await tx.fetch("applied_migrations")}
    for version, paths in sorted(versions(backend).items()):
        if version not in done:
            for path in paths:
                await tx.script(path.read_text())
            await tx.execute("record_migration", version, time.time())


def versions(backend: str) -> dict[int, list[Path]]:
    """Each version's files in the order they run: the backend's, then the common one."""
    found: dict[int, list[Path]] = {}
    for folder in (MIGRATIONS / backend, MIGRATIONS / "common"):
        for path in sorted(folder.glob("*.sql")):
            found.setdefault(int(path.name.split("_", 1)[0]), []).append(path)
    return found
