"""serve's SQLite writer process (store/sqlite/writer.py), killed under SMTP and HTTP
load: the writes in flight are refused, never acknowledged; every acknowledged message
is delivered; serve starts another writer and its processes commit through it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.harness import (
    Server,
    Sink,
    Tally,
    child_pids,
    load_until,
    wait_drained,
)


def test_killed_writer_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGATE_STORE_WRITER_PROCESS", "true")
    # A claim committed just before the kill, its answer lost, stays leased until the
    # lease ends (delayed, never lost): a short lease keeps that inside the test's wait.
    sink = Sink(tmp_path)
    server = Server(tmp_path, sink.port, lease_seconds=5.0)
    try:
        key = server.make_key()
        server.start()
        assert server.proc is not None
        writers = child_pids(server.proc.pid, "writer")
        assert len(writers) == 1, writers
        tally = Tally()
        acked_before_kill = 0

        async def go() -> None:
            nonlocal acked_before_kill
            stop = asyncio.Event()
            task = asyncio.create_task(load_until(server, key, tally, stop, "w"))
            deadline = time.monotonic() + 30
            while len(tally.acked) < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # until the writer has answered some
            acked_before_kill = len(tally.acked)
            os.kill(writers[0], signal.SIGKILL)
            deadline = time.monotonic() + 30  # a new writer, then acknowledgements again
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                again = child_pids(server.proc.pid, "writer")  # type: ignore[union-attr]
                if again and again != writers and len(tally.acked) > acked_before_kill + 50:
                    break
            stop.set()
            await task

        asyncio.run(go())
        assert acked_before_kill > 0
        new = child_pids(server.proc.pid, "writer")
        assert len(new) == 1 and new != writers, (writers, new)
        assert len(tally.acked) > acked_before_kill + 50, "nothing acknowledged after the kill"
        acked = set(tally.acked)
        wait_drained(server, sink, acked)
        missing = acked - set(sink.delivered())
        assert not missing, f"{len(missing)} acknowledged messages never delivered"
        assert server.terminate() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        sink.stop()
