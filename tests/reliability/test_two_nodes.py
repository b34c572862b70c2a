"""Two `mailgate serve` nodes on one PostgreSQL (issue 17): separate data directories and
ports, both take mail in and deliver; one is killed with SIGKILL (its children go with
it) under load; the other delivers the killed node's leased recipients once their lease
ends. Nothing acknowledged by either node is lost (duplicates only for what was in
flight: at least once). Bounded by counts and generous time limits, no rates."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from tests.reliability.harness import Server, Sink, Tally, child_pids, load_until

LEASE = 3.0  # seconds: short, so the survivor takes the dead node's recipients soon
LOAD_BOUND = 120.0
DELIVERY_BOUND = 120.0


def two_nodes(url: str, tmp: Path) -> tuple[set[str], set[str], int, int]:
    for node in ("a", "b"):
        (tmp / node).mkdir()
    sink = Sink(tmp / "sink")
    servers: list[Server] = []
    tally_a, tally_b = Tally(), Tally()
    try:
        a = Server(tmp / "a", sink.port, lease_seconds=LEASE, store_url=url)
        servers.append(a)
        b = Server(tmp / "b", sink.port, lease_seconds=LEASE, store_url=url)
        servers.append(b)
        key = a.make_key()
        a.start()
        b.start()
        assert a.proc is not None and b.proc is not None
        doomed = [a.proc.pid, *child_pids(a.proc.pid, "worker"), *child_pids(a.proc.pid, "ingress")]

        async def load() -> None:
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(load_until(a, key, tally_a, stop, "na")),
                asyncio.create_task(load_until(b, key, tally_b, stop, "nb")),
            ]
            deadline = time.monotonic() + LOAD_BOUND
            while len(tally_a.acked) < 150 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for pid in doomed:  # the whole node, at once, mid-load: as a machine dies
                os.kill(pid, signal.SIGKILL)
            while len(tally_b.acked) < 300 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(load())
        a.proc.wait(10)
        acked = set(tally_a.acked) | set(tally_b.acked)
        deadline = time.monotonic() + DELIVERY_BOUND
        while not acked <= set(sink.delivered()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return acked, set(sink.delivered()), len(tally_a.acked), b.terminate()
    finally:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.kill()
        sink.stop()


async def test_a_killed_nodes_recipients_are_delivered_by_the_other(
    pg_url: str, tmp_path: Path
) -> None:
    acked, delivered, by_a, code = await asyncio.to_thread(two_nodes, pg_url, tmp_path)
    assert by_a >= 150, f"node a acknowledged only {by_a} before it was killed"
    assert len(acked) >= by_a + 300, "node b took mail in after a died"
    lost = acked - delivered
    assert not lost, f"{len(lost)} acknowledged messages never delivered: {sorted(lost)[:10]}"
    assert code == 0
