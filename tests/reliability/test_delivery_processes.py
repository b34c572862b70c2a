"""`server.delivery_processes`: several delivery children share one queue through their
leases, so a backlog drains on every core, and still every message goes out once."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.delivery.peers import Script, SinkController
from tests.reliability.harness import Server, active_count, child_pids, free_port, running

MESSAGES = 300
CAP_MESSAGES = 400


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


def test_delivery_processes_share_the_connection_caps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two delivery children with max_connections_per_domain = 2 open at most two
    connections to the domain between them (each gets one), not two each."""
    script = Script()
    port = free_port()
    controller = SinkController(script, port)
    controller.start()
    script.connections = script.max_open = 0  # start() probed the sink once itself
    for name, value in {
        "DELIVERY_PROCESSES": "2",
        "DELIVERY_MAX_CONNECTIONS_PER_DOMAIN": "2",
        "DELIVERY_CLAIM_BATCH": "10",
    }.items():
        section = "SERVER" if name == "DELIVERY_PROCESSES" else "DELIVERY"
        key = name.removeprefix("DELIVERY_") if section == "DELIVERY" else name
        monkeypatch.setenv(f"MAILGATE_{section}_{key}", value)
    server = Server(tmp_path, port)
    try:
        server.start()
        assert server.proc is not None
        assert len(child_pids(server.proc.pid, "worker")) == 2
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
            for i in range(CAP_MESSAGES):
                client.sendmail(
                    "loader@chaos.test", [f"sink{i}@dest.test"], b"Subject: n\r\n\r\nbody\r\n"
                )
        deadline = time.monotonic() + 120
        while len(script.received) < CAP_MESSAGES and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(script.received) == CAP_MESSAGES
        assert script.max_open <= 2, f"{script.max_open} connections to one domain"
        assert server.terminate() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        controller.stop()
