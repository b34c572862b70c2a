"""`mailgate serve` on PostgreSQL, as a newcomer would run it: the ingest processes and the
delivery child share the database, the child hears of new mail by LISTEN / NOTIFY, and
everything acknowledged under load reaches the receiver.

The load is a count, not a time: the loaders send until `COUNT` messages are acknowledged
(however long that takes on a busy machine, within a generous bound). How fast is bench/'s
business; this test holds the rule that no acknowledged message is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.reliability.harness import Server, Sink, Tally, child_pids, load_until

COUNT = 200  # acknowledged messages, over SMTP and HTTP together
LOAD_BOUND = 180.0  # seconds to get them acknowledged: a broken server, not a slow one
DELIVERY_BOUND = 120.0  # seconds for the delivery child to hand them all to the sink


def load_for_count(server: Server, key: str, tally: Tally, count: int, tag: str) -> None:
    """Load until `count` messages are acknowledged or `LOAD_BOUND` passes, then stop."""

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load_until(server, key, tally, stop, tag))
        deadline = time.monotonic() + LOAD_BOUND
        while len(tally.acked) < count and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(go())


def deliver_on(url: str, tmp: Path) -> tuple[Tally, set[str], dict[str, list[int]], int]:
    sink = Sink(tmp)
    server = Server(tmp, sink.port, store_url=url)
    tally = Tally()
    try:
        key = server.make_key()
        server.start()
        assert server.proc is not None
        children = {role: child_pids(server.proc.pid, role) for role in ("worker", "ingress")}
        load_for_count(server, key, tally, COUNT, "pg")
        acked = set(tally.acked)
        deadline = time.monotonic() + DELIVERY_BOUND
        while not acked <= set(sink.delivered()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return tally, set(sink.delivered()), children, server.terminate()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        sink.stop()


async def test_serve_on_postgres_delivers_everything_acknowledged(
    pg_url: str, tmp_path: Path
) -> None:
    tally, delivered, children, code = await asyncio.to_thread(deliver_on, pg_url, tmp_path)
    acked = set(tally.acked)
    assert len(children["worker"]) == 1, "serve runs one delivery process beside itself"
    assert len(children["ingress"]) == 1, "and by default one more ingress process"
    assert len(acked) >= COUNT, (
        f"only {len(acked)} of {COUNT} acknowledged within {LOAD_BOUND:.0f} s "
        f"(sent {tally.sent}, refused {dict(tally.refused)}, errors {tally.errors})"
    )
    assert acked <= delivered, f"lost: {sorted(acked - delivered)[:10]}"
    assert code == 0
