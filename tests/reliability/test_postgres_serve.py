"""`mailgate serve` on PostgreSQL, as a newcomer would run it: the ingest processes and the
delivery child share the database, the child hears of new mail by LISTEN / NOTIFY, and
everything acknowledged under load reaches the receiver."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.reliability.harness import Server, Sink, Tally, child_pids, run_load


def deliver_on(url: str, tmp: Path) -> tuple[set[str], set[str], dict[str, list[int]], int]:
    sink = Sink(tmp)
    server = Server(tmp, sink.port, store_url=url)
    tally = Tally()
    try:
        key = server.make_key()
        server.start()
        assert server.proc is not None
        children = {role: child_pids(server.proc.pid, role) for role in ("worker", "ingress")}
        run_load(server, key, tally, 1.0, "pg")
        acked = set(tally.acked)
        deadline = time.monotonic() + 60
        while not acked <= set(sink.delivered()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return acked, set(sink.delivered()), children, server.terminate()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        sink.stop()


async def test_serve_on_postgres_delivers_everything_acknowledged(
    pg_url: str, tmp_path: Path
) -> None:
    acked, delivered, children, code = await asyncio.to_thread(deliver_on, pg_url, tmp_path)
    assert len(children["worker"]) == 1, "serve runs one delivery process beside itself"
    assert len(children["ingress"]) == 1, "and by default one more ingress process"
    assert len(acked) > 100
    assert acked <= delivered, f"lost: {sorted(acked - delivered)[:10]}"
    assert code == 0
