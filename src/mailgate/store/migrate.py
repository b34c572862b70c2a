"""Schema migrations, once for both backends: numbered .sql files per backend
(migrations/<backend>/0001_initial.sql …), each version applied once and recorded in
schema_migrations; a version's statements that both backends write alike are in
migrations/common/ under the same number and run after the backend's own. The backend
runs this inside one transaction that holds its migration lock (SQLite: the write turn;
PostgreSQL: an advisory lock)."""

from __future__ import annotations

import time
from pathlib import Path

from mailgate.errors import StoreError
from mailgate.store.protocols import Tx

MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(tx: Tx, backend: str) -> None:
    await tx.execute("create_migrations")
    done = {r[0] for r in await tx.fetch("applied_migrations")}
    known = versions(backend)
    newer = sorted(v for v in done if v not in known)
    if newer:  # an older mailgate would ignore what it does not know (a sandbox key's
        # flag, say, and send that key's mail for real): it must not run on this database
        raise StoreError(
            f"store: the database has schema version {newer[-1]}, newer than this mailgate"
            f" knows ({max(known)}); run the newer mailgate (a downgrade is not supported)"
        )
    for version, paths in sorted(known.items()):
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
