"""`mailgate purge`: one purge round by hand against the configured SQLite store while
another process (here the test, as a server would) holds it open: --dry-run counts and
changes nothing; then finished old messages go, bodies past body_days go, live mail and
recent mail stay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from mailgate.models import NewMessage, Source
from mailgate.retention import DAY
from mailgate.store.sqlite.store import SqliteStore

RAW = b"From: a@example.org\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody\r\n"
BIG = b"From: a@example.org\r\nTo: b@x.test\r\nSubject: big\r\n\r\n" + b"y" * 100_000


def message(age_days: float, *, finished: bool, raw: bytes = RAW) -> NewMessage:
    """A message created `age_days` ago; finished: its recipient suppressed at the door
    (a final status, changed last when it was created)."""
    return NewMessage(
        raw=raw,
        sender="a@example.org",
        recipients=("b@x.test",),
        source=Source.HTTP,
        created_at=time.time() - age_days * DAY,
        suppressed={"b@x.test": "manual"} if finished else {},
    )


async def purge(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env |= {
        "MAILGATE_SERVER_DATA_DIR": str(data),
        "MAILGATE_RETENTION_BODY_DAYS": "30",
        "MAILGATE_RETENTION_MESSAGE_DAYS": "90",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mailgate.cli", "purge", *args],
        cwd=data.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_purge_by_hand_beside_an_open_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteStore(str(data / "mailgate.db"), exclusive=True)  # as serve holds it
    await store.open()
    try:
        old = [message(100 + i, finished=True) for i in range(3)]
        old.append(message(95, finished=True, raw=BIG))  # its body in a segment
        aging = message(40, finished=True)  # past body_days only: the body goes
        live = message(200, finished=False)  # queued: never purged, however old
        recent = message(0, finished=True)  # and the newest event's owner
        for m in (*old, aging, live, recent):
            await store.enqueue(m)

        counted = await purge(data, "--dry-run")
        assert counted.returncode == 0, counted.stderr
        assert counted.stdout.startswith("would purge 4 messages, 1 bodies,"), counted.stdout
        assert await store.get_raw(old[0].id) == RAW  # only counted

        done = await purge(data)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("purged 4 messages, 1 bodies,"), done.stdout
        assert "purging messages" in done.stderr  # the bars, on stderr
        for m in old:
            assert await store.get_message(m.id) is None
            assert await store.recipients(m.id) == []
            assert await store.events(m.id) == []
        assert await store.get_message(aging.id) is not None
        assert await store.get_raw(aging.id) is None
        assert len(await store.events(aging.id)) == 2  # accepted, suppressed
        for m in (live, recent):
            assert await store.get_raw(m.id) == RAW

        again = await purge(data)  # idempotent: nothing left
        assert again.stdout.startswith("purged 0 messages, 0 bodies,"), again.stdout
    finally:
        await store.close()
