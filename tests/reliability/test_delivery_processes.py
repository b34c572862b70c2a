"""`server.delivery_processes`: several delivery children share one queue through their
leases, so a backlog drains on every core, and still every message goes out once."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.reliability.harness import active_count, child_pids, running

MESSAGES = 300


def test_two_delivery_processes_deliver_each_message_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGATE_SERVER_DELIVERY_PROCESSES", "2")
    with running(tmp_path) as (server, sink, _):
        assert server.proc is not None
        workers = child_pids(server.proc.pid, "worker")
        assert len(workers) == 2, workers
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
            for i in range(MESSAGES):
                client.sendmail(
                    "loader@chaos.test",
                    [f"sink{i % 7}@dest{i % 3}.test"],
                    f"Subject: n\r\nX-Chaos-Seq: two-{i}\r\n\r\nbody\r\n".encode(),
                )
        deadline = time.monotonic() + 120
        while len(sink.delivered()) < MESSAGES and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = sink.delivered()
        assert set(delivered) == {f"two-{i}" for i in range(MESSAGES)}
        assert max(delivered.values()) == 1, "a message went out twice"
        assert active_count(server.db) == 0
        assert server.terminate() == 0
    assert not child_pids(server.proc.pid, "worker")
