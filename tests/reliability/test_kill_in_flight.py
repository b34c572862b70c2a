"""Killed between the remote's final dot and its reply: mailgate cannot know whether the
remote took the message, so it must send it again after the restart (at-least-once, as
Postfix and Exim do) and say it may be a duplicate. Losing it would break the 250."""

from __future__ import annotations

import os
import signal
import smtplib
import sqlite3
import time
from pathlib import Path

from tests.reliability.harness import active_count, child_pids, lease_taken_over, running


def test_kill_while_the_sink_holds_its_reply_delivers_again(tmp_path: Path) -> None:
    marker = tmp_path / "holding"
    with running(tmp_path, "--hold-first", str(marker)) as (server, sink, _):
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
            client.ehlo("loader.test")
            reply = client.sendmail(
                "loader@chaos.test",
                ["sink@dest.test"],
                b"Subject: held\r\nX-Chaos-Seq: held-1\r\n\r\nbody\r\n",
            )
            assert reply == {}
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "held-1", "the sink never got the data"
        server.kill()  # the sink has the data; mailgate never saw the reply
        server.start()
        while sink.delivered()["held-1"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.delivered()["held-1"] == 2, "not delivered again after the restart"
        while active_count(server.db) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert active_count(server.db) == 0
        assert server.terminate() == 0
    conn = sqlite3.connect(server.db)
    (message_id,) = conn.execute("SELECT id FROM messages").fetchone()
    conn.close()
    assert lease_taken_over(server.db, message_id), "no lease_expired event recorded"
    assert "possible duplicate" in server.logs()


def test_a_killed_delivery_process_is_replaced_and_its_claims_taken_back(
    tmp_path: Path,
) -> None:
    """`serve` runs delivery in a child process. Killed while the remote holds its reply,
    the child is replaced and the message sent again at once, not after the lease."""
    marker = tmp_path / "holding"
    with running(tmp_path, "--hold-first", str(marker)) as (server, sink, _):
        assert server.proc is not None
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
            client.sendmail(
                "loader@chaos.test",
                ["sink@dest.test"],
                b"Subject: held\r\nX-Chaos-Seq: child-1\r\n\r\nbody\r\n",
            )
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = child_pids(server.proc.pid, "worker")
        os.kill(child, signal.SIGKILL)
        while sink.delivered()["child-1"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.delivered()["child-1"] == 2, "not sent again by the new delivery process"
        assert time.monotonic() < deadline, "waited for the lease instead of taking it back"
        [replacement] = child_pids(server.proc.pid, "worker")
        assert replacement != child
        assert server.terminate() == 0
    assert not child_pids(server.proc.pid, "worker")
    assert "exited with -9; starting another" in server.logs()
    assert "possible duplicate" in server.logs()
