"""A bounce and its DSN commit together: SIGKILL a process that is settling bounces
with their DSNs at random moments, and no bounced recipient is ever found without its
DSN, nor a DSN without its bounce (issue 12: the outbox)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailgate.models import MessageQuery, RecipientStatus, Source
from mailgate.store import open_store
from tests.conftest import pg_schema

ROOT = Path(__file__).resolve().parents[2]
KILLS_SQLITE = 8
KILLS_POSTGRES = 3


def run_and_kill(url: str, rng: random.Random) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.bounce_child", url, "8"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready", proc.stderr.read() if proc.stderr else ""
    time.sleep(rng.uniform(0.1, 0.8))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


async def bounces_and_dsns(url: str) -> tuple[int, int]:
    """(bounced originals, DSNs), after checking each bounce has its DSN and back."""
    store = open_store(url)
    await store.open()
    try:
        messages = await store.list_messages(MessageQuery(limit=1_000_000))
        bounced: set[str] = set()
        reported: set[str] = set()
        for m in messages:
            rcpts = await store.recipients(m.id)
            if m.source is Source.DSN:
                (r,) = rcpts
                reported.add(r.address.removeprefix("dsn-").removesuffix("@example.org"))
            elif rcpts[0].status is RecipientStatus.BOUNCED:
                bounced.add(m.id)
        assert bounced - reported == set(), "a bounce committed without its DSN"
        assert reported - bounced == set(), "a DSN committed without its bounce"
        return len(bounced), len(reported)
    finally:
        await store.close()


async def kill_and_check(url: str, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    seen = 0
    for _ in range(kills):
        run_and_kill(url, rng)
        seen, _ = await bounces_and_dsns(url)
    assert seen > 0, "the child bounced nothing before it was killed"


async def test_sqlite_kill_while_bouncing_keeps_bounce_and_dsn_together(tmp_path: Path) -> None:
    await kill_and_check(f"sqlite:///{tmp_path / 'mailgate.db'}", KILLS_SQLITE, 12)


async def test_postgres_kill_while_bouncing_keeps_bounce_and_dsn_together() -> None:
    async with pg_schema() as url:
        await kill_and_check(url, KILLS_POSTGRES, 13)
