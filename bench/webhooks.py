"""Webhooks: how fast events reach one local receiver, and what webhooks cost end to end.

1. Events per second: `mailgate serve` (SQLite, delivery off) with an endpoint for
   `message.accepted` at a receiver on loopback (its own process: a lean asyncio HTTP/1.1
   server answering 200, keep-alive, writing one line per webhook); 20,000 messages
   posted in batches of 500; the rate is the receiver's, first to last webhook
   (target >= 5,000/s).
2. End to end with webhooks on: smtp-source -> mailgate -> smtp-sink (relay_e2e.py's
   setup) with an endpoint for `message.delivered`; delivered msg/s against Postfix's in
   the same run (target >= 2x), and the lag from each delivery's event time to its
   webhook's arrival (target p99 <= 1 s).

    python bench/webhooks.py [--messages 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header
from relay_e2e import MG_PORT, PF_PORT, SINK_PORT, flow, mailgate_env
from smtp_ingest import READY_PORT, ensure_postfix, start_postfix, stop, wait_ready
from smtp_load import free_port, start_sink, stop_sink, wait_port

RECEIVER = r"""
import asyncio, json, signal, sys, time
out = open(sys.argv[2], "w", buffering=1 << 16)
class Http(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0: return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            n = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + n: return
            body, self.buf = self.buf[end + 4:end + 4 + n], self.buf[end + 4 + n:]
            e = json.loads(body)
            out.write(json.dumps([time.time(), e["timestamp"], e["type"]]) + "\n")
            self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", int(sys.argv[1]))
    loop.add_signal_handler(signal.SIGUSR1, out.flush)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print("ready", flush=True)
    await done.wait()
    server.close()
    out.close()
asyncio.run(main())
"""
Row = tuple[float, float, str]  # arrival, event time, type


class Receiver:
    def __init__(self, out: Path) -> None:
        self.port, self.out = free_port(), out
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER, str(self.port), str(out)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def count(self) -> int:
        self.proc.send_signal(signal.SIGUSR1)  # flush, then count the lines
        time.sleep(0.05)
        return self.out.read_text().count("\n")

    def wait(self, n: int, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> list[Row]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        rows = []
        for line in self.out.read_text().splitlines():
            at, stamp, kind = json.loads(line)
            rows.append((at, datetime.datetime.fromisoformat(stamp).timestamp(), kind))
        return rows


def api(method: str, path: str, key: str, body: object | None = None) -> object:
    req = urllib.request.Request(
        f"http://127.0.0.1:{READY_PORT}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def serve(tmp: Path, deliver: bool, port: int, events: str) -> tuple[subprocess.Popen[bytes], str]:
    """mailgate (relay_e2e's settings) with an endpoint for `events` at the receiver."""
    env = mailgate_env(tmp, deliver)
    env["MAILGATE_WEBHOOKS_ALLOW_HTTP"] = "true"
    env["MAILGATE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS"] = '["127.0.0.0/8"]'
    cmd = [sys.executable, "-m", "mailgate.cli", "keys", "create", "--name", "b"]
    made = subprocess.run(
        [*cmd, "--scope", "admin,send,read"],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([sys.executable, "-m", "mailgate.cli", "serve"], env=env, cwd=tmp)
    wait_ready(READY_PORT)
    api("POST", "/v1/webhooks", key, {"url": f"http://127.0.0.1:{port}/in", "events": [events]})
    return proc, key


def percentiles(rows: list[Row]) -> tuple[float, float]:
    lags = sorted(at - event_at for at, event_at, _ in rows)
    return lags[len(lags) // 2], lags[max(0, int(len(lags) * 0.99) - 1)]


def events_per_second(tmp: Path, n: int) -> float:
    receiver = Receiver(tmp / "got-events.jsonl")
    mg, key = serve(tmp, False, receiver.port, "message.accepted")
    try:
        one = {"from": "a@example.org", "to": ["b@example.com"], "subject": "s", "text": "t"}
        started = time.monotonic()
        for _ in range(n // 500):
            api("POST", "/v1/messages/batch", key, {"messages": [one] * 500})
        posted = n / (time.monotonic() - started)
        receiver.wait(n)
    finally:
        stop(mg)
        rows = receiver.stop()
        shutil.rmtree(tmp / "mailgate", ignore_errors=True)
    times = sorted(at for at, _, _ in rows)
    rate = (len(rows) - 1) / (times[-1] - times[0]) if len(rows) > 1 else 0.0
    print(
        f"events   : {len(rows):,} of {n:,} webhooks, {rate:7,.0f}/s to one receiver "
        f"(target >= 5,000/s); the {n:,} messages were posted at {posted:,.0f}/s",
        flush=True,
    )
    return rate


def end_to_end(tmp: Path, n: int, sessions: int) -> tuple[float, float, float]:
    receiver = Receiver(tmp / "got-e2e.jsonl")
    log = tmp / "sink-mg.log"
    sink = start_sink(SINK_PORT, log)
    try:
        wait_port(SINK_PORT)
        mg, _ = serve(tmp, True, receiver.port, "message.delivered")
        try:
            rate = flow(MG_PORT, log, n, sessions, sink.pid)
            receiver.wait(n, 120)
        finally:
            stop(mg)
    finally:
        stop_sink(sink)
        rows = receiver.stop()
        shutil.rmtree(tmp / "mailgate", ignore_errors=True)
    p50, p99 = percentiles(rows)
    print(
        f"e2e      : mailgate with webhooks {rate.rate:7,.0f} msg/s delivered "
        f"{rate.cpu.describe()}; {len(rows):,} delivered-webhooks of {n:,}; lag from the "
        f"delivery to its webhook p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
        "(target p99 <= 1 s)",
        flush=True,
    )
    return rate.rate, p99, len(rows) / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=20)
    args = p.parse_args()
    ensure_postfix()
    header(args.sessions, max(args.messages, 10_000))
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-webhooks-"))
    try:
        rate = events_per_second(tmp, args.messages)
        mg, p99, share = end_to_end(tmp, args.messages, args.sessions)
        log = tmp / "sink-pf.log"
        sink = start_sink(SINK_PORT, log)
        try:
            start_postfix(PF_PORT, SINK_PORT)
            wait_port(PF_PORT)
            pf = flow(PF_PORT, log, args.messages, args.sessions, sink.pid)
        finally:
            stop_sink(sink)
            subprocess.run(["postfix", "stop"], check=False, capture_output=True)
        print(f"postfix  : {pf.rate:7,.0f} msg/s delivered {pf.cpu.describe()}")
        print(
            f"ratio    : webhooks {rate:,.0f}/s (>= 5,000); e2e with webhooks "
            f"{mg / pf.rate:.2f}x Postfix (>= 2x); lag p99 {p99:.2f} s (<= 1 s); "
            f"{share:.0%} of deliveries told"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
