"""A second process writing beside a busy server gets its turn: the delivery process must
not starve (SQLite's busy handler alone let it time out with "database is locked" while
the server committed back to back)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from mailgate.models import NewMessage, Source
from mailgate.store import open_store

ROOT = Path(__file__).resolve().parents[2]
GUEST = """
import asyncio, json, sys, time
from mailgate.models import NewMessage, Source
from mailgate.store import open_store

async def main() -> None:
    store = open_store(sys.argv[1])
    await store.open()
    print("ready", flush=True)
    waits = []
    for i in range(100):
        started = time.monotonic()
        await store.enqueue(NewMessage(raw=b"Subject: g\\r\\n\\r\\nx\\r\\n", sender="g@x.test",
            recipients=(f"g{i}@guest.test",), source=Source.HTTP))
        waits.append(time.monotonic() - started)
    await store.close()
    print(json.dumps(waits), flush=True)

asyncio.run(main())
"""


async def hammer(url: str, stop: asyncio.Event, committed: list[int]) -> int:
    """Enqueue batches flat out until `stop`; committed[0] counts what is committed so far."""
    store = open_store(url, exclusive=True)
    await store.open()
    raw = b"Subject: s\r\n\r\n" + b"y" * 2000 + b"\r\n"

    async def producer(n: int) -> None:
        while not stop.is_set():  # batches of 100, as the HTTP batch endpoint makes them
            batch = [
                NewMessage(
                    raw=raw, sender="s@x.test", recipients=(f"s{n}@srv.test",), source=Source.HTTP
                )
                for _ in range(100)
            ]
            await store.enqueue_many(batch)
            committed[0] += len(batch)

    try:
        await asyncio.gather(*(producer(n) for n in range(20)))
    finally:
        await store.close()
    return committed[0]


def test_a_guest_writer_is_not_starved_by_a_busy_server(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mailgate.db'}"

    async def run() -> tuple[int, list[float]]:
        stop, committed = asyncio.Event(), [0]
        server = asyncio.create_task(hammer(url, stop, committed))
        while committed[0] < 1_000:  # the server is committing flat out
            await asyncio.sleep(0.01)
        guest = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GUEST, url, cwd=ROOT, stdout=subprocess.PIPE
        )
        assert guest.stdout is not None
        assert (await guest.stdout.readline()).strip() == b"ready"
        out = await asyncio.wait_for(guest.stdout.read(), 60)
        assert await guest.wait() == 0, "the guest's writes failed"
        # Busy throughout, whatever the machine's speed: still hammering when the guest
        # is done, and committing again after it (a count, not a rate).
        assert not server.done(), "the server stopped before the guest was done"
        after, deadline = committed[0], asyncio.get_running_loop().time() + 60
        while committed[0] == after:
            assert asyncio.get_running_loop().time() < deadline, "the server stopped committing"
            await asyncio.sleep(0.01)
        stop.set()
        return await server, json.loads(out)

    served, waits = asyncio.run(run())
    assert served > 1_000
    assert len(waits) == 100
    print(f"server {served} messages, guest max wait {max(waits):.3f}s")
    assert max(waits) < 2.0, f"a guest write waited {max(waits):.1f}s"
