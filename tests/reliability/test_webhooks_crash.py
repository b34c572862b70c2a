"""SIGKILL of `mailgate serve` while it delivers mail and webhooks: after a restart,
every recipient that reached a final state has had its event delivered to the webhook
receiver at least once (0 lost). Webhooks are rows written with the fan-out's cursor
move, claimed with a lease, and settled only after the receiver answered."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.events.receiver import receiver
from tests.reliability.harness import Tally, run_load, running, stop_under_load, wait_drained


@pytest.mark.slow
def test_a_kill_while_sending_webhooks_loses_no_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGATE_WEBHOOKS_ALLOW_HTTP", "true")
    monkeypatch.setenv("MAILGATE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("MAILGATE_STORE_LEASE_SECONDS", "3")  # a dead sender's rows come back soon
    with receiver() as got, running(tmp_path) as (server, sink, key):
        made = httpx.post(
            f"http://127.0.0.1:{server.http_port}/v1/webhooks",
            headers={"Authorization": f"Bearer {key}"},
            json={"url": got.url("/in"), "events": ["message.delivered", "message.bounced"]},
        )
        assert made.status_code == 201, made.text
        tally = Tally()
        stop_under_load(server, key, tally, 1.5, "a", server.kill)
        server.start()
        run_load(server, key, tally, 0.3, "b")
        wait_drained(server, sink, set(tally.acked))
        conn = sqlite3.connect(server.db)
        final = {
            f"evt_{r[0]}"
            for r in conn.execute("SELECT id FROM events WHERE kind IN ('delivered', 'bounced')")
        }
        conn.close()
        assert len(final) >= len(tally.acked) > 50
        deadline = time.monotonic() + 90
        told: set[str] = set()
        while time.monotonic() < deadline:
            told = {json.loads(p.body)["id"] for p in list(got.got)}
            if final <= told:
                break
            time.sleep(0.2)
        if not final <= told:
            conn = sqlite3.connect(server.db)
            rows = [
                conn.execute(
                    "SELECT status, attempts, lease_owner, next_attempt_at, last_error FROM"
                    " webhook_messages WHERE event_id = ?",
                    (e,),
                ).fetchall()
                for e in sorted(final - told)
            ]
            cursor = conn.execute("SELECT cursor FROM webhook_cursor").fetchall()
            conn.close()
            pytest.fail(
                f"{len(final - told)} of {len(final)} never told: {sorted(final - told)};"
                f" their rows {rows}; cursor {cursor}; now {time.time()}"
            )
        assert server.terminate() == 0
