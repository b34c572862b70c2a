"""`mailgate serve` on PostgreSQL, as a newcomer would run it: the ingest process and its
delivery child share the database, the child hears of new mail by LISTEN / NOTIFY, and
everything acknowledged under load reaches the receiver."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from tests.reliability.harness import Server, Sink, Tally, run_load


def deliver_on(url: str, tmp: Path) -> tuple[set[str], set[str], list[int], int]:
    sink = Sink(tmp)
    server = Server(tmp, sink.port, store_url=url)
    tally = Tally()
    try:
        key = server.make_key()
        server.start()
        assert server.proc is not None
        children: list[int] = []
        deadline = time.monotonic() + 10
        while not children and time.monotonic() < deadline:  # the child starts just after
            pgrep = ["pgrep", "-P", str(server.proc.pid)]
            out = subprocess.run(pgrep, capture_output=True, text=True)
            children = [int(p) for p in out.stdout.split()]
            time.sleep(0.05)
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
    assert len(children) == 1, "serve runs one delivery process beside itself"
    assert len(acked) > 100
    assert acked <= delivered, f"lost: {sorted(acked - delivered)[:10]}"
    assert code == 0
