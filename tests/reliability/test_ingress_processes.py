"""`serve` takes mail in with `server.ingress_processes` processes on shared ports
(SO_REUSEPORT). Both take connections, /metrics adds up both, a killed ingress child is
replaced, and whatever it acknowledged before it died is delivered."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.reliability.harness import (
    Tally,
    active_count,
    child_pids,
    run_load,
    running,
    wait_drained,
)


def connections_of(pid: int, port: int) -> int:
    """Established connections process `pid` holds on local `port` (from ss)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(f"pid={pid}," in line for line in out.splitlines())


def test_both_ingress_processes_take_connections_and_metrics_add_up(tmp_path: Path) -> None:
    with running(tmp_path) as (server, _, key):
        assert server.proc is not None
        [child] = child_pids(server.proc.pid, "ingress")
        base = f"http://127.0.0.1:{server.http_port}"
        body = {"from": "a@example.org", "to": "b@example.com", "subject": "s", "text": "t"}
        clients = [httpx.Client(base_url=base) for _ in range(32)]  # 32 connections
        try:
            for client in clients:
                r = client.post(
                    "/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert r.status_code == 202
            # the kernel spread them; all 32 on one process would happen once in 2**31
            held = {pid: connections_of(pid, server.http_port) for pid in (server.proc.pid, child)}
            assert all(n > 0 for n in held.values()), f"HTTP connections per process: {held}"
            assert sum(held.values()) == 32
        finally:
            for client in clients:
                client.close()
        for _ in range(10):  # new connections: either process may answer the scrape
            scraped = httpx.get(f"{base}/metrics").text
            count = re.search(r'mailgate_accepted_messages_total\{source="http"\} (\S+)', scraped)
            assert count and float(count.group(1)) == 32, "/metrics must add up both processes"
        # where the commits spent their time: the door's waits in both ingress processes,
        # the groups and syncs in the writer process (which alone commits), all shared
        stage = {
            name: float(value)
            for name, value in re.findall(r"^(mailgate_\w+_(?:sum|count)) (\S+)$", scraped, re.M)
        }
        assert stage["mailgate_accept_commit_seconds_count"] == 32
        assert 0 < stage["mailgate_accept_commit_seconds_sum"] < 32 * 10
        assert stage["mailgate_store_commit_group_writes_sum"] >= 32  # and the deliveries'
        assert stage["mailgate_store_commit_seconds_count"] >= 1
        assert stage["mailgate_store_sync_seconds_count"] >= 1
        assert server.terminate() == 0
    assert not child_pids(server.proc.pid, "ingress"), "the child outlived serve"


def test_a_killed_ingress_process_is_replaced_and_loses_nothing(tmp_path: Path) -> None:
    with running(tmp_path) as (server, sink, key):
        assert server.proc is not None
        [child] = child_pids(server.proc.pid, "ingress")
        tally = Tally()
        killer = threading.Timer(1.0, os.kill, (child, signal.SIGKILL))
        killer.start()
        run_load(server, key, tally, 2.5, "ingress-kill")
        killer.join()
        deadline = time.monotonic() + 20
        while not child_pids(server.proc.pid, "ingress") and time.monotonic() < deadline:
            time.sleep(0.1)
        [replacement] = child_pids(server.proc.pid, "ingress")
        assert replacement != child
        acked = set(tally.acked)
        assert acked, "nothing was acknowledged under the load"  # a count, not a rate
        wait_drained(server, sink, acked)
        assert acked <= set(sink.delivered()), "an acknowledged message was lost"
        assert active_count(server.db) == 0
        assert server.terminate() == 0
    assert "ingress process" in server.logs() and "exited with -9" in server.logs()
