"""`mailgate status`: recipients by status, the routes with the most mail waiting and
the age of the oldest, the processes that pinged the store, disk use, the certificate's
expiry (issue 17)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mailgate.models import NewMessage, Source
from mailgate.store import open_store
from tests.test_cli import mailgate


def test_status_shows_the_queue_by_route_and_the_certificate(tmp_path: Path) -> None:
    assert mailgate("init", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0

    async def fill() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}")
        await store.open()
        try:
            hour_ago = time.time() - 3600
            for i in range(3):
                rcpts = (f"u{i}@slow.test", "v@fast.test") if i else (f"u{i}@slow.test",)
                await store.enqueue(
                    NewMessage(b"x", "a@b.test", rcpts, Source.HTTP, created_at=hour_ago)
                )
            await store.ping()
        finally:
            await store.close()

    asyncio.run(fill())
    done = mailgate("status", "-c", str(tmp_path / "mailgate.toml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "queued 5" in said
    assert "slow.test │ 3 │ 0 │ 1.0h" in said and "fast.test │ 2 │ 0 │ 1.0h" in said
    assert "last seen" in said and "GiB free" in said
    assert "tls-cert.pem: expires in" in said and "EXPIRED" not in said
